import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createCertificate } from '../../src/tls/certificates.js';
import {
  agentHeaders,
  createTestAgent,
  type RawAgent,
  startTestAgent,
  type TestAgent,
  upgradeAgent,
} from '../helpers/agent.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { eventually } from '../helpers/wait.js';

const servers: TestServer[] = [];
const agents: TestAgent[] = [];
const raws: RawAgent[] = [];
const dirs: string[] = [];

afterEach(async () => {
  await Promise.all(agents.splice(0).map((a) => a.close()));
  await Promise.all(raws.splice(0).map((r) => r.close()));
  await Promise.all(servers.splice(0).map((s) => s.close()));
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

async function serverWithAdmin(options: Parameters<typeof startTestServer>[0] = {}) {
  const server = await startTestServer(options);
  servers.push(server);
  const cookie = await server.setupAdmin();
  return { server, cookie };
}

function track(agent: TestAgent): TestAgent {
  agents.push(agent);
  return agent;
}

async function agentView(server: TestServer, cookie: string, id: string) {
  const res = await server.request('GET', `/api/v1/agents/${id}`, { cookie });
  return res.json.agent;
}

/** Reads the agent's view until `ok` holds, and returns that view. */
async function agentViewWhen(
  server: TestServer,
  cookie: string,
  id: string,
  ok: (agent: Awaited<ReturnType<typeof agentView>>) => boolean,
) {
  let view!: Awaited<ReturnType<typeof agentView>>;
  await eventually(async () => {
    view = await agentView(server, cookie, id);
    return ok(view);
  });
  return view;
}

describe('agent sessions', () => {
  it('shows connected while the agent runs, then offline with a closed session', async () => {
    const { server, cookie } = await serverWithAdmin();
    const created = await createTestAgent(server, cookie, 'edge-status');
    const agent = track(startTestAgent(server, created));
    await agent.connected();
    const live = await agentView(server, cookie, created.id);
    expect(live).toMatchObject({
      status: 'connected',
      remoteAddress: '127.0.0.1',
      version: expect.any(String),
    });
    expect(live.connectedAt).not.toBeNull();
    expect(live.connections).toHaveLength(1);
    expect(live.connections[0]).toMatchObject({ endedAt: null, remoteAddress: '127.0.0.1' });
    expect(server.server.hub.isConnected(created.id)).toBe(true);
    expect(server.server.hub.connectedCount()).toBe(1);
    const overview = await server.request('GET', '/api/v1/overview', { cookie });
    expect(overview.json.agentsConnected).toBe(1);

    await agent.close();
    const after = await agentViewWhen(
      server,
      cookie,
      created.id,
      (a) => a.status === 'offline' && a.connections[0]?.endedAt !== null,
    );
    expect(after).toMatchObject({ status: 'offline', connectedAt: null });
    expect(after.connections[0]).toMatchObject({ endReason: 'closed' });
    expect(Date.parse(after.connections[0].endedAt)).toBeGreaterThanOrEqual(
      Date.parse(after.connections[0].startedAt),
    );
    expect(server.server.hub.connectedCount()).toBe(0);
  });

  for (const action of ['disable', 'rotate', 'delete'] as const) {
    it(`drops the live agent within a second on ${action}, and its old credentials stay out`, async () => {
      const { server, cookie } = await serverWithAdmin();
      const created = await createTestAgent(server, cookie, `edge-${action}`);
      const agent = track(startTestAgent(server, created));
      await agent.connected();
      const since = agent.events.length;
      const res =
        action === 'disable'
          ? await server.request('PATCH', `/api/v1/agents/${created.id}`, {
              cookie,
              body: { enabled: false },
            })
          : action === 'rotate'
            ? await server.request('POST', `/api/v1/agents/${created.id}/rotate`, { cookie })
            : await server.request('DELETE', `/api/v1/agents/${created.id}`, { cookie });
      expect(res.status).toBeLessThan(300);
      const dropped = await agent.waitFor((e) => e.type === 'disconnected', { since });
      // 1008: cut by the revocation itself, not by a keepalive timing out (1006) later.
      expect(dropped).toMatchObject({ code: 1008 });
      expect(server.server.hub.isConnected(created.id)).toBe(false);
      // The agent retries with the same credentials and is refused before the upgrade.
      await agent.waitFor((e) => e.type === 'refused' && e.status === 401, { since, timeoutMs: 3000 });
      expect(server.server.hub.isConnected(created.id)).toBe(false);
      if (action === 'rotate') {
        const fresh = track(startTestAgent(server, { id: created.id, token: res.json.token }));
        await fresh.connected();
        expect(server.server.hub.isConnected(created.id)).toBe(true);
        const view = await agentView(server, cookie, created.id);
        expect(view.connections.map((c: { endReason: string | null }) => c.endReason)).toEqual([
          'rotated',
          null,
        ]);
      }
    });
  }

  it('does not let an upgrade authenticated with the old token start its session after a rotate', async () => {
    const { server, cookie } = await serverWithAdmin();
    const created = await createTestAgent(server, cookie, 'edge-race');
    const result = await upgradeAgent(server, agentHeaders(created.id, created.token));
    if (!result.ok) throw new Error('upgrade refused');
    raws.push(result.socket);
    // Rotate between the authenticated upgrade and the hello.
    await server.request('POST', `/api/v1/agents/${created.id}/rotate`, { cookie });
    await expect(result.socket.handshake()).rejects.toThrow(/closed before welcome: 1008/);
    expect(server.server.hub.isConnected(created.id)).toBe(false);
    expect((await agentView(server, cookie, created.id)).status).toBe('offline');
  });

  it('replaces the old connection when the same agent connects again', async () => {
    const { server, cookie } = await serverWithAdmin();
    const created = await createTestAgent(server, cookie, 'edge-twice');
    const first = await upgradeAgent(server, agentHeaders(created.id, created.token));
    if (!first.ok) throw new Error('refused');
    raws.push(first.socket);
    await first.socket.handshake();
    const second = await upgradeAgent(server, agentHeaders(created.id, created.token));
    if (!second.ok) throw new Error('refused');
    raws.push(second.socket);
    await second.socket.handshake();
    const closed = await first.socket.closed;
    expect(closed.code).toBe(1008);
    expect(closed.reason).toMatch(/replaced/);
    expect(server.server.hub.isConnected(created.id)).toBe(true);
    const view = await agentViewWhen(
      server,
      cookie,
      created.id,
      (a) => a.connections[0]?.endReason === 'replaced',
    );
    expect(view.status).toBe('connected');
    expect(view.connections.map((c: { endReason: string | null }) => c.endReason)).toEqual([
      'replaced',
      null,
    ]);
  });

  it('reconnects after the control plane restarts on the same data dir', async () => {
    const dataDir = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-agent-restart-'));
    dirs.push(dataDir);
    const first = await startTestServer({ dataDir });
    const cookie = await first.setupAdmin();
    const created = await createTestAgent(first, cookie, 'edge-restart');
    const agent = track(startTestAgent(first, created));
    await agent.connected();
    const since = agent.events.length;
    const port = first.server.port;
    const url = first.url;
    await first.close();
    await agent.waitFor((e) => e.type === 'disconnected', { since });

    const second = await startTestServer({ dataDir, env: { MANAGEMENT_PORT: String(port) } });
    servers.push(second);
    expect(second.url).toBe(url);
    await agent.waitFor((e) => e.type === 'connected', { since, timeoutMs: 5000 });
    expect(second.server.hub.isConnected(created.id)).toBe(true);
    const login = await second.request('POST', '/api/v1/auth/login', {
      body: { username: 'admin', password: 'correct horse battery' },
    });
    const cookie2 = login.headers.get('set-cookie')!.split(';')[0]!;
    const view = await agentView(second, cookie2, created.id);
    expect(view.status).toBe('connected');
    expect(view.connections).toHaveLength(2);
    expect(view.connections[0].endedAt).not.toBeNull();
    expect(view.connections[1].endedAt).toBeNull();
  });

  it('closes at start-up a session left open by a crash', async () => {
    const dataDir = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-agent-crash-'));
    dirs.push(dataDir);
    const first = await startTestServer({ dataDir });
    const cookie = await first.setupAdmin();
    const created = await createTestAgent(first, cookie, 'edge-crash');
    const raw = await upgradeAgent(first, agentHeaders(created.id, created.token));
    if (!raw.ok) throw new Error('refused');
    raws.push(raw.socket);
    await raw.socket.handshake();
    // Simulate a crash: the database keeps the open session as it was on disk.
    await first.server.store.flush();
    const { readFile } = await import('node:fs/promises');
    const snapshot = await readFile(path.join(dataDir, 'p2pstream.json'), 'utf8');
    await first.close();
    await writeFile(path.join(dataDir, 'p2pstream.json'), snapshot);
    expect(JSON.parse(snapshot).agents[0].connections[0].endedAt).toBeNull();

    const second = await startTestServer({ dataDir });
    servers.push(second);
    const login = await second.request('POST', '/api/v1/auth/login', {
      body: { username: 'admin', password: 'correct horse battery' },
    });
    const cookie2 = login.headers.get('set-cookie')!.split(';')[0]!;
    const view = await agentView(second, cookie2, created.id);
    expect(view.status).toBe('offline');
    expect(view.connections[0].endedAt).not.toBeNull();
    expect(view.connections[0].endReason).toBe('restart');
  });

  it('refuses a control plane with another fingerprint, logs it and keeps retrying', async () => {
    const { server, cookie } = await serverWithAdmin();
    const created = await createTestAgent(server, cookie, 'edge-pin');
    const impostor = await createCertificate({ altNames: ['localhost', '127.0.0.1'] });
    const agent = track(startTestAgent(server, created, { fingerprint: impostor.fingerprintSha256 }));
    const first = await agent.waitFor((e) => e.type === 'failed');
    expect(first).toMatchObject({ type: 'failed', code: 'CERTIFICATE_CHANGED' });
    await agent.waitFor((e) => e.type === 'failed', { since: agent.events.indexOf(first) + 1 });
    expect(agent.events.some((e) => e.type === 'connected')).toBe(false);
    expect(server.server.hub.isConnected(created.id)).toBe(false);
    const log = agent.logs.map((l) => JSON.parse(l)).find((l) => l.code === 'CERTIFICATE_CHANGED');
    expect(log).toMatchObject({ level: 50, observedFingerprint: expect.any(String) });
    expect(log.msg).toMatch(/refusing the control plane/);
    // No upgrade ever reached the hub with the token.
    expect(server.logs.join('\n')).not.toContain('agent connected');
  });

  it('verifies the control plane against a CA file, host name included', async () => {
    const { server, cookie } = await serverWithAdmin();
    const created = await createTestAgent(server, cookie, 'edge-ca');
    // The generated management certificate is self-signed: it is its own CA.
    const good = track(
      startTestAgent(server, created, {
        ca: server.server.certificate,
        url: `https://localhost:${server.server.port}`,
      }),
    );
    await good.connected();
    await good.close();
    const other = await createCertificate({ altNames: ['localhost'], isCa: true });
    const bad = track(startTestAgent(server, created, { ca: other.cert }));
    const failed = await bad.waitFor((e) => e.type === 'failed');
    expect(failed).toMatchObject({ type: 'failed', code: 'CERTIFICATE_CHANGED' });
    if (failed.type === 'failed')
      expect(failed.message).toMatch(/does not verify against MANAGEMENT_CA_FILE/);
    expect(bad.events.some((e) => e.type === 'connected')).toBe(false);
    const log = bad.logs.map((l) => JSON.parse(l)).find((l) => l.code === 'CERTIFICATE_CHANGED');
    expect(log).toMatchObject({ level: 50 });
  });
});

describe('agent reconnection backoff', () => {
  async function delaysAfterDrops(stableAfterMs: number, upForMs: number): Promise<number[]> {
    const { server, cookie } = await serverWithAdmin();
    const created = await createTestAgent(server, cookie);
    const agent = track(
      startTestAgent(server, created, {
        backoff: { initialMs: 20, maxMs: 1000, random: () => 0.999999 },
        stableAfterMs,
      }),
    );
    const delays: number[] = [];
    for (let i = 0; i < 4; i++) {
      await agent.connected();
      // How long the connection stays up is what is under test (the agent reads its own clock).
      await new Promise((r) => setTimeout(r, upForMs));
      const since = agent.events.length;
      server.server.hub.disconnect(created.id, 'test');
      const retrying = await agent.waitFor((e) => e.type === 'retrying', { since });
      if (retrying.type === 'retrying') delays.push(retrying.delayMs);
      await agent.waitFor((e) => e.type === 'connected', { since });
    }
    return delays;
  }

  it('doubles the delay after connections that do not last', async () => {
    expect(await delaysAfterDrops(10_000, 0)).toEqual([20, 40, 80, 160]);
  });

  it('starts over after a connection that stayed up', async () => {
    expect(await delaysAfterDrops(50, 100)).toEqual([20, 20, 20, 20]);
  });
});

describe('malformed frames', () => {
  it('close only the offending agent connection, with 1002 or 1009', async () => {
    const { server, cookie } = await serverWithAdmin();
    const good = await createTestAgent(server, cookie, 'edge-good');
    const bad = await createTestAgent(server, cookie, 'edge-bad');
    const daemon = track(startTestAgent(server, good));
    await daemon.connected();

    const cases: Array<{ name: string; send: (r: RawAgent) => void; code: number }> = [
      {
        name: 'garbage bytes',
        send: (r) => r.ws.send(Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f])),
        code: 1002,
      },
      { name: 'a text frame', send: (r) => r.ws.send('hello'), code: 1002 },
      { name: 'an empty envelope', send: (r) => r.ws.send(Buffer.alloc(0)), code: 1002 },
      {
        name: 'a second hello',
        send: (r) => r.send({ streamId: 0, payload: { case: 'hello', value: { protocolVersion: 1 } } }),
        code: 1002,
      },
      {
        name: 'a frame over 1 MiB',
        send: (r) =>
          r.send({
            streamId: 1,
            payload: { case: 'bodyChunk', value: { data: new Uint8Array(1024 * 1024 + 1) } },
          }),
        code: 1009,
      },
    ];
    for (const c of cases) {
      const result = await upgradeAgent(server, agentHeaders(bad.id, bad.token));
      if (!result.ok) throw new Error(`refused: ${result.status}`);
      raws.push(result.socket);
      await result.socket.handshake();
      c.send(result.socket);
      const closed = await result.socket.closed;
      expect(closed.code, c.name).toBe(c.code);
      expect(server.server.hub.isConnected(bad.id)).toBe(false);
      expect(server.server.hub.isConnected(good.id), c.name).toBe(true);
      expect(daemon.agent.state).toBe('connected');
    }
    expect(daemon.events.filter((e) => e.type === 'disconnected')).toEqual([]);
  });

  it('close an agent that announces another protocol version', async () => {
    const { server, cookie } = await serverWithAdmin();
    const created = await createTestAgent(server, cookie, 'edge-v2');
    const result = await upgradeAgent(server, agentHeaders(created.id, created.token));
    if (!result.ok) throw new Error('refused');
    raws.push(result.socket);
    result.socket.send({ streamId: 0, payload: { case: 'hello', value: { protocolVersion: 2 } } });
    const closed = await result.socket.closed;
    expect(closed.code).toBe(1002);
    const error = result.socket.received.find((e) => e.payload.case === 'error');
    expect(error?.payload.value).toMatchObject({ code: 'PROTOCOL_ERROR' });
  });
});
