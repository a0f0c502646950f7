/**
 * Where cached responses live: an in-memory index of every entry, a memory
 * tier (LRU by bytes) holding the bodies of small ("hot") objects, and a disk
 * tier in a directory of the data dir holding every body and its metadata,
 * so the cache survives restarts.
 *
 * On disk, an entry is two files in a subdirectory named by the first two
 * hex digits of its id: `<id>-<n>.b` (the body) and `<id>.m` (JSON metadata:
 * key, headers, cache policy, body length and SHA-256, body file name). Both
 * are written to `tmp/` and renamed into place, the body first, so a
 * metadata file always names a complete body. At start the directory is
 * scanned: metadata that does not parse, or whose body is missing or has
 * another length, is deleted. A body whose bytes no longer match its SHA-256
 * is detected when it is read (see {@link CacheStore.readBody}) and dropped.
 * Files are not fsynced: after a power loss the checksum catches what the
 * file system lost.
 *
 * Bounds: `maxEntries` entries, `diskBytes` of bodies + metadata on disk,
 * `memoryBytes` for the index and the memory tier's segments (body-ring.ts:
 * counted whole, so the bound is what the process holds for them); the
 * least recently used entry goes first. The memory tier reuses its oldest
 * segment when full, so it keeps the most recently stored or read bodies:
 * a body read from an old segment is moved to the newest one. With
 * `diskBytes` 0 the cache is memory only.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, promises as fs } from 'node:fs';
import path from 'node:path';
import CachePolicy from 'http-cache-semantics';
import type { CachePurgeFilter } from '../../domain/cache-types.js';
import type { Logger } from '../../logger.js';
import { BodyRing, type RingSegment, type RingSlot } from './body-ring.js';

/** Bodies up to this size are read whole and checked before the first byte is sent. */
export const VERIFY_BEFORE_SERVING_BYTES = 1024 * 1024;
/** Index overhead counted per entry, beside its metadata JSON. */
const ENTRY_OVERHEAD_BYTES = 512;
const META_SUFFIX = '.m';
const BODY_SUFFIX = '.b';
const TMP_DIR = 'tmp';

export interface CacheStoreLimits {
  /** Bytes of hot bodies and index in memory. */
  memoryBytes: number;
  /** Bytes of bodies and metadata on disk; 0 = memory only. */
  diskBytes: number;
  /** Bodies up to this size are also kept in memory. */
  hotObjectBytes: number;
  maxEntries: number;
}

/** What is persisted of an entry (the `.m` file). */
export interface CacheEntryMeta {
  v: 1;
  id: string;
  /** Rule, route, host, path and normalised query: one resource. */
  primaryKey: string;
  /** Values of the request headers the response varies on. */
  variantKey: string;
  /** Lower-case names of the response's Vary header. */
  varyNames: string[];
  host: string;
  path: string;
  ruleId: string;
  routeId: string;
  status: number;
  /** Response headers to replay (hop-by-hop ones already removed). */
  headers: [string, string][];
  /**
   * `CachePolicy#toObject()`: in the `.m` file only; in memory the entry's
   * `policy` holds it (one copy of the headers fewer per entry).
   */
  policy?: object;
  bodyLength: number;
  bodySha256: string;
  /** Body file name (relative to the cache directory), or null when memory only. */
  bodyFile: string | null;
  storedAt: number;
}

/** An entry of the index. */
export interface CacheEntry {
  readonly meta: CacheEntryMeta;
  policy: CachePolicy;
  /** The body when it is in the memory tier (a view into one of its segments). */
  memory: Buffer | null;
  /** The memory tier's segment holding `memory`. */
  segment: RingSegment<CacheEntry> | null;
  /** Bytes the entry's index record counts in memory. */
  readonly indexBytes: number;
  /** Bytes the entry holds on disk (0 when memory only). */
  readonly diskBytes: number;
  /** The store's use counter when the entry was last moved to the recent end of the index. */
  usedAt: number;
  /** What the response cache precomputes to answer hits (see response-cache.ts); null until first asked. */
  hit: unknown;
}

