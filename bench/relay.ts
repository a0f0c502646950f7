/**
 * What the relay costs, against direct calls and the wire, on loopback with
 * real processes: a control plane and a target (`p2pstream server`), an agent
 * (`p2pstream agent`) connected to the control plane, and the target
 * registered on the control plane twice (direct and through the agent).
 *
 * - latency: sequential `GET /api/v1/system/info`, on the target with its
 *   own token (a), through the direct environment (b), through the agent
 *   environment (c); p50 and p99 ratios.
 * - throughput: 64 concurrent callers, through the agent vs on the target;
 *   the control plane's and the agent's CPU per relayed request.
 * - streaming: a large body from a TLS origin in its own process
 *   (bench/bulk-origin.ts) registered as an agent environment (caller →
 *   control plane → agent → origin: three TLS legs) vs the same body over one
 *   plain TLS connection from the caller's process to the origin's; peak RSS
 *   of the control plane and the agent for two body sizes.
 * - trace delivery: proxied requests on the target, sent by 32 callers in the
 *   bench process; events/s reaching an event-stream reader through the agent
 *   environment vs on the target.
 *
 * Modes are interleaved in each repetition (harness roundOrder) so drift hits them
 * alike; each figure is a ratio within one repetition.
 */
import os from 'node:os';
import { Pool } from 'undici';
import { freePort } from '../scripts/local-services.js';
import type { BulkOriginReady } from './bulk-origin.js';
import { type BenchRow, interleaved, nowMs, percentile, type Spread, spread } from './harness.js';
import {
  type AgentProcess,
  forkEntry,
  type Instance,
  registerEnvironment,
  sampleProcess,
  startAgentProcess,
  startInstance,
  watchPeakRss,
} from './instances.js';

export interface RelayBenchOptions {
  /** Sequential calls per mode and repetition for latency (default 2000). */
  latencyCalls?: number;
  /** Seconds per mode and repetition for throughput (default 10). */
  throughputSeconds?: number;
  /** Concurrent callers for throughput (default 64). */
  concurrency?: number;
  /** Body size for streaming in MB (default 200); a quarter of it is also measured for the RSS comparison. */
  streamMegabytes?: number;
  /** Proxied requests for trace delivery (default 20000). */
  traceRequests?: number;
  /** Measured repetitions (default 3), after one warm-up. */
  repetitions?: number;
  /** Groups to run (default all): latency, throughput, streaming, trace-delivery. */
  only?: readonly string[];
}

interface Setup {
  control: Instance;
  target: Instance;
  agent: AgentProcess;
  directEnv: string;
  agentEnv: string;
}

type Caller = { pool: Pool; headers: Record<string, string> };

function callers(setup: Setup, connections: number) {
  const onTarget: Caller = {
    pool: setup.target.pool(connections),
    headers: { authorization: `Bearer ${setup.target.token}` },
  };
  const relayed = (environment: string): Caller => ({
    pool: setup.control.pool(connections),
    headers: { authorization: `Bearer ${setup.control.token}`, 'x-p2pstream-environment': environment },
  });
  return { onTarget, viaDirect: relayed(setup.directEnv), viaAgent: relayed(setup.agentEnv) };
}

async function call(caller: Caller, path = '/api/v1/system/info'): Promise<void> {
  const res = await caller.pool.request({ method: 'GET', path, headers: caller.headers });
  await res.body.dump();
  if (res.statusCode !== 200) throw new Error(`GET ${path} answered ${res.statusCode}`);
}

const ratios = (a: number[], b: number[]): Spread => spread(a.map((v, i) => v / b[i]!));
const med = (values: number[]) => spread(values).median;

