/**
 * The live trace stream of one environment over EventSource (which cannot
 * send headers: the environment goes in `?environment=`). After a drop it
 * reconnects by itself with exponential backoff, resuming with `?after=SEQ`
 * so nothing retained is missed and nothing is shown twice.
 */
import { LOCAL } from './api';
import type { TraceEvent } from './types';

/** First retry delay; doubles up to {@link MAX_RETRY_MS}. */
export const FIRST_RETRY_MS = 1000;
export const MAX_RETRY_MS = 15_000;
/** A connection open this long counts as stable: the next drop retries fast again. */
export const STABLE_AFTER_MS = 5000;

export type StreamState =
  | { kind: 'connecting' }
  | { kind: 'live' }
  /** `attempt` counts the consecutive failures (1 for the first retry). */
  | { kind: 'retrying'; inMs: number; attempt: number; reason: string | null };

export interface TrafficStreamOptions {
  environment: string;
  /** Resume after this sequence number (from `GET /traffic/recent`). */
  after: number | null;
  onEvent(event: TraceEvent): void;
  onState(state: StreamState): void;
  /** Events the server reports this subscriber lost (slow consumer). */
  onDropped?(count: number): void;
  /**
   * Asked before each reconnect: resolves the newest retained sequence number
   * (null when none), or throws with the reason the stream is unavailable (a
   * 401 here sends the user to login). A newest sequence below the resume point
   * means the instance restarted: the stream then resumes from its beginning.
   */
  probe?(): Promise<number | null>;
}

/** The stream URL for an environment, resuming after `after` when given. */
export function streamUrl(environment: string, after: number | null): string {
  const params = new URLSearchParams();
  if (environment !== LOCAL) params.set('environment', environment);
  if (after !== null) params.set('after', String(after));
  const query = params.toString();
  return `/api/v1/traffic/stream${query ? `?${query}` : ''}`;
}

/** Next backoff delay for the `attempt`-th consecutive failure (1-based), with a little jitter. */
export function retryDelay(attempt: number, random = Math.random): number {
  const base = Math.min(MAX_RETRY_MS, FIRST_RETRY_MS * 2 ** Math.max(0, attempt - 1));
  return Math.round(base * (0.8 + 0.4 * random()));
}

export class TrafficStream {
  readonly #options: TrafficStreamOptions;
  #source: EventSource | null = null;
  #lastSeq: number | null;
  #attempt = 0;
  #retryTimer: number | undefined;
  #stableTimer: number | undefined;
  #stopped = false;

  constructor(options: TrafficStreamOptions) {
    this.#options = options;
    this.#lastSeq = options.after;
  }

  /** The last sequence number seen (the resume point). */
  get lastSeq(): number | null {
    return this.#lastSeq;
  }

  start(): void {
    this.#stopped = false;
    this.#connect();
  }

  /** Closes the connection and cancels any pending retry. */
  stop(): void {
    this.#stopped = true;
    window.clearTimeout(this.#retryTimer);
    window.clearTimeout(this.#stableTimer);
    this.#source?.close();
    this.#source = null;
  }

  #connect(): void {
    if (this.#stopped) return;
    this.#options.onState({ kind: 'connecting' });
    const source = new EventSource(streamUrl(this.#options.environment, this.#lastSeq));
    this.#source = source;
    source.onopen = () => {
      this.#options.onState({ kind: 'live' });
      window.clearTimeout(this.#stableTimer);
      this.#stableTimer = window.setTimeout(() => {
        this.#attempt = 0;
      }, STABLE_AFTER_MS);
    };
    source.onmessage = (message) => {
      let event: TraceEvent;
      try {
        event = JSON.parse(message.data) as TraceEvent;
      } catch {
        return;
      }
      if (typeof event.seq !== 'number') return;
      if (this.#lastSeq !== null && event.seq <= this.#lastSeq) return;
      this.#lastSeq = event.seq;
      this.#options.onEvent(event);
    };
    source.addEventListener('dropped', (message) => {
      try {
        const data = JSON.parse((message as MessageEvent<string>).data) as {
          dropped?: number;
          count?: number;
        };
        const count = data.dropped ?? data.count;
        if (typeof count === 'number') this.#options.onDropped?.(count);
      } catch {
        // Not JSON: nothing to report.
      }
    });
    source.onerror = () => {
      // Retries are ours (with the resume point and backoff), never EventSource's own.
      source.close();
      if (this.#source !== source || this.#stopped) return;
      this.#source = null;
      window.clearTimeout(this.#stableTimer);
      this.#retry(null);
    };
  }

  #retry(reason: string | null): void {
    this.#attempt += 1;
    const inMs = retryDelay(this.#attempt);
    this.#options.onState({ kind: 'retrying', inMs, attempt: this.#attempt, reason });
    this.#retryTimer = window.setTimeout(() => this.#reconnect(), inMs);
  }

  async #reconnect(): Promise<void> {
    if (this.#stopped) return;
    if (this.#options.probe) {
      let newest: number | null;
      try {
        newest = await this.#options.probe();
      } catch (err) {
        if (!this.#stopped) this.#retry(err instanceof Error ? err.message : String(err));
        return;
      }
      if (this.#stopped) return;
      if (this.#lastSeq !== null && (newest === null || newest < this.#lastSeq)) this.#lastSeq = 0;
    }
    this.#connect();
  }
}
