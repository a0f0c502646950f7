/**
 * The response cache's three goals, each measured in one run against a data
 * plane in its own process (bench/cache-server.ts) with an upstream and the
 * clients in this one:
 *
 * - hits: req/s answered from the cache (one 1 KiB object, memory tier) ÷
 *   req/s of the same request proxied uncached to the local upstream, both
 *   under wrk (modes interleaved per round) — goal ≥ 3;
 * - memory: growth of the proxy process's RSS (after a full GC) while a
 *   working set 10× `memoryMiB` is fetched twice (128 KiB objects: the memory
 *   tier evicts, the disk tier holds them) ÷ `memoryMiB` — goal ≤ 1.1;
 * - coalescing: 1,000 concurrent requests for one uncached key whose upstream
 *   answers after 300 ms → requests the upstream saw — goal exactly 1.
 */
import { type ChildProcess, fork } from 'node:child_process';
import { once } from 'node:events';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { Pool } from 'undici';
import { type BenchRow, nowMs, spread } from './harness.js';
import { DIST } from './instances.js';
import { ensurePeerTools, runWrk } from './peer-servers.js';

const SERVER = path.join(DIST, 'bench', 'cache-server.js');
const MiB = 1024 * 1024;

export interface CacheBenchOptions {
  /** Seconds of wrk per mode per round for the hit figure (default 4). */
  seconds?: number;
  rounds?: number;
  concurrency?: number;
  /** Memory tier of the RSS run in MiB (default 32; the working set is 10×). */
  memoryMiB?: number;
  /** Concurrent misses of one key (default 1000). */
  misses?: number;
}

function ask<T>(child: ChildProcess, message: unknown): Promise<T> {
  return new Promise((resolve, reject) => {
    const onMessage = (answer: T & { error?: string }) => {
      child.off('exit', onExit);
      if (answer.error) reject(new Error(answer.error));
      else resolve(answer);
    };
    const onExit = (code: number | null) => reject(new Error(`cache bench server exited with ${code}`));
    child.once('message', onMessage);
    child.once('exit', onExit);
    child.send(message as object);
  });
}

