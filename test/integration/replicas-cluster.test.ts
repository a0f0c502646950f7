/**
 * Three control-plane replicas sharing PostgreSQL and a NATS server: each
 * knows the others (system info, overview) and which replica holds which
 * agent (agents list); a replica that loses NATS stops taking agents, sends
 * its agents away and says so, and takes them again once NATS is back.
 */
import { fetch } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { agentHeaders, createTestAgent, startTestAgent, upgradeAgent } from '../helpers/agent.js';
import { startNats, type TestNats } from '../helpers/nats.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { startTcpRelay, type TcpRelay } from '../helpers/processes.js';
import { type ReplicaSet, startReplicas } from '../helpers/replicas.js';
import { cookieOf, TEST_PASSWORD, TEST_USERNAME, type TestServer } from '../helpers/server.js';
import { eventually } from '../helpers/wait.js';
import { registerEnvironment, startInstance } from './environment-helpers.js';

let postgres: TestPostgres;
let nats: TestNats;
let relay: TcpRelay;
let set: ReplicaSet;
let cookie: string;

const CLUSTER = { heartbeatMs: 300, replicaTtlMs: 2000, busLossGraceMs: 300 };

beforeAll(async () => {
  [postgres, nats] = await Promise.all([startPostgres(), startNats()]);
  relay = await startTcpRelay(nats.port);
  set = await startReplicas(2, {
    databaseUrl: await postgres.createDatabase(),
    natsUrl: nats.url,
    config: { cluster: CLUSTER },
  });
  // The third replica reaches NATS through a link the tests can cut.
  await set.add({ env: { P2PSTREAM_NATS_URL: `nats://127.0.0.1:${relay.port}` } });
  cookie = await set.replicas[0]!.setupAdmin();
}, 60_000);
afterAll(async () => {
  await set?.close();
  await relay?.close();
  await Promise.all([nats?.close(), postgres?.close()]);
});

async function login(server: TestServer): Promise<string> {
  const res = await server.request('POST', '/api/v1/auth/login', {
    body: { username: TEST_USERNAME, password: TEST_PASSWORD },
  });
  if (res.status !== 200) throw new Error(`login failed: ${res.status} ${res.text}`);
  return cookieOf(res);
}

