/** API token routes (operational: follow the selected environment). */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { TokenService } from '../../domain/token-service.js';
import {
  createTokenSchema,
  deleteTokenSchema,
  getTokenSchema,
  listTokensSchema,
  updateTokenSchema,
} from '../schemas/tokens.js';

/** The `/api/v1/tokens` routes as a plugin for the operational scope. */
export function createTokensPlugin(deps: { tokens: TokenService }): FastifyPluginAsyncTypebox {
  const { tokens } = deps;
  return async (app) => {
    app.get('/api/v1/tokens', { schema: listTokensSchema }, async () => ({ tokens: tokens.list() }));
    app.post('/api/v1/tokens', { schema: createTokenSchema }, async (request, reply) => {
      // A token never mints one that outlives it.
      const issuerId =
        request.principal?.authMethod === 'apiToken' ? request.principal.apiTokenId : undefined;
      const issuer = issuerId === undefined ? undefined : { expiresAt: tokens.get(issuerId).expiresAt };
      return reply.code(201).send(await tokens.create(request.body, issuer));
    });
    app.get('/api/v1/tokens/:id', { schema: getTokenSchema }, async (request) => ({
      apiToken: tokens.get(request.params.id),
    }));
    app.patch('/api/v1/tokens/:id', { schema: updateTokenSchema }, async (request) => ({
      apiToken: await tokens.update(request.params.id, request.body),
    }));
    app.delete('/api/v1/tokens/:id', { schema: deleteTokenSchema }, async (request, reply) => {
      await tokens.remove(request.params.id);
      return reply.code(204).send(null);
    });
  };
}
