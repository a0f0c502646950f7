/**
 * A quick run of the benchmark harness (real server and agent processes,
 * small counts): every selected group yields rows of the expected shape and
 * no trace event is lost. No figure is judged here; `npm run bench` does that.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import type { BenchRow } from '../../bench/harness.js';
import { runBenchmarks } from '../../bench/run.js';
import { ensureBuilt } from '../helpers/bin.js';

beforeAll(() => ensureBuilt(), 120_000);

/** Every row is of `group`, with finite figures, a judged goal and a note. */
function expectGoalRows(rows: BenchRow[], group: string): void {
  for (const row of rows) {
    expect(row.group).toBe(group);
    for (const v of [row.value.min, row.value.median, row.value.max]) expect(Number.isFinite(v)).toBe(true);
    expect(typeof row.met).toBe('boolean');
    expect(row.note).not.toBe('');
  }
}

describe('npm run bench -- --quick', () => {
  it('measures latency, streaming, trace delivery, hub scale and the codec with rows of the expected shape', async () => {
    const rows = await runBenchmarks({
      quick: true,
      only: ['latency', 'streaming', 'trace-delivery', 'hub-scale', 'codec'],
    });
    expect(new Set(rows.map((r) => r.group))).toEqual(
      new Set(['latency', 'streaming', 'trace delivery', 'hub scale', 'codec']),
    );
    for (const row of rows) {
      expect(row.metric).not.toBe('');
      expect(row.unit).not.toBe('');
      for (const v of [row.value.min, row.value.median, row.value.max]) expect(Number.isFinite(v)).toBe(true);
      expect(row.value.min).toBeLessThanOrEqual(row.value.max);
      if (row.goal !== undefined) expect(typeof row.met).toBe('boolean');
    }
    expect(rows.find((r) => r.metric.startsWith('events lost'))?.value.max).toBe(0);
    await expect(runBenchmarks({ only: ['nonsense'] })).rejects.toThrow(/unknown group nonsense/);
  }, 120_000);

  it('measures the cost and the accuracy of traffic policies as three ratios with goals', async () => {
    const rows = await runBenchmarks({ quick: true, only: ['policies'] });
    expect(rows.map((r) => r.metric)).toEqual([
      'proxied req/s with 20 WAF rules + 5 rate limits + 1 shaper (none triggering) ÷ without',
      'accepted req/s under a 1,000 req/s limit at 4× offered load ÷ 1,000',
      'delivered bytes/s through a 1 MiB/s shaper ÷ 1 MiB/s',
    ]);
    for (const row of rows) {
      expect(row.value.median).toBeGreaterThan(0);
      expect(typeof row.met).toBe('boolean');
      expect(row.note).not.toBe('');
    }
  }, 120_000);

  it('measures cache hits against proxying, coalesced misses and the memory of a working set 10× the memory tier', async () => {
    const rows = await runBenchmarks({ quick: true, only: ['cache'] });
    expect(rows.map((r) => r.metric)).toEqual([
      'cache hits/s ÷ the same request proxied to a local upstream',
      'upstream requests for 200 concurrent misses of one key',
      'proxy RSS growth with a working set 10× memoryMiB (8 MiB) ÷ memoryMiB',
      'live JS heap + Buffer growth with a working set 10× memoryMiB (8 MiB) ÷ memoryMiB',
    ]);
    expectGoalRows(rows, 'cache');
    // Coalescing is a count, not a figure the machine's load moves: it holds even in a quick run.
    expect(rows[1]!.value.median).toBe(1);
    expect(rows[1]!.met).toBe(true);
    expect(rows[0]!.value.median).toBeGreaterThan(0);
  }, 300_000);

  it('measures replicas with PostgreSQL and NATS: a forwarded call, memory per agent, and settling after a replica is killed', async () => {
    const rows = await runBenchmarks({ quick: true, only: ['cluster'] });
    expect(rows.map((r) => r.metric)).toEqual([
      'relayed call p50, forwarding replica ÷ holding replica',
      'memory per agent, a replica of 3 holding 300 of 900 ÷ one process holding 300',
      '300 agents on 3 replicas: time to settle after a kill -9 of one',
      'busiest second of accepted agent upgrades on the 2 survivors while settling',
    ]);
    expectGoalRows(rows, 'cluster');
    for (const row of rows) expect(row.value.median).toBeGreaterThan(0);
    expect(rows.map((r) => r.goal)).toEqual(['≤ 1.3', '≤ 1.1', '≤ 30', expect.stringMatching(/^≤ \d+$/)]);
  }, 300_000);

  it('measures public traffic through an agent tunnel against proxying straight, as four ratios with goals', async () => {
    const rows = await runBenchmarks({ quick: true, only: ['tunnel'] });
    expect(rows.map((r) => r.metric)).toEqual([
      'GET req/s tunnelled through an agent ÷ proxied straight to the same upstream (32 conns)',
      '20 MB download MB/s through the tunnel ÷ one plain TLS stream',
      'GET p50 tunnelled ÷ proxied straight (1 conn, sequential)',
      'peak RSS while tunnelling 20 MB ÷ 5 MB (worse of hub, agent)',
    ]);
    expectGoalRows(rows, 'tunnel');
    for (const row of rows) {
      for (const v of [row.value.min, row.value.median, row.value.max]) expect(v).toBeGreaterThan(0);
      expect(row.note).toMatch(/\d/);
    }
  }, 180_000);

  it('runs p2pstream next to Caddy, nginx and a minimal Node proxy under wrk and reports ratios, and its RSS over a run', async () => {
    const rows = await runBenchmarks({ quick: true, only: ['peers', 'peers-rss'], rssMinutes: 0.1 });
    expect(new Set(rows.map((r) => r.group))).toEqual(new Set(['peers', 'peers rss']));
    for (const row of rows) {
      for (const v of [row.value.min, row.value.median, row.value.max]) {
        expect(Number.isFinite(v)).toBe(true);
        expect(v).toBeGreaterThan(0);
      }
      if (row.goal !== undefined) expect(typeof row.met).toBe('boolean');
    }
    const metrics = rows.map((r) => r.metric);
    for (const expected of [
      'proxied req/s p2pstream ÷ Caddy reverse_proxy (32 conns)',
      'proxied p99 p2pstream ÷ Caddy (256 conns)',
      'proxied req/s p2pstream ÷ nginx proxy_pass (32 conns)',
      'proxied req/s minimal Node proxy ÷ Caddy (32 conns)',
      'proxied req/s traced (basic) ÷ untraced (32 conns)',
      'static req/s p2pstream ÷ Caddy respond (32 conns)',
      'https proxied req/s p2pstream ÷ Caddy (32 conns, same certificate)',
      '10 MB download MB/s p2pstream ÷ Caddy',
    ]) {
      expect(metrics).toContain(expected);
    }
    expect(rows[0]!.note).toMatch(/nginx \S+, caddy \S+, wrk \S+/);
  }, 240_000);
});
