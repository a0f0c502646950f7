/**
 * The management listener serves the built console: index.html for client
 * routes, hashed assets with long caching, security headers, and never HTML
 * under /api/.
 */
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildConsoleOnce } from '../helpers/browser.js';
import { startTestServer, type TestServer } from '../helpers/server.js';

let server: TestServer;
let index: string;

beforeAll(async () => {
  await buildConsoleOnce();
  server = await startTestServer();
  index = (await server.request('GET', '/')).text;
});

afterAll(async () => {
  await server?.close();
});

function assetPaths(html: string): string[] {
  return [...html.matchAll(/(?:src|href)="(\/assets\/[^"]+)"/g)].map((m) => m[1]!);
}

describe('console serving', () => {
  it('serves index.html at / with a strict CSP, no framing and nosniff', async () => {
    const res = await server.request('GET', '/');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/html/);
    expect(res.text).toContain('<div id="app">');
    const csp = res.headers.get('content-security-policy') ?? '';
    expect(csp).toContain("script-src 'self'");
    expect(csp).toContain("frame-ancestors 'none'");
    expect(csp).not.toContain('unsafe-inline');
    expect(res.headers.get('x-frame-options')).toBe('DENY');
    expect(res.headers.get('x-content-type-options')).toBe('nosniff');
    expect(res.headers.get('cache-control')).toBe('no-cache');
  });

  it('has no inline script or style in index.html', () => {
    expect(index).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/);
    expect(index).not.toMatch(/<style\b/);
    expect(index).not.toMatch(/\sstyle="/);
  });

  it('serves hashed assets with immutable caching, gzip and a revalidating ETag', async () => {
    const assets = assetPaths(index);
    expect(assets.some((a) => a.endsWith('.js'))).toBe(true);
    expect(assets.some((a) => a.endsWith('.css'))).toBe(true);
    for (const asset of assets) {
      const res = await server.request('GET', asset, { headers: { 'accept-encoding': 'gzip' } });
      expect(res.status).toBe(200);
      expect(res.headers.get('cache-control')).toBe('public, max-age=31536000, immutable');
      expect(res.headers.get('x-content-type-options')).toBe('nosniff');
      const etag = res.headers.get('etag')!;
      const again = await server.request('GET', asset, { headers: { 'if-none-match': etag } });
      expect(again.status).toBe(304);
    }
    const js = await server.request('GET', assets.find((a) => a.endsWith('.js'))!);
    expect(js.headers.get('content-type')).toMatch(/^text\/javascript/);
  });

  it('stays within 150 KB gzipped in all and loads nothing from another origin', async () => {
    let gzipped = gzipSync(index).length;
    for (const asset of assetPaths(index)) {
      const res = await server.request('GET', asset);
      gzipped += gzipSync(res.text).length;
      // No CDN, no web font, no remote import: the console works offline. (XML namespace names
      // such as http://www.w3.org/2000/svg are identifiers, never fetched; a loopback URL is a
      // form's default value.)
      const urls = res.text.match(/https?:\/\/[^"'\s)]+/g) ?? [];
      expect(urls.filter((u) => !/^https?:\/\/(www\.w3\.org\/|127\.0\.0\.1[:/])/.test(u))).toEqual([]);
    }
    expect(index).not.toMatch(/https?:\/\//);
    expect(gzipped).toBeLessThan(150 * 1024);
  });

  it('answers client routes with index.html so a reload keeps the page', async () => {
    for (const route of ['/traffic', '/settings/environments', '/login?next=%2Fproxy']) {
      const res = await server.request('GET', route);
      expect(res.status).toBe(200);
      expect(res.text).toBe(index);
    }
  });

  it('keeps answering JSON 404 NOT_FOUND under /api/, never the console', async () => {
    for (const route of ['/api/v1/nope', '/api/nope/deeper', '/api']) {
      const res = await server.request('GET', route);
      expect(res.status).toBe(404);
      expect(res.headers.get('content-type')).toMatch(/^application\/json/);
      expect(res.json.error.code).toBe('NOT_FOUND');
    }
    const post = await server.request('POST', '/api/v1/nope', { body: {} });
    expect(post.status).toBe(404);
    expect(post.json.error.code).toBe('NOT_FOUND');
  });

  it('answers 404 for an unknown asset instead of the page', async () => {
    const res = await server.request('GET', '/assets/missing-123.js');
    expect(res.status).toBe(404);
    expect(res.json.error.code).toBe('NOT_FOUND');
  });

  it('leaves the API as it was', async () => {
    const res = await server.request('GET', '/api/v1/setup');
    expect(res.status).toBe(200);
    expect(res.json).toEqual({ setupRequired: true });
  });
});
