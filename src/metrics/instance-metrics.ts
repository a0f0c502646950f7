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
import type { MetricsRegistry } from './metrics-registry.js';
import { statusClass } from './metrics-registry.js';

/** A finished public request, as the data plane reports it. */
export interface PublicRequestSample {
  listenerId: string;
  routeId: string | null;
  status: number | null;
  durationMs: number;
  error: TraceErrorKind | null;
}

/** Counts public requests; pass the result to the data plane as `onRequestDone`. */
export function publicRequestMetrics(metrics: MetricsRegistry): (sample: PublicRequestSample) => void {
  const requests = metrics.counter({
    name: 'p2pstream_public_requests_total',
    help: 'Requests answered by the public proxy listeners.',
    labelNames: ['listener', 'route', 'status_class'],
  });
  const duration = metrics.histogram({
    name: 'p2pstream_public_request_duration_seconds',
    help: 'Time from a public request arriving to its answer ending.',
    labelNames: ['listener', 'route'],
  });
  const upstreamErrors = metrics.counter({
    name: 'p2pstream_upstream_errors_total',
    help: 'Public requests whose upstream failed (refused, reset, DNS, TLS, timeouts, aborted).',
    labelNames: ['listener', 'route', 'kind'],
  });
  return (sample) => {
    const listener = sample.listenerId;
    const route = sample.routeId ?? 'none';
    requests.inc({ listener, route, status_class: statusClass(sample.status) });
    duration.observe({ listener, route }, sample.durationMs / 1000);
    if (sample.error?.startsWith('upstream_')) upstreamErrors.inc({ listener, route, kind: sample.error });
  };
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
