/**
 * Public proxy configuration routes (operational, DESIGN.md §4):
 * `GET/POST /api/v1/proxy/listeners`, `GET/PATCH/DELETE /api/v1/proxy/listeners/:id`,
 * and the same for `/api/v1/proxy/routes`. Lists answer `{listeners}` /
 * `{routes}`, single objects `{listener}` / `{route}`; create answers 201,
 * delete 204. Errors come from ProxyConfigService.
 */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { ProxyConfigService } from '../../domain/proxy-config-service.js';
import {
  createListenerSchema,
  createRouteSchema,
  deleteListenerSchema,
  deleteRouteSchema,
  getListenerSchema,
  getRouteSchema,
  listListenersSchema,
  listRoutesSchema,
  updateListenerSchema,
  updateRouteSchema,
} from '../schemas/proxy.js';

export function createProxyPlugin(deps: { proxyConfig: ProxyConfigService }): FastifyPluginAsyncTypebox {
  const { proxyConfig } = deps;
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
  };
}
