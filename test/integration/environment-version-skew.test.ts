/**
 * Version skew between instances: a remote running a newer version serves API
 * routes this control plane does not know. With an environment selected, any
 * such `/api/v1/...` path is relayed (directly or through an agent), so the
 * newer views stay reachable; without one it stays a local 404, and paths under
 * this instance's local routes (docs/architecture.md "Local and operational
 * routes") are never relayed.
 */
import type { FastifyPluginAsync } from 'fastify';
import { describe, expect, it } from 'vitest';
import { createTestAgent, startTestAgent } from '../helpers/agent.js';
import { useCleanups } from '../helpers/cleanup.js';
import { eventually, type Instance, registerEnvironment, startInstance } from './environment-helpers.js';

const cleanups = useCleanups();

interface Seen {
  method: string;
  url: string;
  body: unknown;
}

/** Routes only the "newer" remote has: a summary view and a notes endpoint, recording each call. */
function newerRoutes(seen: Seen[]): FastifyPluginAsync {
  return async (app) => {
    app.get('/api/v1/insights/summary', { schema: { hide: true } }, async (request) => {
      seen.push({ method: request.method, url: request.url, body: null });
      return { view: 'insights', from: 'newer' };
    });
    app.post('/api/v1/insights/notes', { schema: { hide: true } }, async (request, reply) => {
      seen.push({ method: request.method, url: request.url, body: request.body });
      return reply.code(201).send({ note: request.body });
    });
    // Under a segment that is local on the control plane: must never be reached through it.
    app.get('/api/v1/environments/:id/history', { schema: { hide: true } }, async (request) => {
      seen.push({ method: request.method, url: request.url, body: null });
      return { history: [] };
    });
  };
}

async function setUp(transport: 'direct' | 'agent') {
  const seen: Seen[] = [];
  const control = await startInstance({}, cleanups);
  const newer: Instance = await startInstance({ extraOperationalPlugins: [newerRoutes(seen)] }, cleanups);
  const accessToken = await newer.server.createToken(newer.cookie, 'control-plane');
  let agentId: string | undefined;
  if (transport === 'agent') {
    const credentials = await createTestAgent(control.server, control.cookie, 'edge');
    const agent = startTestAgent(control.server, credentials);
    cleanups.push(() => agent.close());
    await agent.connected();
    await eventually(() => control.server.server.hub.isConnected(credentials.id));
    agentId = credentials.id;
  }
  const id = await registerEnvironment(
    control,
    { url: newer.server.url, accessToken },
    { transport, ...(agentId ? { agentId } : {}) },
  );
  return { control, newer, id, seen };
}

describe.each(['direct', 'agent'] as const)('an older control plane and a newer remote (%s)', (transport) => {
  it('relays the routes only the remote knows when the environment is selected', async () => {
    const { control, id, seen } = await setUp(transport);
    const byHeader = await control.server.request('GET', '/api/v1/insights/summary', {
      token: control.token,
      headers: { 'x-p2pstream-environment': id },
    });
    expect([byHeader.status, byHeader.json]).toEqual([200, { view: 'insights', from: 'newer' }]);
    expect(byHeader.headers.get('server-timing')).toMatch(/total;dur=/);

    const byQuery = await control.server.request('GET', `/api/v1/insights/summary?environment=${id}&day=3`, {
      token: control.token,
    });
    expect(byQuery.status).toBe(200);
    // The selector stays here; the rest of the query travels.
    expect(seen.at(-1)?.url).toBe('/api/v1/insights/summary?day=3');

    const posted = await control.server.request('POST', '/api/v1/insights/notes', {
      token: control.token,
      headers: { 'x-p2pstream-environment': id },
      body: { text: 'from the older console' },
    });
    expect([posted.status, posted.json]).toEqual([201, { note: { text: 'from the older console' } }]);
    expect(seen.at(-1)).toEqual({
      method: 'POST',
      url: '/api/v1/insights/notes',
      body: { text: 'from the older console' },
    });

    // A path neither knows: the remote's own 404 comes back.
    const nowhere = await control.server.request('GET', '/api/v1/nowhere/at-all', {
      token: control.token,
      headers: { 'x-p2pstream-environment': id },
    });
    expect([nowhere.status, nowhere.json.error.code]).toEqual([404, 'NOT_FOUND']);
  });

  it('keeps an unknown path a local 404 without an environment, and never relays under local routes', async () => {
    const { control, id, seen } = await setUp(transport);
    for (const options of [
      { token: control.token },
      { token: control.token, headers: { 'x-p2pstream-environment': 'local' } },
      {},
    ]) {
      const res = await control.server.request('GET', '/api/v1/insights/summary', options);
      expect([res.status, res.json.error.code]).toEqual([404, 'NOT_FOUND']);
    }
    const local = await control.server.request('POST', '/api/v1/insights/notes?environment=local', {
      token: control.token,
      body: { text: 'x' },
    });
    expect([local.status, local.json.error.code]).toEqual([404, 'NOT_FOUND']);

    // Under this instance's local routes (setup, auth, the registry, the hub): local, whatever is selected.
    for (const path of [
      `/api/v1/environments/${id}/history`,
      '/api/v1/auth/anything',
      '/api/v1/setup/more',
      '/api/v1/agent/elsewhere',
      '/api/v1/',
    ]) {
      const res = await control.server.request('GET', path, {
        token: control.token,
        headers: { 'x-p2pstream-environment': id },
      });
      expect([path, res.status, res.json.error.code]).toEqual([path, 404, 'NOT_FOUND']);
    }

    // Relaying still asks for the caller's credentials first.
    const anonymous = await control.server.request('GET', '/api/v1/insights/summary', {
      headers: { 'x-p2pstream-environment': id },
    });
    expect([anonymous.status, anonymous.json.error.code]).toEqual([401, 'UNAUTHENTICATED']);
    // An environment that does not exist is named as such.
    const missing = await control.server.request('GET', '/api/v1/insights/summary', {
      token: control.token,
      headers: { 'x-p2pstream-environment': 'no-such-environment' },
    });
    expect([missing.status, missing.json.error.code]).toEqual([404, 'ENVIRONMENT_NOT_FOUND']);
    expect(seen).toEqual([]);
  });
});
