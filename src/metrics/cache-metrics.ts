/**
 * The response cache's metrics (docs/operations.md "Metrics", docs/pipeline.md
 * "The cache stage"), read from its counters when scraped:
 *
 * | metric | labels |
 * | --- | --- |
 * | `p2pstream_cache_answers_total` | result (`hit`, `stale`, `revalidated`, `miss`, `expired`, `bypass`) |
 * | `p2pstream_cache_entries` | — |
 * | `p2pstream_cache_bytes` | tier (`memory`, `disk`) |
 * | `p2pstream_cache_evictions_total` | — |
 */
import type { CacheStats } from '../domain/cache-types.js';
import type { MetricsRegistry } from './metrics-registry.js';

/** Registers the cache metrics; `stats` is read at each scrape. */
export function registerCacheMetrics(metrics: MetricsRegistry, stats: () => CacheStats): void {
  metrics.counter({
    name: 'p2pstream_cache_answers_total',
    help: 'Public requests the response cache took part in, by result (the trace event cache value).',
    labelNames: ['result'],
    collect() {
      const s = stats();
      this.reset();
      this.inc({ result: 'hit' }, s.hits - s.stale - s.revalidated);
      this.inc({ result: 'stale' }, s.stale);
      this.inc({ result: 'revalidated' }, s.revalidated);
      this.inc({ result: 'miss' }, s.misses - s.expired);
      this.inc({ result: 'expired' }, s.expired);
      this.inc({ result: 'bypass' }, s.bypasses);
    },
  });
  metrics.gauge({
    name: 'p2pstream_cache_entries',
    help: 'Responses stored in the cache.',
    collect() {
      this.set(stats().entries);
    },
  });
  metrics.gauge({
    name: 'p2pstream_cache_bytes',
    help: 'Bytes the cache holds: memory (hot bodies and index), disk (bodies and metadata).',
    labelNames: ['tier'],
    collect() {
      const s = stats();
      this.set({ tier: 'memory' }, s.memoryBytes);
      this.set({ tier: 'disk' }, s.diskBytes);
    },
  });
  metrics.counter({
    name: 'p2pstream_cache_evictions_total',
    help: 'Entries evicted to stay within the cache bounds.',
    collect() {
      this.reset();
      this.inc(stats().evictions);
    },
  });
}
