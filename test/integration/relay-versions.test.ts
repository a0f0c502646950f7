/**
 * The version window over a real hub and real agents: the hub picks the
 * highest version both speak; ranges that do not meet are refused with both
 * named, logged by the agent and recorded for the agent's views.
 */
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import type { AgentEvent } from '../../agent/agent.js';
import type { HubOptions } from '../../src/hub/hub.js';
import { createLogger } from '../../src/logger.js';
import type { VersionRange } from '../../src/relay/protocol.js';
import { agentHeaders, upgradeAgent } from '../helpers/agent.js';
import { useCleanups } from '../helpers/cleanup.js';
import { startBareHub, startHubAgent } from '../helpers/hub.js';
import { eventually } from '../helpers/wait.js';

const cleanups = useCleanups();

async function hub(options: Partial<HubOptions> = {}) {
  const bare = await startBareHub(options);
  cleanups.push(() => bare.close());
  return bare;
}

async function agentOf(bare: Awaited<ReturnType<typeof hub>>, versions?: VersionRange) {
  const logs: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      for (const line of String(chunk).split('\n').filter(Boolean)) logs.push(JSON.parse(line));
      cb();
    },
  });
  const events: AgentEvent[] = [];
  const { id, token, agent } = await startHubAgent(
    bare,
    {
      name: `edge-${Math.random().toString(36).slice(2)}`,
      backoff: { initialMs: 20, maxMs: 50 },
      unauthorizedRetryMs: 60_000,
      logger: createLogger('debug', sink),
      ...(versions ? { protocolVersions: versions } : {}),
    },
    cleanups,
  );
  agent.onEvent((event) => events.push(event));
  const waitFor = (predicate: (e: AgentEvent) => boolean) =>
    eventually(() => {
      if (!events.some(predicate)) throw new Error(`event not seen: ${JSON.stringify(events)}`);
    });
  return { id, token, agent, events, logs, waitFor };
}

describe('protocol version window', () => {
  it('refuses an agent whose range does not meet the control plane’s, naming both, and shows it on the agent', async () => {
    const bare = await hub({ protocolVersions: { min: 2, max: 3 } });
    const edge = await agentOf(bare, { min: 1, max: 1 });
    await edge.waitFor((e) => e.type === 'failed');
    const failed = edge.events.find((e) => e.type === 'failed');
    expect(failed).toMatchObject({ type: 'failed', code: 'PROTOCOL_ERROR' });
    expect(failed && 'message' in failed ? failed.message : '').toContain(
      'the agent speaks v1–v1, the control plane v2–v3',
    );
    // The agent logs it as an error, with both ranges.
    const logged = edge.logs.find((l) => l.level === 50 && String(l.msg).includes('v2–v3'));
    expect(logged?.msg).toContain('the agent speaks v1–v1, the control plane v2–v3');
    // Refused at the handshake: the next try waits like a refused credential, not the fast backoff.
    const retry = edge.events.find((e) => e.type === 'retrying');
    expect(retry && 'delayMs' in retry ? retry.delayMs : 0).toBeGreaterThanOrEqual(48_000);
    // The agent's view says why, and no session was started.
    await eventually(() => bare.agents.get(edge.id).protocol !== null);
    const view = bare.agents.get(edge.id);
    expect(view.status).toBe('offline');
    expect(view.connections).toEqual([]);
    expect(view.protocol).toMatchObject({
      version: null,
      agentVersions: { min: 1, max: 1 },
      controlPlaneVersions: { min: 2, max: 3 },
    });
    expect(view.protocol?.refusal).toContain('the agent speaks v1–v1, the control plane v2–v3');
    expect(bare.hub.isConnected(edge.id)).toBe(false);
  });

  it('refuses an agent that only speaks newer versions than the control plane', async () => {
    const bare = await hub();
    const edge = await agentOf(bare, { min: 3, max: 4 });
    await edge.waitFor((e) => e.type === 'failed');
    expect(
      edge.logs.some((l) => String(l.msg).includes('the agent speaks v3–v4, the control plane v1–v1')),
    ).toBe(true);
  });

  it('picks the highest version both speak and records it; a later session clears an old refusal', async () => {
    const bare = await hub({ protocolVersions: { min: 1, max: 2 } });
    const edge = await agentOf(bare, { min: 1, max: 3 });
    await edge.waitFor((e) => e.type === 'connected');
    expect(edge.logs.find((l) => l.msg === 'connected to the control plane')?.protocolVersion).toBe(2);
    expect(bare.agents.get(edge.id).protocol).toMatchObject({
      version: 2,
      agentVersions: { min: 1, max: 3 },
      controlPlaneVersions: { min: 1, max: 2 },
      refusal: null,
    });
    expect(bare.hub.isConnected(edge.id)).toBe(true);
  });

  it('accepts a hello without a range (an agent of the previous release) at its one version', async () => {
    const bare = await hub({ protocolVersions: { min: 1, max: 2 } });
    const created = await bare.agents.create({ name: 'old' });
    const upgraded = await upgradeAgent(bare.target, agentHeaders(created.agent.id, created.token));
    if (!upgraded.ok) throw new Error(`refused: ${upgraded.status}`);
    cleanups.push(() => upgraded.socket.close());
    const welcome = await upgraded.socket.handshake();
    expect(welcome.payload).toMatchObject({
      case: 'welcome',
      value: { protocolVersion: 1, minProtocolVersion: 1, maxProtocolVersion: 2 },
    });
    expect(bare.agents.get(created.agent.id).protocol?.version).toBe(1);
  });

  it('answers a check-only hello and closes it without recording a session or a refusal', async () => {
    const bare = await hub({ protocolVersions: { min: 1, max: 2 } });
    const created = await bare.agents.create({ name: 'checked' });
    const hello = (min: number, max: number) => ({
      streamId: 0,
      payload: {
        case: 'hello' as const,
        value: {
          protocolVersion: max,
          minProtocolVersion: min,
          agentVersion: 'check',
          capabilities: ['check'],
        },
      },
    });
    const inWindow = await upgradeAgent(bare.target, agentHeaders(created.agent.id, created.token));
    if (!inWindow.ok) throw new Error(`refused: ${inWindow.status}`);
    cleanups.push(() => inWindow.socket.close());
    inWindow.socket.send(hello(1, 1));
    expect(await inWindow.socket.closed).toEqual({ code: 1000, reason: 'check done' });
    const welcome = inWindow.socket.received.find((e) => e.payload.case === 'welcome');
    if (welcome?.payload.case !== 'welcome') throw new Error('no welcome');
    expect(welcome.payload.value).toMatchObject({
      protocolVersion: 1,
      capabilities: expect.arrayContaining(['check']),
    });
    expect(Math.abs((welcome.payload.value.serverTimeMs ?? 0) - Date.now())).toBeLessThan(60_000);

    const outside = await upgradeAgent(bare.target, agentHeaders(created.agent.id, created.token));
    if (!outside.ok) throw new Error(`refused: ${outside.status}`);
    cleanups.push(() => outside.socket.close());
    outside.socket.send(hello(3, 4));
    const closed = await outside.socket.closed;
    expect(closed.code).toBe(1002);
    expect(closed.reason).toContain('the agent speaks v3–v4, the control plane v1–v2');

    // A refusal would be recorded before the close frame leaves (the peer ends, then closes the socket).
    const view = bare.agents.get(created.agent.id);
    expect(view.connections).toEqual([]);
    expect(view.protocol).toBeNull();
    expect(view.lastSeenAt).toBeNull();
    expect(bare.hub.isConnected(created.agent.id)).toBe(false);
  });
});