async function latency(setup: Setup, calls: number, repetitions: number): Promise<BenchRow[]> {
  const c = callers(setup, 1);
  const byMode = { a: c.onTarget, b: c.viaDirect, c: c.viaAgent };
  const measure = async (mode: 'a' | 'b' | 'c') => {
    const times: number[] = [];
    for (let i = 0; i < calls; i++) {
      const start = nowMs();
      await call(byMode[mode]);
      times.push(nowMs() - start);
    }
    times.sort((x, y) => x - y);
    return { p50: percentile(times, 0.5), p99: percentile(times, 0.99) };
  };
  for (const mode of ['a', 'b', 'c'] as const) for (let i = 0; i < 200; i++) await call(byMode[mode]);
  const r = await interleaved(['a', 'b', 'c'] as const, repetitions, measure);
  const p = (mode: 'a' | 'b' | 'c', q: 'p50' | 'p99') => r[mode].map((x) => x[q]);
  const ms = (mode: 'a' | 'b' | 'c', q: 'p50' | 'p99') => `${med(p(mode, q)).toFixed(2)} ms`;
  const row = (metric: string, value: Spread, goal?: number, note?: string): BenchRow => ({
    group: 'latency',
    metric,
    value,
    unit: '×',
    ...(goal === undefined ? {} : { goal: `≤ ${goal}`, met: value.median <= goal }),
    ...(note ? { note } : {}),
  });
  return [
    row(
      'p50 direct env ÷ on target (b/a)',
      ratios(p('b', 'p50'), p('a', 'p50')),
      undefined,
      `a ${ms('a', 'p50')}, b ${ms('b', 'p50')}`,
    ),
    row('p50 agent env ÷ on target (c/a)', ratios(p('c', 'p50'), p('a', 'p50')), 3.0, `c ${ms('c', 'p50')}`),
    row('p50 agent env ÷ direct env (c/b)', ratios(p('c', 'p50'), p('b', 'p50')), 1.3),
    row(
      'p99 direct env ÷ on target (b/a)',
      ratios(p('b', 'p99'), p('a', 'p99')),
      undefined,
      `a ${ms('a', 'p99')}, b ${ms('b', 'p99')}`,
    ),
    row('p99 agent env ÷ on target (c/a)', ratios(p('c', 'p99'), p('a', 'p99')), 4.0, `c ${ms('c', 'p99')}`),
    row('p99 agent env ÷ direct env (c/b)', ratios(p('c', 'p99'), p('b', 'p99'))),
  ];
}

async function throughput(
  setup: Setup,
  seconds: number,
  concurrency: number,
  repetitions: number,
): Promise<BenchRow[]> {
  const c = callers(setup, concurrency);
  const byMode = { onTarget: c.onTarget, viaAgent: c.viaAgent };
  const measure = async (mode: 'onTarget' | 'viaAgent', durationMs = seconds * 1000) => {
    const before = await Promise.all([sampleProcess(setup.control.pid), sampleProcess(setup.agent.pid)]);
    let done = 0;
    const end = nowMs() + durationMs;
    const start = nowMs();
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (nowMs() < end) {
          await call(byMode[mode]);
          done++;
        }
      }),
    );
    const elapsed = nowMs() - start;
    const after = await Promise.all([sampleProcess(setup.control.pid), sampleProcess(setup.agent.pid)]);
    return {
      rps: (done / elapsed) * 1000,
      controlCpuMsPerRequest: (after[0].cpuMs - before[0].cpuMs) / done,
      agentCpuMsPerRequest: (after[1].cpuMs - before[1].cpuMs) / done,
    };
  };
  await measure('onTarget', 1000);
  await measure('viaAgent', 1000);
  const r = await interleaved(['onTarget', 'viaAgent'] as const, repetitions, (m) => measure(m));
  const rps = (m: 'onTarget' | 'viaAgent') => r[m].map((x) => x.rps);
  const cpu = spread(r.viaAgent.map((x) => x.controlCpuMsPerRequest * 1000));
  const agentCpu = spread(r.viaAgent.map((x) => x.agentCpuMsPerRequest * 1000));
  const share = ratios(rps('viaAgent'), rps('onTarget'));
  return [
    {
      group: 'throughput',
      metric: `req/s through agent env ÷ on target (${concurrency} callers)`,
      value: share,
      unit: '×',
      goal: '≥ 0.35',
      met: share.median >= 0.35,
      note:
        `on target ${Math.round(med(rps('onTarget')))}/s, via agent ${Math.round(med(rps('viaAgent')))}/s; ` +
        `CPU budget: ${os.availableParallelism()} cores shared by the callers, the control plane, the agent and the target`,
    },
    {
      group: 'throughput',
      metric: 'control plane CPU per relayed request',
      value: cpu,
      unit: 'µs',
      note: 'user+system time of the control plane process ÷ requests',
    },
    {
      group: 'throughput',
      metric: 'agent CPU per relayed request',
      value: agentCpu,
      unit: 'µs',
      note: 'user+system time of the agent process ÷ requests',
    },
  ];
}

/** Reads a body of `expected` bytes from the bulk origin (the size travels as `?bytes=`); returns MB/s. */
async function drain(caller: Caller, expected: number): Promise<number> {
  const start = nowMs();
  const res = await caller.pool.request({
    method: 'GET',
    // Any path: the origin ignores it; this one is a route the control plane relays.
    path: `/api/v1/system/info?bytes=${expected}`,
    headers: caller.headers,
  });
  let received = 0;
  for await (const chunk of res.body) received += (chunk as Buffer).length;
  if (res.statusCode !== 200 || received !== expected) {
    throw new Error(`streamed ${received} of ${expected} bytes (status ${res.statusCode})`);
  }
  return (received / 2 ** 20 / (nowMs() - start)) * 1000;
}

