/**
 * The Prometheus metrics of one instance (`GET /metrics`, DESIGN.md §11).
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

/** `1xx` … `5xx` for an HTTP status, `none` when no status was sent: a bounded label value. */
export function statusClass(status: number | null | undefined): string {
  if (status === null || status === undefined || status < 100 || status > 599) return 'none';
  return `${Math.floor(status / 100)}xx`;
}
