/**
 * Connection keepalive, free of sockets so it can be tested with fake
 * timers: every `intervalMs` a ping goes out (unless `ping` is false: the
 * side only listens, as the agent does to the control plane's pings); a tick
 * that finds nothing heard since the previous one counts as missed, and
 * `maxMissed` missed ticks in a row declare the peer dead (`onDead`, once).
 * Any frame heard counts, so a peer busy streaming is never declared dead
 * behind its own data. The relay peer runs one per connection.
 */

/** Ping every 15 s. */
export const DEFAULT_KEEPALIVE_INTERVAL_MS = 15_000;
/** Dead after 2 missed intervals (about 30 s without a word). */
export const DEFAULT_KEEPALIVE_MAX_MISSED = 2;

export interface KeepaliveOptions {
  /** Default {@link DEFAULT_KEEPALIVE_INTERVAL_MS}. */
  intervalMs?: number;
  /** Default {@link DEFAULT_KEEPALIVE_MAX_MISSED}. */
  maxMissed?: number;
  /** Send pings (default true); false only watches for silence. */
  ping?: boolean;
  /** Sends one ping carrying `nonce`. */
  sendPing(nonce: number): void;
  /** Called once when the peer is considered dead; the keepalive is stopped by then. */
  onDead(): void;
}

export class Keepalive {
  readonly #intervalMs: number;
  readonly #maxMissed: number;
  readonly #sendPing: ((nonce: number) => void) | null;
  readonly #onDead: () => void;
  #timer: ReturnType<typeof setInterval> | null = null;
  #heard = true;
  #missed = 0;
  #nonce = 0;

  constructor(options: KeepaliveOptions) {
    this.#intervalMs = options.intervalMs ?? DEFAULT_KEEPALIVE_INTERVAL_MS;
    this.#maxMissed = options.maxMissed ?? DEFAULT_KEEPALIVE_MAX_MISSED;
    this.#sendPing = options.ping === false ? null : options.sendPing;
    this.#onDead = options.onDead;
  }

  /** Starts the pings (idempotent). */
  start(): void {
    if (this.#timer !== null) return;
    this.#heard = true;
    this.#missed = 0;
    this.#timer = setInterval(() => this.#tick(), this.#intervalMs);
    this.#timer.unref?.();
  }

  /** The peer said something (a pong or any other frame). */
  heard(): void {
    this.#heard = true;
  }

  /** How many intervals in a row went by in silence. */
  get missed(): number {
    return this.#missed;
  }

  stop(): void {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
  }

  #tick(): void {
    if (this.#heard) {
      this.#missed = 0;
    } else {
      this.#missed += 1;
      if (this.#missed >= this.#maxMissed) {
        this.stop();
        this.#onDead();
        return;
      }
    }
    this.#heard = false;
    if (this.#sendPing === null) return;
    this.#nonce = (this.#nonce + 1) >>> 0;
    this.#sendPing(this.#nonce);
  }
}