async function streaming(setup: Setup, megabytes: number, repetitions: number): Promise<BenchRow[]> {
  // The origin is its own process, so the plain-TLS baseline is client process ↔ origin process
  // and the agent path is client → control plane → agent → origin process.
  const origin = await forkEntry<BulkOriginReady>('bulk-origin');
  try {
    const envId = await registerEnvironment(
      setup.control,
      { url: origin.ready.url, accessToken: 'p2pat_bench-origin-ignores-this' },
      setup.agent.id,
    );
    const plain: Caller = {
      pool: new Pool(origin.ready.url, {
        connections: 1,
        connect: { ca: origin.ready.cert, servername: 'localhost' },
      }),
      headers: {},
    };
    const viaAgent: Caller = {
      pool: setup.control.pool(1),
      headers: { authorization: `Bearer ${setup.control.token}`, 'x-p2pstream-environment': envId },
    };
    const bytesFor = (mb: number) => Math.round(mb * 2 ** 20);
    const peakWhile = async (mb: number) => {
      const watch = watchPeakRss([setup.control.pid, setup.agent.pid]);
      const rate = await drain(viaAgent, bytesFor(mb));
      const [hub, agent] = await watch.stop();
      return { rate, hub: hub!, agent: agent! };
    };
    await drain(plain, bytesFor(Math.min(megabytes, 20)));
    await drain(viaAgent, bytesFor(Math.min(megabytes, 20)));
    const small = await peakWhile(megabytes / 4);
    const r = await interleaved(['plain', 'agent'] as const, repetitions, async (mode) => {
      if (mode === 'agent') return peakWhile(megabytes);
      return { rate: await drain(plain, bytesFor(megabytes)), hub: 0, agent: 0 };
    });
    await plain.pool.close();
    const share = ratios(
      r.agent.map((x) => x.rate),
      r.plain.map((x) => x.rate),
    );
    const mbOf = (v: number[]) => spread(v.map((x) => x / 2 ** 20));
    const hubPeak = mbOf(r.agent.map((x) => x.hub));
    const agentPeak = mbOf(r.agent.map((x) => x.agent));
    const growth = spread(r.agent.map((x) => Math.max(x.hub / small.hub, x.agent / small.agent)));
    return [
      {
        group: 'streaming',
        metric: `${megabytes} MB through agent ÷ plain TLS (MB/s)`,
        value: share,
        unit: '×',
        goal: '≥ 0.28',
        met: share.median >= 0.28,
        note:
          `plain ${Math.round(med(r.plain.map((x) => x.rate)))} MB/s, via agent ${Math.round(med(r.agent.map((x) => x.rate)))} MB/s; ` +
          `the agent path crosses three TLS legs, its four processes sharing ${os.availableParallelism()} cores`,
      },
      {
        group: 'streaming',
        metric: `control plane (hub) peak RSS, ${megabytes} MB body`,
        value: hubPeak,
        unit: 'MB',
      },
      { group: 'streaming', metric: `agent peak RSS, ${megabytes} MB body`, value: agentPeak, unit: 'MB' },
      {
        group: 'streaming',
        metric: `peak RSS ${megabytes} MB body ÷ ${megabytes / 4} MB body (worse of hub, agent)`,
        value: growth,
        unit: '×',
        goal: '≤ 1.1',
        met: growth.median <= 1.1,
        note: `at ${megabytes / 4} MB: hub ${Math.round(small.hub / 2 ** 20)} MB, agent ${Math.round(small.agent / 2 ** 20)} MB`,
      },
    ];
  } finally {
    await origin.stop();
  }
}

/** Counts trace events (`id:` lines) on an event stream until `expected` arrived or it stays quiet. */
async function openTraceReader(caller: Caller) {
  const res = await caller.pool.request({
    method: 'GET',
    path: '/api/v1/traffic/stream',
    headers: caller.headers,
  });
  if (res.statusCode !== 200) throw new Error(`trace stream answered ${res.statusCode}`);
  let events = 0;
  let lastAt = 0;
  let rest = '';
  const reading = (async () => {
    try {
      for await (const chunk of res.body) {
        const lines = (rest + String(chunk)).split('\n');
        rest = lines.pop()!;
        for (const line of lines) {
          if (line.startsWith('id: ')) {
            events++;
            lastAt = nowMs();
          }
        }
      }
    } catch {
      // Destroyed on purpose when the run is over.
    }
  })();
  return {
    get events() {
      return events;
    },
    get lastAt() {
      return lastAt;
    },
    async close() {
      res.body.destroy();
      await reading;
    },
  };
}

/** Concurrent callers of the proxy in the trace-delivery group (in the bench process). */
const TRACE_CALLERS = 32;

