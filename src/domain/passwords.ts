/**
 * Password hashing with scrypt (node:crypto), a per-user salt, and
 * constant-time checks; and the gate that bounds how many hashes run at once.
 */
import { randomBytes, scrypt, timingSafeEqual } from 'node:crypto';
import { AppError } from '../errors.js';

/** scrypt parameters. */
export interface ScryptCost {
  N: number;
  r: number;
  p: number;
}

/**
 * scrypt cost: N=2^17, r=8, p=1 (128 MiB per hash), OWASP's current
 * recommendation. Hashes made with other parameters are upgraded on the next
 * successful login.
 */
export const DEFAULT_SCRYPT: Readonly<ScryptCost> = Object.freeze({ N: 2 ** 17, r: 8, p: 1 });
const KEY_LENGTH = 32;

function derive(password: string, salt: Buffer, cost: ScryptCost): Promise<Buffer> {
  const { N, r, p } = cost;
  return new Promise((resolve, reject) => {
    scrypt(password, salt, KEY_LENGTH, { N, r, p, maxmem: 256 * N * r + 1024 * r * p }, (err, key) =>
      err ? reject(err) : resolve(key),
    );
  });
}

/** Hashes a password as `scrypt$N$r$p$salt$hash`; `cost` defaults to {@link DEFAULT_SCRYPT}. */
export async function hashPassword(password: string, cost: ScryptCost = DEFAULT_SCRYPT): Promise<string> {
  const salt = randomBytes(16);
  const key = await derive(password, salt, cost);
  return ['scrypt', cost.N, cost.r, cost.p, salt.toString('base64'), key.toString('base64')].join('$');
}

/** The parameters a stored hash was made with, or null when it is malformed. */
export function costOf(stored: string): ScryptCost | null {
  const [scheme, n, r, p, salt, hash] = stored.split('$');
  if (scheme !== 'scrypt' || !salt || !hash) return null;
  const cost = { N: Number(n), r: Number(r), p: Number(p) };
  const valid =
    Number.isInteger(cost.N) &&
    cost.N > 1 &&
    cost.N <= 2 ** 20 &&
    (cost.N & (cost.N - 1)) === 0 &&
    Number.isInteger(cost.r) &&
    cost.r >= 1 &&
    cost.r <= 32 &&
    Number.isInteger(cost.p) &&
    cost.p >= 1 &&
    cost.p <= 16;
  return valid ? cost : null;
}

/** True when `stored` was made with other parameters than `cost` (rehash it after a successful check). */
export function needsRehash(stored: string, cost: ScryptCost = DEFAULT_SCRYPT): boolean {
  const used = costOf(stored);
  return used === null || used.N !== cost.N || used.r !== cost.r || used.p !== cost.p;
}

/** Checks a password against a stored hash; a malformed hash never matches. */
export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const cost = costOf(stored);
  const [, , , , salt, hash] = stored.split('$');
  if (cost === null || !salt || !hash) return false;
  const expected = Buffer.from(hash, 'base64');
  const key = await derive(password, Buffer.from(salt, 'base64'), cost);
  return key.length === expected.length && timingSafeEqual(key, expected);
}

const dummyHashes = new Map<string, Promise<string>>();

/** A hash of a random password at `cost` (made once): checking against it costs what a real check costs. */
export function dummyPasswordHash(cost: ScryptCost = DEFAULT_SCRYPT): Promise<string> {
  const key = `${cost.N}$${cost.r}$${cost.p}`;
  let hash = dummyHashes.get(key);
  if (hash === undefined) {
    hash = hashPassword(randomBytes(16).toString('hex'), cost);
    dummyHashes.set(key, hash);
  }
  return hash;
}

/** Default bound of {@link HashingGate}: 2 hashes at once (libuv has 4 threads; files and DNS keep the rest). */
export const DEFAULT_MAX_CONCURRENT_HASHES = 2;
/** Default hashes waiting for a slot; more are refused at once. */
export const DEFAULT_MAX_WAITING_HASHES = 8;

export interface HashingGateOptions {
  maxConcurrent?: number;
  maxWaiting?: number;
}

/** Counters of a {@link HashingGate}. */
export interface HashingStats {
  active: number;
  waiting: number;
  /** The most hashes that ran at once. */
  peakActive: number;
  /** Hashes refused because the gate was full. */
  refused: number;
}

/**
 * Bounds concurrent password hashing so a login flood cannot fill libuv's
 * thread pool (file writes and DNS share it): at most `maxConcurrent` run,
 * `maxWaiting` wait in order, and anything beyond is refused at once with
 * LOGIN_THROTTLED (`details.retryAfterSeconds`), never queued without bound.
 */
export class HashingGate {
  readonly #maxConcurrent: number;
  readonly #maxWaiting: number;
  readonly #waiting: Array<() => void> = [];
  #active = 0;
  #peak = 0;
  #refused = 0;

  constructor(options: HashingGateOptions = {}) {
    this.#maxConcurrent = options.maxConcurrent ?? DEFAULT_MAX_CONCURRENT_HASHES;
    this.#maxWaiting = options.maxWaiting ?? DEFAULT_MAX_WAITING_HASHES;
  }

  /** Runs `work` when a slot is free. Throws LOGIN_THROTTLED when the gate is full. */
  async run<T>(work: () => Promise<T>): Promise<T> {
    if (this.#active >= this.#maxConcurrent) {
      if (this.#waiting.length >= this.#maxWaiting) {
        this.#refused++;
        throw new AppError('LOGIN_THROTTLED', 'too many logins at once; try again in a moment', {
          details: { retryAfterSeconds: 1 },
        });
      }
      await new Promise<void>((resolve) => this.#waiting.push(resolve));
    } else {
      this.#active++;
    }
    if (this.#active > this.#peak) this.#peak = this.#active;
    try {
      return await work();
    } finally {
      const next = this.#waiting.shift();
      // The slot passes straight to the next waiter, so `active` never dips below the bound while some wait.
      if (next) next();
      else this.#active--;
    }
  }

  stats(): HashingStats {
    return {
      active: this.#active,
      waiting: this.#waiting.length,
      peakActive: this.#peak,
      refused: this.#refused,
    };
  }
}
