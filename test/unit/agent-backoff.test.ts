import { describe, expect, it } from 'vitest';
import { Backoff } from '../../agent/backoff.js';

describe('Backoff', () => {
  it('doubles from 1 s to 30 s at the top of the jitter range', () => {
    const backoff = new Backoff({ random: () => 0.999999 });
    const delays = Array.from({ length: 8 }, () => backoff.next());
    expect(delays).toEqual([1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
  });

  it('jitters each delay within [base/2, base]', () => {
    const low = new Backoff({ random: () => 0 });
    expect([low.next(), low.next(), low.next()]).toEqual([500, 1000, 2000]);
    const random = new Backoff();
    for (let i = 0; i < 50; i++) {
      const base = Math.min(30_000, 1000 * 2 ** i);
      const delay = random.next();
      expect(delay).toBeGreaterThanOrEqual(base / 2);
      expect(delay).toBeLessThanOrEqual(base);
    }
  });

  it('starts over after a reset', () => {
    const backoff = new Backoff({ random: () => 0.999999, initialMs: 100, maxMs: 1000 });
    backoff.next();
    backoff.next();
    expect(backoff.attempts).toBe(2);
    backoff.reset();
    expect(backoff.attempts).toBe(0);
    expect(backoff.next()).toBe(100);
  });
});
