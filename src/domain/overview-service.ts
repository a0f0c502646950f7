/**
 * `GET /api/v1/overview`: what this instance's proxy is doing, in one object.
 *
 * ```
 * { requests:  { last5m, last1h },          proxied requests
 *   errors:    { last5m, last1h },          5xx answers and upstream failures
 *   tunnelled: { last5m, last1h },          requests sent to agent members of backends
 *   latencyMs: { last5m: {p50, p95}, last1h: {p50, p95} }   null without requests
 *   listeners: { running, configured },
 *   agentsConnected, replicas: [{id, uptimeSeconds, agentsConnected, …}],
 *   traceSubscribers,
 *   cache: { entries, memoryBytes, diskBytes, hits, misses, hitRatio },   response cache (§10)
 *   generatedAt }
 * ```
 */
import type { CacheStats } from './cache-types.js';
import type { ReplicaSummary } from './cluster-types.js';
import type { RequestStatsSource } from './traffic-types.js';

export const FIVE_MINUTES_MS = 5 * 60_000;
export const ONE_HOUR_MS = 60 * 60_000;

export interface Overview {
  requests: { last5m: number; last1h: number };
  errors: { last5m: number; last1h: number };
  /** Requests sent to an agent member of a backend, through that agent (README "Load balancing with backends"). */
  tunnelled: { last5m: number; last1h: number };
  latencyMs: {
    last5m: { p50: number | null; p95: number | null };
    last1h: { p50: number | null; p95: number | null };
  };
  listeners: { running: number; configured: number };
  agentsConnected: number;
  /** The control-plane replicas sharing this instance (one entry without a cluster). */
  replicas: ReplicaSummary[];
  traceSubscribers: number;
  /** The response cache's counters since start (zeros without a cache). */
  cache: Pick<CacheStats, 'entries' | 'memoryBytes' | 'diskBytes' | 'hits' | 'misses' | 'hitRatio'>;
  generatedAt: string;
}

export interface OverviewServiceOptions {
  stats: RequestStatsSource;
  listenersRunning: () => number;
  listenersConfigured: () => number;
  traceSubscribers: () => number;
  /** The response cache's statistics, when there is a cache. */
  cacheStats?: () => CacheStats;
  /** Agents connected to this instance's hub; 0 when there is no hub. */
  agentsConnected?: () => number;
  /** The replicas; default none listed. */
  replicas?: () => ReplicaSummary[];
  now?: () => number;
}

export interface OverviewService {
  overview(): Overview;
}

export function createOverviewService(options: OverviewServiceOptions): OverviewService {
  const agentsConnected = options.agentsConnected ?? (() => 0);
  const now = options.now ?? Date.now;
  return {
    overview() {
      const short = options.stats.stats(FIVE_MINUTES_MS);
      const long = options.stats.stats(ONE_HOUR_MS);
      return {
        requests: { last5m: short.requests, last1h: long.requests },
        errors: { last5m: short.errors, last1h: long.errors },
        tunnelled: { last5m: short.tunnelled, last1h: long.tunnelled },
        latencyMs: {
          last5m: { p50: short.p50Ms, p95: short.p95Ms },
          last1h: { p50: long.p50Ms, p95: long.p95Ms },
        },
        listeners: { running: options.listenersRunning(), configured: options.listenersConfigured() },
        agentsConnected: agentsConnected(),
        replicas: options.replicas?.() ?? [],
        traceSubscribers: options.traceSubscribers(),
        cache: cacheSummary(options.cacheStats?.()),
        generatedAt: new Date(now()).toISOString(),
      };
    },
  };
}

function cacheSummary(stats: CacheStats | undefined): Overview['cache'] {
  if (!stats) return { entries: 0, memoryBytes: 0, diskBytes: 0, hits: 0, misses: 0, hitRatio: 0 };
  const { entries, memoryBytes, diskBytes, hits, misses, hitRatio } = stats;
  return { entries, memoryBytes, diskBytes, hits, misses, hitRatio };
}
