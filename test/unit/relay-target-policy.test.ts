import { describe, expect, it } from 'vitest';
import { AppError } from '../../src/errors.js';
import { createTargetPolicy } from '../../src/relay/target-policy.js';

describe('target policy', () => {
  it('allows everything without patterns and nothing with an empty list', () => {
    expect(createTargetPolicy(undefined).allows('anything.example', 8443)).toBe(true);
    expect(createTargetPolicy(null).allows('10.1.2.3', 1)).toBe(true);
    expect(createTargetPolicy([]).allows('10.1.2.3', 443)).toBe(false);
  });

  it('matches a wildcard suffix below the domain only, on its port', () => {
    const policy = createTargetPolicy(['*.internal:443']);
    expect(policy.allows('env.internal', 443)).toBe(true);
    expect(policy.allows('a.b.INTERNAL.', 443)).toBe(true);
    expect(policy.allows('internal', 443)).toBe(false);
    expect(policy.allows('evilinternal', 443)).toBe(false);
    expect(policy.allows('env.internal', 8443)).toBe(false);
  });

  it('matches exact addresses and ports, 443 by default, * for any', () => {
    const policy = createTargetPolicy(['10.0.0.5:8081', 'mgmt.example.com', '[::1]:*', 'any.example:*']);
    expect(policy.allows('10.0.0.5', 8081)).toBe(true);
    expect(policy.allows('10.0.0.5', 443)).toBe(false);
    expect(policy.allows('10.0.0.50', 8081)).toBe(false);
    expect(policy.allows('mgmt.example.com', 443)).toBe(true);
    expect(policy.allows('mgmt.example.com', 8443)).toBe(false);
    expect(policy.allows('[::1]', 9)).toBe(true);
    expect(policy.allows('::1', 10)).toBe(true);
    expect(policy.allows('any.example', 1)).toBe(true);
    expect(createTargetPolicy(['*:8081']).allows('whatever', 8081)).toBe(true);
  });

  it('refuses malformed patterns with VALIDATION_FAILED', () => {
    for (const bad of [
      '',
      'host:0',
      'host:70000',
      'a b:443',
      '[not-ipv6]:443',
      'https://x:443',
      'x:y',
      '*.',
    ]) {
      expect(() => createTargetPolicy([bad]), bad).toThrow(AppError);
    }
  });
});
