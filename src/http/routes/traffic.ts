/**
 * Traffic tracer routes (operational; README "Public proxy and live traffic"):
 *
 * - `GET /api/v1/traffic/recent?limit=N` → `{events}`, newest last (N 1–1000,
 *   default every retained event);
 * - `GET/PUT /api/v1/traffic/settings` → `{enabled, level, subscribers,
 *   emittedEvents, droppedEvents}`;
 * - `GET /api/v1/traffic/stream[?after=SEQ]` → `text/event-stream`: retained
 *   events after SEQ first (also from a `Last-Event-ID` header), then live
 *   ones; heartbeats; `event: dropped` when this subscriber lost events.
 *
 * Errors: VALIDATION_FAILED for a bad `limit` or `after`.
 */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { DEFAULT_TRACE_CAPACITY, type TraceRecorder } from '../../dataplane/trace-recorder.js';
import {
  EVENT_STREAM_HEADERS,
  type TraceStreamOptions,
  TraceStreamSubscriber,
} from '../../dataplane/trace-stream.js';
import type { TrafficSettingsService } from '../../domain/traffic-settings-service.js';
import { invalid } from '../../domain/validate.js';
import {
  getTrafficSettingsSchema,
  recentTrafficSchema,
  trafficStreamSchema,
  updateTrafficSettingsSchema,
} from '../schemas/traffic.js';

export interface TrafficPluginOptions {
  settings: TrafficSettingsService;
  recorder: TraceRecorder;
  /** Heartbeat interval and queue bounds of stream subscribers (tests shorten the heartbeat). */
  stream?: TraceStreamOptions;
}

export function createTrafficPlugin(options: TrafficPluginOptions): FastifyPluginAsyncTypebox {
  const { settings, recorder } = options;
  return async (app) => {
    // Open streams would keep the server from closing: end them first.
    app.addHook('preClose', async () => {
      recorder.closeSubscribers();
    });

    app.get('/api/v1/traffic/recent', { schema: recentTrafficSchema }, async (request) => ({
      events: recorder.recent(request.query.limit ?? DEFAULT_TRACE_CAPACITY),
    }));

    app.get('/api/v1/traffic/settings', { schema: getTrafficSettingsSchema }, async () => settings.view());
    app.put('/api/v1/traffic/settings', { schema: updateTrafficSettingsSchema }, async (request) =>
      settings.update(request.body),
    );

    app.get('/api/v1/traffic/stream', { schema: trafficStreamSchema }, async (request, reply) => {
      const lastEventId = request.headers['last-event-id'];
      const after =
        request.query.after ??
        optionalCount(
          typeof lastEventId === 'string' ? lastEventId : undefined,
          'Last-Event-ID',
          0,
          Number.MAX_SAFE_INTEGER,
        );
      reply.hijack();
      const res = reply.raw;
      res.writeHead(200, EVENT_STREAM_HEADERS);
      new TraceStreamSubscriber(res, recorder, options.stream).start(after);
    });
  };
}

/** A non-negative integer from a header value, or null when absent. */
function optionalCount(value: unknown, field: string, min: number, max: number): number | null {
  if (value === undefined || value === '') return null;
  const text = Array.isArray(value) ? value[0] : value;
  if (typeof text !== 'string' || !/^\d{1,16}$/.test(text))
    throw invalid(field, `must be an integer from ${min} to ${max}`);
  const n = Number(text);
  if (n < min || n > max) throw invalid(field, `must be an integer from ${min} to ${max}`);
  return n;
}
