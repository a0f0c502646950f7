/**
 * Public proxy configuration routes (operational, docs/pipeline.md):
 * `GET/POST /api/v1/proxy/listeners`, `GET/PATCH/DELETE /api/v1/proxy/listeners/:id`,
 * and the same for `/api/v1/proxy/routes`. Lists answer `{listeners}` /
 * `{routes}`, single objects `{listener}` / `{route}`; create answers 201,
 * delete 204. Errors come from ProxyConfigService. Backends (§12):
 * `/api/v1/proxy/backends[/:id]` (`{backends}` / `{backend}`) and
 * `GET /api/v1/proxy/backends/:id/health`; errors from BackendService.
 */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { BackendService } from '../../domain/backend-service.js';
import type { ProxyConfigService } from '../../domain/proxy-config-service.js';
import {
  backendHealthSchema,
  createBackendSchema,
  createListenerSchema,
  createRouteSchema,
  deleteBackendSchema,
  deleteListenerSchema,
  deleteRouteSchema,
  getBackendSchema,
  getListenerSchema,
  getRouteSchema,
  listBackendsSchema,
  listListenersSchema,
  listRoutesSchema,
  updateBackendSchema,
  updateListenerSchema,
  updateRouteSchema,
} from '../schemas/proxy.js';

export function createProxyPlugin(deps: {
  proxyConfig: ProxyConfigService;
  backends: BackendService;
}): FastifyPluginAsyncTypebox {
  const { proxyConfig, backends } = deps;
  return async (app) => {
    app.get('/api/v1/proxy/listeners', { schema: listListenersSchema }, async () => ({
      listeners: proxyConfig.listListeners(),
    }));
    app.post('/api/v1/proxy/listeners', { schema: createListenerSchema }, async (request, reply) =>
      reply.code(201).send({ listener: await proxyConfig.createListener(request.body) }),
    );
    app.get('/api/v1/proxy/listeners/:id', { schema: getListenerSchema }, async (request) => ({
      listener: proxyConfig.getListener(request.params.id),
    }));
    app.patch('/api/v1/proxy/listeners/:id', { schema: updateListenerSchema }, async (request) => ({
      listener: await proxyConfig.updateListener(request.params.id, request.body),
    }));
    app.delete('/api/v1/proxy/listeners/:id', { schema: deleteListenerSchema }, async (request, reply) => {
      await proxyConfig.removeListener(request.params.id);
      return reply.code(204).send(null);
    });

    app.get('/api/v1/proxy/routes', { schema: listRoutesSchema }, async () => ({
      routes: proxyConfig.listRoutes(),
    }));
    app.post('/api/v1/proxy/routes', { schema: createRouteSchema }, async (request, reply) =>
      reply.code(201).send({ route: await proxyConfig.createRoute(request.body) }),
    );
    app.get('/api/v1/proxy/routes/:id', { schema: getRouteSchema }, async (request) => ({
      route: proxyConfig.getRoute(request.params.id),
    }));
    app.patch('/api/v1/proxy/routes/:id', { schema: updateRouteSchema }, async (request) => ({
      route: await proxyConfig.updateRoute(request.params.id, request.body),
    }));
    app.delete('/api/v1/proxy/routes/:id', { schema: deleteRouteSchema }, async (request, reply) => {
      await proxyConfig.removeRoute(request.params.id);
      return reply.code(204).send(null);
    });

    app.get('/api/v1/proxy/backends', { schema: listBackendsSchema }, async () => ({
      backends: backends.list(),
    }));
    app.post('/api/v1/proxy/backends', { schema: createBackendSchema }, async (request, reply) =>
      reply.code(201).send({ backend: await backends.create(request.body) }),
    );
    app.get('/api/v1/proxy/backends/:id', { schema: getBackendSchema }, async (request) => ({
      backend: backends.get(request.params.id),
    }));
    app.patch('/api/v1/proxy/backends/:id', { schema: updateBackendSchema }, async (request) => ({
      backend: await backends.update(request.params.id, request.body),
    }));
    app.delete('/api/v1/proxy/backends/:id', { schema: deleteBackendSchema }, async (request, reply) => {
      await backends.remove(request.params.id);
      return reply.code(204).send(null);
    });
    app.get('/api/v1/proxy/backends/:id/health', { schema: backendHealthSchema }, async (request) =>
      backends.health(request.params.id),
    );
  };
}
