/**
 * Public traffic through an agent tunnel against the same traffic proxied
 * straight to the upstream, each part its own process on loopback: the
 * control plane (`p2pstream server`, the hub, with the public listeners), an
 * agent (`p2pstream agent`, allowed to reach the origin only), the origin
 * (bench/bulk-origin.ts, HTTP and TLS) and the load generators wrk and curl.
 * Set up through the public API: a route to the origin's URL (straight), and
 * a route to a backend whose one member is the agent with the same origin as
 * its `upstreamUrl` (tunnelled).
 *
 * - req/s: wrk, 32 keep-alive connections, GET of an empty answer, on an
 *   http listener; the hub's and the agent's CPU per request meanwhile;
 * - p50: wrk on one connection (sequential requests), same routes;
 * - download: 200 MB with curl (HTTP/1.1) through an https listener to the
 *   origin's TLS port via the agent (curl → hub → agent → origin: three TLS
 *   legs) against curl straight from the origin (one TLS stream);
 * - RSS: the hub's and the agent's peak while tunnelling 200 MB against their
 *   peak while tunnelling 50 MB before.
 *
 * Modes are interleaved in each round (harness roundOrder) so drift on a
 * shared machine hits them alike; each figure is a ratio within one round.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createCertificate } from '../src/tls/certificates.js';
import type { BulkOriginReady } from './bulk-origin.js';
import { type BenchRow, interleaved, type Spread, spread } from './harness.js';
import {
  type AgentProcess,
  addListener,
  forkEntry,
  type Instance,
  sampleProcess,
  startAgentProcess,
  startInstance,
  watchPeakRss,
} from './instances.js';
import { curlDownload, ensureTools, runWrk, type WrkResult } from './peer-servers.js';

export interface TunnelBenchOptions {
  /** Seconds per wrk run (default 8). */
  seconds?: number;
  /** wrk connections for the req/s figure (default 32). */
  connections?: number;
  /** Size of the download in MB (default 200); a quarter of it is tunnelled first for the RSS comparison. */
  downloadMegabytes?: number;
  /** Measured rounds (default 3), after a warm-up of each mode. */
  rounds?: number;
  log?: (line: string) => void;
}

interface Setup {
  control: Instance;
  agent: AgentProcess;
  originPid: number;
  /** http listener: `/straight/` to the origin's URL, `/tunnel/` to the agent backend. */
  httpUrl: string;
  /** https listener: `/tunnel/` to the agent backend whose member is the origin's TLS URL. */
  httpsUrl: string;
  /** PEM files curl trusts: the listener's certificate and the origin's. */
  listenerCa: string;
  originCa: string;
  originUrl: string;
}

async function setUp(dir: string): Promise<{ setup: Setup; stops: (() => Promise<void>)[] }> {
  const stops: (() => Promise<void>)[] = [];
  try {
    const origin = await forkEntry<BulkOriginReady>('bulk-origin');
    stops.push(origin.stop);
    const originCa = path.join(dir, 'origin.pem');
    await writeFile(originCa, origin.ready.cert);
    const control = await startInstance('tunnel-hub');
    stops.push(() => control.stop());
    const hostPort = (url: string) => new URL(url).host;
    // The agent reaches the origin's two ports only, and trusts its certificate as an operator would.
    const agent = await startAgentProcess(control, {
      AGENT_ALLOWED_TARGETS: `${hostPort(origin.ready.httpUrl)},${hostPort(origin.ready.url)}`,
      NODE_EXTRA_CA_CERTS: originCa,
    });
    stops.unshift(agent.stop);

    const tls = await createCertificate({ altNames: ['localhost', '127.0.0.1'] });
    const listenerCa = path.join(dir, 'listener.pem');
    await writeFile(listenerCa, tls.cert);
    const uploaded = await control.api('POST', '/api/v1/tls/certificates', {
      name: 'bench',
      hosts: ['localhost'],
      source: 'upload',
      certificatePem: tls.cert,
      privateKeyPem: tls.key,
    });
    const backend = async (name: string, upstreamUrl: string) =>
      (
        await control.api('POST', '/api/v1/proxy/backends', {
          name,
          members: [{ type: 'agent', agentId: agent.id, upstreamUrl }],
          healthCheck: null,
        })
      ).json.backend.id as string;
    const route = (listenerId: string, pathPrefix: string, target: unknown) =>
      control.api('POST', '/api/v1/proxy/routes', { listenerId, pathPrefix, target });
    const plain = await addListener(control, 'bench-tunnel-http');
    const secure = await addListener(control, 'bench-tunnel-https', uploaded.json.certificate.id);
    await route(plain.id, '/straight/', { type: 'upstream', url: origin.ready.httpUrl });
    await route(plain.id, '/tunnel/', {
      type: 'backend',
      backendId: await backend('bench-tunnel-http', origin.ready.httpUrl),
    });
    await route(secure.id, '/tunnel/', {
      type: 'backend',
      backendId: await backend('bench-tunnel-https', origin.ready.url),
    });
    return {
      setup: {
        control,
        agent,
        originPid: origin.pid,
        httpUrl: plain.url,
        httpsUrl: secure.url,
        listenerCa,
        originCa,
        originUrl: origin.ready.url,
      },
      stops,
    };
  } catch (err) {
    for (const stop of stops) await stop().catch(() => {});
    throw err;
  }
}

