/**
 * Rate-limit arithmetic and the bounded store of per-key state.
 *
 * Algorithms (times in ms):
 * - `fixed_window`: at most `limit` requests per aligned window of `windowSeconds`.
 * - `sliding_window`: the sliding-window counter: the current window's count
 *   plus the previous window's, weighted by how much of it still overlaps the
 *   last `windowSeconds`; smooths the burst a fixed window allows at its edges.
 * - `token_bucket`: `burst` tokens, refilled at `ratePerSecond`; one per request.
 *
 * Memory: {@link KeyStore} holds at most `maxKeys` entries (default
 * {@link DEFAULT_MAX_RATE_LIMIT_KEYS}); when full, the keys not seen for the
 * longest are dropped (such a key starts afresh if it comes back). Each entry is
 * one small object and its key string, so the store's memory is bounded by
 * `maxKeys` × (key length + ~100 bytes) whatever the number of distinct keys.
 */

export const DEFAULT_MAX_RATE_LIMIT_KEYS = 100_000;

/** The state of one key under one rule. */
export interface KeyState {
  /** fixed/sliding: start of the current window; bucket: time of the last refill. */
  t: number;
  /** fixed/sliding: requests in the current window; bucket: tokens left. */
  n: number;
  /** sliding: requests in the previous window. */
  p: number;
  /** When the entry last moved to the young end. */
  touched: number;
}

/**
 * A capped map of key states in two generations: new and refreshed keys go
 * to the young map; when it holds half the cap, the old generation (keys not
 * seen since the previous turn) is dropped whole and the young one becomes
 * old. Every operation is O(1), and at most `maxKeys` entries are ever held.
 */
export class KeyStore {
  #young = new Map<string, KeyState>();
  #old = new Map<string, KeyState>();
  readonly #half: number;
  #evicted = 0;

  constructor(maxKeys = DEFAULT_MAX_RATE_LIMIT_KEYS) {
    this.#half = Math.max(1, Math.floor(maxKeys / 2));
  }

  get size(): number {
    return this.#young.size + this.#old.size;
  }

  get maxKeys(): number {
    return this.#half * 2;
  }

  /** Keys dropped to stay under the cap since start. */
  get evicted(): number {
    return this.#evicted;
  }

  /** The state of `key`, or null. */
  peek(key: string): KeyState | null {
    return this.#young.get(key) ?? this.#old.get(key) ?? null;
  }

  /** The state of `key`, created by `init` when absent (dropping the old generation when full). */
  get(key: string, now: number, init: () => KeyState): KeyState {
    const young = this.#young.get(key);
    if (young !== undefined) return young;
    let state = this.#old.get(key);
    if (state !== undefined) this.#old.delete(key);
    else {
      state = init();
      state.touched = now;
    }
    if (this.#young.size >= this.#half) {
      this.#evicted += this.#old.size;
      this.#old = this.#young;
      this.#young = new Map();
    }
    this.#young.set(key, state);
    return state;
  }

