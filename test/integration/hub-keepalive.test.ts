import { describe, expect, it } from 'vitest';
import { type AgentEvent, startAgent } from '../../agent/agent.js';
import { createAgentExecutor } from '../../agent/main.js';
import type { HubOptions } from '../../src/hub/hub.js';
import { agentHeaders, type RawAgent, upgradeAgent } from '../helpers/agent.js';
import { useCleanups } from '../helpers/cleanup.js';
import { startBareHub } from '../helpers/hub.js';
import { eventually } from '../helpers/wait.js';

async function startHub(options: Partial<HubOptions>) {
  const bare = await startBareHub(options);
  return { hub: bare.hub, agents: bare.agents, app: bare.app, target: bare.target };
}

const cleanups = useCleanups();

describe('hub keepalive', () => {
  it('drops an agent that stops answering pings after two missed intervals, and keeps one that answers', async () => {
    const { hub, agents, app, target } = await startHub({ keepaliveIntervalMs: 100, keepaliveMaxMissed: 2 });
    cleanups.push(async () => {
      await hub.close();
      await app.close();
    });
    const silent = await agents.create({ name: 'silent' });
    const lively = await agents.create({ name: 'lively' });
    const raws: RawAgent[] = [];
    cleanups.push(async () => {
      await Promise.all(raws.map((r) => r.close()));
    });
    const a = await upgradeAgent(target, agentHeaders(silent.agent.id, silent.token));
    const b = await upgradeAgent(target, agentHeaders(lively.agent.id, lively.token), { answerPings: true });
    if (!a.ok || !b.ok) throw new Error('refused');
    raws.push(a.socket, b.socket);
    await a.socket.handshake();
    await b.socket.handshake();
    const closed = await a.socket.closed;
    // Dead after the second silent interval, measured in pings rather than wall-clock time: by
    // then the lively agent, pinged on the same interval, has heard only a few.
    const pingsToLively = b.socket.received.filter((e) => e.payload.case === 'ping').length;
    expect(pingsToLively).toBeLessThanOrEqual(4);
    expect(closed.code).toBe(1006);
    expect(a.socket.received.filter((e) => e.payload.case === 'ping').length).toBeGreaterThanOrEqual(2);
    expect(hub.isConnected(silent.agent.id)).toBe(false);
    expect(agents.get(silent.agent.id).connections[0]).toMatchObject({ endReason: 'timeout' });

    // The lively agent outlives several more intervals: counted in pings, not slept through.
    await eventually(() => b.socket.received.filter((e) => e.payload.case === 'ping').length >= 5);
    expect(hub.isConnected(lively.agent.id)).toBe(true);
  });

  it('closes a connection that never says hello', async () => {
    const { hub, agents, app, target } = await startHub({ helloTimeoutMs: 150 });
    cleanups.push(async () => {
      await hub.close();
      await app.close();
    });
    const mute = await agents.create({ name: 'mute' });
    const result = await upgradeAgent(target, agentHeaders(mute.agent.id, mute.token));
    if (!result.ok) throw new Error('refused');
    cleanups.push(() => result.socket.close());
    const closed = await result.socket.closed;
    expect(closed.code).toBe(1002);
    expect(agents.get(mute.agent.id).connections).toEqual([]);
  });

  it('closes every agent with 1001 when the hub shuts down, and refuses new ones', async () => {
    const { hub, agents, app, target } = await startHub({});
    cleanups.push(() => app.close());
    const created = await agents.create({ name: 'edge' });
    const result = await upgradeAgent(target, agentHeaders(created.agent.id, created.token));
    if (!result.ok) throw new Error('refused');
    cleanups.push(() => result.socket.close());
    await result.socket.handshake();
    await hub.close();
    expect((await result.socket.closed).code).toBe(1001);
    expect(hub.connectedCount()).toBe(0);
    expect(agents.get(created.agent.id).connections[0]).toMatchObject({ endReason: 'shutdown' });
    const late = await upgradeAgent(target, agentHeaders(created.agent.id, created.token));
    if (late.ok) {
      cleanups.push(() => late.socket.close());
      expect((await late.socket.closed).code).toBe(1001);
    }
  });

  it('lets the agent reconnect when the control plane goes silent', async () => {
    // The hub pings rarely here, so the agent's own idle timeout is what notices.
    const { hub, agents, app, target } = await startHub({ keepaliveIntervalMs: 60_000 });
    cleanups.push(async () => {
      await hub.close();
      await app.close();
    });
    const created = await agents.create({ name: 'edge' });
    const events: AgentEvent[] = [];
    const agent = startAgent({
      managementUrl: target.url,
      agentId: created.agent.id,
      agentToken: created.token,
      ca: target.ca,
      createExecutor: createAgentExecutor,
      idleTimeoutMs: 200,
      backoff: { initialMs: 20, maxMs: 50 },
    });
    cleanups.push(() => agent.close());
    agent.onEvent((event) => events.push(event));
    await eventually(() => events.filter((e) => e.type === 'connected').length >= 2);
    expect(events.some((e) => e.type === 'disconnected' && e.code === 1006)).toBe(true);
    expect(agents.get(created.agent.id).connections.length).toBeGreaterThanOrEqual(2);
  });
});