describe('replicas joined by NATS', () => {
  it('each lists all three replicas with their ids, uptime and agent counts, and itself as connected to both stores', async () => {
    const ids = set.replicas.map((r) => r.server.replicaId);
    expect(new Set(ids).size).toBe(3);
    for (const replica of set.replicas) {
      await eventually(async () => {
        const info = (await replica.request('GET', '/api/v1/system/info', { cookie })).json;
        expect(info.replica).toEqual({
          id: replica.server.replicaId,
          store: 'postgres',
          databaseConnected: true,
          bus: 'connected',
          acceptingAgents: true,
          agentsConnected: 0,
        });
        expect(info.replicas.map((r: { id: string }) => r.id).sort()).toEqual([...ids].sort());
        const self = info.replicas.find((r: { self: boolean }) => r.self);
        expect(self.id).toBe(replica.server.replicaId);
        for (const r of info.replicas) {
          expect(r.uptimeSeconds).toBeGreaterThanOrEqual(0);
          expect(r.agentsConnected).toBe(0);
        }
      });
    }
  });

  it('shows on every replica which replica holds an agent, and the agent offline once it leaves', async () => {
    const [a, b] = set.replicas;
    const credentials = await createTestAgent(a!, cookie, 'held-by-b');
    await eventually(() =>
      expect(b!.server.store.read().agents.some((x) => x.id === credentials.id)).toBe(true),
    );
    const agent = startTestAgent(b!, credentials);
    try {
      await agent.connected();
      for (const replica of set.replicas) {
        const seen = await login(replica);
        await eventually(async () => {
          const res = await replica.request('GET', `/api/v1/agents/${credentials.id}`, { cookie: seen });
          expect(res.json.agent).toMatchObject({ status: 'connected', replicaId: b!.server.replicaId });
          const overview = (await replica.request('GET', '/api/v1/overview', { cookie: seen })).json;
          const holder = overview.replicas.find((r: { id: string }) => r.id === b!.server.replicaId);
          expect(holder.agentsConnected).toBe(1);
        });
      }
    } finally {
      await agent.close();
    }
    await eventually(async () => {
      const res = await a!.request('GET', `/api/v1/agents/${credentials.id}`, { cookie });
      expect(res.json.agent).toMatchObject({ status: 'offline', replicaId: null });
    });
  });

  it('relays calls through each replica to an agent another replica holds, naming the holder, and cancels end to end', async () => {
    const [a, b, c] = set.replicas;
    const target = await startInstance();
    const credentials = await createTestAgent(a!, cookie, 'forwarded-agent');
    await eventually(() =>
      expect(b!.server.store.read().agents.some((x) => x.id === credentials.id)).toBe(true),
    );
    const agent = startTestAgent(b!, credentials);
    try {
      await agent.connected();
      for (const replica of [a!, c!]) {
        await eventually(async () => {
          const seen = await replica.request('GET', `/api/v1/agents/${credentials.id}`, { cookie });
          expect(seen.json.agent.replicaId).toBe(b!.server.replicaId);
        });
      }
      const token = await a!.createToken(cookie, 'forwarding-test');
      const control = { server: a!, cookie, token };
      // Discover and trust travel a → NATS → b → agent → target too.
      const environmentId = await registerEnvironment(
        control,
        { url: target.server.url, accessToken: target.token },
        { transport: 'agent', agentId: credentials.id },
      );
      for (const replica of [a!, b!, c!]) {
        await eventually(async () => {
          const tested = await replica.request('POST', `/api/v1/environments/${environmentId}/test`, {
            token,
          });
          expect(tested.status).toBe(200);
          expect(tested.json).toMatchObject({
            ok: true,
            remote: { instanceId: target.server.server.store.read().instance.id },
            replicaId: b!.server.replicaId,
          });
        });
        const relayed = await replica.request('GET', '/api/v1/system/info', {
          token,
          headers: { 'x-p2pstream-environment': environmentId },
        });
        expect(relayed.status).toBe(200);
        expect(relayed.json.instanceId).toBe(target.server.server.store.read().instance.id);
      }
      // A live stream through c → b, and the caller leaving cancels it at the agent.
      const controller = new AbortController();
      const response = await fetch(`${c!.url}/api/v1/traffic/stream?environment=${environmentId}`, {
        headers: { authorization: `Bearer ${token}` },
        dispatcher: c!.dispatcher,
        signal: controller.signal,
      });
      expect(response.status).toBe(200);
      await eventually(() =>
        expect(b!.server.hub.sessionStats(credentials.id)?.activeStreams ?? 0).toBeGreaterThan(0),
      );
      controller.abort();
      await eventually(() => {
        expect(b!.server.hub.sessionStats(credentials.id)?.activeStreams ?? 0).toBe(0);
      });
    } finally {
      await agent.close();
      await target.server.close();
    }
  });

  it('stops taking agents on a replica that lost NATS, sends its agents away, says so, and takes them again once back', async () => {
    const c = set.replicas[2]!;
    const credentials = await createTestAgent(set.replicas[0]!, cookie, 'held-by-c');
    await eventually(() =>
      expect(c.server.store.read().agents.some((x) => x.id === credentials.id)).toBe(true),
    );
    const agent = startTestAgent(c, credentials, { backoff: { initialMs: 100, maxMs: 200 } });
    try {
      await agent.connected();
      const since = agent.events.length;
      await relay.cut();
      await agent.waitFor((e) => e.type === 'disconnected', { since, timeoutMs: 5000 });
      await eventually(async () => {
        const info = (await c.request('GET', '/api/v1/system/info', { cookie })).json;
        expect(info.replica).toMatchObject({
          bus: 'disconnected',
          acceptingAgents: false,
          agentsConnected: 0,
        });
      });
      const refused = await upgradeAgent(c, agentHeaders(credentials.id, credentials.token));
      expect(refused.ok).toBe(false);
      if (!refused.ok) {
        expect(refused.status).toBe(503);
        expect(JSON.parse(refused.body).error.code).toBe('REPLICA_UNAVAILABLE');
      }
      // The others no longer count it once its heartbeats stop.
      await eventually(async () => {
        const info = (await set.replicas[0]!.request('GET', '/api/v1/system/info', { cookie })).json;
        expect(info.replicas.map((r: { id: string }) => r.id)).not.toContain(c.server.replicaId);
      });
      await relay.restore();
      await eventually(async () => {
        const info = (await c.request('GET', '/api/v1/system/info', { cookie })).json;
        expect(info.replica).toMatchObject({ bus: 'connected', acceptingAgents: true });
      }, 15_000);
      await agent.connected(10_000);
      await eventually(async () => {
        const res = await set.replicas[0]!.request('GET', `/api/v1/agents/${credentials.id}`, { cookie });
        expect(res.json.agent).toMatchObject({ status: 'connected', replicaId: c.server.replicaId });
      });
    } finally {
      await agent.close();
    }
  });
});
