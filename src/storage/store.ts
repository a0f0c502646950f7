/**
 * The storage seam: domain services read and change the instance's data only
 * through a Store. Mutations run synchronously on the in-memory document, are
 * serialised, and resolve once the change is durable (written atomically).
 */
import type { Database } from './schema.js';

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
  /** Resolves when every acknowledged change is on disk. */
  flush(): Promise<void>;
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
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}
