import { describe, expect, it } from 'vitest';
import { AgentService, looksLikeAgentToken, parseLabels } from '../../src/domain/agent-service.js';
import { hashSecret } from '../../src/domain/ids.js';
import { AppError } from '../../src/errors.js';
import { emptyDatabase } from '../../src/storage/schema.js';
import { MemoryStore } from '../../src/storage/store.js';
import { captureLogs } from '../helpers/log-capture.js';

function setup(now = () => Date.parse('2025-01-01T00:00:00Z')) {
  const store = new MemoryStore(emptyDatabase('instance-1'));
  const agents = new AgentService({ store, now, maxConnections: 3 });
  return { store, agents };
}

async function codeOf(promise: Promise<unknown> | (() => unknown)): Promise<string> {
  try {
    await (typeof promise === 'function' ? promise() : promise);
  } catch (err) {
    return (err as AppError).code;
  }
  return 'no error';
}

describe('AgentService', () => {
  it('creates an agent with a p2pag_ token shown once and stored only as a hash', async () => {
    const { store, agents } = setup();
    const { agent, token } = await agents.create({ name: 'edge-1', labels: { site: 'paris' } });
    expect(token).toMatch(/^p2pag_[A-Za-z0-9_-]{43}$/);
    expect(looksLikeAgentToken(token)).toBe(true);
    expect(agent).toMatchObject({
      name: 'edge-1',
      enabled: true,
      labels: { site: 'paris' },
      status: 'offline',
      connectedAt: null,
      lastSeenAt: null,
      connections: [],
    });
    const record = store.read().agents[0]!;
    expect(record.tokenHash).toBe(hashSecret(token));
    expect(JSON.stringify(store.read())).not.toContain(token);
    expect(JSON.stringify(agents.list())).not.toContain(record.tokenHash);
  });

  it('refuses bad names, duplicate names, unknown fields and bad labels', async () => {
    const { agents } = setup();
    await agents.create({ name: 'edge' });
    expect(await codeOf(agents.create({ name: '' }))).toBe('VALIDATION_FAILED');
    expect(await codeOf(agents.create({ name: 'a\nb' }))).toBe('VALIDATION_FAILED');
    expect(await codeOf(agents.create({ name: 'edge' }))).toBe('CONFLICT');
    expect(await codeOf(agents.create({ name: 'x', token: 'p2pag_' }))).toBe('VALIDATION_FAILED');
    expect(await codeOf(agents.create({ name: 'x', labels: ['a'] }))).toBe('VALIDATION_FAILED');
    expect(await codeOf(agents.create({ name: 'x', labels: { 'p2pstream.io/role': 'x' } }))).toBe(
      'VALIDATION_FAILED',
    );
    expect(await codeOf(agents.create({ name: 'x', labels: { a: 1 } }))).toBe('VALIDATION_FAILED');
    expect(agents.list()).toHaveLength(1);
  });

  it('checks label key and value lengths at their bounds', () => {
    expect(parseLabels({ ['k'.repeat(128)]: 'v'.repeat(256) })).toEqual({
      ['k'.repeat(128)]: 'v'.repeat(256),
    });
    expect(() => parseLabels({ ['k'.repeat(129)]: 'v' })).toThrow(AppError);
    expect(() => parseLabels({ '': 'v' })).toThrow(AppError);
    expect(() => parseLabels({ k: 'v'.repeat(257) })).toThrow(AppError);
    expect(() => parseLabels({ 'a b': 'v' })).toThrow(AppError);
    expect(parseLabels({ 'example.com/p2pstream.io': '' })).toEqual({ 'example.com/p2pstream.io': '' });
  });

  it('authenticates only the right id and token of an enabled agent', async () => {
    const { agents } = setup();
    const { agent, token } = await agents.create({ name: 'edge' });
    const other = await agents.create({ name: 'other' });
    expect(agents.authenticate(agent.id, token)).toEqual({
      ok: true,
      credential: { agentId: agent.id, generation: 1 },
    });
    expect(agents.authenticate(other.agent.id, token)).toEqual({ ok: false, reason: 'wrong-token' });
    expect(agents.authenticate('00000000-0000-4000-8000-000000000000', token)).toEqual({
      ok: false,
      reason: 'unknown-agent',
    });
    expect(agents.authenticate(agent.id, `p2pat_${token.slice(6)}`)).toEqual({
      ok: false,
      reason: 'malformed',
    });
    expect(agents.authenticate('not-an-id', token)).toEqual({ ok: false, reason: 'malformed' });
    await agents.update(agent.id, { enabled: false });
    expect(agents.authenticate(agent.id, token)).toEqual({ ok: false, reason: 'disabled' });
  });

  it('rotates the token: the old one stops working and listeners hear of it', async () => {
    const { agents } = setup();
    const { agent, token } = await agents.create({ name: 'edge' });
    const heard: string[] = [];
    agents.onRevoked((id, reason) => heard.push(`${id}:${reason}`));
    const auth = agents.authenticate(agent.id, token);
    if (!auth.ok) throw new Error('expected success');
    const rotated = await agents.rotate(agent.id);
    expect(rotated.token).not.toBe(token);
    expect(agents.authenticate(agent.id, token).ok).toBe(false);
    expect(agents.authenticate(agent.id, rotated.token).ok).toBe(true);
    expect(heard).toEqual([`${agent.id}:rotated`]);
    // An upgrade authenticated before the rotate cannot start its session after it.
    expect(agents.isCredentialCurrent(auth.credential)).toBe(false);
    expect(await codeOf(agents.sessionStarted(auth.credential, { remoteAddress: null, version: null }))).toBe(
      'UNAUTHENTICATED',
    );
    expect(agents.get(agent.id).status).toBe('offline');
  });

  it('logs a failing revocation listener with its cause and still tells the others', async () => {
    const logs = captureLogs();
    const store = new MemoryStore(emptyDatabase('instance-1'));
    const agents = new AgentService({ store, logger: logs.logger });
    const { agent } = await agents.create({ name: 'edge' });
    const heard: string[] = [];
    agents.onRevoked(() => {
      throw new Error('hub gone');
    });
    agents.onRevoked((_id, reason) => heard.push(reason));
    await agents.update(agent.id, { enabled: false });
    expect(heard).toEqual(['disabled']);
    expect(agents.authenticate(agent.id, 'p2pag_x').ok).toBe(false);
    const failure = logs.entries().find((e) => e.msg === 'an agent revocation listener failed');
    expect(failure).toMatchObject({ agentId: agent.id, reason: 'disabled', err: { message: 'hub gone' } });
  });

  it('announces disable and delete, but not a PATCH that keeps the agent enabled', async () => {
    const { agents } = setup();
    const { agent } = await agents.create({ name: 'edge' });
    const heard: string[] = [];
    agents.onRevoked((_id, reason) => heard.push(reason));
    await agents.update(agent.id, { name: 'edge-2', labels: { a: 'b' } });
    await agents.update(agent.id, { enabled: false });
    await agents.update(agent.id, { enabled: false });
    await agents.remove(agent.id);
    expect(heard).toEqual(['disabled', 'deleted']);
    expect(await codeOf(() => agents.get(agent.id))).toBe('AGENT_NOT_FOUND');
    expect(await codeOf(agents.rotate(agent.id))).toBe('AGENT_NOT_FOUND');
  });

  it('tracks sessions: connected while live, offline with a closed session after, bounded history', async () => {
    let now = Date.parse('2025-01-01T00:00:00Z');
    const { agents } = setup(() => now);
    const { agent, token } = await agents.create({ name: 'edge' });
    const auth = agents.authenticate(agent.id, token);
    if (!auth.ok) throw new Error('expected success');
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      const session = await agents.sessionStarted(auth.credential, {
        remoteAddress: '10.0.0.1',
        version: '1.2.3',
      });
      ids.push(session.id);
      const live = agents.get(agent.id);
      expect(live).toMatchObject({ status: 'connected', connectedAt: session.startedAt, version: '1.2.3' });
      now += 90_000;
      agents.sessionSeen(agent.id, session.id);
      expect(agents.get(agent.id).lastSeenAt).toBe(new Date(now).toISOString());
      now += 1000;
      await agents.sessionEnded(agent.id, session.id, 'closed');
      expect(agents.get(agent.id).status).toBe('offline');
    }
    const view = agents.get(agent.id);
    expect(view.connections.map((c) => c.id)).toEqual(ids.slice(2));
    expect(view.connections.every((c) => c.endedAt !== null && c.endReason === 'closed')).toBe(true);
    expect(view).toMatchObject({ remoteAddress: '10.0.0.1', lastSeenAt: new Date(now).toISOString() });
  });

  it('keeps a replacing session live when the replaced one ends', async () => {
    const { agents } = setup();
    const { agent, token } = await agents.create({ name: 'edge' });
    const auth = agents.authenticate(agent.id, token);
    if (!auth.ok) throw new Error('expected success');
    const first = await agents.sessionStarted(auth.credential, { remoteAddress: null, version: null });
    const second = await agents.sessionStarted(auth.credential, { remoteAddress: null, version: null });
    await agents.sessionEnded(agent.id, first.id, 'replaced');
    expect(agents.get(agent.id)).toMatchObject({ status: 'connected', connectedAt: second.startedAt });
    expect(agents.isConnected(agent.id)).toBe(true);
  });

  it('closes sessions left open by a crash at start-up', async () => {
    const { store, agents } = setup();
    const { agent, token } = await agents.create({ name: 'edge' });
    const auth = agents.authenticate(agent.id, token);
    if (!auth.ok) throw new Error('expected success');
    await agents.sessionStarted(auth.credential, { remoteAddress: null, version: null });
    // A new process over the same data: nothing is live there.
    const restarted = new AgentService({ store });
    expect(restarted.get(agent.id).status).toBe('offline');
    expect(await restarted.closeOrphanSessions()).toBe(1);
    expect(restarted.get(agent.id).connections[0]).toMatchObject({ endReason: 'restart' });
    expect(restarted.get(agent.id).connections[0]!.endedAt).not.toBeNull();
    expect(await restarted.closeOrphanSessions()).toBe(0);
  });
});
