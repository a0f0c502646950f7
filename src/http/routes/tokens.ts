/** API token routes (operational: follow the selected environment). */
import type { FastifyInstance } from 'fastify';
import type { TokenService } from '../../domain/token-service.js';

export function registerTokenRoutes(app: FastifyInstance, deps: { tokens: TokenService }): void {
  const { tokens } = deps;
  app.get('/api/v1/tokens', async () => ({ tokens: tokens.list() }));
  app.post('/api/v1/tokens', async (request, reply) =>
    reply.code(201).send(await tokens.create(request.body)),
  );
  app.get<{ Params: { id: string } }>('/api/v1/tokens/:id', async (request) => ({
    apiToken: tokens.get(request.params.id),
  }));
  app.patch<{ Params: { id: string } }>('/api/v1/tokens/:id', async (request) => ({
    apiToken: await tokens.update(request.params.id, request.body),
  }));
  app.delete<{ Params: { id: string } }>('/api/v1/tokens/:id', async (request, reply) => {
    await tokens.remove(request.params.id);
    return reply.code(204).send();
  });
}
