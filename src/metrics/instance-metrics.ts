/**
 * The metrics p2pstream itself exposes (the list; README "Metrics"):
 *
 * | metric | labels |
 * | --- | --- |
 * | `p2pstream_public_requests_total` | listener, route, status_class |
 * | `p2pstream_public_request_duration_seconds` (histogram) | listener, route |
 * | `p2pstream_upstream_errors_total` | listener, route, kind |
 * | `p2pstream_relayed_requests_total` | environment, outcome |
 * | `p2pstream_relayed_request_duration_seconds` (histogram) | environment |
 * | `p2pstream_login_attempts_total` | outcome (`success`, `invalid`, `throttled`) |
 * | `p2pstream_agents_connected`, `p2pstream_hub_streams_active` | — |
 * | `p2pstream_hub_bytes_total` | direction (`in`, `out`) |
 * | `p2pstream_direct_streams_active` | — |
 * | `p2pstream_trace_subscribers`, `p2pstream_trace_events_total`, `p2pstream_trace_events_dropped_total` | — |
 *
 * `listener`, `route` and `environment` are ids of configured objects (`none`
 * when no route matched, `unknown` for an environment id that is not
 * registered): the label sets are bounded by the configuration, never by traffic.
 */
import type { TraceErrorKind } from '../domain/traffic-types.js';
import {
  type HistogramSeries,
  histogramCollector,
  LATENCY_BUCKETS_SECONDS,
  type MetricsRegistry,
} from './metrics-registry.js';

/** A finished public request, as the data plane reports it. */
export interface PublicRequestSample {
  listenerId: string;
  routeId: string | null;
  status: number | null;
  durationMs: number;
  error: TraceErrorKind | null;
}

/**
 * Counts public requests; pass the result to the data plane as `onRequestDone`.
 *
 * This runs once per public request, so it only adds to plain per-(listener,
 * route) totals (a few array writes, no allocation); the counters and the
 * histogram are filled from those totals when scraped. Calling prom-client's
 * `inc`/`observe` with labels per request cost about 1 µs (label hashing and
 * validation, a closure per observation), 3-5 % of a proxied request's CPU.
 */
export function publicRequestMetrics(metrics: MetricsRegistry): (sample: PublicRequestSample) => void {
  const totals = new PublicRequestTotals(LATENCY_BUCKETS_SECONDS);
  metrics.counter({
    name: 'p2pstream_public_requests_total',
    help: 'Requests answered by the public proxy listeners.',
    labelNames: ['listener', 'route', 'status_class'],
    collect() {
      setTotals(this, totals.requests());
    },
  });
  metrics.collector(
    histogramCollector({
      name: 'p2pstream_public_request_duration_seconds',
      help: 'Time from a public request arriving to its answer ending.',
      buckets: LATENCY_BUCKETS_SECONDS,
      series: () => totals.durations(),
    }),
  );
  metrics.counter({
    name: 'p2pstream_upstream_errors_total',
    help: 'Public requests whose upstream failed (refused, reset, DNS, TLS, timeouts, aborted).',
    labelNames: ['listener', 'route', 'kind'],
    collect() {
      setTotals(this, totals.upstreamErrors());
    },
  });
  return (sample) => totals.add(sample);
}

const STATUS_CLASSES = ['none', '1xx', '2xx', '3xx', '4xx', '5xx'] as const;

/** Running totals of one listener and route. */
interface RouteTotals {
  readonly listener: string;
  readonly route: string;
  /** Requests per status class, in {@link STATUS_CLASSES} order. */
  readonly byClass: Float64Array;
  /** Observations per bucket (not cumulative); the last slot is above the largest bound. */
  readonly buckets: Float64Array;
  sumSeconds: number;
  count: number;
  upstreamErrors: Map<string, number> | null;
}

/** Public request totals by listener and route (bounded by the configuration). */
class PublicRequestTotals {
  readonly #bounds: readonly number[];
  readonly #byListener = new Map<string, Map<string, RouteTotals>>();

  constructor(bounds: readonly number[]) {
    this.#bounds = bounds;
  }

  add(sample: PublicRequestSample): void {
    const route = sample.routeId ?? 'none';
    let routes = this.#byListener.get(sample.listenerId);
    if (routes === undefined) {
      routes = new Map();
      this.#byListener.set(sample.listenerId, routes);
    }
    let totals = routes.get(route);
    if (totals === undefined) {
      totals = {
        listener: sample.listenerId,
        route,
        byClass: new Float64Array(STATUS_CLASSES.length),
        buckets: new Float64Array(this.#bounds.length + 1),
        sumSeconds: 0,
        count: 0,
        upstreamErrors: null,
      };
      routes.set(route, totals);
    }
    const status = sample.status;
    totals.byClass[status === null || status < 100 || status > 599 ? 0 : Math.floor(status / 100)]! += 1;
    const seconds = sample.durationMs / 1000;
    const bounds = this.#bounds;
    let bucket = 0;
    while (bucket < bounds.length && seconds > bounds[bucket]!) bucket++;
    totals.buckets[bucket]! += 1;
    totals.sumSeconds += seconds;
    totals.count += 1;
    const error = sample.error;
    if (error?.startsWith('upstream_')) {
      totals.upstreamErrors ??= new Map();
      totals.upstreamErrors.set(error, (totals.upstreamErrors.get(error) ?? 0) + 1);
    }
  }

  *#all(): Generator<RouteTotals> {
    for (const routes of this.#byListener.values()) yield* routes.values();
  }

  requests(): [Record<'listener' | 'route' | 'status_class', string>, number][] {
    const out: [Record<'listener' | 'route' | 'status_class', string>, number][] = [];
    for (const t of this.#all()) {
      t.byClass.forEach((n, i) => {
        if (n > 0) out.push([{ listener: t.listener, route: t.route, status_class: STATUS_CLASSES[i]! }, n]);
      });
    }
    return out;
  }

  upstreamErrors(): [Record<'listener' | 'route' | 'kind', string>, number][] {
    const out: [Record<'listener' | 'route' | 'kind', string>, number][] = [];
    for (const t of this.#all()) {
      for (const [kind, n] of t.upstreamErrors ?? [])
        out.push([{ listener: t.listener, route: t.route, kind }, n]);
    }
    return out;
  }

  durations(): HistogramSeries[] {
    return [...this.#all()].map((t) => ({
      labels: { listener: t.listener, route: t.route },
      buckets: t.buckets,
      sum: t.sumSeconds,
      count: t.count,
    }));
  }
}

