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

  it('matches address literals against CIDR ranges on their port', () => {
    const policy = createTargetPolicy(['10.0.0.0/8:8081', '[fd00::/8]:*']);
    expect(policy.allows('10.200.3.4', 8081)).toBe(true);
    expect(policy.allows('10.200.3.4', 8082)).toBe(false);
    expect(policy.allows('11.0.0.1', 8081)).toBe(false);
    expect(policy.allows('[fd12::1]', 1)).toBe(true);
    expect(policy.allows('fe80::1', 1)).toBe(false);
    expect(policy.lookupFor('10.1.1.1', 8081)).toBeUndefined();
    // A name may be allowed once resolved, on a port some range has; it is then dialled through the checked lookup.
    expect(policy.allows('app.internal', 8081)).toBe(true);
    expect(policy.lookupFor('app.internal', 8081)).toBeTypeOf('function');
    expect(createTargetPolicy(['10.0.0.0/8:8081']).allows('app.internal', 443)).toBe(false);
    // A name a name pattern allows is dialled as usual.
    expect(createTargetPolicy(['app.internal', '10.0.0.0/8']).lookupFor('app.internal', 443)).toBeUndefined();
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
      '10.0.0.0/33',
      '10.0.0.0/x',
      'fd00::/8',
      '[10.0.0.0/8]',
      'host/8',
    ]) {
      expect(() => createTargetPolicy([bad]), bad).toThrow(AppError);
    }
  });
});
