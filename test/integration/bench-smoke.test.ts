/**
 * A quick run of the benchmark harness (real server and agent processes,
 * small counts): every selected group yields rows of the expected shape and
 * no trace event is lost. No figure is judged here; `npm run bench` does that.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { runBenchmarks } from '../../bench/run.js';
import { ensureBuilt } from '../helpers/bin.js';

beforeAll(() => ensureBuilt(), 120_000);

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
});
