/**
 * What tracing costs the proxy: proxied requests per second with tracing off,
 * on (level `basic` by default), and on with one live subscriber (so each
 * event is also serialised and written to an event stream), measured in the
 * same run on loopback against a tiny upstream. Modes are interleaved in
 * every round, in a rotating order, so drift affects them alike; the figures
 * that matter are the ratios traced ÷ untraced. Self-contained: starts and
 * stops its own upstream, data plane and client; prints nothing.
 */
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { Pool } from 'undici';
import { DataPlane } from '../src/dataplane/data-plane.js';
import { TraceRecorder } from '../src/dataplane/trace-recorder.js';
import { TraceStreamSubscriber } from '../src/dataplane/trace-stream.js';
import type { TraceLevel } from '../src/domain/traffic-types.js';
import { createLogger } from '../src/logger.js';
import type { ListenerRecord, RouteRecord } from '../src/storage/schema.js';
import { type BenchRow, nowMs, type Spread, spread } from './harness.js';

export interface TracingBenchOptions {
  /** Requests per mode per round (default 4000). */
  requests?: number;
  /** Requests in flight at once (default 32). */
  concurrency?: number;
  /** Measured rounds (default 3), after one warm-up round. */
  rounds?: number;
  /** Trace level while tracing is on (default `basic`). */
  level?: TraceLevel;
}

type Mode = 'untraced' | 'traced' | 'subscribed';
const MODES: readonly Mode[] = ['untraced', 'traced', 'subscribed'];

export interface TracingBenchResult {
  /** Requests/s per mode, one value per round. */
  untracedRps: number[];
  tracedRps: number[];
  subscribedRps: number[];
  /** traced ÷ untraced, per round (1.0 = free). */
  tracedRatio: Spread;
  /** traced with one live subscriber ÷ untraced, per round. */
  subscribedRatio: Spread;
  /** Events the subscriber received (sanity: > 0). */
  subscriberEvents: number;
  options: Required<TracingBenchOptions>;
}

const NOW = new Date().toISOString();

/** Runs the tracing benchmark; see the module comment. */
export async function benchTracing(options: TracingBenchOptions = {}): Promise<TracingBenchResult> {
  const opts: Required<TracingBenchOptions> = {
    requests: options.requests ?? 4000,
    concurrency: options.concurrency ?? 32,
    rounds: options.rounds ?? 3,
    level: options.level ?? 'basic',
  };
  const upstream = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '2' });
    res.end('ok');
  });
  upstream.listen(0, '127.0.0.1');
  await once(upstream, 'listening');
  const upstreamPort = (upstream.address() as AddressInfo).port;

  const recorder = new TraceRecorder({ enabled: false, level: opts.level });
  const dataPlane = new DataPlane({ logger: createLogger('silent'), recorder });
  const listener: ListenerRecord = {
    id: 'bench-listener',
    name: 'bench',
    bindAddress: '127.0.0.1',
    port: 0,
    enabled: true,
    createdAt: NOW,
    updatedAt: NOW,
  };
  const route: RouteRecord = {
    id: 'bench-route',
    listenerId: listener.id,
    host: null,
    pathPrefix: '/',
    priority: 0,
    target: { type: 'upstream', url: `http://127.0.0.1:${upstreamPort}` },
    createdAt: NOW,
    updatedAt: NOW,
  };
  await dataPlane.start({ listeners: [listener], routes: [route] });
  const port = dataPlane.boundPort(listener.id);
  const pool = new Pool(`http://127.0.0.1:${port}`, {
    connections: opts.concurrency,
    keepAliveTimeout: 10_000,
  });
  let subscriberEvents = 0;
  const sink = new Writable({
    write(chunk: Buffer | string, _encoding, callback) {
      if (String(chunk).startsWith('id: ')) subscriberEvents += 1;
      callback();
    },
  });

  const run = async (mode: Mode): Promise<number> => {
    recorder.configure({ enabled: mode !== 'untraced', level: opts.level });
    const subscriber = mode === 'subscribed' ? new TraceStreamSubscriber(sink, recorder) : null;
    subscriber?.start(null);
    try {
      return await requestsPerSecond(pool, opts.requests, opts.concurrency);
    } finally {
      subscriber?.close();
    }
  };

  try {
    for (const mode of MODES) await run(mode); // warm-up
    const rps: Record<Mode, number[]> = { untraced: [], traced: [], subscribed: [] };
    for (let round = 0; round < opts.rounds; round++) {
      for (let i = 0; i < MODES.length; i++) {
        const mode = MODES[(round + i) % MODES.length]!;
        rps[mode].push(await run(mode));
      }
    }
    return {
      untracedRps: rps.untraced,
      tracedRps: rps.traced,
      subscribedRps: rps.subscribed,
      tracedRatio: spread(rps.traced.map((v, i) => v / rps.untraced[i]!)),
      subscribedRatio: spread(rps.subscribed.map((v, i) => v / rps.untraced[i]!)),
      subscriberEvents,
      options: opts,
    };
  } finally {
    await pool.close();
    await dataPlane.close();
    await new Promise<void>((resolve) => upstream.close(() => resolve()));
  }
}

/** The result as harness rows: the two ratios, with absolute rates in the notes. */
export function tracingRows(result: TracingBenchResult): BenchRow[] {
  const median = (values: number[]) => Math.round(spread(values).median);
  const base = `untraced ${median(result.untracedRps)}/s`;
  return [
    {
      group: 'tracing',
      metric: `proxied req/s traced (${result.options.level}) ÷ untraced`,
      value: result.tracedRatio,
      unit: '×',
      goal: '≥ 0.9',
      met: result.tracedRatio.median >= 0.9,
      note: `${base}, traced ${median(result.tracedRps)}/s`,
    },
    {
      group: 'tracing',
      metric: 'proxied req/s traced with 1 live subscriber ÷ untraced',
      value: result.subscribedRatio,
      unit: '×',
      goal: '≥ 0.8',
      met: result.subscribedRatio.median >= 0.8,
      note: `${base}, subscribed ${median(result.subscribedRps)}/s`,
    },
  ];
}

async function requestsPerSecond(pool: Pool, total: number, concurrency: number): Promise<number> {
  let started = 0;
  const worker = async () => {
    while (started < total) {
      started += 1;
      const res = await pool.request({ method: 'GET', path: `/bench/${started}` });
      await res.body.dump();
      if (res.statusCode !== 200) throw new Error(`proxied request failed with ${res.statusCode}`);
    }
  };
  const start = nowMs();
  await Promise.all(Array.from({ length: concurrency }, worker));
  return (total / (nowMs() - start)) * 1000;
}
