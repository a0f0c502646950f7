/**
 * A rolling restart of every replica fails no call that an agent with two
 * connections could serve: callers reach the replicas as a load balancer with
 * health checks would (never the one being stopped), each replica stops
 * gracefully (its heartbeat says it is draining, the streams through its
 * agents finish) and comes back on its data dir and port, and the agent keeps
 * one connection up throughout.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestAgent, serverFingerprint, startTestAgent } from '../helpers/agent.js';
import { startNats, type TestNats } from '../helpers/nats.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { freePort } from '../helpers/processes.js';
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

describe('a rolling restart of every replica', () => {
  it('fails no relayed call while each replica in turn drains, stops and comes back', async () => {
    const live: Array<TestServer | null> = [...set.replicas];
    const first = live[0]!;
    const cookie = await first.setupAdmin();
    const token = await first.createToken(cookie, 'rolling');
    const credentials = await createTestAgent(first, cookie, 'two-connections');
    await eventually(() => {
      for (const replica of live)
        expect(replica!.server.store.read().agents.some((a) => a.id === credentials.id)).toBe(true);
    }, 10_000);
    // Two connections: replicas 0 and 1; replica 2 reaches the agent only through them.
    const agent = startTestAgent(first, credentials, {
      managementUrls: [live[0]!.url, live[1]!.url],
      fingerprint: serverFingerprint(first),
    });
    try {
      await eventually(() => {
        expect(live[0]!.server.hub.isConnected(credentials.id)).toBe(true);
        expect(live[1]!.server.hub.isConnected(credentials.id)).toBe(true);
      }, 10_000);
      const environmentId = await registerEnvironment(
        { server: live[2]!, cookie, token },
        { url: target.server.url, accessToken: target.token },
        { transport: 'agent', agentId: credentials.id },
      );

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

      for (let i = 0; i < 3; i++) {
        const before = calls;
        stopping = i;
        const replica = live[i]!;
        const dataDir = replica.dataDir;
        await replica.close();
        live[i] = null;
        live[i] = await set.add({ dataDir, env: { MANAGEMENT_PORT: String(ports[i]) } });
        await eventually(async () => {
          const info = (await live[i]!.request('GET', '/api/v1/system/info', { token })).json;
          expect(info.replica).toMatchObject({ bus: 'connected', acceptingAgents: true });
          if (i < 2) expect(live[i]!.server.hub.isConnected(credentials.id)).toBe(true);
        }, 20_000);
        stopping = -1;
        // Calls kept flowing during this replica's restart.
        await eventually(() => expect(calls).toBeGreaterThan(before + 20), 10_000);
      }
      running = false;
      await Promise.all(workers);
      expect(failures).toEqual([]);
      expect(calls).toBeGreaterThan(60);
    } finally {
      await agent.close();
    }
  }, 120_000);
});
