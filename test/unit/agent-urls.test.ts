import { describe, expect, it } from 'vitest';
import { firstManagementUrl, pickManagementUrl } from '../../agent/agent.js';

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