async function traceDelivery(setup: Setup, requests: number, repetitions: number): Promise<BenchRow[]> {
  const { target, control } = setup;
  const port = await freePort();
  const listener = await target.api('POST', '/api/v1/proxy/listeners', {
    name: 'bench',
    bindAddress: '127.0.0.1',
    port,
  });
  await target.api('POST', '/api/v1/proxy/routes', {
    listenerId: listener.json.listener.id,
    pathPrefix: '/',
    target: { type: 'static', status: 200, contentType: 'text/plain', body: 'ok' },
  });
  const proxy = new Pool(`http://127.0.0.1:${port}`, { connections: TRACE_CALLERS });
  const readers = {
    onTarget: { pool: target.pool(1), headers: { authorization: `Bearer ${target.token}` } },
    viaAgent: {
      pool: control.pool(1),
      headers: { authorization: `Bearer ${control.token}`, 'x-p2pstream-environment': setup.agentEnv },
    },
  };
  const measure = async (mode: 'onTarget' | 'viaAgent', total = requests) => {
    const reader = await openTraceReader(readers[mode]);
    // The subscription is live once the target counts it.
    while ((await target.api('GET', '/api/v1/traffic/settings')).json.subscribers < 1) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    const start = nowMs();
    let sent = 0;
    await Promise.all(
      Array.from({ length: TRACE_CALLERS }, async () => {
        while (sent < total) {
          sent++;
          const res = await proxy.request({ method: 'GET', path: `/bench/${sent}` });
          await res.body.dump();
        }
      }),
    );
    const quietSince = () => nowMs() - Math.max(reader.lastAt, start);
    while (reader.events < total && quietSince() < 3000)
      await new Promise((resolve) => setTimeout(resolve, 20));
    const events = reader.events;
    const rate = (events / (reader.lastAt - start)) * 1000;
    await reader.close();
    while ((await target.api('GET', '/api/v1/traffic/settings')).json.subscribers > 0) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    return { rate, lost: total - events };
  };
  try {
    await measure('onTarget', 1000);
    await measure('viaAgent', 1000);
    const r = await interleaved(['onTarget', 'viaAgent'] as const, repetitions, (m) => measure(m));
    const share = ratios(
      r.viaAgent.map((x) => x.rate),
      r.onTarget.map((x) => x.rate),
    );
    const lost = spread([...r.viaAgent, ...r.onTarget].map((x) => x.lost));
    return [
      {
        group: 'trace delivery',
        metric: `events/s to a console via agent env ÷ on target (${requests} requests)`,
        value: share,
        unit: '×',
        note:
          `on target ${Math.round(med(r.onTarget.map((x) => x.rate)))}/s, via agent ${Math.round(med(r.viaAgent.map((x) => x.rate)))}/s; ` +
          `the load is ${TRACE_CALLERS} callers in the bench process, so the ratio shows whether a console ` +
          'through the agent keeps up with what the proxy produces',
      },
      {
        group: 'trace delivery',
        metric: 'events lost (both readers keep up)',
        value: lost,
        unit: 'events',
        goal: '= 0',
        met: lost.max === 0,
      },
    ];
  } finally {
    await proxy.close();
  }
}

/** Starts the processes, runs the selected groups, stops everything; returns the rows. */
export async function benchRelay(options: RelayBenchOptions = {}): Promise<BenchRow[]> {
  const repetitions = options.repetitions ?? 3;
  const wanted = (group: string) => !options.only || options.only.includes(group);
  const started: Array<{ stop(): Promise<void> }> = [];
  try {
    const control = await startInstance('control');
    started.push(control);
    const target = await startInstance('target');
    started.push(target);
    const agent = await startAgentProcess(control);
    started.unshift(agent);
    const accessToken = (await target.api('POST', '/api/v1/tokens', { name: 'control-plane' })).json
      .token as string;
    const setup: Setup = {
      control,
      target,
      agent,
      directEnv: await registerEnvironment(control, { url: target.url, accessToken }),
      agentEnv: await registerEnvironment(control, { url: target.url, accessToken }, agent.id),
    };
    const rows: BenchRow[] = [];
    if (wanted('latency')) rows.push(...(await latency(setup, options.latencyCalls ?? 2000, repetitions)));
    if (wanted('throughput')) {
      rows.push(
        ...(await throughput(setup, options.throughputSeconds ?? 10, options.concurrency ?? 64, repetitions)),
      );
    }
    if (wanted('streaming'))
      rows.push(...(await streaming(setup, options.streamMegabytes ?? 200, repetitions)));
    if (wanted('trace-delivery')) {
      rows.push(...(await traceDelivery(setup, options.traceRequests ?? 20_000, repetitions)));
    }
    return rows;
  } finally {
    for (const s of started) await s.stop();
  }
}
