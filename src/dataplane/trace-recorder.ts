/**
 * The traffic tracer: one event per proxied request, numbered, kept in a ring
 * of the most recent {@link DEFAULT_TRACE_CAPACITY} and handed to live
 * subscribers. Recording is cheap on purpose: nothing at all when tracing is
 * off, one small object and a ring write when on, and one JSON serialisation
 * per event shared by all subscribers — only when someone is subscribed.
 * Subscribers never push back: a sink that cannot keep up drops events itself
 * and reports them through {@link TraceRecorder.countDropped}.
 */
import { randomUUID } from 'node:crypto';
import type { CacheResult } from '../domain/cache-types.js';
import type {
  PolicyDecision,
  TraceBackend,
  TraceCounters,
  TraceErrorKind,
  TraceEvent,
  TraceLevel,
  TraceTls,
} from '../domain/traffic-types.js';
import { redactHeaderList, redactQuery } from './redact.js';

/** Events kept for `GET /traffic/recent` and `?after=` replay. */
export const DEFAULT_TRACE_CAPACITY = 1000;

/** What the proxy knows about a finished request; the recorder turns it into an event. */
export interface TraceInput {
  /**
   * The request id when the proxy already assigned one (a template or a
   * stage showed it), else null: the recorder then makes one when the event
   * is first read or streamed, so a request nobody looks at costs no UUID.
   */
  readonly assignedId?: string | null;
  /** Epoch ms the request arrived. */
  startedAt: number;
  method: string;
  host: string | null;
  path: string;
  /** Raw query string without `?`, '' when none. */
  query: string;
  status: number | null;
  durationMs: number;
  bytesIn: number;
  bytesOut: number;
  listenerId: string;
  routeId: string | null;
  target: string | null;
  clientIp: string | null;
  error: TraceErrorKind | null;
  httpVersion: string;
  userAgent: string | null;
  upstreamMs: number | null;
  /** Request headers as received (Node's flat rawHeaders). */
  requestHeaders: readonly string[];
  /** Response headers as sent (flat list), or null when none were. */
  responseHeaders: readonly (string | Buffer)[] | null;
  /** TLS parameters on https listeners (filled when the level is above `basic`), else null. */
  tls?: TraceTls | null;
  /** Decisions of the pipeline's stages, or null when none decided anything. */
  policy?: readonly PolicyDecision[] | null;
  /** The response cache's part, when it took one. */
  cache?: CacheResult | null;
  /** The backend and member of a `backend` target, and the agent of an agent member. */
  backend?: TraceBackend | null;
}

/** A live subscriber: receives each event's sequence number and JSON. Must never block. */
export interface TraceSink {
  push(seq: number, json: string): void;
  /** Ends the subscription from the server side (shutdown). */
  close(): void;
}

export interface TraceRecorderOptions {
  enabled?: boolean;
  level?: TraceLevel;
  capacity?: number;
  now?: () => number;
}

export class TraceRecorder {
  readonly #capacity: number;
  readonly #ring: (TraceEvent | undefined)[];
  readonly #subscribers = new Set<TraceSink>();
  #enabled: boolean;
  #level: TraceLevel;
  #seq = 0;
  #dropped = 0;

  constructor(options: TraceRecorderOptions = {}) {
    this.#capacity = options.capacity ?? DEFAULT_TRACE_CAPACITY;
    this.#ring = new Array(this.#capacity);
    this.#enabled = options.enabled ?? true;
    this.#level = options.level ?? 'basic';
  }

  /** Applies tracer settings (live). */
  configure(settings: { enabled: boolean; level: TraceLevel }): void {
    this.#enabled = settings.enabled;
    this.#level = settings.level;
  }

  get enabled(): boolean {
    return this.#enabled;
  }

  get level(): TraceLevel {
    return this.#level;
  }

  /** Sequence number of the newest event (0 before the first). */
  get latestSeq(): number {
    return this.#seq;
  }

  get subscriberCount(): number {
    return this.#subscribers.size;
  }

