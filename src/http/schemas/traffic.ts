/** Schemas of the traffic tracer and overview routes (README "Public proxy and live traffic"). */
import { Type } from 'typebox';
import { Stats as CacheStats } from './cache.js';
import { errorResponses, Nullable } from './common.js';
import { ReplicaSummary } from './system.js';

export const TraceLevel = Type.Enum(['basic', 'detailed', 'headers']);

const TracedHeaders = Type.Record(Type.String(), Type.Union([Type.String(), Type.Array(Type.String())]));

/** One traced request; optional fields appear at the levels named. */
export const TraceEvent = Type.Object({
  seq: Type.Integer({ description: 'Monotonic per process, from 1.' }),
  id: Type.String(),
  time: Type.String({ description: 'When the request arrived (ISO 8601).' }),
  method: Type.String(),
  host: Nullable(Type.String()),
  path: Type.String(),
  status: Nullable(Type.Integer()),
  durationMs: Type.Number(),
  bytesIn: Type.Integer(),
  bytesOut: Type.Integer(),
  listenerId: Type.String(),
  routeId: Nullable(Type.String()),
  target: Nullable(Type.String()),
  clientIp: Nullable(Type.String()),
  error: Nullable(Type.String({ description: '`no_route`, `upstream_refused`, `upstream_timeout`, …' })),
  query: Type.Optional(Nullable(Type.String({ description: '`detailed`: sensitive values redacted.' }))),
  httpVersion: Type.Optional(Type.String()),
  userAgent: Type.Optional(Nullable(Type.String())),
  upstreamMs: Type.Optional(Nullable(Type.Number())),
  tls: Type.Optional(
    Type.Object({
      version: Nullable(Type.String()),
      cipher: Nullable(Type.String()),
      sni: Nullable(Type.String()),
      alpn: Nullable(Type.String()),
    }),
  ),
  requestHeaders: Type.Optional(TracedHeaders),
  responseHeaders: Type.Optional(TracedHeaders),
  policy: Type.Optional(
    Type.Array(Type.Object({ stage: Type.String(), rule: Type.String(), action: Type.String() }), {
      description: 'The decisions of the policy stages (docs/pipeline.md).',
    }),
  ),
  cache: Type.Optional(Type.String({ description: 'HIT, MISS, STALE, REVALIDATED, BYPASS or EXPIRED.' })),
  backend: Type.Optional(
    Type.Object(
      {
        backendId: Type.String(),
        memberId: Nullable(Type.String()),
        agentId: Type.Optional(Type.String({ description: 'An agent member: the agent that carried it.' })),
        agentError: Type.Optional(
          Type.Object(
            { code: Type.String(), cause: Nullable(Type.String()) },
            {
              description:
                'An agent member the agent could not reach: its error code (TARGET_NOT_ALLOWED, ' +
                'ENVIRONMENT_UNREACHABLE, ENVIRONMENT_TIMEOUT…) and the system or TLS error behind it.',
            },
          ),
        ),
      },
      { description: 'A `backend` target: the backend and the member that served (null: none usable).' },
    ),
  ),
});

export const TrafficSettings = Type.Object({
  enabled: Type.Boolean(),
  level: TraceLevel,
  subscribers: Type.Integer(),
  emittedEvents: Type.Integer(),
  droppedEvents: Type.Integer(),
});

const Latency = Type.Object({ p50: Nullable(Type.Number()), p95: Nullable(Type.Number()) });
const Windowed = Type.Object({ last5m: Type.Integer(), last1h: Type.Integer() });

export const Overview = Type.Object({
  requests: Windowed,
  errors: Windowed,
  tunnelled: Type.Object(Windowed.properties, {
    description: 'Requests sent to an agent member of a backend, through that agent.',
  }),
  latencyMs: Type.Object({ last5m: Latency, last1h: Latency }),
  listeners: Type.Object({ running: Type.Integer(), configured: Type.Integer() }),
  agentsConnected: Type.Integer(),
  replicas: Type.Array(ReplicaSummary, {
    description: 'The control-plane replicas (one without a cluster).',
  }),
  traceSubscribers: Type.Integer(),
  cache: Type.Pick(CacheStats, ['entries', 'memoryBytes', 'diskBytes', 'hits', 'misses', 'hitRatio'], {
    description: "The response cache's counters since start (zeros without a cache).",
  }),
  generatedAt: Type.String(),
});

export const recentTrafficSchema = {
  summary: 'Retained trace events, newest last',
  querystring: Type.Object({
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, description: 'Default: all retained.' })),
  }),
  response: { 200: Type.Object({ events: Type.Array(TraceEvent) }), ...errorResponses },
};
export const getTrafficSettingsSchema = {
  summary: 'Tracer settings and counters',
  response: { 200: TrafficSettings, ...errorResponses },
};
export const updateTrafficSettingsSchema = {
  summary: 'Turn tracing on or off, or change its level',
  body: Type.Object(
    {
      enabled: Type.Optional(Type.Boolean()),
      level: Type.Optional(TraceLevel),
      subscribers: Type.Optional(Type.Unknown({ description: 'Read-only; ignored.' })),
      emittedEvents: Type.Optional(Type.Unknown({ description: 'Read-only; ignored.' })),
      droppedEvents: Type.Optional(Type.Unknown({ description: 'Read-only; ignored.' })),
    },
    { additionalProperties: false },
  ),
  response: { 200: TrafficSettings, ...errorResponses },
};
export const trafficStreamSchema = {
  summary: 'Live trace events (text/event-stream)',
  description:
    '`data:` one JSON trace event per message, `id:` its seq; a heartbeat comment at least every 15 s; ' +
    '`event: dropped` when this subscriber lost events. `?after=SEQ` (or Last-Event-ID) replays retained events first.',
  produces: ['text/event-stream'],
  querystring: Type.Object({
    after: Type.Optional(
      Type.Integer({
        minimum: 0,
        maximum: Number.MAX_SAFE_INTEGER,
        description: 'Replay retained events after this seq.',
      }),
    ),
  }),
  response: { 200: Type.String({ description: 'An event stream' }), ...errorResponses },
};
export const overviewSchema = {
  summary: "What this instance's proxy is doing",
  response: { 200: Overview, ...errorResponses },
};
