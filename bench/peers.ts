/**
 * The public proxy against the proxies people pick instead, on one upstream
 * (nginx, one worker, answering `ok`): p2pstream (`p2pstream server` from the
 * built bin, tracing at its default level, set up through the API) next to
 * Debian's nginx (`proxy_pass`), Caddy (`reverse_proxy`, `respond`) and a
 * minimal Node proxy (bench/minimal-proxy.ts, the runtime's own limit), each
 * in its own process; wrk and curl generate the load from their own processes.
 *
 * - proxied: req/s, p50 and p99 at 32 and 256 keep-alive connections (wrk,
 *   1 thread); p2pstream with tracing off too (what tracing costs);
 * - static: p2pstream's static route against Caddy's `respond`;
 * - https: an https listener against Caddy's, both with one certificate;
 * - download: a 100 MB file from the upstream through each proxy (curl), and
 *   p2pstream's peak RSS meanwhile;
 * - rss (its own group, minutes long): p2pstream's RSS over a run at full load.
 *
 * Every run of a round is interleaved with the others (bench/harness.ts
 * `roundOrder`: rotated, every other round reversed), so
 * drift on this shared machine hits them alike; each figure is a ratio within
 * one round. Absolute figures, the tools' versions, the CPU each process used
 * and the load average go into the rows' notes.
 */
import { readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createCertificate, type GeneratedCertificate } from '../src/tls/certificates.js';
import { type BenchRow, roundOrder, type Spread, spread } from './harness.js';
import {
  addListener,
  forkEntry,
  type Instance,
  sampleProcess,
  startInstance,
  watchPeakRss,
} from './instances.js';
import type { MinimalProxyReady } from './minimal-proxy.js';
import {
  type CaddyPeer,
  curlDownload,
  ensurePeerTools,
  type PeerServer,
  type PeerTools,
  peersDir,
  runWrk,
  startCaddy,
  startNginxProxy,
  startUpstream,
  type Upstream,
  type WrkResult,
} from './peer-servers.js';

export interface PeersBenchOptions {
  /** Seconds per wrk run (default 8). */
  seconds?: number;
  /** Measured rounds (default 3), after a warm-up run of each target. */
  rounds?: number;
  /** Connection counts for the proxied runs (default 32 and 256); static runs use the first. */
  connections?: readonly number[];
  /** Size of the download in MB (default 100). */
  downloadMegabytes?: number;
  /** Progress lines (installing tools, versions). */
  log?: (line: string) => void;
}

export interface PeersRssOptions {
  /** Minutes at full load (default 5). */
  minutes?: number;
  /** wrk connections (default 256). */
  connections?: number;
  log?: (line: string) => void;
}

/** A running p2pstream with a proxy listener (upstream route) and a static listener. */
interface P2pstream {
  instance: Instance;
  proxyUrl: string;
  staticUrl: string;
  /** The https listener (upstream route, the given certificate as its default). */
  httpsUrl: string;
  setTracing(enabled: boolean): Promise<void>;
}

async function startP2pstream(origin: string, tls: GeneratedCertificate): Promise<P2pstream> {
  const instance = await startInstance('peers');
  try {
    const uploaded = await instance.api('POST', '/api/v1/tls/certificates', {
      name: 'bench',
      hosts: ['localhost'],
      source: 'upload',
      certificatePem: tls.cert,
      privateKeyPem: tls.key,
    });
    const proxy = await addListener(instance, 'bench-proxy');
    const answer = await addListener(instance, 'bench-static');
    const secure = await addListener(instance, 'bench-https', uploaded.json.certificate.id);
    for (const listenerId of [proxy.id, secure.id]) {
      await instance.api('POST', '/api/v1/proxy/routes', {
        listenerId,
        pathPrefix: '/',
        target: { type: 'upstream', url: origin },
      });
    }
    await instance.api('POST', '/api/v1/proxy/routes', {
      listenerId: answer.id,
      pathPrefix: '/',
      target: { type: 'static', status: 200, contentType: 'text/plain; charset=utf-8', body: 'ok' },
    });
    return {
      instance,
      proxyUrl: proxy.url,
      staticUrl: answer.url,
      httpsUrl: secure.url,
      async setTracing(enabled) {
        await instance.api('PUT', '/api/v1/traffic/settings', { enabled, level: 'basic' });
      },
    };
  } catch (err) {
    await instance.stop();
    throw err;
  }
}

/** One wrk target: where to send load, whose CPU to count, what to set first. */
interface Target {
  key: string;
  url: string;
  pid: number;
  before?: () => Promise<void>;
}