  counters(): TraceCounters {
    return { subscribers: this.#subscribers.size, emittedEvents: this.#seq, droppedEvents: this.#dropped };
  }

  /** Records one request (no-op when tracing is off). */
  record(input: TraceInput): void {
    if (!this.#enabled) return;
    const seq = ++this.#seq;
    const event = buildEvent(seq, input, this.#level);
    this.#ring[(seq - 1) % this.#capacity] = event;
    if (this.#subscribers.size === 0) return;
    const json = JSON.stringify(withId(event));
    for (const sink of this.#subscribers) sink.push(seq, json);
  }

  /** Up to `limit` retained events, oldest first (newest last). */
  recent(limit = this.#capacity): TraceEvent[] {
    return this.#since(Math.max(0, this.#seq - Math.max(0, Math.min(limit, this.#capacity))));
  }

  /**
   * Subscribes a sink. With `after`, retained events with a greater sequence
   * number are pushed first (replay), then live ones, with nothing missed in
   * between. Returns the function that unsubscribes.
   */
  subscribe(sink: TraceSink, after: number | null = null): () => void {
    if (after !== null) {
      for (const event of this.#since(after)) sink.push(event.seq, JSON.stringify(event));
    }
    this.#subscribers.add(sink);
    return () => {
      this.#subscribers.delete(sink);
    };
  }

  /** Called by sinks for events they had to drop. */
  countDropped(count: number): void {
    this.#dropped += count;
  }

  /** Ends every live subscription (shutdown). */
  closeSubscribers(): void {
    for (const sink of [...this.#subscribers]) sink.close();
    this.#subscribers.clear();
  }

  #since(after: number): TraceEvent[] {
    const oldest = Math.max(1, this.#seq - this.#capacity + 1);
    const events: TraceEvent[] = [];
    for (let seq = Math.max(oldest, after + 1); seq <= this.#seq; seq++) {
      const event = this.#ring[(seq - 1) % this.#capacity];
      if (event) events.push(withId(event));
    }
    return events;
  }
}

/** The event with its id, made now if it has none yet (see {@link TraceInput.assignedId}). */
function withId(event: TraceEvent): TraceEvent {
  if (event.id === '') event.id = randomUUID();
  return event;
}

function buildEvent(seq: number, input: TraceInput, level: TraceLevel): TraceEvent {
  const event: TraceEvent = {
    seq,
    id: input.assignedId ?? '',
    time: isoTime(input.startedAt),
    method: input.method,
    host: input.host,
    path: input.path,
    status: input.status,
    durationMs: Math.round(input.durationMs * 1000) / 1000,
    bytesIn: input.bytesIn,
    bytesOut: input.bytesOut,
    listenerId: input.listenerId,
    routeId: input.routeId,
    target: input.target,
    clientIp: input.clientIp,
    error: input.error,
  };
  if (input.policy) event.policy = input.policy.slice();
  if (input.cache) event.cache = input.cache;
  if (input.backend) event.backend = { ...input.backend };
  if (level === 'basic') return event;
  event.query = input.query === '' ? null : redactQuery(input.query);
  event.httpVersion = input.httpVersion;
  event.userAgent = input.userAgent;
  event.upstreamMs = input.upstreamMs === null ? null : Math.round(input.upstreamMs * 1000) / 1000;
  if (input.tls) event.tls = input.tls;
  if (level === 'headers') {
    event.requestHeaders = redactHeaderList(input.requestHeaders);
    event.responseHeaders = input.responseHeaders === null ? {} : redactHeaderList(input.responseHeaders);
  }
  return event;
}

// The ISO text of the second last formatted: events of one second share it.
let cachedSecond = Number.NaN;
let cachedPrefix = '';
const LAST_ISO_MS = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z

/**
 * `new Date(ms).toISOString()` for a whole epoch millisecond, at a fraction
 * of its cost: the text up to the second is kept and only the milliseconds
 * are appended (building a Date and formatting it took about 2 µs of every
 * traced request; this takes a few ns).
 */
export function isoTime(ms: number): string {
  if (!Number.isInteger(ms) || ms < 0 || ms > LAST_ISO_MS) return new Date(ms).toISOString();
  const second = Math.floor(ms / 1000);
  if (second !== cachedSecond) {
    cachedSecond = second;
    cachedPrefix = new Date(second * 1000).toISOString().slice(0, 20);
  }
  const rest = ms - second * 1000;
  return `${cachedPrefix}${rest < 10 ? '00' : rest < 100 ? '0' : ''}${rest}Z`;
}
