/** Schema of `GET /api/v1/system/info` (DESIGN.md §4). */
import { Type } from 'typebox';
import { errorResponses } from './common.js';

export const SystemInfo = Type.Object({
  version: Type.String(),
  instanceId: Type.String(),
  uptimeSeconds: Type.Integer({ minimum: 0 }),
});

export const systemInfoSchema = {
  summary: 'What this instance is',
  response: { 200: SystemInfo, ...errorResponses },
};