/** A body being stored: chunks go to a temporary file (and memory while small). */
export interface CacheWriter {
  readonly bytes: number;
  write(chunk: Buffer): Promise<void>;
  /** Makes the entry visible (replacing any with the same id); null when it could not be stored. */
  commit(
    meta: Omit<CacheEntryMeta, 'v' | 'policy' | 'bodyLength' | 'bodySha256' | 'bodyFile' | 'storedAt'>,
    policy: CachePolicy,
  ): Promise<CacheEntry | null>;
  abort(): void;
}

/** Outcome of reading a body from the store. */
export type CacheBodyRead =
  /**
   * The body whole. When `release` is set, `body` is a view into the memory
   * tier that stays pinned until it is called (once the answer is over).
   */
  | { kind: 'memory'; body: Buffer; release: (() => void) | null }
  | { kind: 'stream'; chunks: AsyncIterable<Buffer> }
  | { kind: 'corrupt' };

export interface CacheStoreOptions {
  dir: string;
  limits: CacheStoreLimits;
  logger: Logger;
  now?: () => number;
}

export class CacheStore {
  readonly dir: string;
  readonly #logger: Logger;
  readonly #now: () => number;
  #limits: CacheStoreLimits;
  /** Every entry, least recently used first. */
  readonly #entries = new Map<string, CacheEntry>();
  /** The memory tier: hot bodies. */
  #ring: BodyRing<CacheEntry>;
  /** Per resource: the Vary names of its last stored response and its variants (variant key → id). */
  readonly #resources = new Map<string, { varyNames: string[]; ids: Map<string, string> }>();
  /** Bytes of the index (the memory tier's segments come on top). */
  #indexBytes = 0;
  #diskBytes = 0;
  #bodyCounter = 0;
  #evictions = 0;
  /** Counts moves to the recent end of `#entries` (approximate LRU, see {@link get}). */
  #uses = 0;
  #loading: Promise<void> | null = null;
  /** Subdirectories known to exist (forgotten after any failed store, then made again). */
  readonly #madeDirs = new Set<string>();
  #closed = false;

  constructor(options: CacheStoreOptions) {
    this.dir = options.dir;
    this.#logger = options.logger;
    this.#now = options.now ?? Date.now;
    this.#limits = { ...options.limits };
    this.#ring = this.#newRing();
  }

