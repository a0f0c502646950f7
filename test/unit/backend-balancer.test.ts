import { describe, expect, it } from 'vitest';
import { BackendBalancer, type HashSource } from '../../src/dataplane/backend-balancer.js';
import type { BackendRecord } from '../../src/storage/schema.js';

function backend(
  algorithm: BackendRecord['algorithm'],
  members: { id: string; weight?: number }[],
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

  it('agent members are not served yet: a pool of only them has no member', () => {
    const b = new BackendBalancer();
    const record = backend('round_robin', []);
    record.members = [
      { id: 'x', type: 'agent', agentId: 'ag', agentLabels: null, upstreamUrl: 'http://10.0.0.1', weight: 1 },
    ];
    b.setBackends([record]);
    expect(b.pick('b1', source())).toBeNull();
    expect(b.pick('unknown', source())).toBeNull();
  });
});
