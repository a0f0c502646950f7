/** `GET /api/v1/overview` (operational): see OverviewService for the shape. */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { OverviewService } from '../../domain/overview-service.js';
import { overviewSchema } from '../schemas/traffic.js';

export function createOverviewPlugin(deps: { overview: OverviewService }): FastifyPluginAsyncTypebox {
  return async (app) => {
    app.get('/api/v1/overview', { schema: overviewSchema }, async () => deps.overview.overview());
  };
}
