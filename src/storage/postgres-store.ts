/**
 * The Store on PostgreSQL, shared by several control-plane replicas
 * (`P2PSTREAM_DATABASE_URL=postgres://…`).
 *
 * Each replica keeps the whole document in memory, as the lowdb store does,
 * so `read()` stays synchronous. The document is stored as rows of one
 * generic table, laid out by {@link documentLayout}: one row per record of a
 * collection (`agents`, `proxy.routes`, …) keyed by its id, one row per
 * value (`instance`, `traffic`), the record as `json` (kept byte for byte;
 * jsonb would refuse a `\u0000` in a string and we never query inside it). A
 * collection added to `schema.ts` needs no code here.
 *
 * Writes are serialised across replicas: every write transaction first locks
 * the revision counter row, applies what other replicas committed since this
 * one last looked, then runs the queued mutations on that current document,
 * writes only the rows that changed (all in the one transaction) stamped with
 * the next revision, and notifies the others (`NOTIFY p2pstream_changes`,
 * carrying the rows when they fit). So a mutation sees every change committed
 * before it (a name checked as free is free), and a replica applies another's
 * change within milliseconds; a revision poll every few seconds covers a
 * missed notification. Deleted rows leave a tombstone (kept an hour) so a
 * replica can catch up by revision; one further behind reloads everything.
 *
 * Start-up runs the table migrations and the document migrations of
 * `schema.ts` under an advisory lock, so replicas starting together do not
 * race. `update` runs its mutation when the write transaction runs (not
 * synchronously as lowdb does) and resolves after COMMIT; `updateSoon` applies
 * at once and rides along with the next write.
 */
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import type { Logger } from '../logger.js';
import { documentLayout, getAt, type LayoutSlot, recordIds, setAt, WHOLE_ROW_ID } from './document-layout.js';
import { type Database, emptyDatabase, migrate } from './schema.js';
import { DeferredWrite, type ExternalChangeListener, type RecordRef, type Store } from './store.js';

/** The channel replicas notify each other on. */
export const CHANGES_CHANNEL = 'p2pstream_changes';
/** Advisory lock key held while migrating at start (`p2ps`). */
export const MIGRATION_LOCK_KEY = 0x70327073;
/** How often a replica checks the revision in case a notification was lost. */
export const DEFAULT_REVISION_POLL_MS = 3000;
/** Tombstones of deleted rows are kept this long. */
export const TOMBSTONE_RETENTION_MS = 60 * 60 * 1000;
/** A NOTIFY payload carries the rows up to this size; larger changes are fetched by revision. */
const MAX_NOTIFY_PAYLOAD_BYTES = 7900;

/** Table migrations, in order; `sqlVersion` in p2pstream_meta counts those applied. */
const SQL_MIGRATIONS: string[] = [
  `CREATE TABLE p2pstream_records (
     path text NOT NULL,
     id text NOT NULL,
     ord double precision NOT NULL,
     doc json NOT NULL,
     rev bigint NOT NULL,
     PRIMARY KEY (path, id)
   );
   CREATE INDEX p2pstream_records_rev ON p2pstream_records (rev);
   CREATE TABLE p2pstream_deleted (
     path text NOT NULL,
     id text NOT NULL,
     rev bigint NOT NULL,
     deleted_at timestamptz NOT NULL DEFAULT now(),
     PRIMARY KEY (path, id)
   );
   CREATE INDEX p2pstream_deleted_rev ON p2pstream_deleted (rev);
   INSERT INTO p2pstream_meta (key, value) VALUES ('revision', 0), ('prunedThrough', 0);`,
];

/** Thrown when PostgreSQL cannot be reached or refused a write; nothing of the change was kept. */
export class StoreUnavailableError extends Error {
  override readonly name = 'StoreUnavailableError';
}

export interface PostgresStoreOptions {
  /** `postgres://user:password@host:port/database` (never logged). */
  url: string;
  logger?: Logger;
  /** Default {@link DEFAULT_REVISION_POLL_MS}. */
  revisionPollMs?: number;
}

interface KnownRow {
  json: string;
  ord: number;
}

interface RowUpsert {
  path: string;
  id: string;
  ord: number;
  json: string;
}

interface RowDelete {
  path: string;
  id: string;
}

interface PendingUpdate {
  mutate: (db: Database) => unknown;
  resolve: (value: unknown) => void;
  reject: (err: unknown) => void;
}

interface ChangeNotice {
  rev: number;
  from: string;
  upserts?: RowUpsert[];
  deletes?: RowDelete[];
}

