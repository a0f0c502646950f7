/**
 * A live trace subscriber writing Server-Sent Events to a writable stream
 * (the HTTP response of `GET /api/v1/traffic/stream`):
 *
 * - each event: `id: SEQ` and `data: JSON`, written (and so flushed) at once;
 * - `: heartbeat` comments every `heartbeatMs` (default 15 s) so idle streams
 *   stay open through intermediaries and dead peers are noticed;
 * - a bounded queue while the socket does not drain (by default 1,000 events
 *   or 1 MiB): beyond it events are dropped, counted (here and in the
 *   recorder) and reported in order as `event: dropped` with
 *   `data: {"dropped": N, "total": T}` — the proxy is never slowed and memory
 *   never grows;
 * - the subscription ends when the stream closes (client gone, relayed
 *   request cancelled) or on {@link TraceStreamSubscriber.close}.
 */
import type { Writable } from 'node:stream';
import type { TraceRecorder, TraceSink } from './trace-recorder.js';

export const DEFAULT_HEARTBEAT_MS = 15_000;
export const DEFAULT_SUBSCRIBER_QUEUE_EVENTS = 1000;
export const DEFAULT_SUBSCRIBER_QUEUE_BYTES = 1024 * 1024;

export interface TraceStreamOptions {
  /** Heartbeat comment interval (default 15 s). */
  heartbeatMs?: number;
  /** Most events queued while the socket does not drain (default 1,000). */
  maxQueueEvents?: number;
  /** Most bytes (UTF-16 units) queued while the socket does not drain (default 1 MiB). */
  maxQueueBytes?: number;
}

/** Response headers of an event stream. */
export const EVENT_STREAM_HEADERS: Readonly<Record<string, string>> = {
  'content-type': 'text/event-stream; charset=utf-8',
  'cache-control': 'no-cache, no-transform',
  'x-accel-buffering': 'no',
  'x-content-type-options': 'nosniff',
};

export class TraceStreamSubscriber implements TraceSink {
  readonly #out: Writable;
  readonly #recorder: TraceRecorder;
  readonly #heartbeatMs: number;
  readonly #maxEvents: number;
  readonly #maxBytes: number;
  #queue: string[] = [];
  #head = 0;
  #queuedBytes = 0;
  #blocked = false;
  /** Drops not yet reported to the client. */
  #unreported = 0;
  #dropped = 0;
  #closed = false;
  #timer: NodeJS.Timeout | undefined;
  #unsubscribe: (() => void) | undefined;

  constructor(out: Writable, recorder: TraceRecorder, options: TraceStreamOptions = {}) {
    this.#out = out;
    this.#recorder = recorder;
    this.#heartbeatMs = options.heartbeatMs ?? DEFAULT_HEARTBEAT_MS;
    this.#maxEvents = options.maxQueueEvents ?? DEFAULT_SUBSCRIBER_QUEUE_EVENTS;
    this.#maxBytes = options.maxQueueBytes ?? DEFAULT_SUBSCRIBER_QUEUE_BYTES;
  }

  /** Events this subscriber lost so far. */
  get dropped(): number {
    return this.#dropped;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Writes the opening comment, replays retained events after `after` (when
   * given), then follows live events until the stream closes.
   */
  start(after: number | null): void {
    if (this.#out.destroyed || this.#out.writableEnded) {
      // The client left before the stream started: nothing to follow.
      this.#closed = true;
      return;
    }
    this.#out.on('drain', this.#onDrain);
    this.#out.once('close', this.#onGone);
    this.#out.on('error', this.#onGone);
    this.#write(': p2pstream trace stream\n\n');
    this.#unsubscribe = this.#recorder.subscribe(this, after);
    this.#timer = setInterval(this.#heartbeat, this.#heartbeatMs);
    this.#timer.unref();
  }

  push(seq: number, json: string): void {
    if (this.#closed) return;
    const frame = `id: ${seq}\ndata: ${json}\n\n`;
    if (!this.#blocked && this.#head === this.#queue.length) {
      this.#write(frame);
      return;
    }
    if (
      this.#queue.length - this.#head >= this.#maxEvents ||
      this.#queuedBytes + frame.length > this.#maxBytes
    ) {
      this.#unreported += 1;
      this.#dropped += 1;
      this.#recorder.countDropped(1);
      return;
    }
    if (this.#unreported > 0) this.#enqueue(this.#droppedFrame());
    this.#enqueue(frame);
  }

  /** Ends the stream from the server side. */
  close(): void {
    if (this.#closed) return;
    this.#cleanup();
    this.#out.end();
  }

  #write(text: string): void {
    if (!this.#out.write(text)) this.#blocked = true;
  }

  #enqueue(frame: string): void {
    this.#queue.push(frame);
    this.#queuedBytes += frame.length;
  }

  #droppedFrame(): string {
    const frame = `event: dropped\ndata: ${JSON.stringify({ dropped: this.#unreported, total: this.#dropped })}\n\n`;
    this.#unreported = 0;
    return frame;
  }

  readonly #onDrain = (): void => {
    if (this.#closed) return;
    this.#blocked = false;
    while (!this.#blocked && this.#head < this.#queue.length) {
      const frame = this.#queue[this.#head]!;
      this.#queue[this.#head] = '';
      this.#head += 1;
      this.#queuedBytes -= frame.length;
      this.#write(frame);
    }
    if (this.#head === this.#queue.length) {
      this.#queue = [];
      this.#head = 0;
      this.#queuedBytes = 0;
      if (!this.#blocked && this.#unreported > 0) this.#write(this.#droppedFrame());
    }
  };

  readonly #heartbeat = (): void => {
    // A blocked socket gets nothing more: the heartbeat would only queue up.
    if (!this.#closed && !this.#blocked) this.#write(': heartbeat\n\n');
  };

  readonly #onGone = (): void => {
    this.#cleanup();
  };

  #cleanup(): void {
    this.#closed = true;
    clearInterval(this.#timer);
    this.#unsubscribe?.();
    this.#unsubscribe = undefined;
    this.#out.off('drain', this.#onDrain);
    this.#queue = [];
    this.#head = 0;
    this.#queuedBytes = 0;
  }
}
