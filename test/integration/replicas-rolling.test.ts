/**
 * A rolling restart of every replica fails no call that an agent with two
 * connections could serve: callers reach the replicas as a load balancer with
 * health checks would (never the one being stopped), each replica stops
 * gracefully (its heartbeat says it is draining, it sends its agents a drain
 * envelope, the streams through its agents finish) and comes back on its data
 * dir and port. The agent, given the three replicas' URLs, keeps two
 * connections to different replicas: a drained one is replaced by a
 * connection to the replica it is not on, and one stays up throughout.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { firstManagementUrl } from '../../agent/agent.js';
import { createTestAgent, serverFingerprint, startTestAgent } from '../helpers/agent.js';
import { startNats, type TestNats } from '../helpers/nats.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { freePort, startTcpBalancer } from '../helpers/processes.js';
import { type ReplicaSet, startReplicas } from '../helpers/replicas.js';
import type { TestServer } from '../helpers/server.js';
import { eventually } from '../helpers/wait.js';
import { type Instance, registerEnvironment, startInstance } from './environment-helpers.js';

let postgres: TestPostgres;
let nats: TestNats;
let set: ReplicaSet;
let target: Instance;
const ports: number[] = [];

const CLUSTER = { heartbeatMs: 300, replicaTtlMs: 2000, busLossGraceMs: 300, drainGraceMs: 5000 };

beforeAll(async () => {
  [postgres, nats] = await Promise.all([startPostgres(), startNats()]);
  set = await startReplicas(0, {
    databaseUrl: await postgres.createDatabase(),
    natsUrl: nats.url,
    config: { cluster: CLUSTER },
  });
  for (let i = 0; i < 3; i++) {
    ports.push(await freePort());
    await set.add({ env: { MANAGEMENT_PORT: String(ports[i]) } });
  }
  target = await startInstance();
}, 60_000);
afterAll(async () => {
  await target?.server.close();
  await set?.close();
  await Promise.all([nats?.close(), postgres?.close()]);
});

let cookie: Promise<string> | null = null;
/** The admin's session cookie (the setup is done once, on the first replica). */
function adminCookie(): Promise<string> {
  cookie ??= set.replicas[0]!.setupAdmin();
  return cookie;
}

describe('an agent behind one load-balancer URL', () => {
  it('keeps two connections to two different replicas, told apart by the replica id in the welcome', async () => {
    const [r0, r1, r2] = set.replicas as [TestServer, TestServer, TestServer];
    const cookie = await adminCookie();
    const token = await r0.createToken(cookie, 'balanced');
    const credentials = await createTestAgent(r0, cookie, 'behind-the-balancer');
    await eventually(() => {
      for (const replica of [r0, r1])
        expect(replica.server.store.read().agents.some((a) => a.id === credentials.id)).toBe(true);
    }, 10_000);
    // Connections spread over r0 and r1, four in a row to each. Each attempt of the agent is two
    // TCP connections (the certificate probe, then the upgrade), so its second connection first
    // reaches the replica its first one is on.
    const balancer = await startTcpBalancer([ports[0]!, ports[1]!], [0, 0, 0, 0, 1, 1, 1, 1]);
    const agent = startTestAgent(r0, credentials, {
      url: `https://127.0.0.1:${balancer.port}`,
      fingerprint: serverFingerprint(r0),
    });
    try {
      await eventually(() => {
        const up = agent.agent.connections().filter((c) => c.state === 'connected');
        expect(up.map((c) => c.replicaId).sort()).toEqual([r0.server.replicaId, r1.server.replicaId].sort());
        expect(r0.server.hub.isConnected(credentials.id)).toBe(true);
        expect(r1.server.hub.isConnected(credentials.id)).toBe(true);
      }, 10_000);
      // r0 refused the second connection (409) instead of replacing the first.
      expect(agent.events).toContainEqual({ type: 'refused', status: 409 });
      expect(agent.events.filter((e) => e.type === 'disconnected')).toEqual([]);
      await eventually(() => {
        const connections = r2.server.store.read().agents.find((a) => a.id === credentials.id)!.connections;
        expect(
          connections
            .filter((c) => c.endedAt === null)
            .map((c) => c.replicaId)
            .sort(),
        ).toEqual([r0.server.replicaId, r1.server.replicaId].sort());
      }, 10_000);
      // A call through the third replica reaches the agent through either.
      const environmentId = await registerEnvironment(
        { server: r2, cookie, token },
        { url: target.server.url, accessToken: target.token },
        { transport: 'agent', agentId: credentials.id },
      );
      const res = await r2.request('GET', '/api/v1/system/info', {
        token,
        headers: { 'x-p2pstream-environment': environmentId },
      });
      expect(res.status).toBe(200);
    } finally {
      await agent.close();
      await balancer.close();
    }
  }, 60_000);
});

