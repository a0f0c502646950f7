/** `GET /api/v1/system/info` (operational). */
import type { FastifyInstance } from 'fastify';
import type { SystemService } from '../../domain/system-service.js';

export function registerSystemRoutes(app: FastifyInstance, deps: { system: SystemService }): void {
  app.get('/api/v1/system/info', async () => deps.system.info());
}
