/**
 * The Store on a lowdb JSON file (`p2pstream.json` in the data dir). Writes are
 * atomic (a temporary file of mode 0600, then renamed) and coalesced; a
 * database that cannot be read or parsed stops start-up and is never
 * overwritten. `update` changes a copy of the document, so a mutation that
 * throws leaves memory as it was (and so equal to the file); a write that
 * fails is reported by `flush` and `close` ({@link DatabaseWriteError}).
 */
import { randomUUID } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Adapter } from 'lowdb';
import { Low } from 'lowdb';
import { type Database, emptyDatabase, migrate } from './schema.js';
import { DeferredWrite, type Store } from './store.js';

export const DATABASE_FILE_NAME = 'p2pstream.json';

/** Thrown when the database file exists but cannot be used; start-up must stop. */
export class DatabaseUnreadableError extends Error {
  override readonly name = 'DatabaseUnreadableError';
  constructor(
    readonly file: string,
    reason: string,
    options?: { cause?: unknown },
  ) {
    super(`cannot open the database ${file}: ${reason}; it was left untouched`, options);
  }
}

/** A write of the database failed and a later one has not succeeded: the file is behind memory. */
export class DatabaseWriteError extends Error {
  override readonly name = 'DatabaseWriteError';
  constructor(
    readonly file: string,
    options: { cause: unknown },
  ) {
    super(
      `cannot write the database ${file}: ${(options.cause as Error)?.message ?? String(options.cause)}`,
      options,
    );
  }
}

/**
 * lowdb's JSON file adapter with the file private to this user: each write
 * goes to a temporary file created with mode 0600, then is renamed over the
 * database (atomic; an existing file of another mode is replaced by a 0600 one).
 */
class PrivateJsonFile<T> implements Adapter<T> {
  readonly #file: string;
  readonly #temp: string;

  constructor(file: string) {
    this.#file = file;
    this.#temp = path.join(path.dirname(file), `.${path.basename(file)}.tmp`);
  }

  async read(): Promise<T | null> {
    let text: string;
    try {
      text = await fs.readFile(this.#file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
    return JSON.parse(text) as T;
  }

  async write(data: T): Promise<void> {
    // A temporary file left by a crash may have any mode: start from a fresh one.
    await fs.rm(this.#temp, { force: true });
    await fs.writeFile(this.#temp, JSON.stringify(data, null, 2), { mode: 0o600, flag: 'wx' });
    await fs.rename(this.#temp, this.#file);
  }
}

export class LowdbStore implements Store {
  readonly file: string;
  readonly #low: Low<Database>;
  #closed = false;
  #inFlight: Promise<void> | null = null;
  // A failed bookkeeping write is retried by the next write of the document.
  readonly #deferred = new DeferredWrite(() => void this.#persist().catch(() => {}));
  #queued: Promise<void> | null = null;
  /** The failure of the last write, cleared by the next write that succeeds. */
  #writeError: unknown = null;

  private constructor(file: string, low: Low<Database>) {
    this.file = file;
    this.#low = low;
  }

  /** Opens (or creates) the database in `dataDir`; runs migrations. */
  static async open(dataDir: string): Promise<LowdbStore> {
    const file = path.join(dataDir, DATABASE_FILE_NAME);
    const adapter = new PrivateJsonFile<Database>(file);
    let doc: unknown;
    try {
      doc = await adapter.read();
    } catch (err) {
      const reason =
        err instanceof SyntaxError ? `it is not valid JSON (${err.message})` : String((err as Error).message);
      throw new DatabaseUnreadableError(file, reason, { cause: err });
    }
    const fresh = doc === null;
    let db: Database;
    let migrated = false;
    if (fresh) {
      db = emptyDatabase(randomUUID());
    } else {
      try {
        ({ db, migrated } = migrate(doc, randomUUID));
      } catch (err) {
        throw new DatabaseUnreadableError(file, (err as Error).message, { cause: err });
      }
    }
    const low = new Low<Database>(adapter, db);
    low.data = db;
    const store = new LowdbStore(file, low);
    if (fresh || migrated) await store.#persist();
    return store;
  }

  read(): Readonly<Database> {
    return this.#low.data;
  }

  async update<T>(mutate: (db: Database) => T): Promise<T> {
    if (this.#closed) throw new Error('the store is closed');
    // Copy on write: a mutation that throws halfway leaves the document untouched.
    const draft = structuredClone(this.#low.data);
    const result = mutate(draft);
    this.#low.data = draft;
    await this.#persist();
    return result;
  }

  /**
   * Writes the document. At most one write runs at a time and at most one
   * waits behind it: every update made while a write is running shares the
   * next write, so a burst of N updates serialises the document about twice,
   * not N times. Each caller resolves once a write begun after its change is
   * on disk.
   */
  #persist(): Promise<void> {
    if (this.#queued) return this.#queued;
    if (!this.#inFlight) return this.#startWrite();
    this.#queued = this.#inFlight.then(() => {
      this.#queued = null;
      return this.#startWrite();
    });
    return this.#queued;
  }

  #startWrite(): Promise<void> {
    const write = this.#low.write();
    const settled: Promise<void> = write.then(
      () => {
        this.#writeError = null;
        this.#settle(settled);
      },
      (err: unknown) => {
        this.#writeError = err;
        this.#settle(settled);
      },
    );
    this.#inFlight = settled;
    return write;
  }

  #settle(write: Promise<void>): void {
    if (this.#inFlight === write) this.#inFlight = null;
  }

  updateSoon<T>(mutate: (db: Database) => T): T {
    if (this.#closed) throw new Error('the store is closed');
    const result = mutate(this.#low.data);
    this.#deferred.schedule();
    return result;
  }

  /** Waits for every pending write; throws DatabaseWriteError when the last one failed. */
  async flush(): Promise<void> {
    if (this.#deferred.cancel()) {
      // Its failure is kept in #writeError and reported below.
      await this.#persist().catch(() => {});
    }
    while (this.#queued || this.#inFlight) await (this.#queued ?? this.#inFlight)?.catch(() => {});
    if (this.#writeError !== null) throw new DatabaseWriteError(this.file, { cause: this.#writeError });
  }

  /** One process owns the file: nothing else changes it. */
  onExternalChange(): () => void {
    return () => {};
  }

  /** Flushes, then refuses further updates; throws DatabaseWriteError when the last write failed. */
  async close(): Promise<void> {
    try {
      await this.flush();
    } finally {
      this.#closed = true;
    }
  }
}