interface Measured extends WrkResult {
  /** Cores the target's processes used during the run. */
  cores: number;
  /** CPU time the target's processes spent per request, in µs (steadier than req/s on a busy machine). */
  cpuUsPerRequest: number;
}

/** CPU time of a process and its direct children (nginx's workers), in ms. */
async function treeCpuMs(pid: number): Promise<number> {
  let children: number[] = [];
  try {
    const list = await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8');
    children = list.split(' ').filter(Boolean).map(Number);
  } catch {
    // no children file (older kernels): the process alone
  }
  const samples = await Promise.all(
    [pid, ...children].map((p) => sampleProcess(p).catch(() => ({ cpuMs: 0, rssBytes: 0 }))),
  );
  return samples.reduce((sum, s) => sum + s.cpuMs, 0);
}

/**
 * One measured wrk run of `target`, after an unrecorded second at the same
 * load: every target is measured in its steady state, not in its first second
 * after sitting idle through the other targets' runs (a process that idled for
 * a while pays for a cold connection pool and a heap its runtime shrank).
 */
async function measure(tools: PeerTools, target: Target, connections: number, seconds: number) {
  await target.before?.();
  await runWrk(tools, target.url, connections, 1);
  const cpuBefore = await treeCpuMs(target.pid);
  const started = performance.now();
  const result = await runWrk(tools, target.url, connections, seconds);
  const elapsed = performance.now() - started;
  const cpuMs = (await treeCpuMs(target.pid)) - cpuBefore;
  if (result.errors > 0) throw new Error(`${target.key}: ${result.errors} failed requests under wrk`);
  return {
    ...result,
    cores: cpuMs / elapsed,
    cpuUsPerRequest: (cpuMs * 1000) / Math.max(1, result.requests),
  } satisfies Measured;
}

function loadAverage(): string {
  return os
    .loadavg()
    .map((n) => n.toFixed(2))
    .join(' ');
}

/** Runs the peers group; see the module comment. */
export async function benchPeers(options: PeersBenchOptions = {}): Promise<BenchRow[]> {
  const seconds = options.seconds ?? 8;
  const rounds = options.rounds ?? 3;
  const connections = options.connections ?? [32, 256];
  const downloadBytes = Math.round((options.downloadMegabytes ?? 100) * 1e6);
  const log = options.log ?? (() => {});
  const tools = await ensurePeerTools(log);
  log(`peers: ${tools.versions}, load ${loadAverage()}`);
  const loadBefore = loadAverage();
  const temp = await peersDir();
  const stops: (() => Promise<void>)[] = [];
  try {
    const upstream: Upstream = await startUpstream(tools, temp.dir, downloadBytes);
    stops.push(upstream.stop);
    const nginx: PeerServer & { url: string } = await startNginxProxy(tools, temp.dir, upstream.origin);
    stops.push(nginx.stop);
    // One certificate for both https listeners (ECDSA P-256, self-signed).
    const certificate = await createCertificate({ altNames: ['localhost', '127.0.0.1'] });
    const tls = { certFile: path.join(temp.dir, 'cert.pem'), keyFile: path.join(temp.dir, 'key.pem') };
    await writeFile(tls.certFile, certificate.cert);
    await writeFile(tls.keyFile, certificate.key, { mode: 0o600 });
    const caddy: CaddyPeer = await startCaddy(tools, temp.dir, upstream.origin, tls);
    stops.push(caddy.stop);
    const minimal = await forkEntry<MinimalProxyReady>('minimal-proxy', [upstream.origin]);
    stops.push(minimal.stop);
    const p2p = await startP2pstream(upstream.origin, certificate);
    stops.push(() => p2p.instance.stop());

    const traced = () => p2p.setTracing(true);
    const proxied: Target[] = [
      { key: 'nginx', url: nginx.url, pid: nginx.pid },
      { key: 'caddy', url: caddy.proxyUrl, pid: caddy.pid },
      { key: 'p2pstream', url: p2p.proxyUrl, pid: p2p.instance.pid, before: traced },
      {
        key: 'p2pstream-untraced',
        url: p2p.proxyUrl,
        pid: p2p.instance.pid,
        before: () => p2p.setTracing(false),
      },
      { key: 'node', url: minimal.ready.proxyUrl, pid: minimal.pid },
    ];
    // Static answers and https: at the first connection count only.
    const atFirstCount: Target[] = [
      { key: 'caddy-static', url: caddy.staticUrl, pid: caddy.pid },
      { key: 'p2pstream-static', url: p2p.staticUrl, pid: p2p.instance.pid, before: traced },
      { key: 'node-static', url: minimal.ready.staticUrl, pid: minimal.pid },
      { key: 'caddy-https', url: caddy.httpsUrl!, pid: caddy.pid },
      { key: 'p2pstream-https', url: p2p.httpsUrl, pid: p2p.instance.pid, before: traced },
    ];
    const runs: { id: string; target: Target; connections: number }[] = [
      ...connections.flatMap((c) =>
        proxied.map((target) => ({ id: `${target.key}@${c}`, target, connections: c })),
      ),
      ...atFirstCount.map((target) => ({
        id: `${target.key}@${connections[0]!}`,
        target,
        connections: connections[0]!,
      })),
    ];

    for (const run of runs) {
      if (run.connections === connections[0]) await measure(tools, run.target, run.connections, 1);
    }
    const results = new Map<string, Measured[]>(runs.map((r) => [r.id, []]));
    for (let round = 0; round < rounds; round++) {
      for (const run of roundOrder(runs, round)) {
        results.get(run.id)!.push(await measure(tools, run.target, run.connections, seconds));
      }
    }
    await traced();

    // The download: curl through each proxy, in rotating order; p2pstream's peak RSS meanwhile.
    const downloads: { key: string; url: string }[] = [
      { key: 'nginx', url: nginx.url },
      { key: 'caddy', url: caddy.proxyUrl },
      { key: 'p2pstream', url: p2p.proxyUrl },
      { key: 'node', url: minimal.ready.proxyUrl },
    ];
    const mbps = new Map<string, number[]>(downloads.map((d) => [d.key, []]));
    const p2pPeaks: number[] = [];
    for (let round = 0; round < rounds; round++) {
      for (let i = 0; i < downloads.length; i++) {
        const download = downloads[(i + round) % downloads.length]!;
        const watch = download.key === 'p2pstream' ? watchPeakRss([p2p.instance.pid]) : null;
        const result = await curlDownload(tools, `${download.url}${upstream.downloadPath}`, downloadBytes);
        if (watch) p2pPeaks.push((await watch.stop())[0]! / 1e6);
        mbps.get(download.key)!.push(result.megabytesPerSecond);
      }
    }

    const load = `load average ${loadBefore} at the start, ${loadAverage()} at the end; ${tools.versions}`;
    return peerRows({ results, connections, mbps, p2pPeaks, downloadBytes, load, seconds, rounds });
  } finally {
    for (const stop of stops.reverse()) await stop().catch(() => {});
    await temp.remove();
  }
}

