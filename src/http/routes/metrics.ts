/**
 * `GET /metrics` (local, never relayed; an API token or a session): this
 * instance's metrics in the Prometheus text format (docs/operations.md).
 */
import type { FastifyPluginAsync } from 'fastify';
import { Type } from 'typebox';
import type { AuthService } from '../../domain/auth-service.js';
import type { TokenService } from '../../domain/token-service.js';
import type { MetricsRegistry } from '../../metrics/metrics-registry.js';
import { requireAuth } from '../auth.js';
import { errorResponses } from '../schemas/common.js';

export const METRICS_PATH = '/metrics';

export function createMetricsPlugin(deps: {
  metrics: MetricsRegistry;
  auth: AuthService;
  tokens: TokenService;
}): FastifyPluginAsync {
  return async (app) => {
    app.get(
      METRICS_PATH,
      {
        onRequest: requireAuth(deps.auth, deps.tokens),
        schema: {
          summary: 'Prometheus metrics of this instance (text exposition format 0.0.4)',
          tags: ['metrics'],
          produces: ['text/plain'],
          response: { 200: Type.String({ description: 'Prometheus text format' }), ...errorResponses },
        },
      },
      async (_request, reply) => {
        const text = await deps.metrics.text();
        return reply.header('cache-control', 'no-store').type(deps.metrics.contentType).send(text);
      },
    );
  };
}
