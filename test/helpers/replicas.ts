/**
 * Several p2pstream server replicas in this process, sharing one PostgreSQL
 * database (and a NATS server when given). The first replica's data dir is
 * created as usual; the others start with a copy of its `secrets.key` and
 * management certificate, as an operator deploying replicas behind one name
 * would do, so agents pin one certificate for all of them.
 */
import { copyFile, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { SECRETS_KEY_FILE_NAME } from '../../src/storage/secrets-box.js';
import { GENERATED_CERT_FILE, GENERATED_KEY_FILE } from '../../src/tls/management-certificate.js';
import { startTestServer, type TestServer, type TestServerOptions } from './server.js';

/** Files a replica shares with its peers. */
export const SHARED_REPLICA_FILES = [SECRETS_KEY_FILE_NAME, GENERATED_CERT_FILE, GENERATED_KEY_FILE];

export interface ReplicaSetOptions {
  databaseUrl: string;
  natsUrl?: string;
  /** Extra variables for every replica. */
  env?: Record<string, string>;
  config?: TestServerOptions['config'];
}

export interface ReplicaSet {
  replicas: TestServer[];
  /**
   * Starts one more replica (also after one was closed: on its old data dir
   * when given), with extra variables of its own when given.
   */
  add(options?: { dataDir?: string; env?: Record<string, string> }): Promise<TestServer>;
  close(): Promise<void>;
}

export async function startReplicas(count: number, options: ReplicaSetOptions): Promise<ReplicaSet> {
  const dirs: string[] = [];
  const replicas: TestServer[] = [];
  const env = {
    P2PSTREAM_DATABASE_URL: options.databaseUrl,
    ...(options.natsUrl ? { P2PSTREAM_NATS_URL: options.natsUrl } : {}),
    ...options.env,
  };
  let template: string | null = null;
  const add = async (extra: { dataDir?: string; env?: Record<string, string> } = {}): Promise<TestServer> => {
    let dataDir = extra.dataDir;
    if (!dataDir) {
      dataDir = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-replica-'));
      dirs.push(dataDir);
      if (template) {
        for (const name of SHARED_REPLICA_FILES)
          await copyFile(path.join(template, name), path.join(dataDir, name));
      }
    }
    const replica = await startTestServer({
      dataDir,
      env: { ...env, ...extra.env },
      ...(options.config ? { config: options.config } : {}),
    });
    template ??= dataDir;
    replicas.push(replica);
    return replica;
  };
  const set: ReplicaSet = {
    replicas,
    add,
    async close() {
      await Promise.all(replicas.map((r) => r.close()));
      await Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true })));
    },
  };
  try {
    for (let i = 0; i < count; i++) await add();
  } catch (err) {
    await set.close();
    throw err;
  }
  return set;
}
