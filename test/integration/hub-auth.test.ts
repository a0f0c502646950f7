import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  agentHeaders,
  type CreatedAgent,
  createTestAgent,
  type RawAgent,
  upgradeAgent,
} from '../helpers/agent.js';
import { startTestServer, type TestServer } from '../helpers/server.js';

describe('hub authentication', () => {
  let server: TestServer;
  let cookie: string;
  let apiToken: string;
  let agent: CreatedAgent;
  let other: CreatedAgent;
  const open: RawAgent[] = [];

  beforeAll(async () => {
    server = await startTestServer();
    cookie = await server.setupAdmin();
    apiToken = await server.createToken(cookie);
    agent = await createTestAgent(server, cookie, 'edge-auth');
    other = await createTestAgent(server, cookie, 'edge-other');
  });
  afterEach(async () => {
    await Promise.all(open.splice(0).map((s) => s.close()));
  });
  afterAll(async () => {
    await server?.close();
  });

  async function refusedWith(headers: Record<string, string>): Promise<{ status: number; body: string }> {
    const result = await upgradeAgent(server, headers);
    if (result.ok) {
      open.push(result.socket);
      throw new Error('the upgrade was accepted');
    }
    return result;
  }

  it('accepts the right agent id and token and answers hello with welcome', async () => {
    const result = await upgradeAgent(server, agentHeaders(agent.id, agent.token));
    if (!result.ok) throw new Error(`refused: ${result.status} ${result.body}`);
    open.push(result.socket);
    const welcome = await result.socket.handshake();
    expect(welcome.payload.case).toBe('welcome');
    if (welcome.payload.case !== 'welcome') return;
    expect(welcome.payload.value.protocolVersion).toBe(1);
    expect(welcome.payload.value.limits?.maxFrameBytes).toBe(1024 * 1024);
    expect(server.server.hub.isConnected(agent.id)).toBe(true);
  });

  it('refuses a wrong token, another agent id, an unknown id and no credentials with 401 before the upgrade', async () => {
    const wrongToken = `p2pag_${'A'.repeat(43)}`;
    for (const headers of [
      agentHeaders(agent.id, wrongToken),
      agentHeaders(other.id, agent.token),
      agentHeaders('00000000-0000-4000-8000-000000000000', agent.token),
      agentHeaders('', agent.token),
      { authorization: `Bearer ${agent.token}` },
      { 'x-p2pstream-agent-id': agent.id },
      {},
    ]) {
      const refused = await refusedWith(headers);
      expect(refused.status).toBe(401);
      expect(JSON.parse(refused.body).error.code).toBe('UNAUTHENTICATED');
    }
    expect(server.server.hub.isConnected(other.id)).toBe(false);
  });

  it('refuses an API token on the hub', async () => {
    const refused = await refusedWith(agentHeaders(agent.id, apiToken));
    expect(refused.status).toBe(401);
    // The API token itself is good: it works on the API.
    expect((await server.request('GET', '/api/v1/agents', { token: apiToken })).status).toBe(200);
  });

  it('refuses a disabled agent, and accepts it again once enabled', async () => {
    const disabled = await createTestAgent(server, cookie, 'edge-disabled');
    await server.request('PATCH', `/api/v1/agents/${disabled.id}`, { cookie, body: { enabled: false } });
    expect((await refusedWith(agentHeaders(disabled.id, disabled.token))).status).toBe(401);
    await server.request('PATCH', `/api/v1/agents/${disabled.id}`, { cookie, body: { enabled: true } });
    const result = await upgradeAgent(server, agentHeaders(disabled.id, disabled.token));
    expect(result.ok).toBe(true);
    if (result.ok) open.push(result.socket);
  });

  it('never accepts an agent token on the management API', async () => {
    for (const path of ['/api/v1/agents', '/api/v1/system/info', '/api/v1/tokens', '/api/v1/auth/me']) {
      const res = await server.request('GET', path, { token: agent.token });
      expect(res.status, path).toBe(401);
      expect(res.json.error.code).toBe('UNAUTHENTICATED');
    }
  });

  it('answers a plain request without upgrade with 400 even with good credentials', async () => {
    const res = await server.request('GET', '/api/v1/agent/connect', {
      headers: agentHeaders(agent.id, agent.token),
    });
    expect(res.status).toBe(400);
    const anonymous = await server.request('GET', '/api/v1/agent/connect');
    expect(anonymous.status).toBe(401);
  });

  it('never logs the token', async () => {
    await refusedWith(agentHeaders(agent.id, `p2pag_${'B'.repeat(43)}`));
    const text = server.logs.join('\n');
    expect(text).toContain('agent authentication failed');
    expect(text).not.toContain(agent.token);
    expect(text).not.toContain('B'.repeat(43));
  });
});

describe('hub authentication rate limit', () => {
  let server: TestServer;

  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(async () => {
    await server?.close();
  });

  it('answers 429 to an address after 20 failures in a minute, even with good credentials', async () => {
    const cookie = await server.setupAdmin();
    const agent = await createTestAgent(server, cookie);
    const wrong = agentHeaders(agent.id, `p2pag_${'C'.repeat(43)}`);
    for (let i = 0; i < 20; i++) {
      const result = await upgradeAgent(server, wrong);
      expect(result.ok ? 101 : result.status).toBe(401);
    }
    for (const headers of [wrong, agentHeaders(agent.id, agent.token)]) {
      const result = await upgradeAgent(server, headers);
      expect(result.ok).toBe(false);
      if (!result.ok) {
        expect(result.status).toBe(429);
        expect(JSON.parse(result.body).error.code).toBe('RATE_LIMITED');
      }
    }
  });
});
