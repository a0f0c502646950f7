/**
 * Environment registry routes (local: always served by this instance, whatever
 * environment is selected; docs/architecture.md "Local and operational
 * routes"). Every route requires an authenticated caller (session or API
 * token).
 *
 * - `GET /api/v1/environments` → `{environments}`, the virtual Local first;
 * - `POST /api/v1/environments` → 201 `{environment}`;
 * - `GET/PATCH/DELETE /api/v1/environments/:id` → `{environment}` / 204 (GET `local` → the virtual one);
 * - `POST /api/v1/environments/:id/discover` → `{certificate, trustState, expired, hostnameMatches}`;
 * - `POST /api/v1/environments/:id/trust` `{fingerprintSha256}` → `{environment}`;
 * - `POST /api/v1/environments/:id/test` → `{ok, latencyMs, remote}`.
 *
 * Errors are the EnvironmentService's (see there).
 */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { AuthService } from '../../domain/auth-service.js';
import { type EnvironmentService, LOCAL_ENVIRONMENT } from '../../domain/environment-service.js';
import type { TokenService } from '../../domain/token-service.js';
import { requireAuth } from '../auth.js';
import {
  createEnvironmentSchema,
  deleteEnvironmentSchema,
  discoverEnvironmentSchema,
  getEnvironmentSchema,
  listEnvironmentsSchema,
  testEnvironmentSchema,
  trustEnvironmentSchema,
  updateEnvironmentSchema,
} from '../schemas/environments.js';

export interface EnvironmentRoutesDeps {
  environments: EnvironmentService;
  auth: AuthService;
  tokens: TokenService;
}

/** The registry routes as a plugin to register at the root (a local plugin of buildApp). */
export function createEnvironmentsPlugin(deps: EnvironmentRoutesDeps): FastifyPluginAsyncTypebox {
  const { environments } = deps;
  return async (app) => {
    app.addHook('onRequest', requireAuth(deps.auth, deps.tokens));

    app.get('/api/v1/environments', { schema: listEnvironmentsSchema }, async () => ({
      environments: [{ ...LOCAL_ENVIRONMENT }, ...environments.list()],
    }));
    app.post('/api/v1/environments', { schema: createEnvironmentSchema }, async (request, reply) =>
      reply.code(201).send({ environment: await environments.create(request.body) }),
    );
    app.get('/api/v1/environments/:id', { schema: getEnvironmentSchema }, async (request) => ({
      environment:
        request.params.id === LOCAL_ENVIRONMENT.id
          ? { ...LOCAL_ENVIRONMENT }
          : environments.get(request.params.id),
    }));
    app.patch('/api/v1/environments/:id', { schema: updateEnvironmentSchema }, async (request) => ({
      environment: await environments.update(request.params.id, request.body),
    }));
    app.delete('/api/v1/environments/:id', { schema: deleteEnvironmentSchema }, async (request, reply) => {
      await environments.remove(request.params.id);
      return reply.code(204).send(null);
    });
    app.post('/api/v1/environments/:id/discover', { schema: discoverEnvironmentSchema }, async (request) =>
      environments.discover(request.params.id),
    );
    app.post('/api/v1/environments/:id/trust', { schema: trustEnvironmentSchema }, async (request) => ({
      environment: await environments.trust(request.params.id, request.body),
    }));
    app.post('/api/v1/environments/:id/test', { schema: testEnvironmentSchema }, async (request) =>
      environments.test(request.params.id),
    );
  };
}