async function withProxy<T>(
  upstreamUrl: string,
  settings: { memoryMiB: number; diskMiB: number; hotObjectKiB: number },
  run: (child: ChildProcess, pool: Pool, port: number) => Promise<T>,
): Promise<T> {
  const child = fork(SERVER, [], {
    execArgv: ['--expose-gc'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  try {
    const { port } = await ask<{ port: number }>(child, { cmd: 'start', upstreamUrl, ...settings });
    const pool = new Pool(`http://127.0.0.1:${port}`, { connections: 1024, keepAliveTimeout: 10_000 });
    try {
      return await run(child, pool, port);
    } finally {
      await pool.close();
    }
  } finally {
    await ask(child, { cmd: 'stop' }).catch(() => {});
    child.kill();
  }
}

/** Runs the three measurements; returns harness rows. */
export async function benchCache(options: CacheBenchOptions = {}): Promise<BenchRow[]> {
  const seconds = options.seconds ?? 4;
  const rounds = options.rounds ?? 3;
  const concurrency = options.concurrency ?? 32;
  const memoryMiB = options.memoryMiB ?? 32;
  const misses = options.misses ?? 1000;
  const small = Buffer.alloc(1024, 97);
  const objectBytes = 128 * 1024;
  const object = Buffer.alloc(objectBytes, 98);
  let slowSeen = 0;
  const upstream = createServer((req: IncomingMessage, res: ServerResponse) => {
    const url = req.url ?? '/';
    if (url.startsWith('/c/slow')) {
      slowSeen++;
      setTimeout(() => {
        res.writeHead(200, { 'cache-control': 'max-age=3600', 'content-length': String(small.length) });
        res.end(small);
      }, 300);
      return;
    }
    const body = url.includes('/set/') ? object : small;
    res.writeHead(200, { 'cache-control': 'max-age=3600', 'content-length': String(body.length) });
    res.end(body);
  });
  upstream.listen(0, '127.0.0.1');
  await once(upstream, 'listening');
  const upstreamUrl = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;
  const rows: BenchRow[] = [];
  try {
    // 1. Hits against the same request proxied.
    const tools = await ensurePeerTools();
    await withProxy(
      upstreamUrl,
      { memoryMiB: 64, diskMiB: 256, hotObjectKiB: 256 },
      async (_child, pool, port) => {
        const rps: Record<'hit' | 'proxied', number[]> = { hit: [], proxied: [] };
        const paths = { hit: '/c/object', proxied: '/p/object' };
        for (const mode of ['hit', 'proxied'] as const) await closedLoop(pool, paths[mode], 500, concurrency);
        for (let round = 0; round < rounds; round++) {
          const order = round % 2 === 0 ? (['hit', 'proxied'] as const) : (['proxied', 'hit'] as const);
          for (const mode of order) {
            const result = await runWrk(
              tools,
              `http://127.0.0.1:${port}${paths[mode]}`,
              concurrency,
              seconds,
            );
            rps[mode].push(result.requestsPerSecond);
          }
        }
        const ratio = spread(rps.hit.map((v, i) => v / rps.proxied[i]!));
        rows.push({
          group: 'cache',
          metric: 'cache hits/s ÷ the same request proxied to a local upstream',
          value: ratio,
          unit: '×',
          goal: '≥ 3',
          met: ratio.median >= 3,
          note: `hits ${Math.round(spread(rps.hit).median)}/s, proxied ${Math.round(spread(rps.proxied).median)}/s, 1 KiB body, wrk 1 thread × ${concurrency} conns × ${seconds} s; proxy, upstream and wrk each in their own process on the same cores`,
        });

        // 3. Concurrent misses of one key.
        slowSeen = 0;
        const answers = await Promise.all(
          Array.from({ length: misses }, async () => {
            const res = await pool.request({ method: 'GET', path: '/c/slow' });
            await res.body.dump();
            return res.statusCode;
          }),
        );
        const failed = answers.filter((s) => s !== 200).length;
        rows.push({
          group: 'cache',
          metric: `upstream requests for ${misses} concurrent misses of one key`,
          value: spread([slowSeen]),
          unit: 'requests',
          goal: '= 1',
          met: slowSeen === 1 && failed === 0,
          note: `${misses - failed} of ${misses} answered 200; the upstream answers after 300 ms`,
        });
      },
    );

    // 2. RSS with a working set 10× the memory tier.
    const objects = Math.ceil((10 * memoryMiB * MiB) / objectBytes);
    await withProxy(
      upstreamUrl,
      { memoryMiB, diskMiB: 20 * memoryMiB, hotObjectKiB: 256 },
      async (child, pool) => {
        for (let i = 0; i < 300; i++) {
          const res = await pool.request({ method: 'GET', path: `/p/warm/${i}` });
          await res.body.dump();
        }
        const before = await ask<{ rss: number }>(child, { cmd: 'stats' });
        let peak = before.rss;
        for (let pass = 0; pass < 2; pass++) {
          let next = 0;
          await Promise.all(
            Array.from({ length: 16 }, async () => {
              while (next < objects) {
                const i = next++;
                const res = await pool.request({ method: 'GET', path: `/c/set/${i}` });
                await res.body.dump();
                if (i % 256 === 0)
                  peak = Math.max(peak, (await ask<{ rss: number }>(child, { cmd: 'stats' })).rss);
              }
            }),
          );
        }
        const after = await ask<{
          rss: number;
          cache: { entries: number; memoryBytes: number; hits: number };
        }>(child, { cmd: 'stats' });
        peak = Math.max(peak, after.rss);
        const growth = (after.rss - before.rss) / (memoryMiB * MiB);
        rows.push({
          group: 'cache',
          metric: `proxy RSS growth with a working set 10× memoryMiB (${memoryMiB} MiB) ÷ memoryMiB`,
          value: spread([growth]),
          unit: '×',
          goal: '≤ 1.1',
          met: growth <= 1.1,
          note: `RSS ${(before.rss / MiB).toFixed(0)} → ${(after.rss / MiB).toFixed(0)} MiB (peak ${(peak / MiB).toFixed(0)}), ${objects} × 128 KiB fetched twice, ${after.cache.entries} entries, memory tier ${(after.cache.memoryBytes / MiB).toFixed(1)} MiB, ${after.cache.hits} hits`,
        });
      },
    );
    return rows;
  } finally {
    upstream.closeAllConnections();
    await new Promise<void>((resolve) => upstream.close(() => resolve()));
  }
}

async function closedLoop(pool: Pool, pathname: string, total: number, concurrency: number): Promise<number> {
  let started = 0;
  const worker = async () => {
    while (started < total) {
      started += 1;
      const res = await pool.request({ method: 'GET', path: pathname });
      await res.body.dump();
      if (res.statusCode !== 200) throw new Error(`request failed with ${res.statusCode}`);
    }
  };
  const start = nowMs();
  await Promise.all(Array.from({ length: concurrency }, worker));
  return (total / (nowMs() - start)) * 1000;
}
