import { describe, expect, it } from 'vitest';
import { useCleanups } from '../helpers/cleanup.js';
import { freePort } from '../helpers/processes.js';
import { configureProxy, eventually, startProxyTest, startUpstream, type Upstream } from './proxy-helpers.js';

const cleanups = useCleanups();

/** An upstream answering its name; `/health` answers `health()`'s status. */
async function namedUpstream(name: string, health: () => number = () => 200): Promise<Upstream> {
  const u = await startUpstream((req, res) => {
    if (req.url === '/health') {
      res.writeHead(health()).end();
      return;
    }
    res.end(`${name} ${req.url}`);
  }, cleanups);
  return u;
}

describe('backends', () => {
  it('balances a route over upstream members, traces backend and member, refuses deleting it in use', async () => {
    const { server: s, token, client: c } = await startProxyTest(cleanups);
    const a = await namedUpstream('a');
    const b = await namedUpstream('b');
    const created = await s.request('POST', '/api/v1/proxy/backends', {
      token,
      body: {
        name: 'web',
        algorithm: 'round_robin',
        members: [
          { type: 'upstream', url: a.url },
          { type: 'upstream', url: b.url },
        ],
      },
    });
    expect(created.status).toBe(201);
    const backend = created.json.backend;
    expect(backend.members).toHaveLength(2);
    expect(backend.passive).toEqual({ failures: 3, ejectSeconds: 30 });
    const { port, routeId } = await configureProxy(s, token, { type: 'backend', backendId: backend.id });

    const bodies: string[] = [];
    for (let i = 0; i < 4; i++) {
      const res = await c.send(port, '/p');
      expect(res.status).toBe(200);
      bodies.push(res.text);
    }
    expect(bodies.filter((t) => t === 'a /p')).toHaveLength(2);
    expect(bodies.filter((t) => t === 'b /p')).toHaveLength(2);

    const recent = await s.request('GET', '/api/v1/traffic/recent?limit=1', { token });
    const event = recent.json.events[0];
    expect(event.backend.backendId).toBe(backend.id);
    expect(backend.members.map((m: { id: string }) => m.id)).toContain(event.backend.memberId);
    // Upstream members are not tunnelled: the overview counts the requests, none through an agent.
    const overview = (await s.request('GET', '/api/v1/overview', { token })).json;
    expect(overview.requests.last5m).toBe(4);
    expect(overview.tunnelled).toEqual({ last5m: 0, last1h: 0 });
    expect(event.backend.agentId).toBeUndefined();

    const refused = await s.request('DELETE', `/api/v1/proxy/backends/${backend.id}`, { token });
    expect(refused.status).toBe(409);
    expect(refused.json.error.code).toBe('CONFLICT');
    expect(refused.json.error.details.usedBy).toEqual([{ type: 'route', id: routeId }]);

    const health = await s.request('GET', `/api/v1/proxy/backends/${backend.id}/health`, { token });
    expect(health.status).toBe(200);
    expect(health.json.members.map((m: { state: string }) => m.state)).toEqual(['healthy', 'healthy']);

    expect((await s.request('DELETE', `/api/v1/proxy/routes/${routeId}`, { token })).status).toBe(204);
    expect((await s.request('DELETE', `/api/v1/proxy/backends/${backend.id}`, { token })).status).toBe(204);
    expect((await s.request('GET', `/api/v1/proxy/backends/${backend.id}`, { token })).status).toBe(404);
  });

  it('rejects bad backends and routes to unknown backends with the field named', async () => {
    const { server: s, token } = await startProxyTest(cleanups);
    const cases: [Record<string, unknown>, string][] = [
      [{ name: 'x', algorithm: 'random', members: [] }, 'algorithm'],
      [{ name: 'x', hashKey: 'cookie', members: [] }, 'hashKey'],
      [{ name: 'x', members: [{ type: 'upstream', url: 'ftp://h' }] }, 'members.0.url'],
      [{ name: 'x', members: [{ type: 'upstream', url: 'http://h', weight: 0 }] }, 'members.0.weight'],
      [{ name: 'x', members: [{ type: 'agent', upstreamUrl: 'http://h' }] }, 'members.0.agentId'],
      [
        { name: 'x', members: [{ type: 'agent', agentId: 'ag', upstreamUrl: 'http://h' }] },
        'members.0.agentId',
      ],
      [
        { name: 'x', members: [{ type: 'agent', agentLabels: 'site=lab', upstreamUrl: 'http://h' }] },
        'members.0.agentLabels',
      ],
      [
        { name: 'x', members: [{ type: 'agent', agentLabels: { site: 1 }, upstreamUrl: 'http://h' }] },
        'members.0.agentLabels',
      ],
      [
        { name: 'x', members: [{ type: 'agent', agentLabels: { site: 'lab' }, upstreamUrl: 'ftp://h' }] },
        'members.0.upstreamUrl',
      ],
      [{ name: 'x', members: [{ type: 'agent', agentLabels: { site: 'lab' } }] }, 'members.0.upstreamUrl'],
      [{ name: 'x', members: [], healthCheck: { intervalSeconds: 0 } }, 'healthCheck.intervalSeconds'],
    ];
    for (const [body, field] of cases) {
      const res = await s.request('POST', '/api/v1/proxy/backends', { token, body });
      expect(res.status, JSON.stringify(body)).toBe(400);
      expect(res.json.error.code).toBe('VALIDATION_FAILED');
      expect(res.json.error.details.field).toBe(field);
    }
    const unknownAgent = await s.request('POST', '/api/v1/proxy/backends', {
      token,
      body: {
        name: 'x',
        members: [
          { type: 'agent', agentId: '11111111-2222-4333-8444-555555555555', upstreamUrl: 'http://h' },
        ],
      },
    });
    expect(unknownAgent.status).toBe(404);
    expect(unknownAgent.json.error).toMatchObject({
      code: 'AGENT_NOT_FOUND',
      details: { field: 'members.0.agentId' },
    });
    const port = await freePort();
    const listener = await s.request('POST', '/api/v1/proxy/listeners', {
      token,
      body: { name: 'l', bindAddress: '127.0.0.1', port },
    });
    const route = await s.request('POST', '/api/v1/proxy/routes', {
      token,
      body: { listenerId: listener.json.listener.id, target: { type: 'backend', backendId: 'nope' } },
    });
    expect(route.status).toBe(400);
    expect(route.json.error.details.field).toBe('target.backendId');
    const dup = { name: 'same', members: [] };
    expect((await s.request('POST', '/api/v1/proxy/backends', { token, body: dup })).status).toBe(201);
    expect((await s.request('POST', '/api/v1/proxy/backends', { token, body: dup })).status).toBe(409);
  });

  it('active checks take an unhealthy member out and back, log the transitions; none healthy → 503', async () => {
    const { server: s, token, client: c } = await startProxyTest(cleanups);
    let bStatus = 500;
    const a = await namedUpstream('a');
    const b = await namedUpstream('b', () => bStatus);
    const created = await s.request('POST', '/api/v1/proxy/backends', {
      token,
      body: {
        name: 'checked',
        members: [
          { type: 'upstream', url: a.url },
          { type: 'upstream', url: b.url },
        ],
        healthCheck: {
          path: '/health',
          intervalSeconds: 1,
          timeoutMs: 500,
          healthyThreshold: 1,
          unhealthyThreshold: 1,
        },
      },
    });
    const backend = created.json.backend;
    const [idA, idB] = backend.members.map((m: { id: string }) => m.id);
    const { port } = await configureProxy(s, token, { type: 'backend', backendId: backend.id });
    const states = async () =>
      (await s.request('GET', `/api/v1/proxy/backends/${backend.id}/health`, { token })).json.members as {
        id: string;
        state: string;
        lastError: string | null;
        lastCheckAt: string | null;
      }[];
    await eventually(async () => (await states()).map((m) => m.state).join() === 'healthy,unhealthy');
    const bHealth = (await states()).find((m) => m.id === idB)!;
    expect(bHealth.lastError).toMatch(/status 500/);
    expect(bHealth.lastCheckAt).not.toBeNull();
    for (let i = 0; i < 4; i++) expect((await c.send(port, '/x')).text).toBe('a /x');
    expect(s.logs.some((l) => l.includes('backend member unhealthy') && l.includes(idB))).toBe(true);

    bStatus = 200;
    await eventually(async () => (await states()).every((m) => m.state === 'healthy'));
    expect(s.logs.some((l) => l.includes('backend member healthy') && l.includes(idB))).toBe(true);

    await a.close();
    bStatus = 503;
    await eventually(async () => (await states()).every((m) => m.state === 'unhealthy'));
    expect((await states()).find((m) => m.id === idA)!.lastError).not.toBeNull();
    const res = await c.send(port, '/x');
    expect(res.status).toBe(503);
    const event = (await s.request('GET', '/api/v1/traffic/recent?limit=1', { token })).json.events[0];
    expect(event.error).toBe('no_healthy_member');
    expect(event.backend).toEqual({ backendId: backend.id, memberId: null });
  });

  it('passive ejection: a member refusing connections is left out after consecutive failures', async () => {
    const { server: s, token, client: c } = await startProxyTest(cleanups);
    const a = await namedUpstream('a');
    const deadPort = await freePort();
    const created = await s.request('POST', '/api/v1/proxy/backends', {
      token,
      body: {
        name: 'passive',
        members: [
          { type: 'upstream', url: a.url },
          { type: 'upstream', url: `http://127.0.0.1:${deadPort}` },
        ],
        passive: { failures: 2, ejectSeconds: 60 },
      },
    });
    const backend = created.json.backend;
    const dead = backend.members[1].id;
    const { port } = await configureProxy(s, token, { type: 'backend', backendId: backend.id });
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) statuses.push((await c.send(port, '/y')).status);
    expect(statuses.filter((x) => x === 502)).toHaveLength(2);
    for (let i = 0; i < 6; i++) expect((await c.send(port, '/y')).text).toBe('a /y');
    const health = (await s.request('GET', `/api/v1/proxy/backends/${backend.id}/health`, { token })).json;
    const deadHealth = health.members.find((m: { id: string }) => m.id === dead);
    expect(deadHealth.lastError).toMatch(/ejected/);
    expect(deadHealth.state).toBe('unhealthy');

    // Members sent back with their ids keep their state through an update; a new member starts unknown.
    const b = await namedUpstream('b');
    const updated = await s.request('PATCH', `/api/v1/proxy/backends/${backend.id}`, {
      token,
      body: { members: [...backend.members, { type: 'upstream', url: b.url }] },
    });
    expect(updated.status).toBe(200);
    expect(updated.json.backend.members.slice(0, 2)).toEqual(backend.members);
    const after = (await s.request('GET', `/api/v1/proxy/backends/${backend.id}/health`, { token })).json
      .members;
    expect(after.map((m: { state: string }) => m.state)).toEqual(['healthy', 'unhealthy', 'unknown']);
    const served = new Set<string>();
    for (let i = 0; i < 6; i++) served.add((await c.send(port, '/y')).text);
    expect(served).toEqual(new Set(['a /y', 'b /y']));
    expect(s.logs.some((l) => l.includes('backend member ejected') && l.includes(dead))).toBe(true);
  });

  it('a member set draining takes no new requests while one in flight finishes; /health shows it', async () => {
    const { server: s, token, client: c } = await startProxyTest(cleanups);
    let finishSlow: () => void = () => {};
    let slowArrived: () => void = () => {};
    const arrived = new Promise<void>((resolve) => {
      slowArrived = resolve;
    });
    const a = await startUpstream((req, res) => {
      if (req.url !== '/slow') {
        res.end(`a ${req.url}`);
        return;
      }
      finishSlow = () => res.end('a slow');
      slowArrived();
    }, cleanups);
    const b = await namedUpstream('b');
    const created = await s.request('POST', '/api/v1/proxy/backends', {
      token,
      body: {
        name: 'drained',
        members: [
          { type: 'upstream', url: a.url },
          { type: 'upstream', url: b.url },
        ],
      },
    });
    const backend = created.json.backend;
    expect(backend.members.map((m: { draining: boolean }) => m.draining)).toEqual([false, false]);
    const [idA, idB] = backend.members.map((m: { id: string }) => m.id);
    const { port } = await configureProxy(s, token, { type: 'backend', backendId: backend.id });
    const health = async () =>
      (await s.request('GET', `/api/v1/proxy/backends/${backend.id}/health`, { token })).json.members as {
        id: string;
        state: string;
        activeRequests: number;
      }[];

    // Round robin starts with a: the slow request stays in flight there.
    const slow = c.send(port, '/slow');
    await arrived;
    const drained = await s.request('PATCH', `/api/v1/proxy/backends/${backend.id}`, {
      token,
      body: { members: [{ ...backend.members[0], draining: true }, backend.members[1]] },
    });
    expect(drained.status).toBe(200);
    expect(drained.json.backend.members[0]).toMatchObject({ id: idA, draining: true });
    expect((await health()).find((m) => m.id === idA)).toMatchObject({
      state: 'draining',
      activeRequests: 1,
    });

    for (let i = 0; i < 4; i++) expect((await c.send(port, '/x')).text).toBe('b /x');
    finishSlow();
    const finished = await slow;
    expect(finished.status).toBe(200);
    expect(finished.text).toBe('a slow');
    expect((await health()).find((m) => m.id === idA)).toMatchObject({
      state: 'draining',
      activeRequests: 0,
    });
    expect((await health()).find((m) => m.id === idB)!.state).toBe('healthy');
    expect(
      (await s.request('GET', `/api/v1/proxy/backends/${backend.id}`, { token })).json.backend.members[0]
        .draining,
    ).toBe(true);

    // Back in service: it serves again.
    await s.request('PATCH', `/api/v1/proxy/backends/${backend.id}`, {
      token,
      body: { members: backend.members },
    });
    const served = new Set<string>();
    for (let i = 0; i < 4; i++) served.add((await c.send(port, '/y')).text);
    expect(served).toEqual(new Set(['a /y', 'b /y']));

    const bad = await s.request('PATCH', `/api/v1/proxy/backends/${backend.id}`, {
      token,
      body: { members: [{ type: 'upstream', url: a.url, draining: 'yes' }] },
    });
    expect(bad.status).toBe(400);
    expect(bad.json.error.details.field).toBe('members.0.draining');
  });
});
