import { mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import CachePolicy from 'http-cache-semantics';
import { afterEach, describe, expect, it } from 'vitest';
import { CacheStore, type CacheStoreLimits } from '../../src/dataplane/cache/cache-store.js';
import { createLogger } from '../../src/logger.js';
import { eventually } from '../helpers/wait.js';

const dirs: string[] = [];
afterEach(async () => {
  for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
});

const KiB = 1024;

async function openStore(limits: Partial<CacheStoreLimits> = {}, dir?: string) {
  const root = dir ?? (await mkdtemp(path.join(os.tmpdir(), 'p2pstream-cache-')));
  if (!dir) dirs.push(root);
  const store = new CacheStore({
    dir: root,
    logger: createLogger('silent'),
    limits: {
      memoryBytes: 1024 * KiB,
      diskBytes: 10 * 1024 * KiB,
      hotObjectBytes: 64 * KiB,
      maxEntries: 100,
      ...limits,
    },
  });
  await store.open();
  return { store, dir: root };
}

const policy = new CachePolicy(
  { url: '/x', method: 'GET', headers: { host: 'h' } },
  { status: 200, headers: { 'cache-control': 'max-age=60' } },
);

async function put(store: CacheStore, id: string, size: number) {
  const writer = store.beginWrite(id);
  await writer.write(Buffer.alloc(size, 1));
  return writer.commit(
    {
      id,
      primaryKey: `key-${id}`,
      variantKey: '',
      varyNames: [],
      host: 'h',
      path: `/${id}`,
      ruleId: 'r',
      routeId: 'route',
      status: 200,
      headers: [['cache-control', 'max-age=60']],
    },
    policy,
  );
}

const id = (n: number) => n.toString(16).padStart(64, '0');

describe('cache store', () => {
  it('keeps small bodies in memory and evicts the least recently used hot body past the memory bound', async () => {
    const { store } = await openStore({ memoryBytes: 80 * KiB, hotObjectBytes: 40 * KiB });
    await put(store, id(1), 30 * KiB);
    await put(store, id(2), 30 * KiB);
    store.get(id(1)); // 1 is now more recent than 2
    await put(store, id(3), 30 * KiB);
    expect(store.get(id(1))?.memory).not.toBeNull();
    expect(store.get(id(2))?.memory).toBeNull(); // left memory, still on disk
    expect(store.get(id(3))?.memory).not.toBeNull();
    expect(store.stats().entries).toBe(3);
    expect(store.stats().memoryBytes).toBeLessThanOrEqual(80 * KiB);
    const read = await store.readBody(store.get(id(2))!);
    expect(read.kind).toBe('memory');
  });

  it('evicts whole entries past maxEntries and past the disk bound, oldest first, and deletes their files', async () => {
    const { store, dir } = await openStore({ maxEntries: 3, diskBytes: 1024 * KiB, hotObjectBytes: KiB });
    for (let n = 1; n <= 4; n++) await put(store, id(n), 100 * KiB);
    expect(store.get(id(1))).toBeUndefined();
    expect(store.stats().entries).toBe(3);
    store.setLimits({ ...store.limits, diskBytes: 250 * KiB });
    expect(store.stats().entries).toBe(2);
    expect(store.get(id(2))).toBeUndefined();
    expect(store.stats().evictions).toBe(2);
    // The evicted entries' files are deleted in the background.
    await eventually(async () => {
      const files = (await readdir(path.join(dir, '00'))).sort();
      expect(files.filter((f) => f.endsWith('.m'))).toEqual([`${id(3)}.m`, `${id(4)}.m`]);
    });
  });

  it('refuses a body larger than the disk tier, and with diskBytes 0 keeps only hot bodies in memory', async () => {
    const { store } = await openStore({ diskBytes: 50 * KiB, hotObjectBytes: 8 * KiB });
    expect(await put(store, id(1), 60 * KiB)).toBeNull();
    const memoryOnly = await openStore({ diskBytes: 0, hotObjectBytes: 8 * KiB });
    expect(await put(memoryOnly.store, id(1), 4 * KiB)).not.toBeNull();
    expect(await put(memoryOnly.store, id(2), 16 * KiB)).toBeNull();
    expect(memoryOnly.store.stats()).toMatchObject({ entries: 1, diskBytes: 0 });
    expect((await readdir(memoryOnly.dir)).filter((f) => f !== 'tmp')).toEqual([]);
  });

  it('reloads its entries after a restart, most recently stored last', async () => {
    const first = await openStore();
    await put(first.store, id(1), 10);
    await put(first.store, id(2), 20);
    first.store.close();
    const second = await openStore({}, first.dir);
    expect(second.store.stats().entries).toBe(2);
    const entry = second.store.get(id(2))!;
    expect(entry.meta.bodyLength).toBe(20);
    expect((await second.store.readBody(entry)).kind).toBe('memory');
  });
});
