/**
 * Reconnection delays: exponential from `initialMs` to `maxMs` with jitter
 * (each delay drawn in [base/2, base]), reset after a stable connection.
 */

/** First retry after about 1 s. */
export const DEFAULT_BACKOFF_INITIAL_MS = 1000;
/** Never wait more than 30 s. */
export const DEFAULT_BACKOFF_MAX_MS = 30_000;

export interface BackoffOptions {
  /** Default {@link DEFAULT_BACKOFF_INITIAL_MS}. */
  initialMs?: number;
  /** Default {@link DEFAULT_BACKOFF_MAX_MS}. */
  maxMs?: number;
  /** A number in [0, 1); default Math.random. */
  random?: () => number;
}

export class Backoff {
  readonly #initialMs: number;
  readonly #maxMs: number;
  readonly #random: () => number;
  #attempt = 0;

  constructor(options: BackoffOptions = {}) {
    this.#initialMs = options.initialMs ?? DEFAULT_BACKOFF_INITIAL_MS;
    this.#maxMs = Math.max(options.maxMs ?? DEFAULT_BACKOFF_MAX_MS, this.#initialMs);
    this.#random = options.random ?? Math.random;
  }

  /** The delay before the next attempt; each call doubles the base up to the maximum. */
  next(): number {
    const base = Math.min(this.#maxMs, this.#initialMs * 2 ** Math.min(this.#attempt, 30));
    this.#attempt += 1;
    return Math.round(base / 2 + (this.#random() * base) / 2);
  }

  /** Back to the initial delay (after a connection that stayed up). */
  reset(): void {
    this.#attempt = 0;
  }

  /** Failed attempts since the last reset. */
  get attempts(): number {
    return this.#attempt;
  }
}