  /** Drops every key whose name starts with `prefix` (a rule that changed or went away). */
  dropPrefix(prefix: string): void {
    for (const map of [this.#young, this.#old])
      for (const key of map.keys()) if (key.startsWith(prefix)) map.delete(key);
  }

  clear(): void {
    this.#young.clear();
    this.#old.clear();
  }
}

/** The limit of one rule, in the units its algorithm uses. */
export interface LimitSpec {
  readonly algorithm: 'fixed_window' | 'sliding_window' | 'token_bucket';
  /** windows: requests per window; bucket: burst. */
  readonly limit: number;
  /** windows: window length; bucket: time to refill the whole burst. */
  readonly windowMs: number;
  /** bucket: tokens per ms. */
  readonly ratePerMs: number;
}

/** What a rule says about one request. */
export interface LimitVerdict {
  allowed: boolean;
  /** Requests (or tokens) left after this one. */
  remaining: number;
  /** Seconds until the quota is back (RateLimit `t`), ≥ 0. */
  resetSeconds: number;
  /** Seconds to wait before retrying (refused requests), ≥ 1. */
  retryAfterSeconds: number;
}

function fresh(): KeyState {
  return { t: 0, n: 0, p: 0, touched: 0 };
}

/**
 * Counts one request for `key` (or, with `dryRun`, only says what would
 * happen) and answers the verdict.
 */
export function consume(
  store: KeyStore,
  key: string,
  spec: LimitSpec,
  now: number,
  dryRun = false,
): LimitVerdict {
  const state = dryRun
    ? { ...(store.peek(key) ?? initial(spec, now)) }
    : store.get(key, now, () => initial(spec, now));
  switch (spec.algorithm) {
    case 'fixed_window':
      return fixedWindow(state, spec, now, dryRun);
    case 'sliding_window':
      return slidingWindow(state, spec, now, dryRun);
    case 'token_bucket':
      return tokenBucket(state, spec, now, dryRun);
  }
}

function initial(spec: LimitSpec, now: number): KeyState {
  const state = fresh();
  if (spec.algorithm === 'token_bucket') {
    state.t = now;
    state.n = spec.limit;
  } else state.t = Math.floor(now / spec.windowMs) * spec.windowMs;
  return state;
}

function fixedWindow(state: KeyState, spec: LimitSpec, now: number, dryRun: boolean): LimitVerdict {
  const start = Math.floor(now / spec.windowMs) * spec.windowMs;
  if (state.t !== start) {
    state.t = start;
    state.n = 0;
  }
  const reset = Math.max(0, Math.ceil((start + spec.windowMs - now) / 1000));
  if (state.n >= spec.limit) {
    return { allowed: false, remaining: 0, resetSeconds: reset, retryAfterSeconds: Math.max(1, reset) };
  }
  if (!dryRun) state.n++;
  const used = dryRun ? state.n + 1 : state.n;
  return { allowed: true, remaining: spec.limit - used, resetSeconds: reset, retryAfterSeconds: 0 };
}

function slidingWindow(state: KeyState, spec: LimitSpec, now: number, dryRun: boolean): LimitVerdict {
  const w = spec.windowMs;
  const start = Math.floor(now / w) * w;
  if (state.t !== start) {
    state.p = state.t === start - w ? state.n : 0;
    state.n = 0;
    state.t = start;
  }
  const overlap = 1 - (now - start) / w;
  const estimate = state.p * overlap + state.n;
  if (estimate + 1 > spec.limit) {
    // Time until the weighted previous window has shrunk enough for one more request.
    let waitMs: number;
    if (state.n + 1 > spec.limit || state.p === 0) waitMs = start + w - now;
    else waitMs = Math.max(0, (overlap - (spec.limit - 1 - state.n) / state.p) * w);
    const retry = Math.max(1, Math.ceil(waitMs / 1000));
    return { allowed: false, remaining: 0, resetSeconds: retry, retryAfterSeconds: retry };
  }
  if (!dryRun) state.n++;
  const remaining = Math.max(0, Math.floor(spec.limit - estimate - 1));
  return {
    allowed: true,
    remaining,
    resetSeconds: Math.max(0, Math.ceil((start + w - now) / 1000)),
    retryAfterSeconds: 0,
  };
}

function tokenBucket(state: KeyState, spec: LimitSpec, now: number, dryRun: boolean): LimitVerdict {
  const tokens = Math.min(spec.limit, state.n + (now - state.t) * spec.ratePerMs);
  state.t = now;
  state.n = tokens;
  const full = Math.max(0, Math.ceil((spec.limit - tokens) / spec.ratePerMs / 1000));
  if (tokens < 1) {
    const retry = Math.max(1, Math.ceil((1 - tokens) / spec.ratePerMs / 1000));
    return { allowed: false, remaining: 0, resetSeconds: full, retryAfterSeconds: retry };
  }
  if (!dryRun) state.n = tokens - 1;
  return { allowed: true, remaining: Math.floor(tokens - 1), resetSeconds: full, retryAfterSeconds: 0 };
}
