/**
 * The Prometheus metrics of one instance (`GET /metrics`; docs/operations.md "Metrics").
 *
 * Every feature registers its metrics here through {@link MetricsRegistry}
 * (`counter`, `gauge`, `histogram`: get-or-create by name, so a module may ask
 * again), named `p2pstream_*`, with label values from small closed sets: a
 * status class, an error code, an outcome, or a configured object's id
 * (listener, route, environment) — never a path, a host or a client address.
 *
 * Process metrics (`process_*`, `nodejs_*`) are collected once per process
 * and added to every instance's exposition.
 */
import {
  Counter,
  type CounterConfiguration,
  collectDefaultMetrics,
  Gauge,
  type GaugeConfiguration,
  Histogram,
  type HistogramConfiguration,
  Registry,
} from 'prom-client';

/** Every metric of p2pstream starts with this. */
export const METRIC_PREFIX = 'p2pstream_';

/** Latency buckets in seconds, from 1 ms to 60 s. */
export const LATENCY_BUCKETS_SECONDS = [
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
] as const;

let processRegistry: Registry | null = null;

// Process metrics: one collector per process (an event-loop monitor each), however many instances run.
function processMetrics(): Registry {
  if (!processRegistry) {
    processRegistry = new Registry();
    collectDefaultMetrics({ register: processRegistry });
  }
  return processRegistry;
}

type Named = { name: string };

/** The metrics registry of one instance. */
export class MetricsRegistry {
  readonly registry = new Registry();
  readonly #withProcess: boolean;

  /** `processMetrics` (default true): include the process's `process_*`/`nodejs_*` metrics. */
  constructor(options: { processMetrics?: boolean } = {}) {
    this.#withProcess = options.processMetrics ?? true;
  }

  /** A counter (`…_total`); the same object when the name is already registered. */
  counter<L extends string = string>(config: Omit<CounterConfiguration<L>, 'registers'>): Counter<L> {
    return this.#getOrCreate(config, () => new Counter({ ...config, registers: [this.registry] }));
  }

  /** A gauge; the same object when the name is already registered. */
  gauge<L extends string = string>(config: Omit<GaugeConfiguration<L>, 'registers'>): Gauge<L> {
    return this.#getOrCreate(config, () => new Gauge({ ...config, registers: [this.registry] }));
  }

  /** A histogram (default buckets: {@link LATENCY_BUCKETS_SECONDS}); the same object when registered. */
  histogram<L extends string = string>(config: Omit<HistogramConfiguration<L>, 'registers'>): Histogram<L> {
    return this.#getOrCreate(
      config,
      () =>
        new Histogram({
          buckets: [...LATENCY_BUCKETS_SECONDS],
          ...config,
          registers: [this.registry],
        }),
    );
  }

  /**
   * Registers a metric whose values a function computes at scrape time (see
   * {@link histogramCollector}); the same name twice throws.
   */
  collector(metric: ScrapedMetric): void {
    if (!metric.name.startsWith(METRIC_PREFIX)) {
      throw new Error(`metric ${metric.name} must start with ${METRIC_PREFIX}`);
    }
    // prom-client's registry reads any object with name, help, type, aggregator, get() and reset().
    this.registry.registerMetric(metric as unknown as Parameters<Registry['registerMetric']>[0]);
  }

  /** The Prometheus text exposition (version 0.0.4). */
  async text(): Promise<string> {
    if (!this.#withProcess) return this.registry.metrics();
    return Registry.merge([processMetrics(), this.registry]).metrics();
  }

  /** The content type of {@link text}. */
  get contentType(): string {
    return this.registry.contentType;
  }

  #getOrCreate<M>(config: Named, create: () => M): M {
    if (!config.name.startsWith(METRIC_PREFIX)) {
      throw new Error(`metric ${config.name} must start with ${METRIC_PREFIX}`);
    }
    return (this.registry.getSingleMetric(config.name) as M | undefined) ?? create();
  }
}

/** A metric computed when scraped, in the shape prom-client's registry exposes. */
export interface ScrapedMetric {
  readonly name: string;
  readonly help: string;
  readonly type: 'histogram' | 'counter' | 'gauge';
  readonly aggregator: 'sum';
  get(): Promise<{
    name: string;
    help: string;
    type: string;
    aggregator: string;
    values: { labels: Record<string, string | number>; value: number; metricName: string }[];
  }>;
  reset(): void;
}

/** One labelled series of a histogram kept outside prom-client. */
export interface HistogramSeries {
  readonly labels: Readonly<Record<string, string>>;
  /** Observations per bucket, not cumulative; one more slot than bounds (above the largest). */
  readonly buckets: ArrayLike<number>;
  readonly sum: number;
  readonly count: number;
}

/**
 * A histogram whose series are kept by the caller (e.g. plain running
 * totals updated per request) and read only when scraped; exposed exactly
 * like a prom-client histogram (`_bucket` with cumulative `le`, `_sum`,
 * `_count`).
 */
export function histogramCollector(options: {
  name: string;
  help: string;
  buckets: readonly number[];
  series: () => readonly HistogramSeries[];
}): ScrapedMetric {
  const { name, help, buckets } = options;
  return {
    name,
    help,
    type: 'histogram',
    aggregator: 'sum',
    async get() {
      const values: { labels: Record<string, string | number>; value: number; metricName: string }[] = [];
      for (const series of options.series()) {
        let cumulative = 0;
        for (let i = 0; i < buckets.length; i++) {
          cumulative += series.buckets[i] ?? 0;
          values.push({
            labels: { ...series.labels, le: buckets[i]! },
            value: cumulative,
            metricName: `${name}_bucket`,
          });
        }
        values.push({
          labels: { ...series.labels, le: '+Inf' },
          value: series.count,
          metricName: `${name}_bucket`,
        });
        values.push({ labels: { ...series.labels }, value: series.sum, metricName: `${name}_sum` });
        values.push({ labels: { ...series.labels }, value: series.count, metricName: `${name}_count` });
      }
      return { name, help, type: 'histogram', aggregator: 'sum', values };
    },
    reset() {
      // The series belong to the caller; there is nothing to reset here.
    },
  };
}

/** `1xx` … `5xx` for an HTTP status, `none` when no status was sent: a bounded label value. */
export function statusClass(status: number | null | undefined): string {
  if (status === null || status === undefined || status < 100 || status > 599) return 'none';
  return `${Math.floor(status / 100)}xx`;
}
