import { Histogram, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { publicRequestMetrics } from '../../src/metrics/instance-metrics.js';
import { LATENCY_BUCKETS_SECONDS, MetricsRegistry } from '../../src/metrics/metrics-registry.js';
import { parsePrometheus } from '../helpers/prometheus.js';

const DURATIONS_MS = [0.2, 1, 1.5, 2.5, 7, 60, 250, 999, 1000, 4000, 70_000];

describe('public request metrics', () => {
  it('expose the latency histogram exactly as a prom-client histogram fed the same observations', async () => {
    const metrics = new MetricsRegistry({ processMetrics: false });
    const done = publicRequestMetrics(metrics);
    const reference = new Registry();
    const histogram = new Histogram({
      name: 'p2pstream_public_request_duration_seconds',
      help: 'Time from a public request arriving to its answer ending.',
      labelNames: ['listener', 'route'],
      buckets: [...LATENCY_BUCKETS_SECONDS],
      registers: [reference],
    });
    for (const [index, durationMs] of DURATIONS_MS.entries()) {
      const routeId = index % 3 === 0 ? null : `R${index % 2}`;
      done({ listenerId: 'L', routeId, status: 200, durationMs, error: null });
      histogram.observe({ listener: 'L', route: routeId ?? 'none' }, durationMs / 1000);
    }
    const ours = parsePrometheus(await metrics.text());
    const theirs = parsePrometheus(await reference.metrics());
    const samples = (e: typeof ours) =>
      e.samples
        .filter((s) => s.name.startsWith('p2pstream_public_request_duration_seconds'))
        .map((s) => `${s.name}${JSON.stringify(Object.entries(s.labels).sort())} ${s.value.toPrecision(12)}`)
        .sort();
    expect(samples(ours)).toEqual(samples(theirs));
    expect(samples(ours).length).toBe(3 * (LATENCY_BUCKETS_SECONDS.length + 3));
    expect(ours.types.get('p2pstream_public_request_duration_seconds')).toBe('histogram');
  });

  it('count requests by status class and upstream errors by kind, and only what happened', async () => {
    const metrics = new MetricsRegistry({ processMetrics: false });
    const done = publicRequestMetrics(metrics);
    const base = { listenerId: 'L', routeId: 'R', durationMs: 1 };
    done({ ...base, status: 200, error: null });
    done({ ...base, status: 204, error: null });
    done({ ...base, status: 502, error: 'upstream_refused' });
    done({ ...base, status: null, error: 'client_aborted' });
    done({ ...base, routeId: null, status: 404, error: 'no_route' });
    const exposed = parsePrometheus(await metrics.text());
    const route = { listener: 'L', route: 'R' };
    expect(exposed.value('p2pstream_public_requests_total', { ...route, status_class: '2xx' })).toBe(2);
    expect(exposed.value('p2pstream_public_requests_total', { ...route, status_class: '5xx' })).toBe(1);
    expect(exposed.value('p2pstream_public_requests_total', { ...route, status_class: 'none' })).toBe(1);
    expect(
      exposed.value('p2pstream_public_requests_total', { listener: 'L', route: 'none', status_class: '4xx' }),
    ).toBe(1);
    expect(exposed.all('p2pstream_public_requests_total')).toHaveLength(4);
    expect(exposed.all('p2pstream_upstream_errors_total')).toEqual([
      { name: 'p2pstream_upstream_errors_total', labels: { ...route, kind: 'upstream_refused' }, value: 1 },
    ]);
    // Scraping twice gives the same totals (they are set from the running totals, not added again).
    const again = parsePrometheus(await metrics.text());
    expect(again.value('p2pstream_public_requests_total', { ...route, status_class: '2xx' })).toBe(2);
  });
});