function loadAverage(): string {
  return os
    .loadavg()
    .map((n) => n.toFixed(2))
    .join(' ');
}

interface WrkRun extends WrkResult {
  /** CPU µs per request of the hub, the agent and the origin. */
  hubUs: number;
  agentUs: number;
  originUs: number;
}

const median = (values: readonly number[]) => spread(values).median;
const ratios = (a: readonly number[], b: readonly number[]): Spread => spread(a.map((v, i) => v / b[i]!));

/** Runs the tunnel group; see the module comment. */
export async function benchTunnel(options: TunnelBenchOptions = {}): Promise<BenchRow[]> {
  const seconds = options.seconds ?? 8;
  const connections = options.connections ?? 32;
  const megabytes = options.downloadMegabytes ?? 200;
  const rounds = options.rounds ?? 3;
  const log = options.log ?? (() => {});
  const tools = await ensureTools(['wrk', 'curl'], log);
  const loadBefore = loadAverage();
  const dir = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-bench-tunnel-'));
  let stops: (() => Promise<void>)[] = [];
  try {
    const started = await setUp(dir);
    stops = started.stops;
    const { setup } = started;
    const pids = [setup.control.pid, setup.agent.pid, setup.originPid];

    const wrk = async (mode: 'straight' | 'tunnel', conns: number, secs: number): Promise<WrkRun> => {
      const before = await Promise.all(pids.map((pid) => sampleProcess(pid)));
      const result = await runWrk(tools, `${setup.httpUrl}/${mode}/`, conns, secs);
      const after = await Promise.all(pids.map((pid) => sampleProcess(pid)));
      if (result.errors > 0) throw new Error(`${mode}: ${result.errors} failed requests under wrk`);
      const us = (i: number) => ((after[i]!.cpuMs - before[i]!.cpuMs) * 1000) / Math.max(1, result.requests);
      return { ...result, hubUs: us(0), agentUs: us(1), originUs: us(2) };
    };
    const bytes = Math.round(megabytes * 1e6);
    const quarter = Math.round(bytes / 4);
    const curl = (mode: 'plain' | 'tunnel', size: number) =>
      mode === 'plain'
        ? curlDownload(tools, `${setup.originUrl}/?bytes=${size}`, size, { ca: setup.originCa })
        : // HTTP/1.1 as the baseline (curl would pick HTTP/2 with the https listener): the row weighs the tunnel.
          curlDownload(tools, `${setup.httpsUrl}/tunnel/download?bytes=${size}`, size, {
            ca: setup.listenerCa,
            http1: true,
          });
    const peakWhile = async (size: number) => {
      const watch = watchPeakRss([setup.control.pid, setup.agent.pid]);
      const result = await curl('tunnel', size);
      const [hub, agent] = await watch.stop();
      return { mbps: result.megabytesPerSecond, hub: hub!, agent: agent! };
    };

    // Warm-up: every mode once (JIT, keep-alive connections, the agent's upstream pool).
    for (const mode of ['straight', 'tunnel'] as const) {
      await wrk(mode, connections, 1);
      await wrk(mode, 1, 1);
    }
    await curl('plain', Math.min(bytes, 20e6));
    await curl('tunnel', Math.min(bytes, 20e6));

    type Mode = 'straight@c' | 'tunnel@c' | 'straight@1' | 'tunnel@1';
    const r = await interleaved(
      ['straight@c', 'tunnel@c', 'straight@1', 'tunnel@1'] as Mode[],
      rounds,
      (m) => {
        const [mode, at] = m.split('@') as ['straight' | 'tunnel', string];
        return wrk(mode, at === 'c' ? connections : 1, seconds);
      },
    );
    const small = await peakWhile(quarter);
    const d = await interleaved(['plain', 'tunnel'] as const, rounds, async (mode) =>
      mode === 'tunnel'
        ? peakWhile(bytes)
        : { mbps: (await curl('plain', bytes)).megabytesPerSecond, hub: 0, agent: 0 },
    );
    const load = `load average ${loadBefore} at the start, ${loadAverage()} at the end`;
    return tunnelRows({
      r,
      d,
      small,
      connections,
      seconds,
      rounds,
      megabytes,
      load,
      versions: tools.versions,
    });
  } finally {
    for (const stop of stops) await stop().catch(() => {});
    await rm(dir, { recursive: true, force: true });
  }
}

