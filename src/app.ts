/**
 * buildApp(deps, options) → a FastifyInstance with every route, never
 * listening: tests inject or listen on port 0; the server listens.
 *
 * Routes come in two scopes (docs/architecture.md, "The two data flows"):
 * - local: setup, auth, the environment registry, the hub, the console —
 *   always served by this instance;
 * - operational: authenticated, and served locally or relayed to the
 *   environment the caller selects (`X-P2PStream-Environment` or
 *   `?environment=`).
 */

import Fastify, {
  type FastifyInstance,
  type FastifyPluginAsync,
  type FastifyRequest,
  LogController,
  type RouteOptions,
} from 'fastify';
import { DEFAULT_BODY_LIMIT_BYTES } from './config.js';
import type { AuthService } from './domain/auth-service.js';
import { LOCAL_ENVIRONMENT_ID } from './domain/environment-service.js';
import type { SystemService } from './domain/system-service.js';
import type { TokenService } from './domain/token-service.js';
import { AppError } from './errors.js';
import { requireAuth } from './http/auth.js';
import { normalizeHttpError, registerErrorHandling, sendError } from './http/errors.js';
import { registerApiDescription } from './http/routes/api-description.js';
import { createMetricsPlugin } from './http/routes/metrics.js';
import { createAuthPlugin } from './http/routes/setup.js';
import { createSystemPlugin } from './http/routes/system.js';
import { createTokensPlugin } from './http/routes/tokens.js';
import { withEnvironmentSelector } from './http/schemas/common.js';
import { slowClientServerOptions } from './http/slow-clients.js';
import {
  API_PREFIX,
  isRelayableUnknownPath,
  localApiSegments,
  UNKNOWN_ROUTE_METHODS,
  unknownApiRouteSchema,
} from './http/unknown-api-paths.js';
import { createValidatorCompiler } from './http/validation.js';
import type { Logger } from './logger.js';
import { loginMetrics } from './metrics/instance-metrics.js';
import type { MetricsRegistry } from './metrics/metrics-registry.js';

export const ENVIRONMENT_HEADER = 'x-p2pstream-environment';

/** Relays an operational request to a remote environment (docs/architecture.md). */
export interface EnvironmentRelay {
  /**
   * Called after local authentication for a request whose selected environment
   * is not `local`. Sends the response itself (it hijacks the reply), or throws
   * an AppError (ENVIRONMENT_NOT_FOUND, ENVIRONMENT_DISABLED, …) before anything
   * has been sent.
   */
  relay(request: FastifyRequest, reply: import('fastify').FastifyReply, environmentId: string): Promise<void>;
}

export interface AppDeps {
  logger: Logger;
  auth: AuthService;
  tokens: TokenService;
  system: SystemService;
  environmentRelay?: EnvironmentRelay;
  /** The instance's metrics; with them, `GET /metrics` serves them and logins are counted. */
  metrics?: MetricsRegistry;
  /** Plugins registered at the root: local routes (environments, hub, console). */
  localPlugins?: FastifyPluginAsync[];
  /** Plugins whose routes are operational (authenticated, environment-scoped). */
  operationalPlugins?: FastifyPluginAsync[];
}

export interface AppOptions {
  https?: { key: string | Buffer; cert: string | Buffer };
  bodyLimitBytes?: number;
  /** TLS handshake, then request head, each within this or the connection is cut; default 10 s. */
  headersTimeoutMs?: number;
  /** Sees every route as it is added (tests check that each has a schema). */
  onRoute?: (route: RouteOptions) => void;
}

/** The environment a request selects: header first, then query; `local` when absent. */
export function selectedEnvironment(request: FastifyRequest): string {
  const header = request.headers[ENVIRONMENT_HEADER];
  const fromHeader = Array.isArray(header) ? header[0] : header;
  if (fromHeader !== undefined && fromHeader.trim() !== '') return fromHeader.trim();
  const query = request.query as Record<string, unknown> | undefined;
  const fromQuery = query?.environment;
  if (typeof fromQuery === 'string' && fromQuery.trim() !== '') return fromQuery.trim();
  return LOCAL_ENVIRONMENT_ID;
}

