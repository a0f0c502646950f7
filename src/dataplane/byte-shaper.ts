/**
 * Bandwidth shaping by streaming backpressure: a byte bucket per key, and a
 * response-body transform and request-body transform that hold each chunk
 * until the bucket allows it. Nothing is buffered beyond the chunk in hand:
 * the writer is told to wait (`write` returns false), so the upstream socket
 * (or the client's upload) is paused meanwhile.
 *
 * Fairness: a bucket hands out reservations in arrival order and goes into
 * debt for a chunk larger than what is left, so concurrent streams of one key
 * take turns chunk by chunk, and keys never share a bucket.
 */
import type { ChunkSink, RequestBodyTransform } from './pipeline.js';
import type { KeyState } from './rate-limiter.js';

/**
 * Reserves `bytes` from the bucket in `state` (`n` tokens, `t` last refill)
 * and answers how many ms to wait before sending them (0 = now).
 */
export function reserveBytes(
  state: KeyState,
  bytes: number,
  bytesPerSecond: number,
  burst: number,
  now: number,
): number {
  const tokens = Math.min(Math.max(burst, 0), state.n + ((now - state.t) * bytesPerSecond) / 1000);
  state.t = now;
  state.n = tokens - bytes;
  return state.n >= 0 ? 0 : (-state.n * 1000) / bytesPerSecond;
}

/** A new bucket state, full. */
export function fullBucket(burst: number, now: number): KeyState {
  return { t: now, n: burst, p: 0, touched: now };
}

/** Wraps `next` so chunks reach it no faster than the bucket allows; the first `exempt` bytes pass freely. */
export function shapedSink(next: ChunkSink, reserve: (bytes: number) => number, exempt: number): ChunkSink {
  let free = exempt;
  let pending = 0;
  let ended = false;
  let aborted = false;
  let waiter: (() => void) | null = null;
  let timer: NodeJS.Timeout | null = null;
  const wake = () => {
    const w = waiter;
    waiter = null;
    w?.();
  };
  return {
    write(input) {
      let chunk = input;
      if (free > 0) {
        if (free >= chunk.length) {
          free -= chunk.length;
          return next.write(chunk);
        }
        next.write(chunk.subarray(0, free));
        chunk = chunk.subarray(free);
        free = 0;
      }
      const delay = reserve(chunk.length);
      if (delay <= 0 && pending === 0) return next.write(chunk);
      pending++;
      timer = setTimeout(() => {
        timer = null;
        pending--;
        if (aborted) return;
        const flowing = next.write(chunk);
        if (pending === 0 && ended) next.end();
        if (flowing) wake();
        else next.onDrain(wake);
      }, delay);
      return false;
    },
    end() {
      ended = true;
      if (pending === 0) next.end();
    },
    onDrain(listener) {
      if (pending === 0) next.onDrain(listener);
      else waiter = listener;
    },
    abort(err) {
      aborted = true;
      if (timer !== null) clearTimeout(timer);
      next.abort(err);
    },
  };
}

/** A request-body transform sending chunks no faster than the bucket allows. */
export function shapedUpload(reserve: (bytes: number) => number, exempt: number): RequestBodyTransform {
  return async function* shaped(source) {
    let free = exempt;
    for await (const input of source) {
      let chunk = input;
      if (free > 0) {
        if (free >= chunk.length) {
          free -= chunk.length;
          yield chunk;
          continue;
        }
        yield chunk.subarray(0, free);
        chunk = chunk.subarray(free);
        free = 0;
      }
      const delay = reserve(chunk.length);
      if (delay > 0) await new Promise((resolve) => setTimeout(resolve, delay));
      yield chunk;
    }
  };
}