interface RowInput {
  results: Map<string, Measured[]>;
  connections: readonly number[];
  mbps: Map<string, number[]>;
  p2pPeaks: number[];
  downloadBytes: number;
  load: string;
  seconds: number;
  rounds: number;
}

const NAMES: Record<string, string> = {
  nginx: 'nginx proxy_pass',
  caddy: 'Caddy reverse_proxy',
  p2pstream: 'p2pstream',
  'p2pstream-untraced': 'p2pstream untraced',
  node: 'minimal Node proxy',
  'caddy-static': 'Caddy respond',
  'p2pstream-static': 'p2pstream static',
  'node-static': 'minimal Node server',
  'caddy-https': 'Caddy reverse_proxy over https',
  'p2pstream-https': 'p2pstream over https',
};

function peerRows(input: RowInput): BenchRow[] {
  const { results } = input;
  const median = (values: number[]) => spread(values).median;
  const ratio = (
    a: string,
    b: string,
    field: 'requestsPerSecond' | 'p50Ms' | 'p99Ms' | 'cpuUsPerRequest',
  ): Spread => {
    const x = results.get(a)!;
    const y = results.get(b)!;
    return spread(x.map((r, i) => r[field] / y[i]![field]));
  };
  const describe = (id: string): string => {
    const [key] = id.split('@');
    const list = results.get(id)!;
    const figure = (pick: (r: Measured) => number, digits = 0) => median(list.map(pick)).toFixed(digits);
    return `${NAMES[key!]} ${figure((r) => r.requestsPerSecond)}/s, p50 ${figure((r) => r.p50Ms, 2)} ms, p99 ${figure((r) => r.p99Ms, 2)} ms, ${figure((r) => r.cores, 2)} cores, ${figure((r) => r.cpuUsPerRequest)} µs CPU per request`;
  };
  const context = `wrk 1 thread, ${input.seconds} s × ${input.rounds} rounds; ${input.load}`;
  const rows: BenchRow[] = [];
  // The absolute figures go into the first row of a block; the rows after it share them.
  const row = (
    metric: string,
    value: Spread,
    unit: string,
    note: string | null,
    goal?: [string, boolean],
  ) => {
    rows.push({
      group: 'peers',
      metric,
      value,
      unit,
      ...(goal ? { goal: goal[0], met: goal[1] } : {}),
      ...(note === null ? {} : { note }),
    });
  };
  for (const [index, c] of input.connections.entries()) {
    const at = (key: string) => `${key}@${c}`;
    const note = [at('p2pstream'), at('caddy'), at('nginx'), at('node')].map(describe).join('; ');
    const rps = ratio(at('p2pstream'), at('caddy'), 'requestsPerSecond');
    const p99 = ratio(at('p2pstream'), at('caddy'), 'p99Ms');
    const first = index === 0;
    row(
      `proxied req/s p2pstream ÷ Caddy reverse_proxy (${c} conns)`,
      rps,
      '×',
      `${note}; ${context}`,
      first ? ['≥ 1.0', rps.median >= 1] : undefined,
    );
    row(
      `proxied p50 p2pstream ÷ Caddy (${c} conns)`,
      ratio(at('p2pstream'), at('caddy'), 'p50Ms'),
      '×',
      null,
    );
    row(
      `proxied p99 p2pstream ÷ Caddy (${c} conns)`,
      p99,
      '×',
      null,
      first ? ['≤ 1.0', p99.median <= 1] : undefined,
    );
    row(
      `proxied req/s p2pstream ÷ nginx proxy_pass (${c} conns)`,
      ratio(at('p2pstream'), at('nginx'), 'requestsPerSecond'),
      '×',
      null,
    );
    row(
      `proxied req/s minimal Node proxy ÷ Caddy (${c} conns)`,
      ratio(at('node'), at('caddy'), 'requestsPerSecond'),
      '×',
      "the runtime's own limit: a node:http server + undici Pool, no routing, header rules or tracing",
    );
    row(
      `proxied req/s p2pstream ÷ minimal Node proxy (${c} conns)`,
      ratio(at('p2pstream'), at('node'), 'requestsPerSecond'),
      '×',
      null,
    );
    // CPU per request is the steadier figure when other work shares the cores.
    row(
      `CPU per proxied request p2pstream ÷ Caddy (${c} conns)`,
      ratio(at('p2pstream'), at('caddy'), 'cpuUsPerRequest'),
      '×',
      null,
    );
    row(
      `CPU per proxied request p2pstream ÷ minimal Node proxy (${c} conns)`,
      ratio(at('p2pstream'), at('node'), 'cpuUsPerRequest'),
      '×',
      null,
    );
  }
  const c0 = input.connections[0]!;
  const traced = ratio(`p2pstream@${c0}`, `p2pstream-untraced@${c0}`, 'requestsPerSecond');
  row(
    `proxied req/s traced (basic) ÷ untraced (${c0} conns)`,
    traced,
    '×',
    [`p2pstream@${c0}`, `p2pstream-untraced@${c0}`].map(describe).join('; '),
    ['≥ 0.95', traced.median >= 0.95],
  );
  row(
    `CPU per proxied request untraced ÷ traced (basic) (${c0} conns)`,
    ratio(`p2pstream-untraced@${c0}`, `p2pstream@${c0}`, 'cpuUsPerRequest'),
    '×',
    null,
  );
  const staticNote = [`p2pstream-static@${c0}`, `caddy-static@${c0}`, `node-static@${c0}`]
    .map(describe)
    .join('; ');
  const staticRps = ratio(`p2pstream-static@${c0}`, `caddy-static@${c0}`, 'requestsPerSecond');
  row(`static req/s p2pstream ÷ Caddy respond (${c0} conns)`, staticRps, '×', `${staticNote}; ${context}`, [
    '≥ 0.7',
    staticRps.median >= 0.7,
  ]);
  row(
    `static p99 p2pstream ÷ Caddy respond (${c0} conns)`,
    ratio(`p2pstream-static@${c0}`, `caddy-static@${c0}`, 'p99Ms'),
    '×',
    null,
  );
  row(
    `static req/s minimal Node server ÷ Caddy respond (${c0} conns)`,
    ratio(`node-static@${c0}`, `caddy-static@${c0}`, 'requestsPerSecond'),
    '×',
    "the runtime's own limit: a node:http server answering `ok`",
  );
  row(
    `CPU per static answer p2pstream ÷ Caddy respond (${c0} conns)`,
    ratio(`p2pstream-static@${c0}`, `caddy-static@${c0}`, 'cpuUsPerRequest'),
    '×',
    null,
  );
  const httpsNote = [`p2pstream-https@${c0}`, `caddy-https@${c0}`].map(describe).join('; ');
  row(
    `https proxied req/s p2pstream ÷ Caddy (${c0} conns, same certificate)`,
    ratio(`p2pstream-https@${c0}`, `caddy-https@${c0}`, 'requestsPerSecond'),
    '×',
    `ECDSA P-256, TLS 1.3, HTTP/1.1 keep-alive; ${httpsNote}`,
  );
  row(
    `https proxied p99 p2pstream ÷ Caddy (${c0} conns)`,
    ratio(`p2pstream-https@${c0}`, `caddy-https@${c0}`, 'p99Ms'),
    '×',
    null,
  );
  row(
    `CPU per https proxied request p2pstream ÷ Caddy (${c0} conns)`,
    ratio(`p2pstream-https@${c0}`, `caddy-https@${c0}`, 'cpuUsPerRequest'),
    '×',
    null,
  );
  const mb = Math.round(input.downloadBytes / 1e6);
  const mbps = (key: string) => input.mbps.get(key)!;
  const mbpsRatio = (a: string, b: string) => spread(mbps(a).map((v, i) => v / mbps(b)[i]!));
  const downloadNote = ['p2pstream', 'caddy', 'nginx', 'node']
    .map((k) => `${NAMES[k]} ${Math.round(median(mbps(k)))} MB/s`)
    .join(', ');
  row(
    `${mb} MB download MB/s p2pstream ÷ Caddy`,
    mbpsRatio('p2pstream', 'caddy'),
    '×',
    `curl; ${downloadNote}`,
  );
  row(`${mb} MB download MB/s p2pstream ÷ nginx`, mbpsRatio('p2pstream', 'nginx'), '×', null);
  row(`p2pstream peak RSS during the ${mb} MB download`, spread(input.p2pPeaks), 'MB', null);
  return rows;
}

