import { describe, expect, it } from 'vitest';
import {
  compileExpression,
  ipInCidr,
  MAX_EXPRESSION_CHARS,
  type PolicyRequestFacts,
  parseCidr,
  pathPrefix,
} from '../../src/domain/policy-expression.js';
import { AppError } from '../../src/errors.js';

function facts(overrides: Partial<PolicyRequestFacts> = {}): PolicyRequestFacts {
  return {
    method: 'GET',
    host: 'api.example.com',
    path: '/api/users',
    ip: '203.0.113.9',
    listener: 'public',
    query: { page: '2' },
    headers: { 'user-agent': 'curl/8', 'x-api-key': 'k1' },
    ...overrides,
  };
}

function refusal(source: string): { message: string; details: Record<string, unknown> } {
  try {
    compileExpression(source);
  } catch (err) {
    expect(err).toBeInstanceOf(AppError);
    const e = err as AppError;
    expect(e.code).toBe('VALIDATION_FAILED');
    return { message: e.message, details: e.details as Record<string, unknown> };
  }
  throw new Error(`"${source}" was accepted`);
}

describe('policy match expressions', () => {
  it('matches every request with an empty expression', () => {
    for (const source of ['', '   ', undefined, null]) {
      const compiled = compileExpression(source);
      expect(compiled.always).toBe(true);
      expect(compiled.matches(facts())).toBe(true);
    }
  });

  it('evaluates the variables and helpers of the contract', () => {
    const cases: [string, Partial<PolicyRequestFacts>, boolean][] = [
      ['method == "GET" && host == "api.example.com"', {}, true],
      ['path_prefix(path, "/api")', {}, true],
      ['path_prefix(path, "/api")', { path: '/apix' }, false],
      ['ip_in(ip, "203.0.113.0/24")', {}, true],
      ['ip_in(ip, "10.0.0.0/8")', {}, false],
      ['ip_in(ip, "2001:db8::/32")', { ip: '2001:db8::1' }, true],
      ['headers["x-api-key"] == "k1"', {}, true],
      ['"x-api-key" in headers && !("cookie" in headers)', {}, true],
      ['query["page"] == "2"', {}, true],
      ['listener == "public" && path.startsWith("/api/")', {}, true],
      ['headers.exists(k, k.startsWith("x-"))', {}, true],
    ];
    for (const [source, over, expected] of cases) {
      expect(compileExpression(source).matches(facts(over)), source).toBe(expected);
    }
  });

  it('treats an evaluation error (a missing key) as no match', () => {
    const compiled = compileExpression('headers["authorization"] == "x"');
    expect(compiled.matches(facts())).toBe(false);
    expect(compileExpression('headers["authorization"] == "x" || true').matches(facts())).toBe(true);
  });

  it('reads an absent header as "" when the expression only reads it by name, and keeps CEL errors otherwise', async () => {
    const { withBlanks } = await import('../../src/domain/policy-expression.js');
    const byName = compileExpression('headers["x-api-key"] != "secret"');
    expect(byName.blanks).toEqual({ headers: ['x-api-key'], query: [] });
    const noKey = facts({ headers: {} });
    // Without the blank the evaluation fails (no match); with it, a missing key is not the secret.
    expect(byName.matches(noKey)).toBe(false);
    expect(byName.matches(withBlanks(noKey, byName.blanks!))).toBe(true);
    expect(byName.matches(withBlanks(facts({ headers: { 'x-api-key': 'secret' } }), byName.blanks!))).toBe(
      false,
    );
    expect(compileExpression('"x-api-key" in headers && headers["x-api-key"] == ""').blanks).toBeNull();
    expect(compileExpression('headers.exists(k, k == "a")').blanks).toBeNull();
    expect(compileExpression('query.page == "2"').blanks).toEqual({ headers: [], query: ['page'] });
  });

  it('knows which expressions read the query', () => {
    expect(compileExpression('query["a"] == "b"').usesQuery).toBe(true);
    expect(compileExpression('path == "/"').usesQuery).toBe(false);
  });

  it('refuses syntax errors with their position', () => {
    const { details, message } = refusal('path ==');
    expect(details).toMatchObject({ field: 'expression', position: 7, line: 1, column: 8 });
    expect(message).toContain('expression:');
    expect(refusal('method == "GET" &&\n  (path').details).toMatchObject({ line: 2 });
  });

  it('refuses unknown variables, unknown functions and wrong types', () => {
    expect(refusal('user == "x"').message).toMatch(/unknown variable/i);
    expect(refusal('path_suffix(path, "/x")').message).toMatch(/overload|function/i);
    expect(refusal('path_prefix(path, 1)').message).toMatch(/overload/);
    expect(refusal('method + 1 == 2').message).toMatch(/overload/);
    expect(refusal('method').message).toMatch(/bool/);
    expect(refusal('ip_in(ip, "10.0.0.0/33")').details).toMatchObject({ position: 10 });
  });

  it('bounds the cost of an expression', () => {
    expect(refusal('x'.repeat(MAX_EXPRESSION_CHARS + 1)).message).toMatch(/at most/);
    expect(refusal(`${'('.repeat(40)}true${')'.repeat(40)}`).message).toMatch(/depth/i);
    expect(refusal(Array(150).fill('path == "/a"').join(' || ')).message).toMatch(/nodes/i);
    expect(refusal('headers.all(a, headers.all(b, a != b))').message).toMatch(/comprehension/);
    expect(refusal('path.matches("(a+)+$")').message).toMatch(/matches/);
  });
});

describe('address helpers', () => {
  it('matches IPv4, IPv6 and mapped addresses against CIDRs', () => {
    expect(ipInCidr('10.1.2.3', parseCidr('10.0.0.0/8')!)).toBe(true);
    expect(ipInCidr('11.1.2.3', parseCidr('10.0.0.0/8')!)).toBe(false);
    expect(ipInCidr('::ffff:10.1.2.3', parseCidr('10.0.0.0/8')!)).toBe(true);
    expect(ipInCidr('192.168.1.1', parseCidr('192.168.1.1')!)).toBe(true);
    expect(ipInCidr('192.168.1.2', parseCidr('192.168.1.1')!)).toBe(false);
    expect(ipInCidr('2001:db8:1::5', parseCidr('2001:db8::/32')!)).toBe(true);
    expect(ipInCidr('2001:db9::5', parseCidr('2001:db8::/32')!)).toBe(false);
    expect(ipInCidr('10.0.0.1', parseCidr('0.0.0.0/0')!)).toBe(true);
    expect(ipInCidr('not-an-ip', parseCidr('0.0.0.0/0')!)).toBe(false);
    for (const bad of ['1.2.3', '1.2.3.256', '1..2.3', '1.2.3.4.5', '']) {
      expect(ipInCidr(bad, parseCidr('0.0.0.0/0')!), bad).toBe(false);
    }
    expect(ipInCidr('172.16.255.255', parseCidr('172.16.0.0/12')!)).toBe(true);
    expect(ipInCidr('172.32.0.1', parseCidr('172.16.0.0/12')!)).toBe(false);
    expect(parseCidr('10.0.0.0/x')).toBeNull();
    expect(parseCidr('300.0.0.0/8')).toBeNull();
  });

  it('compares path prefixes on segment boundaries', () => {
    expect(pathPrefix('/api', '/api')).toBe(true);
    expect(pathPrefix('/api/x', '/api')).toBe(true);
    expect(pathPrefix('/apix', '/api')).toBe(false);
    expect(pathPrefix('/static/a', '/static/')).toBe(true);
  });
});