export async function buildApp(deps: AppDeps, options: AppOptions = {}): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: deps.logger,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: options.bodyLimitBytes ?? DEFAULT_BODY_LIMIT_BYTES,
    ...(options.https
      ? { https: { ...options.https, ...slowClientServerOptions(options.headersTimeoutMs) } }
      : {}),
    forceCloseConnections: 'idle',
    routerOptions: { maxParamLength: 256 },
    // Routing errors (over-long or malformed URL parameters) answer in the one error shape too.
    frameworkErrors: (err, _request, reply) => sendError(reply, normalizeHttpError(err)),
    return503OnClosing: true,
  }) as unknown as FastifyInstance;

  const { onRoute } = options;
  if (onRoute) app.addHook('onRoute', (route) => onRoute(route));
  // Which API paths are this instance's own local routes (never relayed; docs/architecture.md,
  // "Local and operational routes").
  const apiRoutes = { all: new Set<string>(), operational: new Set<string>() };
  app.addHook('onRoute', (route) => {
    apiRoutes.all.add(route.url);
  });
  // Route schemas (src/http/schemas/) validate input here and serialize replies.
  app.setValidatorCompiler(createValidatorCompiler());
  app.decorateRequest('principal', null);
  registerErrorHandling(app);
  // API answers may carry a secret (a new token, a session cookie): no cache keeps any of them.
  app.addHook('onSend', async (request, reply, payload) => {
    if (request.url.startsWith('/api/') && !reply.hasHeader('cache-control'))
      reply.header('cache-control', 'no-store');
    return payload;
  });
  // One line per request; a relayed one also names its environment (src/http/environment-relay.ts).
  app.decorateRequest('relayedTo', null);
  app.addHook('onResponse', async (request, reply) => {
    const route = request.routeOptions.url ?? 'unmatched';
    const ms = Math.round(reply.elapsedTime);
    const environmentId = request.relayedTo;
    if (environmentId === null) {
      request.log.info({ method: request.method, route, status: reply.statusCode, ms }, 'request');
    } else {
      request.log.info(
        { environmentId, method: request.method, route, status: reply.statusCode, outcome: 'complete', ms },
        'relayed request',
      );
    }
  });

  // Before any route: the OpenAPI document is built from every route registered after it.
  await registerApiDescription(app);
  await app.register(
    createAuthPlugin({ ...deps, ...(deps.metrics ? { onLogin: loginMetrics(deps.metrics) } : {}) }),
  );
  if (deps.metrics) await app.register(createMetricsPlugin({ ...deps, metrics: deps.metrics }));
  for (const plugin of deps.localPlugins ?? []) await app.register(plugin);

  await app.register(async (scope) => {
    // Every operational route takes the environment selector; its schema says so.
    scope.addHook('onRoute', (route) => {
      route.schema = withEnvironmentSelector(route.schema);
      apiRoutes.operational.add(route.url);
    });
    scope.addHook('onRequest', requireAuth(deps.auth, deps.tokens));
    scope.addHook('onRequest', async (request, reply) => {
      const environmentId = selectedEnvironment(request);
      if (environmentId === LOCAL_ENVIRONMENT_ID) return;
      if (!deps.environmentRelay) throw new AppError('ENVIRONMENT_NOT_FOUND', 'no such environment');
      await deps.environmentRelay.relay(request, reply, environmentId);
      return reply;
    });
    await scope.register(createTokensPlugin(deps));
    await scope.register(createSystemPlugin(deps));
    for (const plugin of deps.operationalPlugins ?? []) await scope.register(plugin);
  });

  // Version skew: an API path this instance does not know is relayed when an environment is
  // selected (a newer remote's views stay reachable from an older control plane), unless it lies
  // under a local route's first segment (setup, auth, environments, the hub…). Without an
  // environment, or under a local segment, it is the 404 it always was, before any authentication.
  let localSegments: ReadonlySet<string> | null = null;
  const authenticate = requireAuth(deps.auth, deps.tokens);
  const notFound = () => new AppError('NOT_FOUND', 'no such route');
  for (const { method, body } of UNKNOWN_ROUTE_METHODS) {
    app.route({
      method: [...method],
      url: `${API_PREFIX}*`,
      schema: unknownApiRouteSchema(body),
      onRequest: async (request, reply) => {
        const environmentId = selectedEnvironment(request);
        if (environmentId === LOCAL_ENVIRONMENT_ID || !deps.environmentRelay) throw notFound();
        localSegments ??= localApiSegments(apiRoutes.all, apiRoutes.operational);
        if (!isRelayableUnknownPath(request.raw.url ?? request.url, localSegments)) throw notFound();
        await authenticate(request, reply);
        await deps.environmentRelay.relay(request, reply, environmentId);
        return reply;
      },
      handler: async () => {
        throw notFound();
      },
    });
  }

  return app;
}