/**
 * p2pstream's RSS over `minutes` at full load (wrk, 256 connections, tracing
 * at its default level), sampled every 5 s: the last minute's peak against
 * the first minute's (after which the heap has grown to its working size).
 */
export async function benchPeersRss(options: PeersRssOptions = {}): Promise<BenchRow[]> {
  const minutes = options.minutes ?? 5;
  const connections = options.connections ?? 256;
  const log = options.log ?? (() => {});
  const tools = await ensurePeerTools(log);
  const loadBefore = loadAverage();
  const temp = await peersDir();
  const stops: (() => Promise<void>)[] = [];
  try {
    const upstream = await startUpstream(tools, temp.dir, 1);
    stops.push(upstream.stop);
    const p2p = await startP2pstream(
      upstream.origin,
      await createCertificate({ altNames: ['localhost', '127.0.0.1'] }),
    );
    stops.push(() => p2p.instance.stop());
    const totalMs = minutes * 60_000;
    const minuteMs = Math.min(60_000, totalMs / 5);
    const samples: { at: number; rss: number }[] = [];
    const started = performance.now();
    const wrk = runWrk(tools, p2p.proxyUrl, connections, Math.round(totalMs / 1000));
    let done = false;
    void wrk.finally(() => {
      done = true;
    });
    while (!done) {
      samples.push({
        at: performance.now() - started,
        rss: (await sampleProcess(p2p.instance.pid)).rssBytes,
      });
      await Promise.race([wrk, new Promise((resolve) => setTimeout(resolve, Math.min(5000, minuteMs / 4)))]);
    }
    const result = await wrk;
    if (result.errors > 0) throw new Error(`${result.errors} failed requests in the RSS run`);
    const peak = (from: number, to: number) =>
      Math.max(...samples.filter((s) => s.at >= from && s.at < to).map((s) => s.rss));
    const first = peak(0, minuteMs);
    const last = peak(totalMs - minuteMs, Number.POSITIVE_INFINITY);
    const label = minutes >= 1 ? `${minutes} min` : `${Math.round(minutes * 60)} s`;
    const value = last / first;
    return [
      {
        group: 'peers rss',
        metric: `p2pstream RSS over ${label} at full load: last ÷ first ${Math.round(minuteMs / 1000)} s (peaks)`,
        value: spread([value]),
        unit: '×',
        goal: '≤ 1.1',
        met: value <= 1.1,
        note: `${Math.round(result.requestsPerSecond)} req/s, ${connections} conns; first ${(first / 1e6).toFixed(1)} MB, last ${(last / 1e6).toFixed(1)} MB, max ${(Math.max(...samples.map((s) => s.rss)) / 1e6).toFixed(1)} MB over ${samples.length} samples; load average ${loadBefore} at the start, ${loadAverage()} at the end`,
      },
    ];
  } finally {
    for (const stop of stops.reverse()) await stop().catch(() => {});
    await temp.remove();
  }
}
