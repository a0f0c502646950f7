import { describe, expect, it } from 'vitest';
import { LoginThrottle } from '../../src/domain/login-throttle.js';

describe('LoginThrottle', () => {
  it('blocks a key after five failures within the window, for five minutes', () => {
    let now = 0;
    const throttle = new LoginThrottle({ now: () => now });
    const key = LoginThrottle.key('127.0.0.1', 'admin');
    for (let i = 0; i < 4; i++) expect(throttle.recordFailure(key)).toBe(false);
    expect(throttle.recordFailure(key)).toBe(true);
    expect(throttle.isBlocked(key)).toBe(true);
    expect(throttle.isBlocked(LoginThrottle.key('127.0.0.2', 'admin'))).toBe(false);
    now += 5 * 60_000 - 1;
    expect(throttle.isBlocked(key)).toBe(true);
    now += 2;
    expect(throttle.isBlocked(key)).toBe(false);
  });

  it('forgets failures older than the window', () => {
    let now = 0;
    const throttle = new LoginThrottle({ now: () => now });
    for (let i = 0; i < 4; i++) throttle.recordFailure('k');
    now += 15 * 60_000 + 1;
    expect(throttle.recordFailure('k')).toBe(false);
  });

  it('clears a key on success', () => {
    const throttle = new LoginThrottle();
    for (let i = 0; i < 4; i++) throttle.recordFailure('k');
    throttle.recordSuccess('k');
    for (let i = 0; i < 4; i++) expect(throttle.recordFailure('k')).toBe(false);
  });

  it('stays within its key cap and never evicts a blocked key to make room', () => {
    const throttle = new LoginThrottle({ maxKeys: 100 });
    for (let i = 0; i < 5; i++) throttle.recordFailure('victim');
    expect(throttle.isBlocked('victim')).toBe(true);
    for (let i = 0; i < 10_000; i++) throttle.recordFailure(`flood-${i}`);
    expect(throttle.size).toBeLessThanOrEqual(100);
    expect(throttle.isBlocked('victim')).toBe(true);
  });

  it('stops tracking new keys rather than evicting when every key is blocked', () => {
    const throttle = new LoginThrottle({ maxKeys: 3 });
    for (const key of ['a', 'b', 'c']) for (let i = 0; i < 5; i++) throttle.recordFailure(key);
    expect(throttle.recordFailure('d')).toBe(false);
    expect(throttle.size).toBe(3);
    for (const key of ['a', 'b', 'c']) expect(throttle.isBlocked(key)).toBe(true);
  });
});