/** Where the database is, without its password (for logs and errors). */
export function describeDatabaseUrl(url: string): string {
  try {
    const parsed = new URL(url);
    return `${parsed.protocol}//${parsed.username ? `${decodeURIComponent(parsed.username)}@` : ''}${parsed.host}${parsed.pathname}`;
  } catch {
    return 'postgres://(unparsable URL)';
  }
}

export class PostgresStore implements Store {
  /** This store's id in notifications (its own are skipped). */
  readonly id = randomUUID();
  readonly #url: string;
  readonly #logger: Logger | null;
  readonly #layout: LayoutSlot[];
  readonly #slots: Map<string, LayoutSlot>;
  readonly #known = new Map<string, Map<string, KnownRow>>();
  readonly #listeners = new Set<ExternalChangeListener>();
  #db: Database;
  #rev = 0;
  #writer: pg.Client | null = null;
  #listener: pg.Client | null = null;
  #chain: Promise<void> = Promise.resolve();
  #pending: PendingUpdate[] = [];
  #cycle: Promise<void> | null = null;
  readonly #deferred = new DeferredWrite(() => void this.#scheduleCycle().catch(() => {}));
  /**
   * The records deferred writes changed since the last write cycle, by
   * collection, when each named its record; null when one did not (or after
   * a failed write), and the next cycle compares everything.
   */
  #deferredRecords: Map<string, Set<string>> | null = new Map();
  #poll: ReturnType<typeof setInterval> | null = null;
  #reconnect: ReturnType<typeof setTimeout> | null = null;
  #reconnectDelayMs = 100;
  #lastPruneAt = 0;
  #closed = false;
  #connected = false;

  private constructor(options: PostgresStoreOptions) {
    this.#url = options.url;
    this.#logger = options.logger ?? null;
    this.#layout = documentLayout();
    this.#slots = new Map(this.#layout.map((slot) => [slot.name, slot]));
    this.#db = emptyDatabase('');
  }

