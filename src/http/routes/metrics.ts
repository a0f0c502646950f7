/**
 * `GET /metrics` (local, never relayed; an API token or a session): this
 * instance's metrics in the Prometheus text format (docs/operations.md).
 */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { AuthService } from '../../domain/auth-service.js';
import type { TokenService } from '../../domain/token-service.js';
import type { MetricsRegistry } from '../../metrics/metrics-registry.js';
import { requireAuth } from '../auth.js';
import { metricsSchema } from '../schemas/system.js';

export const METRICS_PATH = '/metrics';

export function createMetricsPlugin(deps: {
  metrics: MetricsRegistry;
  auth: AuthService;
  tokens: TokenService;
}): FastifyPluginAsyncTypebox {
  return async (app) => {
    app.get(
      METRICS_PATH,
      {
        onRequest: requireAuth(deps.auth, deps.tokens),
        schema: metricsSchema,
      },
      async (_request, reply) => {
        const text = await deps.metrics.text();
        return reply.header('cache-control', 'no-store').type(deps.metrics.contentType).send(text);
      },
    );
  };
}
