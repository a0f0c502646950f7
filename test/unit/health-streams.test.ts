/**
 * Health streams (capability `health`) on both ends, without sockets: the
 * agent's executor schedules and replaces checks and reports their results;
 * the control plane's client sends a set only when it changed.
 */
import { describe, expect, it } from 'vitest';
import type { Envelope, HealthCheck, HealthResult } from '../../src/relay/envelope.js';
import { MAX_HEALTH_CHECKS } from '../../src/relay/envelope.js';
import { HealthCheckExecutor } from '../../src/relay/health-check-executor.js';
import { HealthWatchClient } from '../../src/relay/health-watch-client.js';
import { eventually } from '../helpers/wait.js';

function check(id: string, url = `http://app.internal/${id}`): HealthCheck {
  return { id, url, intervalMs: 60_000, timeoutMs: 500, expectStatus: 200 };
}

function executor(answers: Record<string, string | null>) {
  const sent: Envelope[] = [];
  const probes: string[] = [];
  const exec = new HealthCheckExecutor({
    send: (envelope) => sent.push(envelope),
    probe: async (url) => {
      probes.push(url);
      return answers[url] ?? null;
    },
  });
  const results = () =>
    sent.flatMap((e) => (e.payload.case === 'healthReport' ? e.payload.value.results : []));
  return { exec, sent, probes, results };
}

const watch = (streamId: number, checks: HealthCheck[]): Envelope => ({
  streamId,
  payload: { case: 'healthWatch', value: { checks } },
});

describe('the agent health-check executor', () => {
  it('runs each check at once and reports its result on the stream', async () => {
    const { exec, sent, results } = executor({ 'http://app.internal/b': 'ECONNREFUSED' });
    exec.receive(watch(3, [check('a'), check('b')]));
    expect(exec.activeChecks).toBe(2);
    await eventually(() => results().length === 2);
    expect(results()).toEqual([
      { id: 'a', ok: true },
      { id: 'b', ok: false, error: 'ECONNREFUSED' },
    ]);
    expect(sent.every((e) => e.streamId === 3)).toBe(true);
    exec.close();
  });

  it('a new watch replaces the set: unchanged checks keep their schedule, changed ones start again', async () => {
    const { exec, probes } = executor({});
    exec.receive(watch(3, [check('a'), check('b')]));
    await eventually(() => probes.length === 2);
    exec.receive(watch(3, [check('a'), check('b', 'http://app.internal/b2'), check('c')]));
    await eventually(() => probes.length === 4);
    expect(probes.slice(2).sort()).toEqual(['http://app.internal/b2', 'http://app.internal/c']);
    exec.receive(watch(3, []));
    expect(exec.activeChecks).toBe(0);
    expect(exec.has(3)).toBe(true);
    exec.close();
  });

  it('a cancel stops the stream; a watch over the limit is refused', () => {
    const { exec, sent } = executor({});
    exec.receive(watch(5, [check('a')]));
    exec.receive({ streamId: 5, payload: { case: 'cancel', value: {} } });
    expect(exec.has(5)).toBe(false);
    expect(exec.activeChecks).toBe(0);
    const many = Array.from({ length: MAX_HEALTH_CHECKS + 1 }, (_, i) => check(`c${i}`));
    exec.receive(watch(7, many));
    expect(exec.has(7)).toBe(false);
    const error = sent.find((e) => e.streamId === 7);
    expect(error?.payload).toMatchObject({ case: 'error', value: { code: 'VALIDATION_FAILED' } });
    exec.close();
  });
});

describe('the control plane health-watch client', () => {
  it('sends a set only when it changed, opens the stream on the first non-empty one, and reopens after an error', () => {
    const sent: Envelope[] = [];
    let next = 2;
    const client = new HealthWatchClient({ send: (e) => sent.push(e), nextStreamId: () => (next += 2) });
    const seen: HealthResult[] = [];
    client.watch([], (r) => seen.push(r));
    expect(sent).toHaveLength(0);
    client.watch([check('b'), check('a')], (r) => seen.push(r));
    client.watch([check('a'), check('b')], (r) => seen.push(r));
    expect(sent).toHaveLength(1);
    expect(sent[0]?.streamId).toBe(4);
    expect(client.has(4)).toBe(true);
    client.receive({
      streamId: 4,
      payload: { case: 'healthReport', value: { results: [{ id: 'a', ok: true }] } },
    });
    expect(seen).toEqual([{ id: 'a', ok: true }]);
    client.receive({ streamId: 4, payload: { case: 'error', value: { code: 'PROTOCOL_ERROR' } } });
    expect(client.has(4)).toBe(false);
    client.watch([check('a'), check('b')], (r) => seen.push(r));
    expect(sent).toHaveLength(2);
    expect(sent[1]?.streamId).toBe(6);
    client.close();
    client.watch([check('c')], (r) => seen.push(r));
    expect(sent).toHaveLength(2);
  });
});