describe('a rolling restart of every replica', () => {
  it('fails no relayed call while each replica in turn drains, stops and comes back', async () => {
    const live: Array<TestServer | null> = [...set.replicas];
    const first = live[0]!;
    const cookie = await adminCookie();
    const token = await first.createToken(cookie, 'rolling');
    const credentials = await createTestAgent(first, cookie, 'two-connections');
    await eventually(() => {
      for (const replica of live)
        expect(replica!.server.store.read().agents.some((a) => a.id === credentials.id)).toBe(true);
    }, 10_000);
    // Two connections, first to replicas 0 and 1; replica 2 reaches the agent only through them
    // until a drain moves a connection there. The agent starts at a place in its list drawn from its
    // id (the second connection takes the next URL): listed so that place holds replica 0.
    const start = ['0', '1', '2'].indexOf(firstManagementUrl(['0', '1', '2'], credentials.id));
    const agent = startTestAgent(first, credentials, {
      managementUrls: live.map((_, k) => live[(k - start + 3) % 3]!.url),
      fingerprint: serverFingerprint(first),
    });
    const replicaIds = live.map((replica) => replica!.server.replicaId);
    // The replicas the agent's two live (not draining) connections are on.
    const holding = () =>
      agent.agent
        .connections()
        .filter((c) => c.state === 'connected' && !c.draining)
        .map((c) => c.replicaId)
        .sort();
    try {
      await eventually(() => {
        expect(live[0]!.server.hub.isConnected(credentials.id)).toBe(true);
        expect(live[1]!.server.hub.isConnected(credentials.id)).toBe(true);
        expect(holding()).toEqual([replicaIds[0], replicaIds[1]].sort());
      }, 10_000);
      const environmentId = await registerEnvironment(
        { server: live[2]!, cookie, token },
        { url: target.server.url, accessToken: target.token },
        { transport: 'agent', agentId: credentials.id },
      );

      // Every replica knows the environment (and its trusted certificate) before the callers start.
      await eventually(async () => {
        for (const replica of live) {
          const res = await replica!.request('GET', '/api/v1/system/info', {
            token,
            headers: { 'x-p2pstream-environment': environmentId },
          });
          expect(res.status).toBe(200);
        }
      }, 10_000);

      // Callers: round robin over the replicas that are up and not being stopped.
      let stopping = -1;
      let running = true;
      let calls = 0;
      const failures: string[] = [];
      let turn = 0;
      const worker = async () => {
        while (running) {
          const candidates = live
            .map((replica, i) => ({ replica, i }))
            .filter((c) => c.replica !== null && c.i !== stopping);
          const pick = candidates[turn++ % candidates.length]!;
          const res = await pick
            .replica!.request('GET', '/api/v1/system/info', {
              token,
              headers: { 'x-p2pstream-environment': environmentId },
            })
            .catch((err: Error) => ({ status: 0, text: err.message, json: null }));
          calls += 1;
          if (res.status !== 200) failures.push(`replica ${pick.i}: ${res.status} ${res.text.slice(0, 200)}`);
        }
      };
      const workers = Array.from({ length: 4 }, () => worker());

      const drained: string[] = [];
      for (let i = 0; i < 3; i++) {
        const before = calls;
        const since = agent.events.length;
        stopping = i;
        const replica = live[i]!;
        const dataDir = replica.dataDir;
        const held = holding().includes(replicaIds[i]!);
        await replica.close();
        live[i] = null;
        if (held) {
          // The replica told the agent to move before closing, and the agent moved that
          // connection to the replica it was not on.
          const event = await agent.waitFor((e) => e.type === 'draining', { since });
          expect(event).toMatchObject({ type: 'draining', replicaId: replicaIds[i] });
          drained.push(replicaIds[i]!);
          await eventually(() => {
            expect(holding()).toHaveLength(2);
            expect(holding()).not.toContain(replicaIds[i]);
          }, 20_000);
        }
        live[i] = await set.add({ dataDir, env: { MANAGEMENT_PORT: String(ports[i]) } });
        await eventually(async () => {
          const info = (await live[i]!.request('GET', '/api/v1/system/info', { token })).json;
          expect(info.replica).toMatchObject({ bus: 'connected', acceptingAgents: true });
        }, 20_000);
        stopping = -1;
        // Calls kept flowing during this replica's restart.
        await eventually(() => expect(calls).toBeGreaterThan(before + 20), 10_000);
      }
      running = false;
      await Promise.all(workers);
      expect(failures).toEqual([]);
      expect(calls).toBeGreaterThan(60);
      // Every replica held one of the agent's connections at its turn, and recorded the end as a drain.
      expect(drained).toEqual(replicaIds);
      await eventually(() => {
        const connections = live[0]!.server.store
          .read()
          .agents.find((a) => a.id === credentials.id)!.connections;
        for (const replicaId of replicaIds)
          expect(connections.filter((c) => c.replicaId === replicaId).map((c) => c.endReason)).toContain(
            'drained',
          );
        expect(connections.map((c) => c.endReason)).not.toContain('shutdown');
      }, 10_000);
    } finally {
      await agent.close();
    }
  }, 120_000);
});
