import { describe, expect, it } from 'vitest';
import { BackendBalancer, type HashSource, NO_AGENT } from '../../src/dataplane/backend-balancer.js';
import type { AgentDirectory, TunnelAgent } from '../../src/domain/backend-service.js';
import type { BackendRecord } from '../../src/storage/schema.js';

function backend(
  algorithm: BackendRecord['algorithm'],
  members: { id: string; weight?: number; draining?: boolean }[],
  extra: Partial<BackendRecord> = {},
): BackendRecord {
  return {
    id: 'b1',
    name: 'pool',
    algorithm,
    hashKey: 'ip',
    members: members.map((m, i) => ({
      id: m.id,
      type: 'upstream',
      url: `http://127.0.0.1:${10_000 + i}`,
      weight: m.weight ?? 1,
      ...(m.draining === undefined ? {} : { draining: m.draining }),
    })),
    healthCheck: null,
    passive: { failures: 3, ejectSeconds: 30 },
    createdAt: '',
    updatedAt: '',
    ...extra,
  };
}

const source = (clientIp = '10.0.0.1', path = '/', headers: Record<string, string> = {}): HashSource => ({
  clientIp,
  path,
  header: (name) => headers[name],
});

function pickMany(balancer: BackendBalancer, n: number, make = () => source()): string[] {
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const lease = balancer.pick('b1', make());
    if (!lease) throw new Error('no member');
    out.push(lease.memberId);
    lease.release(true);
  }
  return out;
}