  /**
   * Creates the directory and loads what an earlier run stored, in the
   * background: the store serves at once, entries appear as they are read.
   */
  open(): Promise<void> {
    this.#loading ??= this.#load().catch((err) => {
      this.#logger.warn({ err }, 'cache: could not load the disk tier; starting empty');
    });
    return this.#loading;
  }

  get limits(): Readonly<CacheStoreLimits> {
    return this.#limits;
  }

  /** Applies new bounds; entries over them are evicted at once. */
  setLimits(limits: CacheStoreLimits): void {
    this.#limits = { ...limits };
    if (BodyRing.segmentBytesFor(limits.memoryBytes, limits.hotObjectBytes) !== this.#ring.segmentBytes) {
      this.#ring.clear();
      this.#ring = this.#newRing();
    }
    if (limits.diskBytes === 0) {
      // Memory only from now on: disk copies are dropped.
      for (const entry of [...this.#entries.values()]) if (entry.meta.bodyFile !== null) this.#remove(entry);
    }
    this.#enforce();
  }

  stats(): {
    entries: number;
    memoryBytes: number;
    memorySegments: number;
    diskBytes: number;
    evictions: number;
  } {
    return {
      entries: this.#entries.size,
      memoryBytes: this.#memoryBytes,
      memorySegments: this.#ring.segmentCount,
      diskBytes: this.#diskBytes,
      evictions: this.#evictions,
    };
  }

  /**
   * The stored variant of a resource for a request, marked as recently used
   * (see {@link get}): `variantKeyOf` gets the resource's Vary names and
   * gives the request's values of them. Found through the resource, without
   * hashing the keys into the entry id on every hit.
   */
  find(primaryKey: string, variantKeyOf: (varyNames: readonly string[]) => string): CacheEntry | undefined {
    const resource = this.#resources.get(primaryKey);
    if (resource === undefined) return undefined;
    const id = resource.ids.get(variantKeyOf(resource.varyNames));
    return id === undefined ? undefined : this.get(id);
  }

  /**
   * The entry with `id`, marked as recently used; undefined when absent.
   * LRU order is kept approximately: an entry already among the most
   * recently used quarter (fewer moves since its own than a quarter of the
   * map's size) is not moved again, so a run of hits on a hot set does not
   * reorder the map on every request. A body in the memory tier's oldest
   * segment (the next to be reused) is moved to the newest one.
   */
  get(id: string): CacheEntry | undefined {
    const entry = this.#entries.get(id);
    if (!entry) return undefined;
    if (this.#uses - entry.usedAt > this.#entries.size >> 2) {
      this.#entries.delete(id);
      this.#entries.set(id, entry);
      entry.usedAt = ++this.#uses;
    }
    const segment = entry.segment;
    if (segment !== null && entry.memory !== null && this.#ring.isOldest(segment)) {
      const body = entry.memory;
      const slot = this.#ring.add(entry, [body], body.length, this.#mayGrow(), segment);
      if (slot !== null) {
        segment.owners.delete(entry);
        entry.memory = slot.body;
        entry.segment = slot.segment;
        entry.hit = null;
      }
    }
    return entry;
  }

  /**
   * Keeps the memory tier from reusing the space of `entry`'s body until the
   * returned function is called: for an answer writing that body (a view,
   * not a copy) to a client. Call it once the answer is over.
   */
  pin(entry: CacheEntry): () => void {
    return entry.segment === null ? NOOP : this.#ring.pin(entry.segment);
  }

  /** Bytes of the memory tier (index and segments) — what `memoryBytes` bounds. */
  get #memoryBytes(): number {
    return this.#indexBytes + this.#ring.allocatedBytes;
  }

  /**
   * The body of an entry: from memory, or from disk. Bodies up to
   * {@link VERIFY_BEFORE_SERVING_BYTES} are read and checked whole (`corrupt`
   * when the length or SHA-256 differ, and the entry is dropped). Larger ones
   * stream; the last chunk is held back until the checksum matches, and a
   * mismatch throws from the iterator (after dropping the entry), so a
   * client never receives a complete corrupt body.
   */
  async readBody(entry: CacheEntry): Promise<CacheBodyRead> {
    if (entry.memory !== null) return { kind: 'memory', body: entry.memory, release: null };
    const file = entry.meta.bodyFile;
    if (file === null) return { kind: 'corrupt' };
    const full = path.join(this.dir, file);
    if (entry.meta.bodyLength <= VERIFY_BEFORE_SERVING_BYTES) {
      const read = await this.#readWhole(entry, full);
      if (read === null) return { kind: 'corrupt' };
      if (read.body.length !== entry.meta.bodyLength || sha256(read.body) !== entry.meta.bodySha256) {
        read.release?.();
        this.#dropCorrupt(entry, 'the body does not match its checksum');
        return { kind: 'corrupt' };
      }
      if (read.slot !== null) this.#keepSlot(entry, read.slot);
      else this.#keepInMemory(entry, [read.body], read.body.length);
      return { kind: 'memory', body: read.body, release: read.release };
    }
    try {
      const stat = await fs.stat(full);
      if (stat.size !== entry.meta.bodyLength) {
        this.#dropCorrupt(entry, 'the body file has the wrong length');
        return { kind: 'corrupt' };
      }
    } catch {
      this.#dropCorrupt(entry, 'the body file is missing');
      return { kind: 'corrupt' };
    }
    return { kind: 'stream', chunks: this.#verifiedStream(entry, full) };
  }

  /** Starts storing a body; `hot` bodies are also kept in memory when they stay small. */
  beginWrite(id: string): CacheWriter {
    return new DiskWriter(this, id);
  }

  /** Replaces an entry's policy and headers after a revalidation (304), keeping its body. */
  async refresh(entry: CacheEntry, policy: CachePolicy, headers: [string, string][]): Promise<void> {
    if (this.#entries.get(entry.meta.id) !== entry) return;
    const meta: CacheEntryMeta = { ...entry.meta, headers, storedAt: this.#now() };
    const next = this.#makeEntry(meta, policy);
    if (meta.bodyFile !== null) {
      try {
        await this.#writeMeta(meta, policy);
      } catch (err) {
        this.#madeDirs.clear();
        this.#logger.warn({ err }, 'cache: could not rewrite metadata; the entry is dropped');
        this.#remove(entry);
        return;
      }
    }
    if (this.#entries.get(entry.meta.id) !== entry) return;
    // The body stays where it is, now the new entry's.
    if (entry.segment !== null && entry.memory !== null) {
      entry.segment.owners.delete(entry);
      entry.segment.owners.add(next);
      next.memory = entry.memory;
      next.segment = entry.segment;
      entry.memory = null;
      entry.segment = null;
    }
    this.#replace(entry, next);
  }

  /** Removes an entry (and its files). */
  delete(entry: CacheEntry): void {
    if (this.#entries.get(entry.meta.id) === entry) this.#remove(entry);
  }

  /** Removes the entries the filter selects; returns how many. */
  purge(filter: CachePurgeFilter): number {
    let purged = 0;
    for (const entry of [...this.#entries.values()]) {
      if (!filter.all) {
        if (filter.host !== undefined && entry.meta.host !== filter.host) continue;
        if (filter.pathPrefix !== undefined && !entry.meta.path.startsWith(filter.pathPrefix)) continue;
        if (filter.ruleId !== undefined && entry.meta.ruleId !== filter.ruleId) continue;
      }
      this.#remove(entry);
      purged++;
    }
    return purged;
  }

  /**
   * Drops entries for which `expired(entry)` holds, and temporary or
   * orphaned files left by an interrupted run.
   */
  async cleanup(expired: (entry: CacheEntry) => boolean): Promise<number> {
    let removed = 0;
    for (const entry of [...this.#entries.values()]) {
      if (expired(entry)) {
        this.#remove(entry);
        removed++;
      }
    }
    if (this.#limits.diskBytes > 0 && !this.#closed) await this.#sweepFiles();
    return removed;
  }

  close(): void {
    this.#closed = true;
  }

  // --- internals shared with the writer ---------------------------------------------

  /** @internal */
  tmpFile(): string {
    return path.join(this.dir, TMP_DIR, `${randomBytes(8).toString('hex')}.tmp`);
  }

  /** @internal */
  get diskEnabled(): boolean {
    return this.#limits.diskBytes > 0 && !this.#closed;
  }

  /** @internal Makes a written body an entry. */
  async commitEntry(
    partial: Omit<CacheEntryMeta, 'v' | 'policy' | 'bodyLength' | 'bodySha256' | 'bodyFile' | 'storedAt'>,
    policy: CachePolicy,
    body: { tmp: string | null; length: number; sha256: string; chunks: readonly Buffer[] | null },
  ): Promise<CacheEntry | null> {
    if (this.#closed) return null;
    let bodyFile: string | null = null;
    if (body.tmp !== null) {
      bodyFile = path.join(
        partial.id.slice(0, 2),
        `${partial.id}-${this.#now().toString(36)}${(this.#bodyCounter++).toString(36)}${BODY_SUFFIX}`,
      );
    }
    const meta: CacheEntryMeta = {
      v: 1,
      ...partial,
      bodyLength: body.length,
      bodySha256: body.sha256,
      bodyFile,
      storedAt: this.#now(),
    };
    const entry = this.#makeEntry(meta, policy);
    if (entry.diskBytes > this.#limits.diskBytes && bodyFile !== null) {
      await fs.rm(body.tmp!, { force: true });
      return null;
    }
    if (bodyFile === null && body.chunks === null) return null;
    if (bodyFile !== null) {
      try {
        await this.#ensureDir(partial.id.slice(0, 2));
        await fs.rename(body.tmp!, path.join(this.dir, bodyFile));
        await this.#writeMeta(meta, policy);
      } catch (err) {
        this.#madeDirs.clear();
        this.#logger.warn({ err }, 'cache: could not store a response');
        await fs.rm(body.tmp!, { force: true }).catch(() => {});
        if (bodyFile) await fs.rm(path.join(this.dir, bodyFile), { force: true }).catch(() => {});
        return null;
      }
    }
    if (this.#closed) return null;
    const previous = this.#entries.get(meta.id);
    if (previous) this.#remove(previous, meta.bodyFile);
    this.#insert(entry);
    if (body.chunks !== null) this.#keepInMemory(entry, body.chunks, body.length);
    if (bodyFile === null && entry.memory === null) {
      this.#remove(entry);
      return null;
    }
    this.#enforce();
    return this.#entries.get(meta.id) === entry ? entry : null;
  }

  // --- private -----------------------------------------------------------------------

  /**
   * Reads a body file whole: a hot body straight into a slot of the memory
   * tier (no buffer of its own, so reading the disk tier does not churn the
   * allocator), pinned until `release`; any other into a buffer of its own.
   * Null when the file cannot be read (the entry is dropped). The caller
   * checks the bytes.
   */
  async #readWhole(
    entry: CacheEntry,
    full: string,
  ): Promise<{ body: Buffer; slot: RingSlot<CacheEntry> | null; release: (() => void) | null } | null> {
    const length = entry.meta.bodyLength;
    const slot =
      length > 0 && length <= this.#limits.hotObjectBytes && this.#entries.get(entry.meta.id) === entry
        ? this.#ring.reserve(length, this.#mayGrow())
        : null;
    if (slot === null) {
      try {
        return { body: await fs.readFile(full), slot: null, release: null };
      } catch {
        this.#dropCorrupt(entry, 'the body file is missing');
        return null;
      }
    }
    const release = this.#ring.pin(slot.segment);
    let file: fs.FileHandle | null = null;
    try {
      file = await fs.open(full, 'r');
      let offset = 0;
      while (offset < length) {
        const { bytesRead } = await file.read(slot.body, offset, length - offset, offset);
        if (bytesRead === 0) break;
        offset += bytesRead;
      }
      // A file that is shorter or longer than its metadata says is not this body.
      const extra = offset === length ? (await file.stat()).size - length : -1;
      if (extra !== 0) {
        release();
        this.#dropCorrupt(entry, 'the body file has the wrong length');
        return null;
      }
    } catch {
      release();
      this.#dropCorrupt(entry, 'the body file is missing');
      return null;
    } finally {
      await file?.close().catch(() => {});
    }
    return { body: slot.body, slot, release };
  }

  /** A body read into a reserved slot becomes the entry's memory-tier copy (when nothing else did meanwhile). */
  #keepSlot(entry: CacheEntry, slot: RingSlot<CacheEntry>): void {
    if (this.#entries.get(entry.meta.id) !== entry || entry.memory !== null) return;
    if (!this.#ring.keep(entry, slot)) return;
    entry.memory = slot.body;
    entry.segment = slot.segment;
  }

  #makeEntry(meta: CacheEntryMeta, policy: CachePolicy): CacheEntry {
    const metaBytes = Buffer.byteLength(metaJson(meta, policy));
    return {
      meta,
      policy,
      memory: null,
      segment: null,
      indexBytes: indexBytesOf(metaBytes),
      diskBytes: meta.bodyFile === null ? 0 : meta.bodyLength + metaBytes,
      usedAt: 0,
      hit: null,
    };
  }

  #newRing(): BodyRing<CacheEntry> {
    const limits = this.#limits;
    return new BodyRing(BodyRing.segmentBytesFor(limits.memoryBytes, limits.hotObjectBytes), (entry) =>
      this.#leaveMemory(entry),
    );
  }

  /** Whether the memory tier may take one more segment. */
  #mayGrow(): boolean {
    return this.#memoryBytes + this.#ring.segmentBytes <= this.#limits.memoryBytes;
  }

  /** Copies a body of an indexed entry into the memory tier (when it is hot and there is room). */
  #keepInMemory(entry: CacheEntry, chunks: readonly Buffer[], length: number): void {
    if (length > this.#limits.hotObjectBytes || this.#entries.get(entry.meta.id) !== entry) return;
    if (entry.memory !== null) return;
    const slot = this.#ring.add(entry, chunks, length, this.#mayGrow());
    if (slot === null) return;
    entry.memory = slot.body;
    entry.segment = slot.segment;
  }

  /** A body leaves memory (its segment is reused or dropped); an entry without a disk copy goes. */
  #leaveMemory(entry: CacheEntry): void {
    entry.memory = null;
    entry.segment = null;
    entry.hit = null;
    if (entry.meta.bodyFile === null && this.#entries.get(entry.meta.id) === entry) this.#evict(entry);
  }

  #insert(entry: CacheEntry): void {
    const id = entry.meta.id;
    this.#entries.set(id, entry);
    entry.usedAt = ++this.#uses;
    this.#indexBytes += entry.indexBytes;
    this.#diskBytes += entry.diskBytes;
    let resource = this.#resources.get(entry.meta.primaryKey);
    if (!resource) {
      resource = { varyNames: entry.meta.varyNames, ids: new Map() };
      this.#resources.set(entry.meta.primaryKey, resource);
    }
    resource.varyNames = entry.meta.varyNames;
    resource.ids.set(entry.meta.variantKey, id);
  }

  #replace(previous: CacheEntry, next: CacheEntry): void {
    this.#detach(previous);
    this.#insert(next);
    this.#enforce();
  }

  /** Takes an entry out of the index without touching files. */
  #detach(entry: CacheEntry): void {
    const id = entry.meta.id;
    if (this.#entries.get(id) !== entry) return;
    this.#entries.delete(id);
    this.#indexBytes -= entry.indexBytes;
    this.#diskBytes -= entry.diskBytes;
    // Its body's space in the memory tier is taken again when the segment is reused.
    entry.segment?.owners.delete(entry);
    entry.segment = null;
    entry.memory = null;
    entry.hit = null;
    const resource = this.#resources.get(entry.meta.primaryKey);
    if (resource) {
      if (resource.ids.get(entry.meta.variantKey) === id) resource.ids.delete(entry.meta.variantKey);
      if (resource.ids.size === 0) this.#resources.delete(entry.meta.primaryKey);
    }
  }

  /** Removes an entry and its files (except a body file still in use by its replacement). */
  #remove(entry: CacheEntry, keepBodyFile: string | null = null): void {
    this.#detach(entry);
    const { bodyFile, id } = entry.meta;
    if (bodyFile !== null && bodyFile !== keepBodyFile) {
      void fs.rm(path.join(this.dir, bodyFile), { force: true }).catch(() => {});
    }
    if (bodyFile !== null && keepBodyFile === null && !this.#entries.has(id)) {
      void fs.rm(this.#metaPath(id), { force: true }).catch(() => {});
    }
  }

  #enforce(): void {
    const limits = this.#limits;
    // Memory tier segments go first (their bodies' disk copies stay); then whole entries.
    while (this.#memoryBytes > limits.memoryBytes && this.#ring.shrink()) {}
    for (const entry of this.#entries.values()) {
      if (
        this.#entries.size <= limits.maxEntries &&
        this.#diskBytes <= limits.diskBytes &&
        this.#memoryBytes <= limits.memoryBytes
      )
        break;
      this.#evict(entry);
    }
  }

  #evict(entry: CacheEntry): void {
    this.#evictions++;
    this.#remove(entry);
  }

  #dropCorrupt(entry: CacheEntry, reason: string): void {
    this.#logger.warn({ cacheEntry: entry.meta.id, reason }, `cache: dropped a corrupt entry: ${reason}`);
    this.delete(entry);
  }

  async *#verifiedStream(entry: CacheEntry, file: string): AsyncGenerator<Buffer> {
    const hash = createHash('sha256');
    let length = 0;
    let held: Buffer | null = null;
    for await (const chunk of createReadStream(file, { highWaterMark: 64 * 1024 })) {
      const buffer = chunk as Buffer;
      hash.update(buffer);
      length += buffer.length;
      if (held !== null) yield held;
      held = buffer;
    }
    if (length !== entry.meta.bodyLength || hash.digest('hex') !== entry.meta.bodySha256) {
      this.#dropCorrupt(entry, 'the body does not match its checksum');
      throw new Error('cache entry corrupt');
    }
    if (held !== null) yield held;
  }

  #metaPath(id: string): string {
    return path.join(this.dir, id.slice(0, 2), `${id}${META_SUFFIX}`);
  }

  /** Creates a subdirectory once (not on every store: two syscalls per miss otherwise). */
  async #ensureDir(sub: string): Promise<void> {
    if (this.#madeDirs.has(sub)) return;
    await fs.mkdir(path.join(this.dir, sub), { recursive: true });
    this.#madeDirs.add(sub);
  }

  async #writeMeta(meta: CacheEntryMeta, policy: CachePolicy): Promise<void> {
    const tmp = this.tmpFile();
    await this.#ensureDir(meta.id.slice(0, 2));
    await fs.writeFile(tmp, metaJson(meta, policy), { mode: 0o600 });
    await fs.rename(tmp, this.#metaPath(meta.id));
  }

  async #load(): Promise<void> {
    await fs.mkdir(path.join(this.dir, TMP_DIR), { recursive: true, mode: 0o700 });
    if (this.#limits.diskBytes === 0) return;
    const found: { meta: CacheEntryMeta; policy: CachePolicy }[] = [];
    for (const sub of await fs.readdir(this.dir)) {
      if (!/^[0-9a-f]{2}$/.test(sub)) continue;
      let names: string[];
      try {
        names = await fs.readdir(path.join(this.dir, sub));
      } catch {
        continue;
      }
      for (const name of names) {
        if (!name.endsWith(META_SUFFIX) || this.#closed) continue;
        const loaded = await this.#loadMeta(path.join(this.dir, sub, name));
        if (loaded) found.push(loaded);
      }
    }
    // Oldest first, so the most recent end up most recently used.
    found.sort((a, b) => a.meta.storedAt - b.meta.storedAt);
    for (const { meta, policy } of found) {
      if (this.#closed || this.#entries.has(meta.id)) continue;
      this.#insert(this.#makeEntry(meta, policy));
    }
    this.#enforce();
    await this.#sweepFiles();
    if (found.length > 0)
      this.#logger.info({ entries: found.length }, `cache: ${found.length} entries loaded from disk`);
  }

  /** Reads one metadata file; deletes it (and its body) when it is unusable. */
  async #loadMeta(file: string): Promise<{ meta: CacheEntryMeta; policy: CachePolicy } | null> {
    let meta: CacheEntryMeta;
    let policy: CachePolicy;
    try {
      meta = JSON.parse(await fs.readFile(file, 'utf8')) as CacheEntryMeta;
      if (
        meta?.v !== 1 ||
        typeof meta.id !== 'string' ||
        !file.endsWith(`${meta.id}${META_SUFFIX}`) ||
        typeof meta.bodyFile !== 'string' ||
        !Number.isInteger(meta.bodyLength) ||
        typeof meta.bodySha256 !== 'string' ||
        typeof meta.primaryKey !== 'string' ||
        !Array.isArray(meta.headers) ||
        !Array.isArray(meta.varyNames)
      )
        throw new Error('unexpected metadata');
      policy = CachePolicy.fromObject(meta.policy as CachePolicy.CachePolicyObject);
      delete meta.policy;
      const stat = await fs.stat(path.join(this.dir, meta.bodyFile));
      if (stat.size !== meta.bodyLength) throw new Error('the body has the wrong length');
    } catch (err) {
      this.#logger.warn({ file, err }, 'cache: dropped an unreadable or truncated entry');
      await fs.rm(file, { force: true }).catch(() => {});
      const bodyFile = (meta! as CacheEntryMeta | undefined)?.bodyFile;
      if (typeof bodyFile === 'string' && !bodyFile.includes('..'))
        await fs.rm(path.join(this.dir, bodyFile), { force: true }).catch(() => {});
      return null;
    }
    return { meta, policy };
  }

  /** Deletes temporary files older than a minute and body files no entry names. */
  async #sweepFiles(): Promise<void> {
    const cutoff = this.#now() - 60_000;
    const tmpDir = path.join(this.dir, TMP_DIR);
    for (const name of await fs.readdir(tmpDir).catch(() => [] as string[])) {
      const file = path.join(tmpDir, name);
      const stat = await fs.stat(file).catch(() => null);
      if (stat && stat.mtimeMs < cutoff) await fs.rm(file, { force: true }).catch(() => {});
    }
    const inUse = new Set<string>();
    for (const entry of this.#entries.values()) if (entry.meta.bodyFile) inUse.add(entry.meta.bodyFile);
    for (const sub of await fs.readdir(this.dir).catch(() => [] as string[])) {
      if (!/^[0-9a-f]{2}$/.test(sub)) continue;
      for (const name of await fs.readdir(path.join(this.dir, sub)).catch(() => [] as string[])) {
        const rel = path.join(sub, name);
        const file = path.join(this.dir, rel);
        if (name.endsWith(BODY_SUFFIX) && !inUse.has(rel)) {
          const stat = await fs.stat(file).catch(() => null);
          if (stat && stat.mtimeMs < cutoff) await fs.rm(file, { force: true }).catch(() => {});
        } else if (name.endsWith(META_SUFFIX) && !this.#entries.has(name.slice(0, -META_SUFFIX.length))) {
          const stat = await fs.stat(file).catch(() => null);
          if (stat && stat.mtimeMs < cutoff) await fs.rm(file, { force: true }).catch(() => {});
        }
      }
    }
  }
}

class DiskWriter implements CacheWriter {
  readonly #store: CacheStore;
  readonly #hash = createHash('sha256');
  readonly #id: string;
  #file: fs.FileHandle | null = null;
  #opening: Promise<fs.FileHandle | null> | null = null;
  #tmp: string | null = null;
  /** The body's chunks while it may be hot (copied into memory at commit); null once it is not. */
  #chunks: Buffer[] | null = [];
  #bytes = 0;
  #aborted = false;

  constructor(store: CacheStore, id: string) {
    this.#store = store;
    this.#id = id;
  }

  get bytes(): number {
    return this.#bytes;
  }

  async write(chunk: Buffer): Promise<void> {
    if (this.#aborted) return;
    this.#bytes += chunk.length;
    this.#hash.update(chunk);
    if (this.#chunks !== null) {
      if (this.#bytes <= this.#store.limits.hotObjectBytes) this.#chunks.push(chunk);
      else this.#chunks = null;
    }
    if (!this.#store.diskEnabled) {
      if (this.#chunks === null) this.abort();
      return;
    }
    const file = await this.#open();
    if (file === null || this.#aborted) return;
    let offset = 0;
    while (offset < chunk.length) {
      const { bytesWritten } = await file.write(chunk, offset);
      offset += bytesWritten;
    }
  }

  async commit(
    meta: Omit<CacheEntryMeta, 'v' | 'policy' | 'bodyLength' | 'bodySha256' | 'bodyFile' | 'storedAt'>,
    policy: CachePolicy,
  ): Promise<CacheEntry | null> {
    if (this.#aborted) return null;
    if (this.#store.diskEnabled && this.#bytes === 0) await this.#open();
    await this.#closeFile();
    if (this.#aborted) return null;
    // The chunks are copied into the memory tier's segment (no allocation of the body's own).
    return this.#store.commitEntry({ ...meta, id: this.#id }, policy, {
      tmp: this.#tmp,
      length: this.#bytes,
      sha256: this.#hash.digest('hex'),
      chunks: this.#chunks,
    });
  }

  abort(): void {
    if (this.#aborted) return;
    this.#aborted = true;
    this.#chunks = null;
    void this.#closeFile().then(() => (this.#tmp === null ? undefined : fs.rm(this.#tmp, { force: true })));
  }

  #open(): Promise<fs.FileHandle | null> {
    this.#opening ??= (async () => {
      const tmp = this.#store.tmpFile();
      try {
        const handle = await fs.open(tmp, 'w', 0o600);
        this.#tmp = tmp;
        this.#file = handle;
        if (this.#aborted) await this.#closeFile().then(() => fs.rm(tmp, { force: true }));
        return this.#aborted ? null : handle;
      } catch {
        this.abort();
        return null;
      }
    })();
    return this.#opening;
  }

  async #closeFile(): Promise<void> {
    if (this.#opening) await this.#opening;
    const file = this.#file;
    this.#file = null;
    if (file) await file.close().catch(() => {});
  }
}

const NOOP = (): void => {};

/** The `.m` file's text: the entry's metadata with its policy. */
function metaJson(meta: CacheEntryMeta, policy: CachePolicy): string {
  return JSON.stringify({ ...meta, policy: policy.toObject() });
}

/**
 * What one entry of the index costs in memory, counted against `memoryBytes`:
 * its metadata and its parsed policy hold the stored headers over again in
 * V8 strings and objects, plus the maps that index it — about three times
 * its metadata's JSON (measured with the cache bench: JS heap growth per
 * entry after a full GC, ~3.7 KiB for ~1 KiB of JSON).
 */
function indexBytesOf(metaJsonBytes: number): number {
  return 3 * metaJsonBytes + ENTRY_OVERHEAD_BYTES;
}

function sha256(body: Buffer): string {
  return createHash('sha256').update(body).digest('hex');
}
