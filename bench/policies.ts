/**
 * What traffic policies cost and how exactly they hold, measured in one run
 * against an in-process data plane on loopback (self-contained: starts and
 * stops its own upstream, data plane and clients; prints nothing):
 *
 * - overhead: proxied req/s with 20 WAF rules, 5 rate limits and 1 shaper
 *   that all evaluate and none triggers, ÷ the same listener without
 *   policies (modes interleaved per round, so drift affects both alike);
 * - rate-limit accuracy: a 1,000 req/s limit (sliding window, 1 s) under 4×
 *   that offered load: accepted req/s ÷ 1,000 over the run;
 * - shaper accuracy: a 1 MiB/s download shaper: delivered bytes/s ÷ 1 MiB/s.
 */
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Pool } from 'undici';
import { DataPlane } from '../src/dataplane/data-plane.js';
import { PolicyEngine } from '../src/dataplane/policy-engine.js';
import { TraceRecorder } from '../src/dataplane/trace-recorder.js';
import { compileExpression } from '../src/domain/policy-expression.js';
import type { Compiled, CompiledPolicies } from '../src/domain/policy-service.js';
import { createLogger } from '../src/logger.js';
import type {
  ListenerRecord,
  RateLimitRuleRecord,
  RouteRecord,
  ShaperRecord,
  WafRuleRecord,
} from '../src/storage/schema.js';
import { type BenchRow, nowMs, spread } from './harness.js';

export interface PoliciesBenchOptions {
  /** Requests per mode per round for the overhead figure (default 4000). */
  requests?: number;
  concurrency?: number;
  rounds?: number;
  /** Seconds of the rate-limit and shaper runs (default 10). */
  seconds?: number;
}

const NOW = new Date().toISOString();
const MiB = 1024 * 1024;

function compiled<R extends { expression: string }>(record: R): Compiled<R> {
  return { record, match: compileExpression(record.expression) };
}

function waf(i: number): WafRuleRecord {
  return {
    id: `waf-${i}`,
    name: `waf ${i}`,
    priority: i,
    // Realistic shapes, none of which matches /bench/…: prefixes, addresses, headers, methods.
    expression: [
      `path_prefix(path, "/admin${i}")`,
      `ip_in(ip, "10.${i}.0.0/16") && path_prefix(path, "/internal")`,
      `headers["user-agent"] == "badbot-${i}"`,
      `method == "TRACE" || path.endsWith(".php${i}")`,
    ][i % 4]!,
    action: i % 5 === 0 ? 'log' : 'block',
    status: 403,
    templateId: null,
    mode: 'always',
    auto: null,
    passTtlSeconds: 3600,
    enabled: true,
    createdAt: NOW,
    updatedAt: NOW,
  };
}

function rateLimit(i: number, overrides: Partial<RateLimitRuleRecord> = {}): RateLimitRuleRecord {
  return {
    id: `rl-${i}`,
    name: `limit ${i}`,
    priority: i,
    expression: 'path_prefix(path, "/bench")',
    key: i % 2 === 0 ? ['ip'] : ['ip', 'path'],
    algorithm: (['fixed_window', 'sliding_window', 'token_bucket'] as const)[i % 3]!,
    limit: 1_000_000_000,
    windowSeconds: 60,
    ratePerSecond: 1_000_000_000,
    burst: 1_000_000_000,
    status: 429,
    templateId: null,
    enabled: true,
    createdAt: NOW,
    updatedAt: NOW,
    ...overrides,
  };
}

function shaper(overrides: Partial<ShaperRecord> = {}): ShaperRecord {
  return {
    id: 'shaper',
    name: 'shaper',
    priority: 0,
    expression: 'path_prefix(path, "/bench")',
    key: ['ip'],
    downloadBytesPerSecond: 10 * 1024 * MiB,
    uploadBytesPerSecond: null,
    burstBytes: 1024 * MiB,
    exemptBytes: 0,
    enabled: true,
    createdAt: NOW,
    updatedAt: NOW,
    ...overrides,
  };
}

const EMPTY: CompiledPolicies = { waf: [], rateLimits: [], shapers: [] };

