import { describe, expect, it } from 'vitest';
import {
  compileRoutes,
  matchRoute,
  normalizeHost,
  prefixMatches,
  routesOf,
} from '../../src/dataplane/route-table.js';
import type { RouteRecord } from '../../src/storage/schema.js';

let created = 0;
function route(
  id: string,
  host: string | null,
  pathPrefix: string,
  priority = 0,
  listenerId = 'L',
): RouteRecord {
  created += 1;
  return {
    id,
    listenerId,
    host,
    pathPrefix,
    priority,
    target: { type: 'static', status: 200, contentType: 'text/plain', body: id },
    createdAt: new Date(Date.UTC(2026, 0, 1, 0, 0, created)).toISOString(),
    updatedAt: new Date(Date.UTC(2026, 0, 1)).toISOString(),
  };
}

const ROUTES: RouteRecord[] = [
  route('any-root', null, '/'),
  route('any-api', null, '/api'),
  route('any-api-v2', null, '/api/v2'),
  route('exact-root', 'shop.example.com', '/'),
  route('exact-cart', 'shop.example.com', '/cart'),
  route('wild-root', '*.example.com', '/'),
  route('wild-static', '*.example.com', '/static/'),
  route('deep-wild', '*.eu.example.com', '/'),
  route('low', 'prio.test', '/p', 1),
  route('high', 'prio.test', '/p', 10),
  route('other-listener', null, '/', 0, 'M'),
];

describe('route matching', () => {
  const table = routesOf(compileRoutes(ROUTES), 'L');
  const cases: [string | null, string, string | null][] = [
    // host tier first: an exact host beats any host-less route, whatever its prefix
    ['shop.example.com', '/api/v2/items', 'exact-root'],
    ['shop.example.com', '/cart', 'exact-cart'],
    ['shop.example.com', '/cart/42', 'exact-cart'],
    ['shop.example.com', '/cartography', 'exact-root'],
    // then *.suffix, the longest suffix first
    ['blog.example.com', '/', 'wild-root'],
    ['a.b.example.com', '/static/app.js', 'wild-static'],
    ['blog.example.com', '/static', 'wild-root'],
    ['paris.eu.example.com', '/static/x', 'deep-wild'],
    // the bare suffix is not covered by *.suffix
    ['example.com', '/', 'any-root'],
    // then host-less: longest prefix on segment boundaries
    ['unknown.test', '/api', 'any-api'],
    ['unknown.test', '/api/', 'any-api'],
    ['unknown.test', '/api/v1/x', 'any-api'],
    ['unknown.test', '/api/v2', 'any-api-v2'],
    ['unknown.test', '/api/v2/x', 'any-api-v2'],
    ['unknown.test', '/apix', 'any-root'],
    [null, '/api/v2', 'any-api-v2'],
    // equal host and prefix: the higher priority wins
    ['prio.test', '/p/1', 'high'],
    // a host tier without a matching prefix falls through to the next tier
    ['prio.test', '/q', 'any-root'],
  ];
  for (const [host, path, expected] of cases) {
    it(`routes ${host ?? '(no host)'} ${path} to ${expected}`, () => {
      expect(matchRoute(table, host, path)?.id ?? null).toBe(expected);
    });
  }

  it('answers null when nothing matches and keeps listeners apart', () => {
    const only = routesOf(compileRoutes([route('x', 'a.test', '/x')]), 'L');
    expect(matchRoute(only, 'a.test', '/y')).toBeNull();
    expect(matchRoute(only, 'b.test', '/x')).toBeNull();
    expect(matchRoute(routesOf(compileRoutes(ROUTES), 'M'), 'shop.example.com', '/')?.id).toBe(
      'other-listener',
    );
    expect(matchRoute(routesOf(compileRoutes(ROUTES), 'none'), null, '/')).toBeNull();
  });

  it('breaks a full tie by age, so the choice is stable', () => {
    const older = route('older', null, '/t', 3);
    const newer = route('newer', null, '/t', 3);
    const table = routesOf(compileRoutes([newer, older]), 'L');
    expect(matchRoute(table, null, '/t')?.id).toBe('older');
  });

  it('skips a route that cannot serve (a hand-edited database) instead of failing', () => {
    const broken: RouteRecord = {
      ...route('broken', null, '/b'),
      target: { type: 'upstream', url: 'not a url' },
    };
    const table = routesOf(compileRoutes([broken, route('fine', null, '/')]), 'L');
    expect(matchRoute(table, null, '/b')?.id).toBe('fine');
  });

  it('precomputes targets and labels', () => {
    const upstream: RouteRecord = {
      ...route('u', null, '/'),
      target: { type: 'upstream', url: 'http://127.0.0.1:3000/base', timeoutMs: 500 },
    };
    const compiled = matchRoute(routesOf(compileRoutes([upstream]), 'L'), null, '/');
    expect(compiled?.label).toBe('http://127.0.0.1:3000/base');
    expect(compiled?.target).toEqual({
      type: 'upstream',
      origin: 'http://127.0.0.1:3000',
      basePath: '/base',
      timeoutMs: 500,
    });
  });
});

describe('prefixMatches', () => {
  it('matches whole segments, or anything after a prefix ending in /', () => {
    expect(prefixMatches('/', '/anything')).toBe(true);
    expect(prefixMatches('/a', '/a')).toBe(true);
    expect(prefixMatches('/a', '/a/b')).toBe(true);
    expect(prefixMatches('/a', '/ab')).toBe(false);
    expect(prefixMatches('/a/', '/a/b')).toBe(true);
    expect(prefixMatches('/a/', '/a')).toBe(false);
  });
});

describe('normalizeHost', () => {
  it('lower-cases and drops the port and a trailing dot', () => {
    expect(normalizeHost('Shop.Example.COM:8080')).toBe('shop.example.com');
    expect(normalizeHost('example.com.')).toBe('example.com');
    expect(normalizeHost('[::1]:80')).toBe('[::1]');
    expect(normalizeHost('')).toBeNull();
    expect(normalizeHost(undefined)).toBeNull();
  });
});
