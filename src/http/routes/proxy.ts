/**
 * Public proxy configuration routes (operational, DESIGN.md §4):
 * `GET/POST /api/v1/proxy/listeners`, `GET/PATCH/DELETE /api/v1/proxy/listeners/:id`,
 * and the same for `/api/v1/proxy/routes`. Lists answer `{listeners}` /
 * `{routes}`, single objects `{listener}` / `{route}`; create answers 201,
 * delete 204. Errors come from ProxyConfigService.
 */
import type { FastifyPluginAsync } from 'fastify';
import type { ProxyConfigService } from '../../domain/proxy-config-service.js';

export function createProxyPlugin(deps: { proxyConfig: ProxyConfigService }): FastifyPluginAsync {
  const { proxyConfig } = deps;
  return async (app) => {
    app.get('/api/v1/proxy/listeners', async () => ({ listeners: proxyConfig.listListeners() }));
    app.post('/api/v1/proxy/listeners', async (request, reply) =>
      reply.code(201).send({ listener: await proxyConfig.createListener(request.body) }),
    );
    app.get<{ Params: { id: string } }>('/api/v1/proxy/listeners/:id', async (request) => ({
      listener: proxyConfig.getListener(request.params.id),
    }));
    app.patch<{ Params: { id: string } }>('/api/v1/proxy/listeners/:id', async (request) => ({
      listener: await proxyConfig.updateListener(request.params.id, request.body),
    }));
    app.delete<{ Params: { id: string } }>('/api/v1/proxy/listeners/:id', async (request, reply) => {
      await proxyConfig.removeListener(request.params.id);
      return reply.code(204).send();
    });

    app.get('/api/v1/proxy/routes', async () => ({ routes: proxyConfig.listRoutes() }));
    app.post('/api/v1/proxy/routes', async (request, reply) =>
      reply.code(201).send({ route: await proxyConfig.createRoute(request.body) }),
    );
    app.get<{ Params: { id: string } }>('/api/v1/proxy/routes/:id', async (request) => ({
      route: proxyConfig.getRoute(request.params.id),
    }));
    app.patch<{ Params: { id: string } }>('/api/v1/proxy/routes/:id', async (request) => ({
      route: await proxyConfig.updateRoute(request.params.id, request.body),
    }));
    app.delete<{ Params: { id: string } }>('/api/v1/proxy/routes/:id', async (request, reply) => {
      await proxyConfig.removeRoute(request.params.id);
      return reply.code(204).send();
    });
  };
}