/** A relayed operational request, as the environment relay reports it. */
export interface RelayedRequestSample {
  /** The environment id, or `unknown` when it is not registered. */
  environment: string;
  /** `complete`, `cancelled`, `failed` (cut midway) or the error code answered before relaying. */
  outcome: string;
  durationMs: number;
}

/** Counts relayed requests; pass the result to the environment relay as `observe`. */
export function relayedRequestMetrics(metrics: MetricsRegistry): (sample: RelayedRequestSample) => void {
  const requests = metrics.counter({
    name: 'p2pstream_relayed_requests_total',
    help: 'Operational requests relayed to another environment, by outcome.',
    labelNames: ['environment', 'outcome'],
  });
  const duration = metrics.histogram({
    name: 'p2pstream_relayed_request_duration_seconds',
    help: 'Time from a relayed request arriving to its answer ending.',
    labelNames: ['environment'],
  });
  return (sample) => {
    requests.inc({ environment: sample.environment, outcome: sample.outcome });
    duration.observe({ environment: sample.environment }, sample.durationMs / 1000);
  };
}

/** Counts password logins by outcome. */
export function loginMetrics(
  metrics: MetricsRegistry,
): (outcome: 'success' | 'invalid' | 'throttled') => void {
  const attempts = metrics.counter({
    name: 'p2pstream_login_attempts_total',
    help: 'Password logins: success, invalid (wrong user or password) or throttled (LOGIN_THROTTLED).',
    labelNames: ['outcome'],
  });
  return (outcome) => attempts.inc({ outcome });
}

/** What the instance gauges read at scrape time. */
export interface InstanceMetricSources {
  agentsConnected(): number;
  /** Streams open through agents, and bytes read and written on agent connections. */
  hubTraffic(): { activeStreams: number; bytesIn: number; bytesOut: number };
  directStreams(): number;
  traceCounters(): { subscribers: number; emittedEvents: number; droppedEvents: number };
}

/** Registers the gauges and counters that are read from their sources when scraped. */
export function registerInstanceMetrics(metrics: MetricsRegistry, sources: InstanceMetricSources): void {
  metrics.gauge({
    name: 'p2pstream_agents_connected',
    help: 'Agents with a ready session on this hub.',
    collect() {
      this.set(sources.agentsConnected());
    },
  });
  metrics.gauge({
    name: 'p2pstream_hub_streams_active',
    help: 'Relay streams open through connected agents.',
    collect() {
      this.set(sources.hubTraffic().activeStreams);
    },
  });
  metrics.counter({
    name: 'p2pstream_hub_bytes_total',
    help: 'Bytes on agent connections (TLS), in = from agents, out = to agents.',
    labelNames: ['direction'],
    collect() {
      const traffic = sources.hubTraffic();
      setTotals(this, [
        [{ direction: 'in' }, traffic.bytesIn],
        [{ direction: 'out' }, traffic.bytesOut],
      ]);
    },
  });
  metrics.gauge({
    name: 'p2pstream_direct_streams_active',
    help: 'Relay streams open through the in-process (direct) transport.',
    collect() {
      this.set(sources.directStreams());
    },
  });
  metrics.gauge({
    name: 'p2pstream_trace_subscribers',
    help: 'Live traffic stream subscribers.',
    collect() {
      this.set(sources.traceCounters().subscribers);
    },
  });
  metrics.counter({
    name: 'p2pstream_trace_events_total',
    help: 'Trace events recorded.',
    collect() {
      setTotals(this, [[{}, sources.traceCounters().emittedEvents]]);
    },
  });
  metrics.counter({
    name: 'p2pstream_trace_events_dropped_total',
    help: 'Trace events a slow subscriber lost.',
    collect() {
      setTotals(this, [[{}, sources.traceCounters().droppedEvents]]);
    },
  });
}

// A counter whose source keeps the running total: prom-client counters only go
// up, so each scrape starts from zero and adds the source's totals.
function setTotals<L extends string>(
  counter: { reset(): void; inc(labels: Partial<Record<L, string>>, value: number): void },
  totals: [Partial<Record<L, string>>, number][],
): void {
  counter.reset();
  for (const [labels, total] of totals) counter.inc(labels, total);
}
