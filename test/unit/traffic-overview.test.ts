import { describe, expect, it } from 'vitest';
import { RequestMetrics } from '../../src/dataplane/request-metrics.js';
import { createOverviewService, FIVE_MINUTES_MS, ONE_HOUR_MS } from '../../src/domain/overview-service.js';
import { TrafficSettingsService } from '../../src/domain/traffic-settings-service.js';
import { emptyDatabase } from '../../src/storage/schema.js';
import { MemoryStore } from '../../src/storage/store.js';

describe('request metrics', () => {
  it('counts requests and errors per window and forgets what is older than an hour', () => {
    let now = Date.UTC(2026, 0, 1, 12, 0, 0);
    const metrics = new RequestMetrics({ now: () => now });
    for (let i = 0; i < 10; i++) metrics.observe(5, false);
    metrics.observe(5, true);
    now += 30 * 60_000;
    for (let i = 0; i < 4; i++) metrics.observe(50, i === 0);
    expect(metrics.stats(FIVE_MINUTES_MS)).toMatchObject({ requests: 4, errors: 1 });
    expect(metrics.stats(ONE_HOUR_MS)).toMatchObject({ requests: 15, errors: 2 });
    now += 40 * 60_000;
    expect(metrics.stats(ONE_HOUR_MS)).toMatchObject({ requests: 4, errors: 1 });
    now += 2 * ONE_HOUR_MS;
    expect(metrics.stats(ONE_HOUR_MS)).toEqual({
      requests: 0,
      errors: 0,
      tunnelled: 0,
      p50Ms: null,
      p95Ms: null,
    });
  });

  it('counts the requests tunnelled through agents apart, in the same windows', () => {
    let now = Date.UTC(2026, 0, 1, 12, 0, 0);
    const metrics = new RequestMetrics({ now: () => now });
    metrics.observe(5, false, true);
    metrics.observe(5, true, true);
    metrics.observe(5, false);
    now += 30 * 60_000;
    metrics.observe(5, false, true);
    expect(metrics.stats(FIVE_MINUTES_MS)).toMatchObject({ requests: 1, errors: 0, tunnelled: 1 });
    expect(metrics.stats(ONE_HOUR_MS)).toMatchObject({ requests: 4, errors: 1, tunnelled: 3 });
    now += 40 * 60_000;
    expect(metrics.stats(ONE_HOUR_MS)).toMatchObject({ requests: 1, tunnelled: 1 });
    // A slot used again an hour later starts from zero.
    now += 20 * 60_000;
    metrics.observe(5, false);
    expect(metrics.stats(ONE_HOUR_MS)).toMatchObject({ requests: 1, tunnelled: 0 });
  });

  it('estimates latency percentiles within a bin (±8 %)', () => {
    const now = Date.UTC(2026, 0, 1);
    const metrics = new RequestMetrics({ now: () => now });
    for (let i = 1; i <= 100; i++) metrics.observe(i, false);
    const { p50Ms, p95Ms } = metrics.stats(FIVE_MINUTES_MS);
    expect(p50Ms).toBeGreaterThan(50 * 0.92);
    expect(p50Ms).toBeLessThan(50 * 1.08);
    expect(p95Ms).toBeGreaterThan(95 * 0.92);
    expect(p95Ms).toBeLessThan(95 * 1.08);
  });

  it('reuses a slot when its ten seconds come round again', () => {
    let now = Date.UTC(2026, 0, 1);
    const metrics = new RequestMetrics({ now: () => now });
    metrics.observe(1, false);
    now += ONE_HOUR_MS; // the same slot, one hour later
    metrics.observe(1, false);
    expect(metrics.stats(ONE_HOUR_MS).requests).toBe(1);
  });
});

describe('overview service', () => {
  it('gathers requests, errors, latency, listeners, agents and subscribers', () => {
    const now = Date.UTC(2026, 0, 1);
    const metrics = new RequestMetrics({ now: () => now });
    metrics.observe(10, false);
    metrics.observe(10, true);
    metrics.observe(10, false, true);
    const overview = createOverviewService({
      stats: metrics,
      listenersRunning: () => 2,
      listenersConfigured: () => 3,
      traceSubscribers: () => 1,
      agentsConnected: () => 4,
      now: () => now,
    }).overview();
    expect(overview).toMatchObject({
      requests: { last5m: 3, last1h: 3 },
      errors: { last5m: 1, last1h: 1 },
      tunnelled: { last5m: 1, last1h: 1 },
      listeners: { running: 2, configured: 3 },
      agentsConnected: 4,
      traceSubscribers: 1,
      generatedAt: '2026-01-01T00:00:00.000Z',
    });
    expect(overview.latencyMs.last5m.p50).toBeGreaterThan(9);
    expect(overview.latencyMs.last5m.p50).toBeLessThan(11);
  });

  it('counts no agents without a hub', () => {
    const overview = createOverviewService({
      stats: new RequestMetrics(),
      listenersRunning: () => 0,
      listenersConfigured: () => 0,
      traceSubscribers: () => 0,
    }).overview();
    expect(overview.agentsConnected).toBe(0);
    expect(overview.latencyMs.last1h).toEqual({ p50: null, p95: null });
  });
});

describe('traffic settings service', () => {
  it('defaults to enabled at level basic, persists changes and applies them', async () => {
    const store = new MemoryStore(emptyDatabase('instance'));
    const applied: unknown[] = [];
    const service = new TrafficSettingsService({
      store,
      counters: () => ({ subscribers: 2, emittedEvents: 10, droppedEvents: 1 }),
      onChange: (s) => applied.push(s),
    });
    expect(service.view()).toEqual({
      enabled: true,
      level: 'basic',
      subscribers: 2,
      emittedEvents: 10,
      droppedEvents: 1,
    });
    expect(await service.update({ level: 'headers' })).toMatchObject({ enabled: true, level: 'headers' });
    expect(await service.update({ enabled: false, subscribers: 99 })).toMatchObject({
      enabled: false,
      level: 'headers',
      subscribers: 2,
    });
    expect(store.read().traffic).toEqual({ enabled: false, level: 'headers' });
    expect(applied).toEqual([
      { enabled: true, level: 'headers' },
      { enabled: false, level: 'headers' },
    ]);
  });

  it('refuses unknown levels and fields without changing anything', async () => {
    const store = new MemoryStore(emptyDatabase('instance'));
    const service = new TrafficSettingsService({ store });
    for (const body of [{ level: 'verbose' }, { enabled: 'yes' }, { colour: 'red' }, [], null]) {
      await expect(service.update(body)).rejects.toMatchObject({ code: 'VALIDATION_FAILED' });
    }
    expect(store.read().traffic).toEqual({ enabled: true, level: 'basic' });
  });
});
