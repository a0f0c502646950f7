import { describe, expect, it } from 'vitest';
import {
  firstManagementUrl,
  pickManagementUrl,
  REFUSED_SKIP_MS,
  recentlyRefused,
} from '../../agent/agent.js';

const urls = ['https://a', 'https://b', 'https://c'];
const pick = (current: string, failed: boolean, taken: string[] = [], draining: string[] = []) =>
  pickManagementUrl({ urls, current, failed, taken, draining });

describe('pickManagementUrl', () => {
  it('keeps the only URL whatever happened', () => {
    expect(
      pickManagementUrl({
        urls: ['https://a'],
        current: 'https://a',
        failed: true,
        taken: ['https://a'],
        draining: [],
      }),
    ).toBe('https://a');
  });

  it('keeps the first connection on the URL it starts at and puts the second on the next one not taken, wrapping round', () => {
    expect(pick('https://a', false)).toBe('https://a');
    expect(pick('https://a', false, ['https://a'])).toBe('https://b');
    expect(pick('https://c', false)).toBe('https://c');
    expect(pick('https://c', false, ['https://c'])).toBe('https://a');
  });

  it('retries its own URL once after a connection that was up, then moves on past it', () => {
    expect(pick('https://c', false, ['https://a'])).toBe('https://c');
    // After a failed attempt: the next allowed URL in the list, wrapping round.
    expect(pick('https://c', true, ['https://a'])).toBe('https://b');
    expect(pick('https://a', true, ['https://b'])).toBe('https://c');
  });

  it('avoids a replica being drained unless nothing else is free', () => {
    expect(pick('https://a', false, [], ['https://a'])).toBe('https://b');
    expect(pick('https://a', false, ['https://b', 'https://c'], ['https://a'])).toBe('https://a');
    expect(pick('https://a', true, ['https://a', 'https://b', 'https://c'])).toBe('https://b');
  });

  it('passes over a URL refused lately, back and forth between a dead replica and a live one no more', () => {
    const refusedPick = (current: string, failed: boolean, taken: string[], refused: string[]) =>
      pickManagementUrl({ urls, current, failed, taken, draining: [], refused });
    // Its replica was killed: after the drop it retries its own URL once (refused), then moves on...
    expect(refusedPick('https://c', false, ['https://a'], [])).toBe('https://c');
    expect(refusedPick('https://c', true, ['https://a'], ['https://c'])).toBe('https://b');
    // ...and a failed attempt on the live one does not send it back to the refused one.
    expect(refusedPick('https://b', true, ['https://a'], ['https://c'])).toBe('https://b');
    expect(pick('https://b', true, ['https://a'])).toBe('https://c');
    // A refused URL is still tried when nothing else is free, and before a taken one.
    expect(refusedPick('https://a', true, ['https://b'], ['https://a', 'https://c'])).toBe('https://c');
    expect(refusedPick('https://a', true, [], ['https://a', 'https://b', 'https://c'])).toBe('https://b');
  });

  it('forgets a refusal after REFUSED_SKIP_MS', () => {
    const refusedAt = new Map([
      ['https://a', 1_000],
      ['https://b', 1_000 + REFUSED_SKIP_MS],
    ]);
    expect(recentlyRefused(refusedAt, 1_000 + REFUSED_SKIP_MS)).toEqual(['https://b']);
    expect([...refusedAt.keys()]).toEqual(['https://b']);
  });
});

describe('firstManagementUrl', () => {
  it('is the only URL when there is one', () => {
    expect(firstManagementUrl(['https://a'], 'any-agent')).toBe('https://a');
  });

  it('is the same for an agent every time, and spreads agents with the same list evenly', () => {
    expect(firstManagementUrl(urls, 'agent-1')).toBe(firstManagementUrl([...urls], 'agent-1'));
    const counts = new Map<string, number>();
    for (let i = 0; i < 3000; i++) {
      const url = firstManagementUrl(urls, `agent-${i}`);
      counts.set(url, (counts.get(url) ?? 0) + 1);
    }
    expect([...counts.keys()].sort()).toEqual(urls);
    for (const count of counts.values()) expect(count).toBeGreaterThan(900);
    // So the agents' two connections are spread too: each pair of neighbours in the list gets a third.
    const pairs = new Map<string, number>();
    for (let i = 0; i < 3000; i++) {
      const first = firstManagementUrl(urls, `agent-${i}`);
      const second = pick(first, false, [first]);
      pairs.set(`${first} ${second}`, (pairs.get(`${first} ${second}`) ?? 0) + 1);
    }
    expect([...pairs.keys()].sort()).toEqual([
      'https://a https://b',
      'https://b https://c',
      'https://c https://a',
    ]);
  });
});