describe('backend balancer', () => {
  it('round robin takes each member in turn', () => {
    const b = new BackendBalancer();
    b.setBackends([backend('round_robin', [{ id: 'a' }, { id: 'b' }, { id: 'c' }])]);
    expect(pickMany(b, 6)).toEqual(['a', 'b', 'c', 'a', 'b', 'c']);
  });

  it('weighted round robin serves in proportion to weight, spread out', () => {
    const b = new BackendBalancer();
    b.setBackends([
      backend('weighted_round_robin', [
        { id: 'a', weight: 3 },
        { id: 'b', weight: 1 },
      ]),
    ]);
    const picks = pickMany(b, 8);
    expect(picks.filter((p) => p === 'a')).toHaveLength(6);
    expect(picks.filter((p) => p === 'b')).toHaveLength(2);
    // Smooth: never four a's in a row.
    expect(picks.join('')).not.toContain('aaaa');
  });

  it('least active picks the member with fewest requests in flight', () => {
    const b = new BackendBalancer();
    b.setBackends([backend('least_active', [{ id: 'a' }, { id: 'b' }])]);
    const first = b.pick('b1', source())!;
    const second = b.pick('b1', source())!;
    expect(new Set([first.memberId, second.memberId])).toEqual(new Set(['a', 'b']));
    second.release(true);
    expect(b.pick('b1', source())!.memberId).toBe(second.memberId);
    expect(b.health('b1')!.find((m) => m.id === first.memberId)!.activeRequests).toBe(1);
  });

  it('consistent hash keeps a key on one member, and a member leaving moves only its keys', () => {
    const members = ['a', 'b', 'c', 'd'].map((id) => ({ id }));
    const b = new BackendBalancer();
    b.setBackends([backend('consistent_hash', members)]);
    const ips = Array.from({ length: 2000 }, (_, i) => `10.${(i >> 8) & 255}.${i & 255}.7`);
    const before = new Map(ips.map((ip) => [ip, b.pick('b1', source(ip))!.memberId]));
    for (const ip of ips.slice(0, 50)) expect(b.pick('b1', source(ip))!.memberId).toBe(before.get(ip));
    const counts = new Map<string, number>();
    for (const m of before.values()) counts.set(m, (counts.get(m) ?? 0) + 1);
    for (const id of ['a', 'b', 'c', 'd']) expect(counts.get(id)!).toBeGreaterThan(300);

    b.setBackends([
      backend(
        'consistent_hash',
        members.filter((m) => m.id !== 'c'),
      ),
    ]);
    let moved = 0;
    for (const ip of ips) {
      const now = b.pick('b1', source(ip))!.memberId;
      if (before.get(ip) === 'c') expect(now).not.toBe('c');
      else if (now !== before.get(ip)) moved += 1;
    }
    expect(moved).toBe(0);
  });

  it('consistent hash by header and by path', () => {
    const members = ['a', 'b', 'c'].map((id) => ({ id }));
    const b = new BackendBalancer();
    b.setBackends([backend('consistent_hash', members, { hashKey: 'header:x-user' })]);
    const seen = new Set<string>();
    for (let i = 0; i < 60; i++) {
      const one = b.pick('b1', source(`10.0.0.${i}`, '/', { 'x-user': 'alice' }))!.memberId;
      seen.add(one);
    }
    expect(seen.size).toBe(1);
    b.setBackends([backend('consistent_hash', members, { hashKey: 'path' })]);
    const byPath = new Set(
      Array.from({ length: 60 }, (_, i) => b.pick('b1', source(`10.0.0.${i}`, '/x'))!.memberId),
    );
    expect(byPath.size).toBe(1);
  });

  it('ejects a member after consecutive failures and answers none when all are out', () => {
    let now = 1_000_000;
    const b = new BackendBalancer({ now: () => now });
    b.setBackends([
      backend('round_robin', [{ id: 'a' }, { id: 'b' }], { passive: { failures: 2, ejectSeconds: 5 } }),
    ]);
    for (let i = 0; i < 4; i++) {
      const lease = b.pick('b1', source())!;
      lease.release(lease.memberId !== 'a');
    }
    expect(pickMany(b, 3)).toEqual(['b', 'b', 'b']);
    expect(b.health('b1')!.find((m) => m.id === 'a')!.lastError).toMatch(/ejected/);
    for (let i = 0; i < 2; i++) b.pick('b1', source())!.release(false);
    expect(b.pick('b1', source())).toBeNull();
    now += 5_000;
    expect(b.pick('b1', source())).not.toBeNull();
  });

  it('a draining member takes no new requests, counts down those in flight and reads draining', () => {
    const b = new BackendBalancer();
    b.setBackends([backend('least_active', [{ id: 'a' }, { id: 'b' }])]);
    const inFlight = [b.pick('b1', source())!, b.pick('b1', source())!];
    const onA = inFlight.find((l) => l.memberId === 'a')!;
    b.setBackends([backend('least_active', [{ id: 'a', draining: true }, { id: 'b' }])]);
    expect(pickMany(b, 4)).toEqual(['b', 'b', 'b', 'b']);
    const drainingHealth = () => b.health('b1')!.find((m) => m.id === 'a')!;
    expect(drainingHealth()).toMatchObject({ state: 'draining', activeRequests: 1 });
    // The lease taken before the change counts down the member the pool has now.
    onA.release(true);
    expect(drainingHealth()).toMatchObject({ state: 'draining', activeRequests: 0 });
    for (const lease of inFlight) lease.release(true);
    expect(b.health('b1')!.find((m) => m.id === 'b')!.activeRequests).toBe(0);

    b.setBackends([backend('least_active', [{ id: 'a' }, { id: 'b' }])]);
    expect(pickMany(b, 1)).toEqual(['a']);
    expect(drainingHealth().state).not.toBe('draining');
    b.setBackends([
      backend('least_active', [
        { id: 'a', draining: true },
        { id: 'b', draining: true },
      ]),
    ]);
    expect(b.pick('b1', source())).toBeNull();
  });

  it('an agent member without a directory or matching agent is unusable and reads unhealthy', () => {
    const record = backend('round_robin', []);
    record.members = [agentMember('x', { agentId: 'ag' })];
    const b = new BackendBalancer();
    b.setBackends([record]);
    expect(b.pick('b1', source())).toBeNull();
    expect(b.pick('unknown', source())).toBeNull();
    const directory = fakeDirectory([{ agentId: 'other', labels: {} }]);
    const withOther = new BackendBalancer({ agents: directory });
    withOther.setBackends([record]);
    expect(withOther.pick('b1', source())).toBeNull();
    expect(withOther.health('b1')).toEqual([
      { id: 'x', state: 'unhealthy', lastCheckAt: null, lastError: NO_AGENT, activeRequests: 0 },
    ]);
  });

  it('an agent member by id leases that agent with its dispatcher, the origin and path of upstreamUrl', () => {
    const directory = fakeDirectory([
      { agentId: 'ag1', labels: {} },
      { agentId: 'ag2', labels: {} },
    ]);
    const b = new BackendBalancer({ agents: directory });
    const record = backend('round_robin', []);
    record.members = [agentMember('x', { agentId: 'ag2', upstreamUrl: 'http://10.0.0.5:8080/app/' })];
    b.setBackends([record]);
    const lease = b.pick('b1', source())!;
    expect(lease).toMatchObject({
      memberId: 'x',
      agentId: 'ag2',
      origin: 'http://10.0.0.5:8080',
      basePath: '/app',
    });
    expect(lease.dispatcher).toBe(directory.agents[1]!.dispatcher);
    expect(b.health('b1')![0]).toMatchObject({ state: 'unknown', lastError: null, activeRequests: 1 });
    lease.release(true);
    expect(b.health('b1')![0]).toMatchObject({ state: 'healthy', activeRequests: 0 });
  });

  it('a label selector picks among connected agents carrying every label, the least busy first', () => {
    const directory = fakeDirectory([
      { agentId: 'a', labels: { site: 'lab', role: 'edge' } },
      { agentId: 'b', labels: { site: 'lab' } },
      { agentId: 'c', labels: { site: 'lab', role: 'edge' } },
    ]);
    const b = new BackendBalancer({ agents: directory });
    const record = backend('round_robin', []);
    record.members = [agentMember('x', { agentLabels: { site: 'lab', role: 'edge' } })];
    b.setBackends([record]);
    const first = b.pick('b1', source())!;
    const firstAgent = directory.agents.find((a) => a.agentId === first.agentId)!;
    firstAgent.active = 5;
    const second = b.pick('b1', source())!;
    expect(new Set([first.agentId, second.agentId])).toEqual(new Set(['a', 'c']));
    // Equally busy: taken in turn.
    for (const agent of directory.agents) agent.active = 0;
    const seen = new Set<string | null>();
    for (let i = 0; i < 4; i++) seen.add(b.pick('b1', source())!.agentId);
    expect(seen).toEqual(new Set(['a', 'c']));
    // An id and labels together: that agent only if it carries them.
    record.members = [agentMember('x', { agentId: 'b', agentLabels: { role: 'edge' } })];
    b.setBackends([record]);
    expect(b.pick('b1', source())).toBeNull();
    // The agent leaving the directory makes the member unusable at once.
    record.members = [agentMember('x', { agentLabels: { site: 'lab' } })];
    b.setBackends([record]);
    directory.agents.splice(0);
    expect(b.pick('b1', source())).toBeNull();
  });

  it('consistent hashing keeps a key on one agent of a selector, and moves only the keys of one leaving', () => {
    const directory = fakeDirectory(['a', 'b', 'c'].map((agentId) => ({ agentId, labels: { app: 'x' } })));
    const b = new BackendBalancer({ agents: directory });
    const record = backend('consistent_hash', []);
    record.members = [agentMember('x', { agentLabels: { app: 'x' } })];
    b.setBackends([record]);
    const before = new Map<string, string | null>();
    for (let i = 0; i < 60; i++) before.set(`10.0.0.${i}`, b.pick('b1', source(`10.0.0.${i}`))!.agentId);
    for (const [ip, agent] of before) expect(b.pick('b1', source(ip))!.agentId).toBe(agent);
    directory.agents.splice(1, 1);
    for (const [ip, agent] of before) {
      const now = b.pick('b1', source(ip))!.agentId;
      if (agent !== 'b') expect(now).toBe(agent);
      else expect(now).not.toBe('b');
    }
  });

  it('upstream and agent members share a pool; passive failures eject an agent member', () => {
    const directory = fakeDirectory([{ agentId: 'ag', labels: {} }]);
    const b = new BackendBalancer({ agents: directory });
    const record = backend('round_robin', [{ id: 'u' }], { passive: { failures: 1, ejectSeconds: 30 } });
    record.members.push(agentMember('x', { agentId: 'ag' }));
    b.setBackends([record]);
    const leases = [b.pick('b1', source())!, b.pick('b1', source())!];
    expect(leases.map((l) => l.agentId)).toEqual([null, 'ag']);
    expect(leases[0]!.dispatcher).toBeNull();
    leases[1]!.release(false);
    leases[0]!.release(true);
    expect(pickMany(b, 3)).toEqual(['u', 'u', 'u']);
  });
});

interface FakeAgent extends TunnelAgent {
  active: number;
}

function fakeDirectory(agents: { agentId: string; labels: Record<string, string> }[]): AgentDirectory & {
  agents: FakeAgent[];
} {
  const list: FakeAgent[] = agents.map((a) => ({
    ...a,
    active: 0,
    activeTunnels() {
      return this.active;
    },
    dispatcher: { dispatch: () => true },
    health: null,
  }));
  return { agents: list, tunnelAgents: () => list };
}

function agentMember(
  id: string,
  options: { agentId?: string; agentLabels?: Record<string, string>; upstreamUrl?: string },
): BackendRecord['members'][number] {
  return {
    id,
    type: 'agent',
    agentId: options.agentId ?? null,
    agentLabels: options.agentLabels ?? null,
    upstreamUrl: options.upstreamUrl ?? 'http://10.0.0.1',
    weight: 1,
  };
}
