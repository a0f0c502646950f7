/**
 * Request counts and latency over the last hour, in fixed memory: 10-second
 * buckets (360 of them) each holding a count, an error count, a count of
 * the requests tunnelled through an agent, and a logarithmic latency histogram (bins 15 % wide, so percentiles are within
 * about ±8 %). Counting is a few array writes per request; summing happens
 * only when someone asks. Independent of tracing: the overview counts every
 * request even when the tracer is off.
 */
import type { RequestStats, RequestStatsSource } from '../domain/traffic-types.js';

export const METRICS_BUCKET_MS = 10_000;
/** The longest window the metrics can answer for (one hour). */
export const METRICS_RETENTION_MS = 3_600_000;

const BUCKETS = METRICS_RETENTION_MS / METRICS_BUCKET_MS;
const BINS = 100;
const MIN_MS = 0.05;
const GROWTH = 1.15;
const LOG_GROWTH = Math.log(GROWTH);

export interface RequestMetricsOptions {
  now?: () => number;
}

export class RequestMetrics implements RequestStatsSource {
  readonly #now: () => number;
  /** Which 10-second period each slot currently holds (-1 = never used). */
  readonly #period = new Float64Array(BUCKETS).fill(-1);
  readonly #requests = new Uint32Array(BUCKETS);
  readonly #errors = new Uint32Array(BUCKETS);
  readonly #tunnelled = new Uint32Array(BUCKETS);
  readonly #latency = new Uint32Array(BUCKETS * BINS);

  constructor(options: RequestMetricsOptions = {}) {
    this.#now = options.now ?? Date.now;
  }

  /**
   * Counts one finished request (`error`: answered 5xx or failed;
   * `tunnelled`: sent to an agent member of a backend, through that agent).
   */
  observe(durationMs: number, error: boolean, tunnelled = false): void {
    const period = Math.floor(this.#now() / METRICS_BUCKET_MS);
    const slot = period % BUCKETS;
    if (this.#period[slot] !== period) {
      this.#period[slot] = period;
      this.#requests[slot] = 0;
      this.#errors[slot] = 0;
      this.#tunnelled[slot] = 0;
      this.#latency.fill(0, slot * BINS, slot * BINS + BINS);
    }
    this.#requests[slot]! += 1;
    if (error) this.#errors[slot]! += 1;
    if (tunnelled) this.#tunnelled[slot]! += 1;
    this.#latency[slot * BINS + binOf(durationMs)]! += 1;
  }

  /** Totals and latency percentiles over the last `windowMs` (at most one hour, 10-second granularity). */
  stats(windowMs: number): RequestStats {
    const current = Math.floor(this.#now() / METRICS_BUCKET_MS);
    const periods = Math.max(1, Math.min(BUCKETS, Math.ceil(windowMs / METRICS_BUCKET_MS)));
    const histogram = new Float64Array(BINS);
    let requests = 0;
    let errors = 0;
    let tunnelled = 0;
    for (let slot = 0; slot < BUCKETS; slot++) {
      const period = this.#period[slot]!;
      if (period < 0 || period > current || period <= current - periods) continue;
      requests += this.#requests[slot]!;
      errors += this.#errors[slot]!;
      tunnelled += this.#tunnelled[slot]!;
      for (let bin = 0; bin < BINS; bin++) histogram[bin]! += this.#latency[slot * BINS + bin]!;
    }
    return {
      requests,
      errors,
      tunnelled,
      p50Ms: quantile(histogram, requests, 0.5),
      p95Ms: quantile(histogram, requests, 0.95),
    };
  }
}

function binOf(durationMs: number): number {
  if (!(durationMs > MIN_MS)) return 0;
  const bin = Math.floor(Math.log(durationMs / MIN_MS) / LOG_GROWTH);
  return bin >= BINS ? BINS - 1 : bin;
}

function quantile(histogram: Float64Array, total: number, q: number): number | null {
  if (total === 0) return null;
  const rank = Math.max(1, Math.ceil(q * total));
  let seen = 0;
  for (let bin = 0; bin < BINS; bin++) {
    seen += histogram[bin]!;
    // The bin's geometric middle: the estimate is within half a bin (±7.5 %).
    if (seen >= rank) return Math.round(MIN_MS * GROWTH ** (bin + 0.5) * 100) / 100;
  }
  return null;
}
