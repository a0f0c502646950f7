/**
 * Login throttling per (client IP, username): `maxFailures` failures within
 * `windowMs` block that key for `blockMs`, even for the right password. The
 * table holds at most `maxKeys` keys; when full, the oldest unblocked key
 * makes room, so a flood of new keys can never evict a blocked one.
 */

export const DEFAULT_LOGIN_THROTTLE = {
  maxFailures: 5,
  windowMs: 15 * 60_000,
  blockMs: 5 * 60_000,
  maxKeys: 50_000,
} as const;

export interface LoginThrottleOptions {
  maxFailures?: number;
  windowMs?: number;
  blockMs?: number;
  maxKeys?: number;
  now?: () => number;
}

interface Entry {
  failures: number;
  windowStart: number;
  blockedUntil: number;
}

export class LoginThrottle {
  readonly #entries = new Map<string, Entry>();
  readonly #options: Required<LoginThrottleOptions>;

  constructor(options: LoginThrottleOptions = {}) {
    this.#options = { ...DEFAULT_LOGIN_THROTTLE, now: Date.now, ...options };
  }

  static key(clientIp: string, username: string): string {
    return `${clientIp}\u0000${username}`;
  }

  /** Milliseconds until `key` is unblocked; 0 when it is not blocked. */
  retryAfterMs(key: string): number {
    const entry = this.#entries.get(key);
    return entry === undefined ? 0 : Math.max(0, entry.blockedUntil - this.#options.now());
  }

  /** True while `key` is blocked. */
  isBlocked(key: string): boolean {
    const entry = this.#entries.get(key);
    return entry !== undefined && entry.blockedUntil > this.#options.now();
  }

  /** Records a failure; returns true when the key is now blocked. */
  recordFailure(key: string): boolean {
    const now = this.#options.now();
    let entry = this.#entries.get(key);
    if (entry && entry.blockedUntil <= now && now - entry.windowStart > this.#options.windowMs) {
      this.#entries.delete(key);
      entry = undefined;
    }
    if (!entry) {
      if (!this.#makeRoom(now)) return false;
      entry = { failures: 0, windowStart: now, blockedUntil: 0 };
      this.#entries.set(key, entry);
    }
    entry.failures += 1;
    if (entry.failures >= this.#options.maxFailures) {
      entry.blockedUntil = now + this.#options.blockMs;
      entry.failures = 0;
      entry.windowStart = now;
    }
    return entry.blockedUntil > now;
  }

  /** A successful login clears its key. */
  recordSuccess(key: string): void {
    this.#entries.delete(key);
  }

  get size(): number {
    return this.#entries.size;
  }

  // Evicts the oldest key that is not blocked; false when every key is blocked.
  #makeRoom(now: number): boolean {
    if (this.#entries.size < this.#options.maxKeys) return true;
    const size = this.#entries.size;
    let scanned = 0;
    for (const [key, entry] of this.#entries) {
      if (scanned++ >= size) break;
      this.#entries.delete(key);
      if (entry.blockedUntil <= now) return true;
      // Blocked keys move to the back, so the next scan finds room at once.
      this.#entries.set(key, entry);
    }
    return false;
  }
}
