/**
 * The control plane's side of a health stream (capability `health`,
 * docs/protocol.md, "Health streams"): tells one agent which checks to run
 * and hands their results to whoever asked.
 *
 * `watch(checks, onResult)` may be called as often as the caller likes (the
 * balancer does on every configuration change and every second): a set
 * equal to the last one sent sends nothing; the first non-empty set opens
 * the stream, later ones replace the agent's set on it. An error from the
 * agent closes the stream; the next `watch` opens a new one.
 */
import type { AppError } from '../errors.js';
import type { Logger } from '../logger.js';
import type { Envelope, EnvelopeCase, HealthCheck, HealthResult } from './envelope.js';
import type { StreamHandler } from './relay-peer.js';

export interface HealthWatchClientOptions {
  send(envelope: Envelope): void;
  nextStreamId(): number;
  logger?: Pick<Logger, 'warn'> | undefined;
}

export class HealthWatchClient implements StreamHandler {
  readonly opens: readonly EnvelopeCase[] = [];
  readonly #send: (envelope: Envelope) => void;
  readonly #nextStreamId: () => number;
  readonly #logger: HealthWatchClientOptions['logger'];
  #streamId: number | null = null;
  /** The set last sent, as compared (sorted by id); '' = none sent on the current stream. */
  #sent = '';
  #onResult: ((result: HealthResult) => void) | null = null;
  #closed = false;

  constructor(options: HealthWatchClientOptions) {
    this.#send = options.send;
    this.#nextStreamId = options.nextStreamId;
    this.#logger = options.logger;
  }

  /** Replaces the checks the agent runs (an unchanged set sends nothing); every result goes to `onResult`. */
  watch(checks: readonly HealthCheck[], onResult: (result: HealthResult) => void): void {
    this.#onResult = onResult;
    if (this.#closed) return;
    const sorted = [...checks].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    const key = JSON.stringify(sorted);
    if (key === this.#sent) return;
    if (this.#streamId === null && sorted.length === 0) return;
    this.#streamId ??= this.#nextStreamId();
    try {
      this.#send({ streamId: this.#streamId, payload: { case: 'healthWatch', value: { checks: sorted } } });
      this.#sent = key;
    } catch {
      // The connection is closing; its end closes this handler too.
    }
  }

  has(streamId: number): boolean {
    return streamId === this.#streamId;
  }

  receive(envelope: Envelope): void {
    const { payload } = envelope;
    if (payload.case === 'healthReport') {
      for (const result of payload.value.results ?? []) this.#onResult?.(result);
      return;
    }
    if (payload.case === 'error') {
      this.#logger?.warn(
        { code: payload.value.code, message: payload.value.message },
        'the agent ended its health checks',
      );
      this.#forget();
    }
  }

  streamIds(): Iterable<number> {
    return this.#streamId === null ? [] : [this.#streamId];
  }

  reset(streamId: number, _error: AppError): void {
    if (streamId !== this.#streamId) return;
    try {
      this.#send({ streamId, payload: { case: 'cancel', value: {} } });
    } catch {
      // Closing anyway.
    }
    this.#forget();
  }

  close(): void {
    this.#closed = true;
    this.#forget();
  }

  #forget(): void {
    this.#streamId = null;
    this.#sent = '';
  }
}
