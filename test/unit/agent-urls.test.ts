import { describe, expect, it } from 'vitest';
import { pickManagementUrl } from '../../agent/agent.js';

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

  it('puts the first connection on the first URL and the second on the next one not taken', () => {
    expect(pick('https://a', false)).toBe('https://a');
    expect(pick('https://a', false, ['https://a'])).toBe('https://b');
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