/** Runs the three measurements; returns harness rows. */
export async function benchPolicies(options: PoliciesBenchOptions = {}): Promise<BenchRow[]> {
  const requests = options.requests ?? 4000;
  const concurrency = options.concurrency ?? 32;
  const rounds = options.rounds ?? 3;
  const seconds = options.seconds ?? 10;
  const big = Buffer.alloc(64 * 1024, 7);
  const upstream = createServer((req, res) => {
    if (req.url?.startsWith('/bench/download')) {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      // Streams until the client goes away.
      const write = () => {
        while (res.write(big)) {
          if (res.destroyed) return;
        }
      };
      res.on('drain', write);
      write();
      return;
    }
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '2' });
    res.end('ok');
  });
  upstream.listen(0, '127.0.0.1');
  await once(upstream, 'listening');
  const upstreamPort = (upstream.address() as AddressInfo).port;
  const dataPlane = new DataPlane({
    logger: createLogger('silent'),
    recorder: new TraceRecorder({ enabled: true }),
  });
  const engine = new PolicyEngine({
    install: (slot, stage) => dataPlane.setStage(slot, stage),
    logger: createLogger('silent'),
  });
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
  const origin = `http://127.0.0.1:${dataPlane.boundPort(listener.id)}`;
  const pool = new Pool(origin, { connections: 64, keepAliveTimeout: 10_000 });
  const full: CompiledPolicies = {
    waf: Array.from({ length: 20 }, (_, i) => compiled(waf(i))),
    rateLimits: Array.from({ length: 5 }, (_, i) => compiled(rateLimit(i))),
    shapers: [compiled(shaper())],
  };
  const rows: BenchRow[] = [];
  try {
    // 1. Overhead of policies that evaluate but do not trigger.
    const modes = [
      { name: 'without', set: EMPTY },
      { name: 'with', set: full },
    ];
    const rps: Record<string, number[]> = { without: [], with: [] };
    for (const mode of modes) {
      engine.setPolicies(mode.set);
      await closedLoop(pool, Math.min(requests, 1000), concurrency);
    }
    for (let round = 0; round < rounds; round++) {
      for (let i = 0; i < modes.length; i++) {
        const mode = modes[(round + i) % modes.length]!;
        engine.setPolicies(mode.set);
        rps[mode.name]!.push(await closedLoop(pool, requests, concurrency));
      }
    }
    const ratio = spread(rps.with!.map((v, i) => v / rps.without![i]!));
    rows.push({
      group: 'policies',
      metric: 'proxied req/s with 20 WAF rules + 5 rate limits + 1 shaper (none triggering) ÷ without',
      value: ratio,
      unit: '×',
      goal: '≥ 0.85',
      met: ratio.median >= 0.85,
      note: `without ${Math.round(spread(rps.without!).median)}/s, with ${Math.round(spread(rps.with!).median)}/s, ${concurrency} conns`,
    });

    // 2. A 1,000 req/s limit under 4× that offered load.
    engine.setPolicies({
      waf: [],
      rateLimits: [compiled(rateLimit(0, { algorithm: 'sliding_window', limit: 1000, windowSeconds: 1 }))],
      shapers: [],
    });
    const paced = await pacedLoad(pool, 4000, seconds * 1000);
    const acceptedRatio = paced.accepted / seconds / 1000;
    rows.push({
      group: 'policies',
      metric: 'accepted req/s under a 1,000 req/s limit at 4× offered load ÷ 1,000',
      value: spread([acceptedRatio]),
      unit: '×',
      goal: '0.95–1.05',
      met: acceptedRatio >= 0.95 && acceptedRatio <= 1.05,
      note: `${seconds} s, offered ${Math.round(paced.sent / seconds)}/s (goal 4000/s), accepted ${paced.accepted}, refused ${paced.refused}`,
    });

    // 3. A 1 MiB/s download shaper.
    engine.setPolicies({
      waf: [],
      rateLimits: [],
      shapers: [compiled(shaper({ downloadBytesPerSecond: MiB, burstBytes: 64 * 1024 }))],
    });
    const delivered = await shapedDownload(origin, seconds * 1000);
    const shaped = delivered.bytes / delivered.seconds / MiB;
    rows.push({
      group: 'policies',
      metric: 'delivered bytes/s through a 1 MiB/s shaper ÷ 1 MiB/s',
      value: spread([shaped]),
      unit: '×',
      goal: '0.95–1.05',
      met: shaped >= 0.95 && shaped <= 1.05,
      note: `${(delivered.bytes / MiB).toFixed(2)} MiB in ${delivered.seconds.toFixed(2)} s (burst 64 KiB included)`,
    });
    return rows;
  } finally {
    engine.close();
    await pool.close();
    await dataPlane.close();
    upstream.closeAllConnections();
    await new Promise<void>((resolve) => upstream.close(() => resolve()));
  }
}

async function closedLoop(pool: Pool, total: number, concurrency: number): Promise<number> {
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

/** Sends `rate` req/s for `durationMs` (at most 64 in flight); counts 200s and 429s. */
async function pacedLoad(
  pool: Pool,
  rate: number,
  durationMs: number,
): Promise<{ sent: number; accepted: number; refused: number }> {
  let sent = 0;
  let accepted = 0;
  let refused = 0;
  let inFlight = 0;
  const pending = new Set<Promise<void>>();
  const start = nowMs();
  while (nowMs() - start < durationMs) {
    const due = Math.floor(((nowMs() - start) / 1000) * rate);
    while (sent < due && inFlight < 64) {
      sent++;
      inFlight++;
      const p = pool
        .request({ method: 'GET', path: '/bench/limited' })
        .then(async (res) => {
          await res.body.dump();
          if (res.statusCode === 200) accepted++;
          else if (res.statusCode === 429) refused++;
        })
        .finally(() => {
          inFlight--;
          pending.delete(p);
        });
      pending.add(p);
    }
    await new Promise((resolve) => setImmediate(resolve));
  }
  await Promise.all(pending);
  return { sent, accepted, refused };
}

/** Reads a shaped endless download for `durationMs`; bytes and seconds measured. */
async function shapedDownload(
  origin: string,
  durationMs: number,
): Promise<{ bytes: number; seconds: number }> {
  const client = new Pool(origin, { connections: 1 });
  const controller = new AbortController();
  let bytes = 0;
  const start = nowMs();
  try {
    const res = await client.request({ method: 'GET', path: '/bench/download', signal: controller.signal });
    const timer = setTimeout(() => controller.abort(), durationMs);
    try {
      for await (const chunk of res.body) bytes += (chunk as Buffer).length;
    } catch {
      // aborted at the end of the run
    } finally {
      clearTimeout(timer);
    }
  } finally {
    await client.destroy();
  }
  return { bytes, seconds: (nowMs() - start) / 1000 };
}
