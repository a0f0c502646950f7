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
 *   tier evicts, the disk tier holds them) ÷ `memoryMiB`, measured from after
 *   the same working set was proxied uncached, with 1 KiB answers beside it,
 *   until the RSS settled (warm-up) — goal ≤ 1.1; and the growth of
 *   what is alive after a full GC (JS heap used + Buffers), which is what
 *   `memoryMiB` bounds — goal ≤ 1.1;
 * - coalescing: 1,000 concurrent requests for one uncached key whose upstream
 *   answers once the other 999 wait in the proxy → requests the upstream
 *   saw — goal exactly 1.
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

interface ProxyStats {
  rss: number;
  heap: number;
  heapTotal: number;
  /** Resident bytes of V8's young generation. */
  young: number;
  external: number;
  /** Resident bytes of the process's malloc heap (`[heap]`), when known. */
  brk: number | null;
  cache: { entries: number; memoryBytes: number; hits: number };
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
    // BENCH_NODE_ARGS (e.g. '--cpu-prof --cpu-prof-dir=prof') applies to the proxy process too.
    execArgv: ['--expose-gc', ...(process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean)],
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
    // The proxy exits by itself once stopped (so a --cpu-prof profile is written); kill it if it does not.
    if (child.exitCode === null) {
      const exited = once(child, 'exit');
      const timer = setTimeout(() => child.kill(), 10_000);
      await exited;
      clearTimeout(timer);
    }
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
  // The slow key's upstream answers once the other misses are seen waiting in the proxy.
  let openSlowGate: () => void = () => {};
  const slowGate = new Promise<void>((resolve) => {
    openSlowGate = resolve;
  });
  let upstreamSeen = 0;
  const upstream = createServer((req: IncomingMessage, res: ServerResponse) => {
    upstreamSeen++;
    const url = req.url ?? '/';
    if (url.startsWith('/c/slow')) {
      slowSeen++;
      void slowGate.then(() => {
        res.writeHead(200, { 'cache-control': 'max-age=3600', 'content-length': String(small.length) });
        res.end(small);
      });
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
      async (child, pool, port) => {
        const rps: Record<'hit' | 'proxied', number[]> = { hit: [], proxied: [] };
        const paths = { hit: '/c/object', proxied: '/p/object' };
        for (const mode of ['hit', 'proxied'] as const) await closedLoop(pool, paths[mode], 500, concurrency);
        // Each answer of a mode must be what the mode says: every hit-mode request a cache hit
        // (none reaching the upstream), and no proxied one.
        let unsound = 0;
        for (let round = 0; round < rounds; round++) {
          const order = round % 2 === 0 ? (['hit', 'proxied'] as const) : (['proxied', 'hit'] as const);
          for (const mode of order) {
            const hitsBefore = (await ask<ProxyStats>(child, { cmd: 'stats' })).cache.hits;
            const seenBefore = upstreamSeen;
            const result = await runWrk(
              tools,
              `http://127.0.0.1:${port}${paths[mode]}`,
              concurrency,
              seconds,
            );
            const hits = (await ask<ProxyStats>(child, { cmd: 'stats' })).cache.hits - hitsBefore;
            const seen = upstreamSeen - seenBefore;
            // wrk counts the requests it completed; a few more may have been cut at its end.
            const sound =
              mode === 'hit' ? hits >= result.requests && seen === 0 : hits === 0 && seen >= result.requests;
            if (!sound || result.errors > 0) unsound++;
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
          met: ratio.median >= 3 && unsound === 0,
          note: `hits ${Math.round(spread(rps.hit).median)}/s, proxied ${Math.round(spread(rps.proxied).median)}/s, 1 KiB body, the same proxy process and wrk (1 thread × ${concurrency} conns × ${seconds} s) for both, modes alternating per round (${rounds} rounds); every hit-mode answer a cache hit and every proxied one from the upstream${unsound === 0 ? '' : ` — NOT in ${unsound} runs`}; proxy, upstream and wrk each in their own process on the same cores`,
        });

        // 3. Concurrent misses of one key.
        slowSeen = 0;
        const answering = Promise.all(
          Array.from({ length: misses }, async () => {
            const res = await pool.request({ method: 'GET', path: '/c/slow' });
            await res.body.dump();
            return res.statusCode;
          }),
        );
        // Held until one miss is at the upstream and all the others wait for it in the proxy
        // (at most 60 s: then the row shows how many did).
        let waiting = 0;
        const deadline = nowMs() + 60_000;
        while (nowMs() < deadline) {
          waiting = (await ask<{ waiting: number }>(child, { cmd: 'waiting' })).waiting;
          if (slowSeen >= 1 && waiting >= misses - 1) break;
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
        openSlowGate();
        const answers = await answering;
        const failed = answers.filter((s) => s !== 200).length;
        rows.push({
          group: 'cache',
          metric: `upstream requests for ${misses} concurrent misses of one key`,
          value: spread([slowSeen]),
          unit: 'requests',
          goal: '= 1',
          met: slowSeen === 1 && failed === 0 && waiting === misses - 1,
          note: `${misses - failed} of ${misses} answered 200; the upstream answered once ${waiting} of them waited in the proxy for the one miss`,
        });
      },
    );

    // 2. RSS with a working set 10× the memory tier.
    const objects = Math.ceil((10 * memoryMiB * MiB) / objectBytes);
    await withProxy(
      upstreamUrl,
      { memoryMiB, diskMiB: 20 * memoryMiB, hotObjectKiB: 256 },
      async (child, pool) => {
        const stats = () => ask<ProxyStats>(child, { cmd: 'stats' });
        let peak = 0;
        const fetchAll = async (prefix: string) => {
          let next = 0;
          await Promise.all(
            Array.from({ length: 16 }, async () => {
              while (next < objects) {
                const i = next++;
                const res = await pool.request({ method: 'GET', path: `${prefix}${i}` });
                await res.body.dump();
                if (i % 256 === 0) peak = Math.max(peak, (await stats()).rss);
              }
            }),
          );
        };
        // The same traffic proxied uncached first, until the process stops growing (V8's young
        // generation reaches its size and is touched whole, sockets, allocator arenas): what
        // follows is what the cache adds. Each pass also proxies 1 KiB answers: 128 KiB bodies
        // make V8 collect for their external memory long before its young generation is full,
        // so without them the young generation was still half untouched after the warm-up
        // (~14 of 32 MiB resident) and filled up during the measurement, counted as the cache's.
        const start = await stats();
        let before = start;
        let warmups = 0;
        for (let settled = false; !settled && warmups < 6; warmups++) {
          await fetchAll('/p/set/');
          await closedLoop(pool, '/p/object', 4 * objects, 16);
          const now = await stats();
          settled = warmups >= 1 && Math.abs(now.rss - before.rss) <= 0.02 * before.rss;
          before = now;
        }
        peak = before.rss;
        const afterPass: number[] = [];
        for (let pass = 0; pass < 2; pass++) {
          await fetchAll('/c/set/');
          afterPass.push((await stats()).rss);
        }
        const after = await stats();
        peak = Math.max(peak, after.rss);
        const growth = (after.rss - before.rss) / (memoryMiB * MiB);
        // What the young generation's residency changed by is V8's, not the cache's (≤ 32 MiB either way).
        const youngChange = after.young - before.young;
        const mib = (bytes: number) => (bytes / MiB).toFixed(0);
        rows.push({
          group: 'cache',
          metric: `proxy RSS growth with a working set 10× memoryMiB (${memoryMiB} MiB) ÷ memoryMiB`,
          value: spread([growth]),
          unit: '×',
          goal: '≤ 1.1',
          met: growth <= 1.1,
          note: `RSS ${mib(start.rss)} → ${mib(before.rss)} MiB proxying the working set uncached (${warmups} passes, until it changed by ≤ 2%), → ${mib(after.rss)} MiB (peak ${mib(peak)}; ${afterPass.map(mib).join(' then ')} MiB after each pass) after ${objects} × 128 KiB fetched twice through the cache (JS heap committed ${mib(before.heapTotal)} → ${mib(after.heapTotal)} MiB, used ${mib(before.heap)} → ${mib(after.heap)} MiB, young generation resident ${mib(before.young)} → ${mib(after.young)} MiB, RSS growth without its change ${((after.rss - before.rss - youngChange) / (memoryMiB * MiB)).toFixed(2)}× memoryMiB; Buffers ${mib(before.external)} → ${mib(after.external)} MiB; malloc heap ${mib(before.brk ?? 0)} → ${mib(after.brk ?? 0)} MiB), ${after.cache.entries} entries, memory tier ${(after.cache.memoryBytes / MiB).toFixed(1)} MiB counted (index and segments), ${after.cache.hits} hits`,
        });
        // What memoryMiB bounds: the bytes the cache keeps alive (bodies and index), after a full GC.
        const live = (after.heap + after.external - (before.heap + before.external)) / (memoryMiB * MiB);
        rows.push({
          group: 'cache',
          metric: `live JS heap + Buffer growth with a working set 10× memoryMiB (${memoryMiB} MiB) ÷ memoryMiB`,
          value: spread([live]),
          unit: '×',
          goal: '≤ 1.1',
          met: live <= 1.1,
          note: `after a full GC; the memory tier counts ${(after.cache.memoryBytes / MiB).toFixed(1)} MiB of ${memoryMiB}`,
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