interface Peak {
  mbps: number;
  hub: number;
  agent: number;
}

function tunnelRows(input: {
  r: Record<'straight@c' | 'tunnel@c' | 'straight@1' | 'tunnel@1', WrkRun[]>;
  d: Record<'plain' | 'tunnel', Peak[]>;
  small: Peak;
  connections: number;
  seconds: number;
  rounds: number;
  megabytes: number;
  load: string;
  versions: string;
}): BenchRow[] {
  const { r, d, small, connections: c, megabytes } = input;
  const cores = os.availableParallelism();
  const pick = (runs: WrkRun[], field: keyof WrkRun) => runs.map((x) => x[field]);
  const fig = (runs: WrkRun[], field: keyof WrkRun, digits = 0) => median(pick(runs, field)).toFixed(digits);
  const context = `wrk 1 thread, ${input.seconds} s × ${input.rounds} rounds; ${input.load}; ${input.versions}`;
  const rps = ratios(pick(r['tunnel@c'], 'requestsPerSecond'), pick(r['straight@c'], 'requestsPerSecond'));
  const p50 = ratios(pick(r['tunnel@1'], 'p50Ms'), pick(r['straight@1'], 'p50Ms'));
  const download = ratios(
    d.tunnel.map((x) => x.mbps),
    d.plain.map((x) => x.mbps),
  );
  const mb = (v: number) => Math.round(v / 2 ** 20);
  const growth = spread(d.tunnel.map((x) => Math.max(x.hub / small.hub, x.agent / small.agent)));
  return [
    {
      group: 'tunnel',
      metric: `GET req/s tunnelled through an agent ÷ proxied straight to the same upstream (${c} conns)`,
      value: rps,
      unit: '×',
      goal: '≥ 0.35',
      met: rps.median >= 0.35,
      note:
        `straight ${fig(r['straight@c'], 'requestsPerSecond')}/s (hub ${fig(r['straight@c'], 'hubUs')} µs CPU per request), ` +
        `tunnelled ${fig(r['tunnel@c'], 'requestsPerSecond')}/s (hub ${fig(r['tunnel@c'], 'hubUs')} µs, agent ${fig(r['tunnel@c'], 'agentUs')} µs, ` +
        `origin ${fig(r['tunnel@c'], 'originUs')} µs CPU per request); a tunnelled request crosses a second Node process and ` +
        `the hub↔agent TLS WebSocket, all processes (wrk, hub, agent, origin) sharing ${cores} cores; ${context}`,
    },
    {
      group: 'tunnel',
      metric: `${megabytes} MB download MB/s through the tunnel ÷ one plain TLS stream`,
      value: download,
      unit: '×',
      goal: '≥ 0.28',
      met: download.median >= 0.28,
      note:
        `plain TLS ${Math.round(median(d.plain.map((x) => x.mbps)))} MB/s, through the tunnel ${Math.round(median(d.tunnel.map((x) => x.mbps)))} MB/s (curl); ` +
        `both HTTP/1.1; the tunnel crosses three TLS legs (curl → hub https listener → agent WebSocket → origin) where ` +
        `the plain stream crosses one, each leg encrypted and decrypted again, on ${cores} cores: near a third is the ` +
        'ceiling on an otherwise idle machine',
    },
    {
      group: 'tunnel',
      metric: 'GET p50 tunnelled ÷ proxied straight (1 conn, sequential)',
      value: p50,
      unit: '×',
      goal: '≤ 2.5',
      met: p50.median <= 2.5,
      note:
        `straight p50 ${fig(r['straight@1'], 'p50Ms', 3)} ms p99 ${fig(r['straight@1'], 'p99Ms', 3)} ms, ` +
        `tunnelled p50 ${fig(r['tunnel@1'], 'p50Ms', 3)} ms p99 ${fig(r['tunnel@1'], 'p99Ms', 3)} ms; ` +
        'the tunnel adds one hop (hub → agent over the WebSocket, envelopes encoded and decoded on both sides) ' +
        'and the agent’s own request to the origin',
    },
    {
      group: 'tunnel',
      metric: `peak RSS while tunnelling ${megabytes} MB ÷ ${megabytes / 4} MB (worse of hub, agent)`,
      value: growth,
      unit: '×',
      goal: '≤ 1.1',
      met: growth.median <= 1.1,
      note:
        `at ${megabytes / 4} MB: hub ${mb(small.hub)} MB, agent ${mb(small.agent)} MB; at ${megabytes} MB: ` +
        `hub ${mb(median(d.tunnel.map((x) => x.hub)))} MB, agent ${mb(median(d.tunnel.map((x) => x.agent)))} MB (medians); ` +
        'each side holds at most one tunnel window per stream, so the size of the body must not show',
    },
  ];
}
