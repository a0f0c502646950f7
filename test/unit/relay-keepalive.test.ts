import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Keepalive } from '../../src/relay/keepalive.js';

describe('Keepalive', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  function setup(intervalMs = 15_000) {
    const pings: number[] = [];
    let dead = 0;
    const keepalive = new Keepalive({
      intervalMs,
      sendPing: (nonce) => pings.push(nonce),
      onDead: () => {
        dead += 1;
      },
    });
    return { keepalive, pings, dead: () => dead };
  }

  it('pings every interval while the peer answers', () => {
    const { keepalive, pings, dead } = setup();
    keepalive.start();
    for (let i = 0; i < 10; i++) {
      vi.advanceTimersByTime(15_000);
      keepalive.heard();
    }
    expect(pings).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect(dead()).toBe(0);
    keepalive.stop();
  });

  it('declares the peer dead after two missed intervals, once', () => {
    const { keepalive, pings, dead } = setup();
    keepalive.start();
    vi.advanceTimersByTime(15_000);
    expect(pings).toEqual([1]);
    vi.advanceTimersByTime(15_000);
    expect(keepalive.missed).toBe(1);
    expect(dead()).toBe(0);
    vi.advanceTimersByTime(15_000);
    expect(dead()).toBe(1);
    vi.advanceTimersByTime(60_000);
    expect(dead()).toBe(1);
    expect(pings).toEqual([1, 2]);
  });

  it('forgives one missed interval when the peer speaks again', () => {
    const { keepalive, dead } = setup(1000);
    keepalive.start();
    vi.advanceTimersByTime(2000);
    expect(keepalive.missed).toBe(1);
    keepalive.heard();
    vi.advanceTimersByTime(1000);
    expect(keepalive.missed).toBe(0);
    vi.advanceTimersByTime(1000);
    expect(keepalive.missed).toBe(1);
    expect(dead()).toBe(0);
    keepalive.stop();
    vi.advanceTimersByTime(10_000);
    expect(dead()).toBe(0);
  });
});
