/**
 * The proxy side of the cache benchmark, run as a child process (forked with
 * --expose-gc) so its memory is measured alone: a data plane with the
 * response cache (disk tier in a temp dir) and one listener routing
 * everything to the parent's upstream. Paths under `/c/` match the cache
 * rule; everything else is proxied uncached.
 *
 * Messages: `{cmd: 'start', upstreamUrl, memoryMiB, diskMiB, hotObjectKiB}` →
 * `{port}`; `{cmd: 'stats'}` → `{rss, heap, heapTotal, young, external, brk, cache}` (after a full GC;
 * `young`: resident bytes of V8's young generation; `brk`: resident bytes of the malloc heap); `{cmd: 'waiting'}` → `{waiting}` (requests
 * waiting for another's origin answer);
 * `{cmd: 'stop'}` → `{}`.
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { getHeapSpaceStatistics } from 'node:v8';
import { DataPlane } from '../src/dataplane/data-plane.js';
import { compileExpression } from '../src/domain/policy-expression.js';
import { createLogger } from '../src/logger.js';
import type { CacheRuleRecord, ListenerRecord, RouteRecord } from '../src/storage/schema.js';

type Message =
  | { cmd: 'start'; upstreamUrl: string; memoryMiB: number; diskMiB: number; hotObjectKiB: number }
  | { cmd: 'stats' }
  | { cmd: 'waiting' }
  | { cmd: 'stop' };

const gc = (globalThis as { gc?: () => void }).gc;
const NOW = new Date().toISOString();
let dataPlane: DataPlane | null = null;
let dataDir: string | null = null;

async function handle(message: Message): Promise<unknown> {
  switch (message.cmd) {
    case 'start': {
      dataDir = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-bench-cache-'));
      dataPlane = new DataPlane({ logger: createLogger('silent'), dataDir });
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
        target: { type: 'upstream', url: message.upstreamUrl },
        createdAt: NOW,
        updatedAt: NOW,
      };
      await dataPlane.start({ listeners: [listener], routes: [route] });
      const rule: CacheRuleRecord = {
        id: 'bench-rule',
        name: 'bench',
        priority: 0,
        expression: 'path_prefix(path, "/c")',
        ttl: { mode: 'origin', seconds: 0 },
        queryMode: 'include',
        queryAllowlist: [],
        varyHeaders: [],
        maxObjectBytes: 100 * 1024 * 1024,
        enabled: true,
        createdAt: NOW,
        updatedAt: NOW,
      };
      dataPlane.cache!.configure(
        {
          enabled: true,
          memoryMiB: message.memoryMiB,
          diskMiB: message.diskMiB,
          hotObjectKiB: message.hotObjectKiB,
          maxEntries: 1_000_000,
          cleanupSeconds: 3600,
        },
        [{ record: rule, expression: compileExpression(rule.expression) }],
      );
      return { port: dataPlane.boundPort(listener.id) };
    }
    case 'stats': {
      gc?.();
      gc?.();
      const memory = process.memoryUsage();
      return {
        rss: memory.rss,
        brk: mallocHeapRss(),
        heap: memory.heapUsed,
        heapTotal: memory.heapTotal,
        young: youngGenerationRss(),
        external: memory.external,
        cache: dataPlane?.cache?.stats() ?? null,
      };
    }
    case 'waiting':
      return { waiting: dataPlane?.cache?.waiting ?? 0 };
    case 'stop': {
      await dataPlane?.close();
      if (dataDir) await rm(dataDir, { recursive: true, force: true });
      return {};
    }
  }
}

process.on('message', (message: Message) => {
  handle(message).then(
    (answer) => {
      // After `stop`, closing the channel lets the process end normally (profiles get written).
      if (message.cmd === 'stop') process.send?.(answer, () => process.disconnect());
      else process.send?.(answer);
    },
    (err: unknown) => process.send?.({ error: String((err as Error)?.stack ?? err) }),
  );
});

/** Resident bytes of the malloc heap (`[heap]` in smaps, Linux), where Buffers' memory mostly lives. */
function mallocHeapRss(): number | null {
  try {
    const smaps = readFileSync('/proc/self/smaps', 'utf8');
    const start = smaps.indexOf('[heap]');
    if (start < 0) return 0;
    const rss = /\nRss:\s+(\d+) kB/.exec(smaps.slice(start));
    return rss ? Number(rss[1]) * 1024 : null;
  } catch {
    return null;
  }
}

/**
 * Resident bytes of V8's young generation: committed whole (heapTotal) from
 * the start, but resident only as far as allocation has reached in it.
 */
function youngGenerationRss(): number {
  return getHeapSpaceStatistics().find((space) => space.space_name === 'new_space')?.physical_space_size ?? 0;
}
