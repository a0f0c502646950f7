import { mkdtemp, readdir, rm, truncate, writeFile } from 'node:fs/promises';
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

async function put(store: CacheStore, id: string, size: number, fill = 1) {
  const writer = store.beginWrite(id);
  await writer.write(Buffer.alloc(size, fill));
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
  it('keeps hot bodies in fixed segments counted whole, reusing the oldest when full and moving what is read', async () => {
    // 128 KiB segments (an eighth of the tier): two 60 KiB bodies each, seven fit beside the index.
    const limit = 1024 * KiB;
    const { store } = await openStore({ memoryBytes: limit, hotObjectBytes: 64 * KiB });
    for (let n = 1; n <= 14; n++) await put(store, id(n), 60 * KiB, n);
    expect(store.stats()).toMatchObject({ entries: 14, memorySegments: 7 });
    // What is counted is the segments whole plus the index, within the bound.
    expect(store.stats().memoryBytes).toBeGreaterThan(7 * 128 * KiB);
    expect(store.stats().memoryBytes).toBeLessThanOrEqual(limit);
    // Reading a body of the oldest segment moves it to the newest, which reuses the next oldest.
    const first = store.get(id(1))!;
    expect(first.memory?.equals(Buffer.alloc(60 * KiB, 1))).toBe(true);
    expect(store.get(id(3))?.memory).toBeNull(); // left memory, still on disk
    expect(store.get(id(4))?.memory).toBeNull();
    expect(store.get(id(5))?.memory).not.toBeNull();
    // More bodies reuse segments; the count never grows past the bound.
    for (let n = 15; n <= 30; n++) await put(store, id(n), 60 * KiB, n);
    expect(store.stats()).toMatchObject({ entries: 30, memorySegments: 7 });
    expect(store.stats().memoryBytes).toBeLessThanOrEqual(limit);
    expect(store.get(id(30))?.memory?.equals(Buffer.alloc(60 * KiB, 30))).toBe(true);
    // A body that left memory comes back from disk, intact.
    const read = await store.readBody(store.get(id(3))!);
    expect(read.kind === 'memory' && read.body.equals(Buffer.alloc(60 * KiB, 3))).toBe(true);
    expect(store.get(id(3))?.memory).not.toBeNull();
    // A smaller bound (here with smaller segments) gives the segments back at once; new ones stay within it.
    store.setLimits({ ...store.limits, memoryBytes: 512 * KiB });
    expect(store.stats().memorySegments).toBe(0);
    for (let n = 31; n <= 40; n++) await put(store, id(n), 60 * KiB, n);
    expect(store.stats().memorySegments).toBeGreaterThan(0);
    expect(store.stats().memoryBytes).toBeLessThanOrEqual(512 * KiB);
    expect(store.get(id(40))?.memory?.equals(Buffer.alloc(60 * KiB, 40))).toBe(true);
  });

  it('does not reuse a segment whose body an answer is still writing', async () => {
    // 32 KiB segments, one body each; seven fit in 256 KiB beside the index.
    const { store } = await openStore({ memoryBytes: 256 * KiB, hotObjectBytes: 32 * KiB });
    const first = (await put(store, id(1), 32 * KiB, 1))!;
    const view = first.memory!;
    const release = store.pin(first);
    for (let n = 2; n <= 8; n++) await put(store, id(n), 32 * KiB, n);
    // The eighth body reused the second's segment, not the pinned first.
    expect(store.stats().memorySegments).toBe(7);
    expect(first.memory).toBe(view);
    expect(view.equals(Buffer.alloc(32 * KiB, 1))).toBe(true);
    expect(store.get(id(2))?.memory).toBeNull();
    expect(store.get(id(8))?.memory?.equals(Buffer.alloc(32 * KiB, 8))).toBe(true);
    release();
    release(); // once is enough; more is harmless
    await put(store, id(9), 32 * KiB, 9);
    expect(first.memory).toBeNull();
    expect(store.stats().memoryBytes).toBeLessThanOrEqual(256 * KiB);
  });

  it('reads a hot body from disk straight into the memory tier, held while it is written, and drops a damaged one', async () => {
    // 32 KiB segments, one body each; seven fit in 256 KiB beside the index.
    const { store, dir } = await openStore({ memoryBytes: 256 * KiB, hotObjectBytes: 32 * KiB });
    for (let n = 1; n <= 9; n++) await put(store, id(n), 32 * KiB, n);
    expect(store.stats().memorySegments).toBe(7);
    const first = store.get(id(1))!;
    expect(first.memory).toBeNull();
    const read = await store.readBody(first);
    if (read.kind !== 'memory') throw new Error(`expected a body, got ${read.kind}`);
    expect(read.body.equals(Buffer.alloc(32 * KiB, 1))).toBe(true);
    // The bytes were read into a segment: the entry's memory copy is that view, and it is held.
    expect(first.memory).toBe(read.body);
    expect(read.release).toBeTypeOf('function');
    for (let n = 10; n <= 20; n++) await put(store, id(n), 32 * KiB, n);
    expect(read.body.equals(Buffer.alloc(32 * KiB, 1))).toBe(true);
    expect(store.stats().memoryBytes).toBeLessThanOrEqual(256 * KiB);
    read.release!();
    await put(store, id(21), 32 * KiB, 21);
    expect(store.stats().memoryBytes).toBeLessThanOrEqual(256 * KiB);
    // A body whose bytes changed, or that lost some, is dropped, never returned.
    const flipped = store.get(id(2))!;
    const truncated = store.get(id(3))!;
    expect(flipped.memory).toBeNull();
    await writeFile(path.join(dir, flipped.meta.bodyFile!), Buffer.alloc(32 * KiB, 99));
    await truncate(path.join(dir, truncated.meta.bodyFile!), 100);
    expect((await store.readBody(flipped)).kind).toBe('corrupt');
    expect((await store.readBody(truncated)).kind).toBe('corrupt');
    expect(store.get(id(2))).toBeUndefined();
    expect(store.get(id(3))).toBeUndefined();
    // Nothing stays held: every segment can be reused again.
    for (let n = 22; n <= 30; n++) await put(store, id(n), 32 * KiB, n);
    expect(store.get(id(30))?.memory?.equals(Buffer.alloc(32 * KiB, 30))).toBe(true);
    expect(store.stats().memoryBytes).toBeLessThanOrEqual(256 * KiB);
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
