/**
 * Control-plane replicas sharing one PostgreSQL database: what one replica
 * changes, the others apply within a second (logins, tokens, agents, proxy
 * listeners, traffic settings), and a replica whose secrets key differs
 * refuses to start.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PostgresStore } from '../../src/storage/postgres-store.js';
import { SECRETS_KEY_FILE_NAME } from '../../src/storage/secrets-box.js';
import { createTestAgent, startTestAgent } from '../helpers/agent.js';
import { startPostgres, TEST_PG_PASSWORD, type TestPostgres } from '../helpers/postgres.js';
import { expectPortClosed, freePort } from '../helpers/processes.js';
import { type ReplicaSet, startReplicas } from '../helpers/replicas.js';
import { cookieOf, startTestServer, TEST_PASSWORD, TEST_USERNAME } from '../helpers/server.js';
import { eventually } from '../helpers/wait.js';

let postgres: TestPostgres;
let set: ReplicaSet;
let databaseUrl: string;
beforeAll(async () => {
  postgres = await startPostgres();
  databaseUrl = await postgres.createDatabase();
  set = await startReplicas(2, { databaseUrl });
}, 60_000);
afterAll(async () => {
  await set?.close();
  await postgres?.close();
});

describe('replicas sharing PostgreSQL', () => {
  it('takes a login on one replica on the other, and a logout on the other ends it on both', async () => {
    const [a, b] = set.replicas;
    const setup = await a!.setupAdmin();
    expect((await b!.request('GET', '/api/v1/setup')).json).toEqual({ setupRequired: false });
    const login = await b!.request('POST', '/api/v1/auth/login', {
      body: { username: TEST_USERNAME, password: TEST_PASSWORD },
    });
    expect(login.status).toBe(200);
    const cookie = cookieOf(login);
    await eventually(async () =>
      expect((await a!.request('GET', '/api/v1/auth/me', { cookie })).status).toBe(200),
    );
    expect((await b!.request('POST', '/api/v1/auth/logout', { cookie })).status).toBe(204);
    await eventually(async () =>
      expect((await a!.request('GET', '/api/v1/auth/me', { cookie })).status).toBe(401),
    );
    expect((await a!.request('GET', '/api/v1/auth/me', { cookie: setup })).status).toBe(200);
  });

  it('accepts an API token made on one replica on the other until it is deleted there', async () => {
    const [a, b] = set.replicas;
    const cookie = await login(a!);
    const created = await a!.request('POST', '/api/v1/tokens', { cookie, body: { name: 'shared-token' } });
    expect(created.status).toBe(201);
    const token = created.json.token as string;
    await eventually(async () =>
      expect((await b!.request('GET', '/api/v1/auth/me', { token })).status).toBe(200),
    );
    // A name taken on one replica is taken on the other.
    const again = await b!.request('POST', '/api/v1/tokens', { cookie, body: { name: 'shared-token' } });
    expect(again.status).toBe(409);
    expect(again.json.error.code).toBe('CONFLICT');
    expect(
      (await b!.request('DELETE', `/api/v1/tokens/${created.json.apiToken.id}`, { cookie })).status,
    ).toBe(204);
    await eventually(async () =>
      expect((await a!.request('GET', '/api/v1/auth/me', { token })).status).toBe(401),
    );
  });

  it('lets an agent made on one replica connect to the other, and drops it there when disabled on the first', async () => {
    const [a, b] = set.replicas;
    const cookie = await login(a!);
    const credentials = await createTestAgent(a!, cookie, 'agent-across-replicas');
    let agent: ReturnType<typeof startTestAgent> | null = null;
    await eventually(() => {
      expect(b!.server.store.read().agents.some((x) => x.id === credentials.id)).toBe(true);
    });
    agent = startTestAgent(b!, credentials);
    try {
      await agent.connected();
      expect(b!.server.hub.isConnected(credentials.id)).toBe(true);
      const since = agent.events.length;
      const patched = await a!.request('PATCH', `/api/v1/agents/${credentials.id}`, {
        cookie,
        body: { enabled: false },
      });
      expect(patched.status).toBe(200);
      await agent.waitFor((e) => e.type === 'disconnected', { since, timeoutMs: 1000 });
      await eventually(() => expect(b!.server.hub.isConnected(credentials.id)).toBe(false));
      const record = b!.server.store.read().agents.find((x) => x.id === credentials.id)!;
      await eventually(() => {
        const last = b!.server.store
          .read()
          .agents.find((x) => x.id === credentials.id)!
          .connections.at(-1);
        expect(last?.endReason).toBe('disabled');
        expect(last?.replicaId).toBe(b!.server.replicaId);
      }, 3000);
      expect(record.enabled).toBe(false);
    } finally {
      await agent?.close();
    }
  });

  it('starts a proxy listener another replica created, serves its routes and stops it when deleted there', async () => {
    // Two replicas on one host cannot bind one port: the other replica here is
    // a bare store on the same database, which changes the configuration
    // without a data plane of its own.
    const url = await postgres.createDatabase();
    const replica = await startTestServer({ env: { P2PSTREAM_DATABASE_URL: url } });
    const other = await PostgresStore.open({ url });
    try {
      const port = await freePort();
      const now = new Date().toISOString();
      await other.update((db) => {
        db.proxy.listeners.push({
          id: 'listener-from-elsewhere',
          name: 'from elsewhere',
          bindAddress: '127.0.0.1',
          port,
          enabled: true,
          createdAt: now,
          updatedAt: now,
        });
        db.proxy.routes.push({
          id: 'route-from-elsewhere',
          listenerId: 'listener-from-elsewhere',
          host: null,
          pathPrefix: '/',
          priority: 0,
          target: { type: 'static', status: 200, contentType: 'text/plain', body: 'configured elsewhere' },
          createdAt: now,
          updatedAt: now,
        });
      });
      await eventually(async () => {
        expect(replica.server.dataPlanePort('listener-from-elsewhere')).toBe(port);
        const res = await fetch(`http://127.0.0.1:${port}/`);
        expect(await res.text()).toBe('configured elsewhere');
      });
      await other.update((db) => {
        db.proxy.listeners = [];
        db.proxy.routes = [];
      });
      await eventually(() => expect(replica.server.dataPlanePort('listener-from-elsewhere')).toBeNull());
      await expectPortClosed(port);
    } finally {
      await other.close();
      await replica.close();
    }
  });

  it('applies traffic settings changed on one replica on the other', async () => {
    const [a, b] = set.replicas;
    const cookie = await login(a!);
    const put = await a!.request('PUT', '/api/v1/traffic/settings', {
      cookie,
      body: { enabled: true, level: 'headers' },
    });
    expect(put.status).toBe(200);
    await eventually(async () => {
      const res = await b!.request('GET', '/api/v1/traffic/settings', { cookie });
      expect(res.json.level).toBe('headers');
    });
  });

  it('never logs the database password', () => {
    for (const replica of set.replicas) {
      expect(replica.logs.join('\n')).not.toContain(TEST_PG_PASSWORD);
    }
  });

  it('refuses to start a replica whose secrets key is not the one the database was sealed with', async () => {
    const dataDir = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-replica-'));
    try {
      await writeFile(path.join(dataDir, SECRETS_KEY_FILE_NAME), randomBytes(32), { mode: 0o600 });
      const err = await startTestServer({
        dataDir,
        env: { P2PSTREAM_DATABASE_URL: databaseUrl },
      }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(Error);
      expect((err as Error).message).toMatch(/secrets\.key/);
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});

async function login(server: Awaited<ReturnType<typeof startTestServer>>): Promise<string> {
  const res = await server.request('POST', '/api/v1/auth/login', {
    body: { username: TEST_USERNAME, password: TEST_PASSWORD },
  });
  if (res.status !== 200) throw new Error(`login failed: ${res.status} ${res.text}`);
  return cookieOf(res);
}
