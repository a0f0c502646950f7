/**
 * Environments through a real agent: the control plane, a target instance and
 * an in-process agent daemon connected to the control plane's hub over a real
 * WebSocket. Discovery, relayed calls, the impostor check, event streams and
 * cancellation all go through the agent's executor.
 */
import { describe, expect, it } from 'vitest';
import { createTestAgent, startTestAgent, type TestAgent } from '../helpers/agent.js';
import { useCleanups } from '../helpers/cleanup.js';
import {
  eventually,
  fingerprintOf,
  type Instance,
  registerEnvironment,
  startImpostor,
  startInstance,
} from './environment-helpers.js';
import { configureProxy, openSse, proxyClient, type SseReader } from './proxy-helpers.js';

const cleanups = useCleanups();

const instance = (options: Parameters<typeof startInstance>[0] = {}): Promise<Instance> =>
  startInstance(options, cleanups);

/** Control plane, target, a connected agent, and an agent-transport environment for the target. */
async function viaAgent(options: { trust?: boolean } = {}) {
  const control = await instance();
  const target = await instance();
  const credentials = await createTestAgent(control.server, control.cookie, 'edge');
  const agent: TestAgent = startTestAgent(control.server, credentials);
  cleanups.push(() => agent.close());
  await agent.connected();
  await eventually(() => control.server.server.hub.isConnected(credentials.id));
  const accessToken = await target.server.createToken(target.cookie, 'control-plane');
  const id = await registerEnvironment(
    control,
    { url: target.server.url, accessToken },
    { transport: 'agent', agentId: credentials.id, trust: options.trust ?? true },
  );
  return { control, target, agent, agentId: credentials.id, id };
}

const selected = (id: string) => ({ 'x-p2pstream-environment': id });
const dataEvents = (reader: SseReader) =>
  reader.messages.filter((m) => m.event === 'message').map((m) => JSON.parse(m.data) as { path: string });

describe('environments through an agent', () => {
  it('discovers the real peer certificate through the agent', async () => {
    const { control, target, id } = await viaAgent({ trust: false });
    const discovered = await control.server.request('POST', `/api/v1/environments/${id}/discover`, {
      token: control.token,
    });
    expect(discovered.status).toBe(200);
    expect(discovered.json).toMatchObject({
      certificate: { fingerprintSha256: fingerprintOf(target.server) },
      trustState: 'UNTRUSTED',
    });
  });

  it('relays reads and writes to the target through the agent, and the connection test', async () => {
    const { control, target, id } = await viaAgent();
    const created = await control.server.request('POST', '/api/v1/tokens', {
      token: control.token,
      headers: selected(id),
      body: { name: 'through-the-agent' },
    });
    expect(created.status).toBe(201);
    const names = async (instance: Instance) =>
      (await instance.server.request('GET', '/api/v1/tokens', { token: instance.token })).json.tokens.map(
        (t: { name: string }) => t.name,
      );
    expect(await names(target)).toContain('through-the-agent');
    expect(await names(control)).not.toContain('through-the-agent');

    const tested = await control.server.request('POST', `/api/v1/environments/${id}/test`, {
      token: control.token,
    });
    const targetInfo = await target.server.request('GET', '/api/v1/system/info', { token: target.token });
    expect(tested.json).toMatchObject({ ok: true, remote: { instanceId: targetInfo.json.instanceId } });
  });

  it('times the path through the agent: Server-Timing and the test timing name the hub and the target steps', async () => {
    const { control, id } = await viaAgent();
    const first = await control.server.request('POST', `/api/v1/environments/${id}/test`, {
      token: control.token,
    });
    const timing = first.json.timing;
    // The first call opened a connection to the target: its handshake took time.
    expect(timing.tls).toBeGreaterThan(0);
    expect(timing.hub).toBeGreaterThan(0);
    const sum = timing.cp + timing.hub + timing.dns + timing.connect + timing.tls + timing.ttfb;
    expect(Math.abs(sum - timing.total)).toBeLessThanOrEqual(0.5);
    const relayed = await control.server.request('GET', '/api/v1/system/info', {
      token: control.token,
      headers: selected(id),
    });
    const header = relayed.headers.get('server-timing') ?? '';
    expect(header).toMatch(
      /^cp;dur=[\d.]+, hub;dur=[\d.]+, dns;dur=[\d.]+, connect;dur=0, tls;dur=0, ttfb;dur=[\d.]+, total;dur=[\d.]+$/,
    );
  });

  it('refuses an impostor with CERTIFICATE_CHANGED through the agent and sends it nothing', async () => {
    const { control, target, id } = await viaAgent();
    const trusted = fingerprintOf(target.server);
    const port = target.server.server.port;
    await target.server.close();
    const impostor = await startImpostor(port);
    cleanups.push(() => impostor.close());

    const refused = await control.server.request('POST', '/api/v1/tokens', {
      token: control.token,
      headers: selected(id),
      body: { name: 'must-not-arrive' },
    });
    expect([refused.status, refused.json.error.code]).toEqual([412, 'CERTIFICATE_CHANGED']);
    expect(impostor.connections).toBeGreaterThan(0);
    expect(impostor.receivedBytes).toBe(0);
    const env = await control.server.request('GET', `/api/v1/environments/${id}`, { token: control.token });
    expect(env.json.environment).toMatchObject({
      trustState: 'CHANGED',
      certificate: { fingerprintSha256: trusted },
      discoveredCertificate: { fingerprintSha256: impostor.fingerprintSha256 },
    });
    await control.server.server.store.flush();
    const stored = control.server.server.store.read().environments.find((e) => e.id === id);
    expect(stored?.discoveredCertificate?.fingerprintSha256).toBe(impostor.fingerprintSha256);
  });

  it('streams events one by one through the agent and cancels the remote stream on close', async () => {
    const { control, target, id } = await viaAgent();
    const { port } = await configureProxy(target.server, target.token, {
      type: 'static',
      status: 200,
      contentType: 'text/plain',
      body: 'ok',
    });
    const client = proxyClient();
    cleanups.push(() => client.close());
    const subscribers = async () =>
      (await target.server.request('GET', '/api/v1/traffic/settings', { token: target.token })).json
        .subscribers as number;

    const reader = await openSse(control.server, `/api/v1/traffic/stream?environment=${id}`, control.token);
    cleanups.push(async () => reader.close());
    expect(reader.status).toBe(200);
    await eventually(async () => (await subscribers()) === 1);
    for (const path of ['/one', '/two', '/three']) {
      await client.send(port, path);
      await reader.until(() => dataEvents(reader).some((e) => e.path === path));
    }
    expect(dataEvents(reader).map((e) => e.path)).toEqual(['/one', '/two', '/three']);
    reader.close();
    await reader.ended;
    await eventually(async () => (await subscribers()) === 0);
  });

  it('answers AGENT_OFFLINE once the agent is gone, before anything is sent', async () => {
    const { control, agent, agentId, id } = await viaAgent();
    await agent.close();
    await eventually(() => !control.server.server.hub.isConnected(agentId));
    const relayed = await control.server.request('GET', '/api/v1/system/info', {
      token: control.token,
      headers: selected(id),
    });
    expect([relayed.status, relayed.json.error.code]).toEqual([503, 'AGENT_OFFLINE']);
    const discovered = await control.server.request('POST', `/api/v1/environments/${id}/discover`, {
      token: control.token,
    });
    expect([discovered.status, discovered.json.error.code]).toEqual([503, 'AGENT_OFFLINE']);
  });
});
