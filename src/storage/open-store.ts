/**
 * Picks the Store for a server: PostgreSQL when a database URL is set (shared
 * by several replicas), otherwise the lowdb file in the data dir.
 */
import type { Logger } from '../logger.js';
import { LowdbStore } from './lowdb-store.js';
import { PostgresStore } from './postgres-store.js';
import type { Store } from './store.js';

export interface OpenStoreOptions {
  dataDir: string;
  /** `postgres://…`, or null for lowdb. */
  databaseUrl: string | null;
  logger?: Logger;
}

/** An opened store and what it is (`lowdb` or `postgres`), for logs and system info. */
export interface OpenedStore {
  store: Store;
  kind: 'lowdb' | 'postgres';
  /** True while the store can reach its database (always for lowdb). */
  connected(): boolean;
}

export async function openStore(options: OpenStoreOptions): Promise<OpenedStore> {
  if (options.databaseUrl === null) {
    const store = await LowdbStore.open(options.dataDir);
    return { store, kind: 'lowdb', connected: () => true };
  }
  const store = await PostgresStore.open({
    url: options.databaseUrl,
    ...(options.logger ? { logger: options.logger } : {}),
  });
  return { store, kind: 'postgres', connected: () => store.connected };
}