  /**
   * Connects, migrates (tables, then the document) under an advisory lock,
   * loads the document and starts listening for other replicas' changes.
   * Throws when the database cannot be reached or holds a document from a
   * newer p2pstream.
   */
  static async open(options: PostgresStoreOptions): Promise<PostgresStore> {
    const store = new PostgresStore(options);
    const client = await store.#connectWriter();
    try {
      await client.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK_KEY]);
      try {
        await migrateTables(client);
        const fresh = await store.#reloadAll(client);
        let migrated = false;
        if (fresh) {
          store.#db = emptyDatabase(randomUUID());
        } else {
          ({ migrated } = migrate(store.#db, randomUUID));
        }
        if (fresh || migrated) {
          store.#deferredRecords = null;
          await store.#runCycle();
        }
      } finally {
        await client.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK_KEY]).catch(() => {});
      }
      await store.#startListener();
    } catch (err) {
      await store.#shutdownClients();
      throw err;
    }
    const pollMs = options.revisionPollMs ?? DEFAULT_REVISION_POLL_MS;
    store.#poll = setInterval(() => store.#enqueue(() => store.#catchUpIfBehind()), pollMs);
    store.#poll.unref();
    return store;
  }

  /** True while both connections to PostgreSQL are up. */
  get connected(): boolean {
    return this.#connected;
  }

  /** The revision of the last change this replica has applied. */
  get revision(): number {
    return this.#rev;
  }

  read(): Readonly<Database> {
    return this.#db;
  }

  update<T>(mutate: (db: Database) => T): Promise<T> {
    if (this.#closed) return Promise.reject(new Error('the store is closed'));
    return new Promise<T>((resolve, reject) => {
      this.#pending.push({ mutate, resolve: resolve as (value: unknown) => void, reject });
      this.#scheduleCycle();
    });
  }

  updateSoon<T>(mutate: (db: Database) => T, record?: RecordRef): T {
    if (this.#closed) throw new Error('the store is closed');
    let result: T;
    try {
      result = mutate(this.#db);
    } finally {
      this.#noteDeferred(record);
    }
    this.#deferred.schedule();
    return result;
  }

  #noteDeferred(record: RecordRef | undefined): void {
    if (this.#deferredRecords === null) return;
    if (!record || this.#slots.get(record.collection)?.kind !== 'collection') {
      this.#deferredRecords = null;
      return;
    }
    let ids = this.#deferredRecords.get(record.collection);
    if (!ids) {
      ids = new Set();
      this.#deferredRecords.set(record.collection, ids);
    }
    ids.add(record.id);
  }

  /** Writes every pending change; throws StoreUnavailableError when that write fails. */
  async flush(): Promise<void> {
    this.#deferred.cancel();
    try {
      await this.#scheduleCycle();
    } catch (err) {
      throw unavailable(err);
    }
    await this.#chain;
  }

  onExternalChange(listener: ExternalChangeListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Flushes, then lets go of PostgreSQL even when that last write failed (and reports it). */
  async close(): Promise<void> {
    if (this.#closed) return;
    try {
      await this.flush();
    } finally {
      this.#closed = true;
      if (this.#poll) clearInterval(this.#poll);
      if (this.#reconnect) clearTimeout(this.#reconnect);
      await this.#chain;
      await this.#shutdownClients();
    }
  }

  // ---- write cycle -------------------------------------------------------

  /** Queues one write cycle; updates made before it starts share it. */
  #scheduleCycle(): Promise<void> {
    this.#cycle ??= this.#enqueue(() => {
      this.#cycle = null;
      return this.#runCycle();
    });
    return this.#cycle;
  }

  #enqueue(task: () => Promise<void>): Promise<void> {
    const run = this.#chain.then(task);
    this.#chain = run.catch(() => {});
    return run;
  }

  async #runCycle(): Promise<void> {
    const ops = this.#pending.splice(0);
    // Only named records changed since the last write (no update's mutation runs in this one): compare those.
    const named = ops.length === 0 ? this.#deferredRecords : null;
    this.#deferredRecords = new Map();
    this.#deferred.cancel();
    let client: pg.Client;
    try {
      client = await this.#connectWriter();
    } catch (err) {
      this.#deferredRecords = null;
      for (const op of ops) op.reject(unavailable(err));
      throw err;
    }
    let applied = false;
    let diff: { upserts: RowUpsert[]; deletes: RowDelete[] } | null = null;
    const results: Array<{ ok: true; value: unknown } | { ok: false; error: unknown }> = [];
    try {
      await client.query('BEGIN');
      const head = await client.query<{ value: string }>(
        "SELECT value FROM p2pstream_meta WHERE key = 'revision' FOR UPDATE",
      );
      const dbRev = Number(head.rows[0]?.value ?? 0);
      if (dbRev !== this.#rev) await this.#catchUp(client, false);
      applied = true;
      for (const op of ops) {
        try {
          results.push({ ok: true, value: op.mutate(this.#db) });
        } catch (error) {
          results.push({ ok: false, error });
        }
      }
      diff = (named && this.#diffRecords(named)) ?? this.#diff();
      if (diff.upserts.length === 0 && diff.deletes.length === 0) {
        await client.query('COMMIT');
      } else {
        const rev = this.#rev + 1;
        await writeRows(client, rev, diff.upserts, diff.deletes);
        await client.query("UPDATE p2pstream_meta SET value = $1 WHERE key = 'revision'", [rev]);
        await client.query('SELECT pg_notify($1, $2)', [CHANGES_CHANNEL, this.#notice(rev, diff)]);
        if (Date.now() - this.#lastPruneAt > TOMBSTONE_RETENTION_MS / 12) await this.#pruneTombstones(client);
        await client.query('COMMIT');
        this.#remember(diff.upserts, diff.deletes);
        this.#rev = rev;
      }
    } catch (err) {
      this.#deferredRecords = null;
      await client.query('ROLLBACK').catch(() => this.#dropWriter());
      // The document goes back to what PostgreSQL holds; a commit whose answer was lost comes back by revision.
      if (applied) this.#restore(diff ? touchedSlots(diff) : new Set(this.#slots.keys()));
      this.#logger?.error({ err }, 'database write failed');
      for (const op of ops) op.reject(unavailable(err));
      throw unavailable(err);
    }
    ops.forEach((op, i) => {
      const result = results[i]!;
      if (result.ok) op.resolve(result.value);
      else op.reject(result.error);
    });
  }

  /** The rows that differ from what this replica last wrote or read. */
  #diff(): { upserts: RowUpsert[]; deletes: RowDelete[] } {
    const upserts: RowUpsert[] = [];
    const deletes: RowDelete[] = [];
    for (const slot of this.#layout) {
      const known = this.#knownFor(slot.name);
      const value = getAt(this.#db, slot.path);
      if (slot.kind === 'value') {
        const json = JSON.stringify(value ?? null);
        if (known.get(WHOLE_ROW_ID)?.json !== json)
          upserts.push({ path: slot.name, id: WHOLE_ROW_ID, ord: 0, json });
        continue;
      }
      const elements = Array.isArray(value) ? value : [];
      const ids = recordIds(elements);
      if (ids === null) {
        const json = JSON.stringify(elements);
        if (known.get(WHOLE_ROW_ID)?.json !== json)
          upserts.push({ path: slot.name, id: WHOLE_ROW_ID, ord: 0, json });
        for (const id of known.keys()) if (id !== WHOLE_ROW_ID) deletes.push({ path: slot.name, id });
        continue;
      }
      const ords = orderOf(ids, known);
      const present = new Set(ids);
      ids.forEach((id, i) => {
        const json = JSON.stringify(elements[i]);
        const row = known.get(id);
        if (!row || row.json !== json || row.ord !== ords[i])
          upserts.push({ path: slot.name, id, ord: ords[i]!, json });
      });
      for (const id of known.keys()) if (!present.has(id)) deletes.push({ path: slot.name, id });
    }
    return { upserts, deletes };
  }

  /**
   * The rows of the named records that differ from what this replica last
   * wrote or read, or null when that cannot tell (a record new or gone, a
   * collection stored whole): then the whole document is compared.
   */
  #diffRecords(named: Map<string, Set<string>>): { upserts: RowUpsert[]; deletes: RowDelete[] } | null {
    const upserts: RowUpsert[] = [];
    for (const [name, ids] of named) {
      const slot = this.#slots.get(name);
      const known = this.#knownFor(name);
      const elements = slot ? getAt(this.#db, slot.path) : undefined;
      if (!slot || !Array.isArray(elements) || known.has(WHOLE_ROW_ID)) return null;
      const wanted = new Map<string, unknown>();
      for (const element of elements) {
        const id = (element as { id?: unknown } | null)?.id;
        if (typeof id === 'string' && ids.has(id)) {
          if (wanted.has(id)) return null;
          wanted.set(id, element);
        }
      }
      for (const id of ids) {
        const row = known.get(id);
        if (!row || !wanted.has(id)) return null;
        const json = JSON.stringify(wanted.get(id));
        if (row.json !== json) upserts.push({ path: name, id, ord: row.ord, json });
      }
    }
    return { upserts, deletes: [] };
  }

  #notice(rev: number, diff: { upserts: RowUpsert[]; deletes: RowDelete[] }): string {
    const full = JSON.stringify({ rev, from: this.id, upserts: diff.upserts, deletes: diff.deletes });
    if (Buffer.byteLength(full) <= MAX_NOTIFY_PAYLOAD_BYTES) return full;
    return JSON.stringify({ rev, from: this.id });
  }

  async #pruneTombstones(client: pg.Client): Promise<void> {
    this.#lastPruneAt = Date.now();
    const pruned = await client.query<{ rev: string | null }>(
      `WITH gone AS (
         DELETE FROM p2pstream_deleted WHERE deleted_at < now() - make_interval(secs => $1) RETURNING rev
       ) SELECT max(rev)::text AS rev FROM gone`,
      [TOMBSTONE_RETENTION_MS / 1000],
    );
    const rev = pruned.rows[0]?.rev;
    if (rev) {
      await client.query(
        "UPDATE p2pstream_meta SET value = greatest(value, $1) WHERE key = 'prunedThrough'",
        [Number(rev)],
      );
    }
  }

  // ---- applying what other replicas wrote -----------------------------------

  async #catchUpIfBehind(): Promise<void> {
    if (this.#closed) return;
    try {
      const client = await this.#connectWriter();
      const head = await client.query<{ value: string }>(
        "SELECT value FROM p2pstream_meta WHERE key = 'revision'",
      );
      if (Number(head.rows[0]?.value ?? 0) !== this.#rev) await this.#catchUp(client, true);
    } catch (err) {
      this.#logger?.warn({ err }, 'database revision check failed');
    }
  }

  /**
   * Applies every row changed since this replica's revision (or reloads all
   * when tombstones it would need were pruned). `snapshot`: read in one
   * consistent snapshot (outside a write transaction).
   */
  async #catchUp(client: pg.Client, snapshot: boolean): Promise<void> {
    if (snapshot) await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    try {
      const meta = await client.query<{ key: string; value: string }>(
        "SELECT key, value FROM p2pstream_meta WHERE key IN ('revision', 'prunedThrough')",
      );
      const value = (key: string) => Number(meta.rows.find((r) => r.key === key)?.value ?? 0);
      const rev = value('revision');
      if (value('prunedThrough') > this.#rev) {
        await this.#reloadAll(client);
        // Derived state (listeners, revoked agents) follows the reloaded document.
        this.#emit(new Set(this.#layout.map((s) => s.path[0]!)));
      } else {
        const rows = await client.query<{ path: string; id: string; ord: number; doc: string }>(
          'SELECT path, id, ord, doc::text AS doc FROM p2pstream_records WHERE rev > $1',
          [this.#rev],
        );
        const gone = await client.query<{ path: string; id: string }>(
          'SELECT path, id FROM p2pstream_deleted WHERE rev > $1',
          [this.#rev],
        );
        const changed = this.#apply(
          rows.rows.map((r) => ({ path: r.path, id: r.id, ord: Number(r.ord), json: r.doc })),
          gone.rows,
        );
        this.#rev = rev;
        this.#emit(changed);
      }
      if (snapshot) await client.query('COMMIT');
    } catch (err) {
      if (snapshot) await client.query('ROLLBACK').catch(() => this.#dropWriter());
      throw err;
    }
  }

  /** Loads every row into the document; returns true when the database holds none (fresh). */
  async #reloadAll(client: pg.Client): Promise<boolean> {
    const meta = await client.query<{ value: string }>(
      "SELECT value FROM p2pstream_meta WHERE key = 'revision'",
    );
    const rows = await client.query<{ path: string; id: string; ord: number; doc: string }>(
      'SELECT path, id, ord, doc::text AS doc FROM p2pstream_records ORDER BY path, ord, id',
    );
    this.#known.clear();
    const doc: Record<string, unknown> = {};
    const grouped = new Map<string, Array<{ id: string; ord: number; json: string }>>();
    for (const row of rows.rows) {
      if (!this.#slots.has(row.path)) continue; // written by a newer build: left alone
      const list = grouped.get(row.path) ?? [];
      list.push({ id: row.id, ord: Number(row.ord), json: row.doc });
      grouped.set(row.path, list);
      this.#knownFor(row.path).set(row.id, { json: row.doc, ord: Number(row.ord) });
    }
    for (const slot of this.#layout) {
      const list = grouped.get(slot.name) ?? [];
      const whole = list.find((r) => r.id === WHOLE_ROW_ID);
      if (slot.kind === 'value') {
        if (whole) setAt(doc, slot.path, JSON.parse(whole.json));
        else if (slot.path[0] !== 'instance') setAt(doc, slot.path, structuredClone(slot.template));
      } else {
        setAt(doc, slot.path, whole ? JSON.parse(whole.json) : list.map((r) => JSON.parse(r.json)));
      }
    }
    this.#db = doc as unknown as Database;
    this.#rev = Number(meta.rows[0]?.value ?? 0);
    return rows.rows.length === 0;
  }

  /** Puts rows another replica wrote into the document; returns the top-level keys touched. */
  #apply(upserts: RowUpsert[], deletes: RowDelete[]): Set<string> {
    const byPath = new Map<string, { upserts: RowUpsert[]; deletes: RowDelete[] }>();
    const group = (path: string) => {
      let entry = byPath.get(path);
      if (!entry) {
        entry = { upserts: [], deletes: [] };
        byPath.set(path, entry);
      }
      return entry;
    };
    for (const row of deletes) if (this.#slots.has(row.path)) group(row.path).deletes.push(row);
    for (const row of upserts) if (this.#slots.has(row.path)) group(row.path).upserts.push(row);
    const touched = new Set<string>();
    for (const [path, change] of byPath) {
      const slot = this.#slots.get(path)!;
      const known = this.#knownFor(path);
      touched.add(slot.path[0]!);
      if (slot.kind === 'value') {
        const row = change.upserts.at(-1);
        if (row) {
          const merged = mergeUnsaved(known.get(WHOLE_ROW_ID)?.json, getAt(this.#db, slot.path), row.json);
          known.set(WHOLE_ROW_ID, { json: row.json, ord: 0 });
          setAt(this.#db as unknown as Record<string, unknown>, slot.path, merged);
        }
        continue;
      }
      const current = getAt(this.#db, slot.path);
      const elements = Array.isArray(current) ? current : [];
      if (Array.isArray(current) && replaceInPlace(elements, known, change)) continue;
      const byId = new Map<string, unknown>();
      if (recordIds(elements) !== null) {
        for (const element of elements) byId.set((element as { id: string }).id, element);
      }
      for (const row of change.deletes) {
        known.delete(row.id);
        byId.delete(row.id);
      }
      for (const row of change.upserts) {
        byId.set(row.id, mergeUnsaved(known.get(row.id)?.json, byId.get(row.id), row.json));
        known.set(row.id, { json: row.json, ord: row.ord });
      }
      const whole = known.get(WHOLE_ROW_ID);
      let next: unknown[];
      if (whole) {
        next = JSON.parse(whole.json) as unknown[];
      } else {
        // Records not yet written by this replica (no ord) keep their place at the end.
        next = [...byId.entries()]
          .filter(([id]) => id !== WHOLE_ROW_ID)
          .map(([id, element], index) => ({
            element,
            index,
            ord: known.get(id)?.ord ?? Number.POSITIVE_INFINITY,
          }))
          .sort((a, b) => a.ord - b.ord || a.index - b.index)
          .map((entry) => entry.element);
      }
      setAt(this.#db as unknown as Record<string, unknown>, slot.path, next);
    }
    return touched;
  }

  /** Rebuilds the named slots from what PostgreSQL is known to hold (after a failed write). */
  #restore(slots: Set<string>): void {
    for (const name of slots) {
      const slot = this.#slots.get(name);
      if (!slot) continue;
      const known = this.#knownFor(name);
      const whole = known.get(WHOLE_ROW_ID);
      const root = this.#db as unknown as Record<string, unknown>;
      if (slot.kind === 'value') {
        setAt(root, slot.path, whole ? JSON.parse(whole.json) : structuredClone(slot.template));
      } else if (whole) {
        setAt(root, slot.path, JSON.parse(whole.json));
      } else {
        const rows = [...known.values()].sort((a, b) => a.ord - b.ord);
        setAt(
          root,
          slot.path,
          rows.map((row) => JSON.parse(row.json)),
        );
      }
    }
  }

  #remember(upserts: RowUpsert[], deletes: RowDelete[]): void {
    for (const row of deletes) this.#knownFor(row.path).delete(row.id);
    for (const row of upserts) {
      const known = this.#knownFor(row.path);
      if (row.id === WHOLE_ROW_ID && this.#slots.get(row.path)?.kind === 'collection') known.clear();
      known.set(row.id, { json: row.json, ord: row.ord });
    }
  }

  #knownFor(path: string): Map<string, KnownRow> {
    let known = this.#known.get(path);
    if (!known) {
      known = new Map();
      this.#known.set(path, known);
    }
    return known;
  }

  #emit(keys: Set<string>): void {
    if (keys.size === 0) return;
    for (const listener of this.#listeners) {
      try {
        listener(keys);
      } catch (err) {
        this.#logger?.error({ err }, 'applying another replica’s change failed');
      }
    }
  }

  // ---- connections -------------------------------------------------------

  async #connectWriter(): Promise<pg.Client> {
    if (this.#writer) return this.#writer;
    const client = new pg.Client({ connectionString: this.#url, application_name: 'p2pstream' });
    client.on('error', (err) => {
      this.#logger?.warn({ err, database: describeDatabaseUrl(this.#url) }, 'database connection lost');
      if (this.#writer === client) this.#writer = null;
    });
    try {
      await client.connect();
    } catch (err) {
      await client.end().catch(() => {});
      throw unavailable(err);
    }
    this.#writer = client;
    return client;
  }

  #dropWriter(): void {
    const client = this.#writer;
    this.#writer = null;
    client?.end().catch(() => {});
  }

  async #startListener(): Promise<void> {
    const client = new pg.Client({ connectionString: this.#url, application_name: 'p2pstream-listen' });
    client.on('notification', (message) => {
      if (message.channel === CHANGES_CHANNEL && message.payload) this.#onNotice(message.payload);
    });
    const lost = (err?: Error) => {
      if (this.#listener !== client) return;
      this.#listener = null;
      this.#connected = false;
      client.end().catch(() => {});
      if (this.#closed) return;
      this.#logger?.warn(
        { err, database: describeDatabaseUrl(this.#url) },
        'database notifications lost; reconnecting',
      );
      this.#scheduleReconnect();
    };
    client.on('error', lost);
    client.on('end', () => lost());
    await client.connect();
    await client.query(`LISTEN ${CHANGES_CHANNEL}`);
    this.#listener = client;
    this.#connected = true;
    this.#reconnectDelayMs = 100;
    // Anything committed between the load and LISTEN.
    this.#enqueue(() => this.#catchUpIfBehind());
  }

  #scheduleReconnect(): void {
    if (this.#reconnect || this.#closed) return;
    const delay = this.#reconnectDelayMs;
    this.#reconnectDelayMs = Math.min(delay * 2, 5000);
    this.#reconnect = setTimeout(() => {
      this.#reconnect = null;
      this.#startListener().catch((err: unknown) => {
        this.#logger?.warn({ err }, 'database listener reconnect failed');
        this.#scheduleReconnect();
      });
    }, delay);
    this.#reconnect.unref();
  }

  #onNotice(payload: string): void {
    let notice: ChangeNotice;
    try {
      notice = JSON.parse(payload) as ChangeNotice;
    } catch {
      return;
    }
    if (notice.from === this.id || typeof notice.rev !== 'number') return;
    this.#enqueue(async () => {
      if (notice.rev <= this.#rev || this.#closed) return;
      if (notice.rev === this.#rev + 1 && notice.upserts && notice.deletes) {
        const changed = this.#apply(notice.upserts, notice.deletes);
        this.#rev = notice.rev;
        this.#emit(changed);
        return;
      }
      await this.#catchUpIfBehind();
    });
  }

  async #shutdownClients(): Promise<void> {
    const writer = this.#writer;
    const listener = this.#listener;
    this.#writer = null;
    this.#listener = null;
    this.#connected = false;
    await Promise.all([writer?.end().catch(() => {}), listener?.end().catch(() => {})]);
  }
}

async function migrateTables(client: pg.Client): Promise<void> {
  await client.query(
    'CREATE TABLE IF NOT EXISTS p2pstream_meta (key text PRIMARY KEY, value bigint NOT NULL)',
  );
  const current = await client.query<{ value: string }>(
    "SELECT value FROM p2pstream_meta WHERE key = 'sqlVersion'",
  );
  let version = Number(current.rows[0]?.value ?? 0);
  if (version > SQL_MIGRATIONS.length) {
    throw new Error(
      `the database tables have version ${version}, newer than this p2pstream (${SQL_MIGRATIONS.length})`,
    );
  }
  while (version < SQL_MIGRATIONS.length) {
    await client.query('BEGIN');
    try {
      await client.query(SQL_MIGRATIONS[version]!);
      version += 1;
      await client.query(
        `INSERT INTO p2pstream_meta (key, value) VALUES ('sqlVersion', $1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value`,
        [version],
      );
      await client.query('COMMIT');
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {});
      throw err;
    }
  }
}

async function writeRows(
  client: pg.Client,
  rev: number,
  upserts: RowUpsert[],
  deletes: RowDelete[],
): Promise<void> {
  if (deletes.length > 0) {
    const paths = deletes.map((d) => d.path);
    const ids = deletes.map((d) => d.id);
    await client.query(
      `DELETE FROM p2pstream_records r USING unnest($1::text[], $2::text[]) AS d(path, id)
       WHERE r.path = d.path AND r.id = d.id`,
      [paths, ids],
    );
    await client.query(
      `INSERT INTO p2pstream_deleted (path, id, rev)
       SELECT path, id, $3 FROM unnest($1::text[], $2::text[]) AS d(path, id)
       ON CONFLICT (path, id) DO UPDATE SET rev = excluded.rev, deleted_at = now()`,
      [paths, ids, rev],
    );
  }
  if (upserts.length > 0) {
    const paths = upserts.map((u) => u.path);
    const ids = upserts.map((u) => u.id);
    await client.query(
      `INSERT INTO p2pstream_records (path, id, ord, doc, rev)
       SELECT path, id, ord, doc::json, $5 FROM unnest($1::text[], $2::text[], $3::float8[], $4::text[]) AS u(path, id, ord, doc)
       ON CONFLICT (path, id) DO UPDATE SET ord = excluded.ord, doc = excluded.doc, rev = excluded.rev`,
      [paths, ids, upserts.map((u) => u.ord), upserts.map((u) => u.json), rev],
    );
    await client.query(
      `DELETE FROM p2pstream_deleted t USING unnest($1::text[], $2::text[]) AS u(path, id)
       WHERE t.path = u.path AND t.id = u.id`,
      [paths, ids],
    );
  }
}

/** Past this many changed records, they are found through an index of the collection rather than one scan each. */
const SCANS_BEFORE_INDEX = 8;

/**
 * Applies another replica's change to records that are here already and keep
 * their place (the usual change: an agent that connects updates its record)
 * by replacing each in the collection as it stands, so that a change to a few
 * of 15,000 agents neither rebuilds nor sorts the collection. False, with
 * nothing changed, when the change adds, deletes or moves a record.
 */
function replaceInPlace(
  elements: unknown[],
  known: Map<string, KnownRow>,
  change: { upserts: RowUpsert[]; deletes: RowDelete[] },
): boolean {
  if (change.deletes.length > 0 || known.has(WHOLE_ROW_ID)) return false;
  const index =
    change.upserts.length > SCANS_BEFORE_INDEX
      ? new Map(elements.map((element, i) => [(element as { id?: unknown } | null)?.id, i]))
      : null;
  const places: number[] = [];
  for (const row of change.upserts) {
    if (row.id === WHOLE_ROW_ID || known.get(row.id)?.ord !== row.ord) return false;
    const place = index
      ? (index.get(row.id) ?? -1)
      : elements.findIndex((element) => (element as { id?: unknown } | null)?.id === row.id);
    if (place < 0) return false;
    places.push(place);
  }
  change.upserts.forEach((row, i) => {
    const place = places[i]!;
    elements[place] = mergeUnsaved(known.get(row.id)?.json, elements[place], row.json);
    known.set(row.id, { json: row.json, ord: row.ord });
  });
  return true;
}

/**
 * Sort keys for a collection's records in array order: kept where the
 * records already stored are still in their stored order (new ones get a key
 * between their neighbours), renumbered 1..n otherwise.
 */
function orderOf(ids: string[], known: Map<string, KnownRow>): number[] {
  const renumber = () => ids.map((_, i) => i + 1);
  let previous = Number.NEGATIVE_INFINITY;
  for (const id of ids) {
    const row = known.get(id);
    if (!row) continue;
    if (row.ord <= previous) return renumber();
    previous = row.ord;
  }
  const next: Array<number | undefined> = new Array(ids.length);
  let upcoming: number | undefined;
  for (let i = ids.length - 1; i >= 0; i--) {
    next[i] = upcoming;
    const row = known.get(ids[i]!);
    if (row) upcoming = row.ord;
  }
  const ords: number[] = [];
  let last = 0;
  for (let i = 0; i < ids.length; i++) {
    const row = known.get(ids[i]!);
    if (row) {
      ords.push(row.ord);
      last = row.ord;
      continue;
    }
    const bound = next[i];
    let ord: number;
    if (bound === undefined) ord = Math.floor(last) + 1;
    else {
      ord = (last + bound) / 2;
      if (!(ord > last && ord < bound)) return renumber();
    }
    ords.push(ord);
    last = ord;
  }
  return ords;
}

/**
 * Another replica's version of a record that this replica changed too and has
 * not written yet (bookkeeping from `updateSoon`): a three-way merge. A field
 * this replica left as stored takes the other's value; one it changed keeps
 * its own (merged again inside objects, and inside arrays of records with ids,
 * such as an agent's `connections`, element by id: an element added or changed
 * on either side is kept), and is written with the next write. Without local
 * changes, the other's version as it is.
 */
function mergeUnsaved(storedJson: string | undefined, local: unknown, incomingJson: string): unknown {
  const incoming = JSON.parse(incomingJson) as unknown;
  if (storedJson === undefined || local === undefined) return incoming;
  if (JSON.stringify(local) === storedJson) return incoming;
  return mergeValue(JSON.parse(storedJson) as unknown, local, incoming);
}

function mergeValue(stored: unknown, local: unknown, incoming: unknown): unknown {
  if (JSON.stringify(local) === JSON.stringify(stored)) return incoming;
  if (isPlainRecord(stored) && isPlainRecord(local) && isPlainRecord(incoming)) {
    const merged: Record<string, unknown> = { ...incoming };
    for (const key of new Set([...Object.keys(local), ...Object.keys(stored)])) {
      if (JSON.stringify(local[key]) === JSON.stringify(stored[key])) continue;
      if (!(key in local)) delete merged[key];
      else
        merged[key] =
          key in stored && key in incoming ? mergeValue(stored[key], local[key], incoming[key]) : local[key];
    }
    return merged;
  }
  if (isIdArray(stored) && isIdArray(local) && isIdArray(incoming)) {
    const storedById = new Map(stored.map((e) => [e.id, e]));
    const localById = new Map(local.map((e) => [e.id, e]));
    const incomingIds = new Set(incoming.map((e) => e.id));
    const merged: unknown[] = [];
    for (const element of incoming) {
      const mine = localById.get(element.id);
      const before = storedById.get(element.id);
      if (mine === undefined) {
        // Removed here (trimmed, deleted): stays removed; added there: kept.
        if (before === undefined) merged.push(element);
      } else {
        merged.push(before === undefined ? mine : mergeValue(before, mine, element));
      }
    }
    for (const element of local) {
      if (!storedById.has(element.id) && !incomingIds.has(element.id)) merged.push(element);
    }
    return merged;
  }
  return local;
}

function isPlainRecord(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

function isIdArray(value: unknown): value is Array<Record<string, unknown> & { id: string }> {
  return Array.isArray(value) && value.every((e) => isPlainRecord(e) && typeof e.id === 'string');
}

function touchedSlots(diff: { upserts: RowUpsert[]; deletes: RowDelete[] }): Set<string> {
  return new Set([...diff.upserts.map((u) => u.path), ...diff.deletes.map((d) => d.path)]);
}

function unavailable(err: unknown): StoreUnavailableError {
  if (err instanceof StoreUnavailableError) return err;
  return new StoreUnavailableError(`the database is unavailable: ${(err as Error)?.message ?? String(err)}`, {
    cause: err,
  });
}
