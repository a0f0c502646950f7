/** `GET /api/v1/system/info` (operational). */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { SystemService } from '../../domain/system-service.js';
import { systemInfoSchema } from '../schemas/system.js';

/** The system route as a plugin for the operational scope. */
export function createSystemPlugin(deps: { system: SystemService }): FastifyPluginAsyncTypebox {
  return async (app) => {
    app.get('/api/v1/system/info', { schema: systemInfoSchema }, async () => deps.system.info());
  };
}
