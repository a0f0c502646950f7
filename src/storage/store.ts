/**
 * The storage seam: domain services read and change the instance's data only
 * through a Store. Mutations run synchronously on the in-memory document, are
 * serialised, and resolve once the change is durable (written atomically).
 */
import type { Database } from './schema.js';

/**
 * Called after changes made by another process sharing the database (another
 * replica) were applied to the document, with the top-level keys they touched
 * (`agents`, `proxy`, …), so derived state can follow.
 */
export type ExternalChangeListener = (keys: ReadonlySet<string>) => void;

/** One record of a collection (`agents`, `apiTokens`, `proxy.routes`: the dotted path of the array). */
export interface RecordRef {
  collection: string;
  id: string;
}

/** Longest delay of a deferred write ({@link Store.updateSoon}). */
export const DEFERRED_WRITE_MS = 1000;

/**
 * The timer behind a store's `updateSoon`: the first deferred change arms it,
 * changes until it fires share it, and a write that runs anyway (a flush, an
 * acknowledged update) disarms it, since it carries those changes too.
 */
export class DeferredWrite {
  #timer: ReturnType<typeof setTimeout> | null = null;
  readonly #write: () => void;

  /** `write` starts the store's write and handles its failure itself. */
  constructor(write: () => void) {
    this.#write = write;
  }

  /** Arms the timer (within {@link DEFERRED_WRITE_MS}) unless it is armed already. */
  schedule(): void {
    if (this.#timer !== null) return;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#write();
    }, DEFERRED_WRITE_MS);
    this.#timer.unref();
  }

  /** Disarms the timer; true when a deferred write was due. */
  cancel(): boolean {
    if (this.#timer === null) return false;
    clearTimeout(this.#timer);
    this.#timer = null;
    return true;
  }
}

export interface Store {
  /** The current document. Treat as read-only; change it through `update`. */
  read(): Readonly<Database>;
  /**
   * Applies `mutate` to the document and persists it. The returned promise
   * resolves with `mutate`'s result once the write is on disk (acknowledged).
   * When `mutate` throws, nothing is written and the error propagates;
   * mutators must validate before they change anything.
   */
  update<T>(mutate: (db: Database) => T): Promise<T>;
  /**
   * Applies `mutate` now and persists it soon (within {@link DEFERRED_WRITE_MS},
   * in one write with whatever else changed by then). For bookkeeping whose
   * loss in a crash is harmless (agent sessions, last seen): a burst of such
   * changes costs one write instead of one each. `record`: the one existing
   * record `mutate` changes, when it changes nothing else (not its place, not
   * another record); a store that writes by record then compares only those
   * named since its last write, instead of the whole document.
   */
  updateSoon<T>(mutate: (db: Database) => T, record?: RecordRef): T;
  /** Resolves when every change, deferred ones included, is on disk. */
  flush(): Promise<void>;
  /**
   * Subscribes to changes written by other processes sharing the database
   * (never called for this process's own updates, nor by a store only this
   * process uses). Returns an unsubscribe.
   */
  onExternalChange(listener: ExternalChangeListener): () => void;
  close(): Promise<void>;
}

/** An in-memory Store for unit tests of domain services. */
export class MemoryStore implements Store {
  #db: Database;
  constructor(db: Database) {
    this.#db = db;
  }
  read(): Readonly<Database> {
    return this.#db;
  }
  async update<T>(mutate: (db: Database) => T): Promise<T> {
    return mutate(this.#db);
  }
  updateSoon<T>(mutate: (db: Database) => T): T {
    return mutate(this.#db);
  }
  async flush(): Promise<void> {}
  onExternalChange(): () => void {
    return () => {};
  }
  async close(): Promise<void> {}
}
