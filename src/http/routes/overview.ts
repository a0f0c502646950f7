/** `GET /api/v1/overview` (operational): see OverviewService for the shape. */
import type { FastifyPluginAsync } from 'fastify';
import type { OverviewService } from '../../domain/overview-service.js';

export function createOverviewPlugin(deps: { overview: OverviewService }): FastifyPluginAsync {
  return async (app) => {
    app.get('/api/v1/overview', async () => deps.overview.overview());
  };
}
