/**
 * Active health checks of agent members, run by the agents themselves: a
 * real control plane, real agents over real WebSockets, apps on loopback
 * that only the agents reach, and apps going down and coming back.
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CAPABILITY, DEFAULT_CAPABILITIES } from '../../src/relay/protocol.js';
import { createCertificate } from '../../src/tls/certificates.js';
import { startTestAgent, startTunnelAgent, type TestAgentOptions } from '../helpers/agent.js';
import { useCleanups } from '../helpers/cleanup.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { configureProxy, eventually, proxyClient } from './proxy-helpers.js';

let s: TestServer;
let token: string;
let client: ReturnType<typeof proxyClient>;
/** What one test started: its agents and apps. */
const cleanups = useCleanups();

beforeAll(async () => {
  s = await startTestServer();
  const cookie = await s.setupAdmin();
  token = await s.createToken(cookie);
  client = proxyClient();
});

afterAll(async () => {
  await client.close();
  await s.close();
});

/** An app on a fixed loopback port that can go down (connections refused) and come back on the same port. */
interface App {
  readonly name: string;
  port: number;
  readonly url: string;
  hits: number;
  stop(): Promise<void>;
  start(): Promise<void>;
}

async function app(name: string): Promise<App> {
  let server: Server | null = null;
  const sockets = new Set<Socket>();
  const self: App = {
    name,
    port: 0,
    get url() {
      return `http://127.0.0.1:${self.port}`;
    },
    hits: 0,
    async start() {
      const srv = createServer((req, res) => {
        if (req.url !== '/healthz') self.hits += 1;
        res.end(`${name} ${req.url}`);
      });
      srv.on('connection', (socket) => {
        sockets.add(socket);
        socket.once('close', () => sockets.delete(socket));
      });
      srv.listen(self.port, '127.0.0.1');
      await once(srv, 'listening');
      self.port = (srv.address() as { port: number }).port;
      server = srv;
    },
    async stop() {
      const srv = server;
      if (srv === null) return;
      server = null;
      const closed = new Promise<void>((resolve) => srv.close(() => resolve()));
      for (const socket of sockets) socket.destroy();
      await closed;
    },
  };
  await self.start();
  cleanups.unshift(() => self.stop());
  return self;
}

async function closeServer(server: ReturnType<typeof createHttpsServer>): Promise<void> {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
}

const agentWith = (labels: Record<string, string>, allowed: string[], options: TestAgentOptions = {}) =>
  startTunnelAgent(s, token, { labels, allowedTargets: allowed, ...options }, cleanups);

const CHECK = {
  path: '/healthz',
  intervalSeconds: 1,
  timeoutMs: 500,
  healthyThreshold: 1,
  unhealthyThreshold: 1,
};

async function backend(
  members: Record<string, unknown>[],
  healthCheck: Record<string, unknown> | null = CHECK,
): Promise<{ backendId: string; memberIds: string[]; port: number }> {
  const res = await s.request('POST', '/api/v1/proxy/backends', {
    token,
    body: { name: `b-${Math.random().toString(36).slice(2)}`, members, healthCheck },
  });
  expect(res.status).toBe(201);
  const backendId = res.json.backend.id as string;
  const { port } = await configureProxy(s, token, { type: 'backend', backendId });
  return { backendId, memberIds: res.json.backend.members.map((m: { id: string }) => m.id), port };
}

interface Health {
  id: string;
  state: string;
  lastCheckAt: string | null;
  lastError: string | null;
}

async function health(backendId: string): Promise<Health[]> {
  const res = await s.request('GET', `/api/v1/proxy/backends/${backendId}/health`, { token });
  expect(res.status).toBe(200);
  return res.json.members;
}

function logged(msg: string, fields: Record<string, string>): boolean {
  return s.logs.some((line) => {
    const entry = JSON.parse(line);
    return entry.msg === msg && Object.entries(fields).every(([k, v]) => entry[k] === v);
  });
}

