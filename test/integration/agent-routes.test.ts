import { X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../helpers/server.js';

describe('agent registry API', () => {
  let server: TestServer;
  let cookie: string;
  let apiToken: string;

  beforeAll(async () => {
    server = await startTestServer();
    cookie = await server.setupAdmin();
    apiToken = await server.createToken(cookie);
  });
  afterAll(async () => {
    await server.close();
  });

  it('creates an agent and shows its token once, with a ready setup snippet', async () => {
    const res = await server.request('POST', '/api/v1/agents', {
      token: apiToken,
      body: { name: 'edge-paris', labels: { site: 'paris' } },
    });
    expect(res.status).toBe(201);
    expect(res.headers.get('cache-control')).toBe('no-store');
    const { agent, token, setup } = res.json;
    expect(token).toMatch(/^p2pag_[A-Za-z0-9_-]{43}$/);
    expect(agent).toMatchObject({
      name: 'edge-paris',
      enabled: true,
      labels: { site: 'paris' },
      status: 'offline',
      connectedAt: null,
      lastSeenAt: null,
      remoteAddress: null,
      version: null,
      connections: [],
    });
    expect(agent.id).toMatch(/^[0-9a-f-]{36}$/);
    const fingerprint = new X509Certificate(server.server.certificate).fingerprint256;
    expect(setup.env).toEqual({
      MANAGEMENT_URL: server.url,
      AGENT_ID: agent.id,
      AGENT_TOKEN: token,
      MANAGEMENT_FINGERPRINT: fingerprint,
    });
    expect(setup.command).toBe('p2pstream agent');
    expect(setup.envFile).toContain(`AGENT_TOKEN=${token}\n`);
    expect(setup.systemdUnit).toContain('EnvironmentFile=/etc/p2pstream/agent.env');
    // The unit reads the token from the environment file; it never embeds it.
    expect(setup.systemdUnit).not.toContain(token);

    const list = await server.request('GET', '/api/v1/agents', { cookie });
    expect(list.status).toBe(200);
    expect(list.json.agents.map((a: { id: string }) => a.id)).toContain(agent.id);
    expect(list.text).not.toContain(token);
    expect(list.text).not.toContain('tokenHash');
    const one = await server.request('GET', `/api/v1/agents/${agent.id}`, { cookie });
    expect(one.json.agent).toEqual(agent);
  });

  it('updates name, enabled and labels, and refuses bad input', async () => {
    const { json } = await server.request('POST', '/api/v1/agents', { cookie, body: { name: 'edge-lyon' } });
    const id = json.agent.id;
    const patched = await server.request('PATCH', `/api/v1/agents/${id}`, {
      cookie,
      body: { name: 'edge-lyon-2', enabled: false, labels: { rack: 'b3' } },
    });
    expect(patched.status).toBe(200);
    expect(patched.json.agent).toMatchObject({ name: 'edge-lyon-2', enabled: false, labels: { rack: 'b3' } });

    const reserved = await server.request('PATCH', `/api/v1/agents/${id}`, {
      cookie,
      body: { labels: { 'p2pstream.io/managed': 'yes' } },
    });
    expect(reserved.status).toBe(400);
    expect(reserved.json.error.code).toBe('VALIDATION_FAILED');
    const long = await server.request('POST', '/api/v1/agents', {
      cookie,
      body: { name: 'x', labels: { k: 'v'.repeat(257) } },
    });
    expect(long.json.error.code).toBe('VALIDATION_FAILED');
    const dup = await server.request('POST', '/api/v1/agents', { cookie, body: { name: 'edge-lyon-2' } });
    expect(dup.status).toBe(409);
    expect(dup.json.error.code).toBe('CONFLICT');
    const unknown = await server.request('POST', '/api/v1/agents', {
      cookie,
      body: { name: 'y', id: 'mine' },
    });
    expect(unknown.json.error.code).toBe('VALIDATION_FAILED');
  });

  it('rotates the token and deletes the agent', async () => {
    const created = await server.request('POST', '/api/v1/agents', { cookie, body: { name: 'edge-rot' } });
    const id = created.json.agent.id;
    const rotated = await server.request('POST', `/api/v1/agents/${id}/rotate`, { cookie });
    expect(rotated.status).toBe(200);
    expect(rotated.json.token).toMatch(/^p2pag_/);
    expect(rotated.json.token).not.toBe(created.json.token);
    expect(rotated.json.setup.env.AGENT_TOKEN).toBe(rotated.json.token);
    expect(rotated.json.agent.id).toBe(id);

    const deleted = await server.request('DELETE', `/api/v1/agents/${id}`, { cookie });
    expect(deleted.status).toBe(204);
    for (const [method, path] of [
      ['GET', `/api/v1/agents/${id}`],
      ['PATCH', `/api/v1/agents/${id}`],
      ['POST', `/api/v1/agents/${id}/rotate`],
      ['DELETE', `/api/v1/agents/${id}`],
      ['GET', '/api/v1/agents/not-an-id'],
    ] as const) {
      const res = await server.request(method, path, { cookie, ...(method === 'PATCH' ? { body: {} } : {}) });
      expect(res.status, `${method} ${path}`).toBe(404);
      expect(res.json.error.code).toBe('AGENT_NOT_FOUND');
    }
  });

  it('never accepts an agent token on the management API', async () => {
    const { json } = await server.request('POST', '/api/v1/agents', { cookie, body: { name: 'edge-api' } });
    const res = await server.request('GET', '/api/v1/agents', { token: json.token });
    expect(res.status).toBe(401);
    expect(res.json.error.code).toBe('UNAUTHENTICATED');
    const info = await server.request('GET', '/api/v1/system/info', { token: json.token });
    expect(info.status).toBe(401);
    // The same request with an API token succeeds.
    expect((await server.request('GET', '/api/v1/agents', { token: apiToken })).status).toBe(200);
  });

  it('requires authentication', async () => {
    const res = await server.request('GET', '/api/v1/agents');
    expect(res.status).toBe(401);
    const create = await server.request('POST', '/api/v1/agents', { body: { name: 'anon' } });
    expect(create.status).toBe(401);
  });
});
