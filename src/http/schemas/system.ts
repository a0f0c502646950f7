/** Schemas of `GET /api/v1/system/info` and `GET /metrics`. */
import { Type } from 'typebox';
import { errorResponses } from './common.js';

export const ReplicaSummary = Type.Object({
  id: Type.String(),
  version: Type.String(),
  startedAt: Type.String(),
  uptimeSeconds: Type.Integer({ minimum: 0 }),
  agentsConnected: Type.Integer({ minimum: 0 }),
  lastHeartbeatAt: Type.String(),
  self: Type.Boolean(),
});

export const ReplicaStatus = Type.Object({
  id: Type.String(),
  store: Type.Union([Type.Literal('lowdb'), Type.Literal('postgres')]),
  databaseConnected: Type.Boolean(),
  bus: Type.Union([Type.Literal('off'), Type.Literal('connected'), Type.Literal('disconnected')]),
  acceptingAgents: Type.Boolean(),
  agentsConnected: Type.Integer({ minimum: 0 }),
});

export const SystemInfo = Type.Object({
  version: Type.String(),
  instanceId: Type.String(),
  uptimeSeconds: Type.Integer({ minimum: 0 }),
  replica: ReplicaStatus,
  replicas: Type.Array(ReplicaSummary),
});

export const systemInfoSchema = {
  summary: 'What this instance is',
  response: { 200: SystemInfo, ...errorResponses },
};

export const metricsSchema = {
  summary: 'Prometheus metrics of this instance (text exposition format 0.0.4)',
  tags: ['metrics'],
  produces: ['text/plain'],
  response: { 200: Type.String({ description: 'Prometheus text format' }), ...errorResponses },
};