describe('agent-run health checks', () => {
  it('an agent member whose app goes down turns unhealthy, traffic moves, 503 with none left, and it comes back', async () => {
    const one = await app('one');
    const two = await app('two');
    const a = await agentWith({}, [`127.0.0.1:${one.port}`]);
    const b = await agentWith({}, [`127.0.0.1:${two.port}`]);
    const { backendId, memberIds, port } = await backend([
      { type: 'agent', agentId: a.id, upstreamUrl: one.url },
      { type: 'agent', agentId: b.id, upstreamUrl: two.url },
    ]);
    const [m1, m2] = memberIds as [string, string];
    await eventually(async () => (await health(backendId)).every((m) => m.state === 'healthy'));
    expect(a.agent.agent.stats()?.healthChecks).toBe(1);
    expect(b.agent.agent.stats()?.healthChecks).toBe(1);
    expect((await health(backendId))[0]?.lastCheckAt).not.toBeNull();

    await one.stop();
    await eventually(async () => (await health(backendId)).find((m) => m.id === m1)?.state === 'unhealthy');
    const down = (await health(backendId)).find((m) => m.id === m1);
    expect(down?.lastError).toBe(`agent ${a.id}: ECONNREFUSED`);
    expect(logged('backend member unhealthy', { backendId, memberId: m1, agentId: a.id })).toBe(true);
    // Every request goes to the member still healthy, none tries the one that is down.
    const hitsBefore = two.hits;
    for (let i = 0; i < 4; i++) expect((await client.send(port, '/x')).text).toBe('two /x');
    expect(two.hits - hitsBefore).toBe(4);

    await two.stop();
    await eventually(async () => (await health(backendId)).every((m) => m.state === 'unhealthy'));
    expect((await client.send(port, '/x')).status).toBe(503);

    await one.start();
    await eventually(async () => (await health(backendId)).find((m) => m.id === m1)?.state === 'healthy');
    expect(logged('backend member healthy', { backendId, memberId: m1, agentId: a.id })).toBe(true);
    expect((await client.send(port, '/back')).text).toBe('one /back');
    expect((await health(backendId)).find((m) => m.id === m2)?.state).toBe('unhealthy');
  });

  it('a label selector is served by the matching agents whose checks pass, and skips the others', async () => {
    const shared = await app('shared');
    const site = `lab-${Math.random().toString(36).slice(2)}`;
    const good = await agentWith({ site }, [`127.0.0.1:${shared.port}`]);
    // Same labels, but its policy does not reach the app: its checks fail.
    const blind = await agentWith({ site }, ['127.0.0.1:1']);
    const { backendId, memberIds, port } = await backend([
      { type: 'agent', agentLabels: { site }, upstreamUrl: shared.url },
    ]);
    await eventually(() =>
      logged('backend member unhealthy', { backendId, memberId: memberIds[0] as string, agentId: blind.id }),
    );
    await eventually(async () => (await health(backendId))[0]?.state === 'healthy');
    for (let i = 0; i < 6; i++) {
      const res = await client.send(port, `/r${i}`);
      expect(res.status).toBe(200);
    }
    const events = (await s.request('GET', '/api/v1/traffic/recent?limit=6', { token })).json.events;
    expect(events.map((e: { backend: { agentId: string } }) => e.backend.agentId)).toEqual(
      Array(6).fill(good.id),
    );

    // The agent that can reach it goes away: every matching agent checks unhealthy.
    await good.agent.close();
    await eventually(async () => (await health(backendId))[0]?.state === 'unhealthy');
    expect((await health(backendId))[0]?.lastError).toBe(`agent ${blind.id}: TARGET_NOT_ALLOWED`);
    expect((await client.send(port, '/none')).status).toBe(503);
  });

  it('configuration changes reach the agents: an edited check, a deleted backend, a reconnected agent', async () => {
    const only = await app('only');
    const a = await agentWith({}, [`127.0.0.1:${only.port}`]);
    const { backendId, memberIds } = await backend([{ type: 'agent', agentId: a.id, upstreamUrl: only.url }]);
    await eventually(async () => (await health(backendId))[0]?.state === 'healthy');

    const edited = await s.request('PATCH', `/api/v1/proxy/backends/${backendId}`, {
      token,
      body: { healthCheck: { ...CHECK, expectStatus: 204 } },
    });
    expect(edited.status).toBe(200);
    await eventually(async () => (await health(backendId))[0]?.state === 'unhealthy');
    expect((await health(backendId))[0]?.lastError).toBe(`agent ${a.id}: status 200, expected 204`);

    // The agent reconnects (the same agent, a new connection): it gets its checks again.
    await a.agent.close();
    const again = startTestAgent(
      s,
      { id: a.id, token: a.token },
      { allowedTargets: [`127.0.0.1:${only.port}`] },
    );
    cleanups.push(() => again.close());
    await again.connected();
    await eventually(() => again.agent.stats()?.healthChecks === 1);
    await eventually(
      async () => (await health(backendId))[0]?.lastError === `agent ${a.id}: status 200, expected 204`,
    );
    expect((await health(backendId))[0]?.id).toBe(memberIds[0]);

    const removed = await s.request('DELETE', `/api/v1/proxy/backends/${backendId}`, { token });
    expect(removed.status).toBe(409);
    // In use by its route: free it first, then delete.
    const routes = (await s.request('GET', '/api/v1/proxy/routes', { token })).json.routes as {
      id: string;
      target: { backendId?: string };
    }[];
    for (const route of routes.filter((r) => r.target.backendId === backendId))
      await s.request('DELETE', `/api/v1/proxy/routes/${route.id}`, { token });
    expect((await s.request('DELETE', `/api/v1/proxy/backends/${backendId}`, { token })).status).toBe(204);
    await eventually(() => again.agent.stats()?.healthChecks === 0);
  });

  it('checks an https member as the agent tunnels to it: a certificate the agent does not trust fails the check', async () => {
    const ca = await createCertificate({ commonName: 'private CA', altNames: ['private-ca'], isCa: true });
    const leaf = await createCertificate({ altNames: ['127.0.0.1'], issuer: ca });
    const secure = createHttpsServer({ key: leaf.key, cert: leaf.cert }, (_req, res) => res.end('ok'));
    secure.listen(0, '127.0.0.1');
    await once(secure, 'listening');
    const securePort = (secure.address() as { port: number }).port;
    try {
      const a = await agentWith({}, [`127.0.0.1:${securePort}`]);
      const { backendId, port } = await backend([
        { type: 'agent', agentId: a.id, upstreamUrl: `https://127.0.0.1:${securePort}` },
      ]);
      await eventually(async () => (await health(backendId))[0]?.state === 'unhealthy');
      expect((await health(backendId))[0]?.lastError).toBe(`agent ${a.id}: UNABLE_TO_VERIFY_LEAF_SIGNATURE`);
      expect((await client.send(port, '/x')).status).toBe(503);
    } finally {
      await closeServer(secure);
    }
  });

  it('an agent without the capability keeps serving as before: no checks, its member usable', async () => {
    const plain = await app('plain');
    const older = await agentWith({}, [`127.0.0.1:${plain.port}`], {
      capabilities: DEFAULT_CAPABILITIES.filter((c) => c !== CAPABILITY.HEALTH),
    });
    const { backendId, port } = await backend([
      { type: 'agent', agentId: older.id, upstreamUrl: `${plain.url}/app` },
    ]);
    expect(s.server.hub.tunnelAgents().find((t) => t.agentId === older.id)?.health).toBeNull();
    expect((await client.send(port, '/x')).text).toBe('plain /app/x');
    const [member] = await health(backendId);
    expect(member?.state).toBe('unknown');
    expect(member?.lastCheckAt).toBeNull();
    expect(older.agent.agent.stats()?.healthChecks).toBe(0);
  });
});
