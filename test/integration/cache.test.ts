import { createHash } from 'node:crypto';
import { readdir, readFile, stat, truncate, writeFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import path from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { useCleanups } from '../helpers/cleanup.js';
import { TEST_PASSWORD, TEST_USERNAME, type TestServer } from '../helpers/server.js';
import { configureProxy, eventually, proxyClient, startProxyTest, startUpstream } from './proxy-helpers.js';

const cleanups = useCleanups();

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

/** A server with an admin token, an upstream, a listener routing to it and a match-all cache rule. */
async function setup(handler: Handler, rule: Record<string, unknown> = {}) {
  const { server, token, client } = await startProxyTest(cleanups);
  const upstream = await startUpstream(handler, cleanups);
  const { port } = await configureProxy(server, token, { type: 'upstream', url: upstream.url });
  const created = await server.request('POST', '/api/v1/cache/rules', {
    token,
    body: { name: 'all', ...rule },
  });
  expect(created.status, created.text).toBe(201);
  return { server, token, client, upstream, port, ruleId: created.json.rule.id as string };
}

async function lastEvents(s: TestServer, token: string, n: number) {
  return (await s.request('GET', `/api/v1/traffic/recent?limit=${n}`, { token })).json.events;
}

async function stats(s: TestServer, token: string) {
  return (await s.request('GET', '/api/v1/cache/stats', { token })).json;
}

async function login(s: TestServer): Promise<string> {
  const res = await s.request('POST', '/api/v1/auth/login', {
    body: { username: TEST_USERNAME, password: TEST_PASSWORD },
  });
  return s.createToken(res.headers.get('set-cookie')!.split(';')[0]!);
}

/**
 * A clock the test can move: `Date` (what freshness is computed from) runs on
 * as usual, and `later(ms)` moves it forward at once, so an entry with
 * `max-age=1` goes stale without the test waiting for it.
 */
function movableClock() {
  vi.useFakeTimers({ toFake: ['Date'], shouldAdvanceTime: true });
  cleanups.push(() => void vi.useRealTimers());
  return { later: (ms: number) => vi.setSystemTime(Date.now() + ms) };
}

describe('response cache', () => {
  it('serves a second request from the cache with Cache-Status and traces HIT', async () => {
    const { server, token, port, client, upstream } = await setup((req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'max-age=60', etag: '"v1"' });
      res.end(`hello ${req.url}`);
    });
    const first = await client.send(port, '/page');
    expect(first.status).toBe(200);
    expect(first.text).toBe('hello /page');
    expect(first.headers['cache-status']).toBe('p2pstream; fwd=miss; fwd-status=200; stored');
    const second = await client.send(port, '/page');
    expect(second.text).toBe('hello /page');
    expect(second.headers['cache-status']).toMatch(/^p2pstream; hit; ttl=(59|60)$/);
    expect(second.headers['content-length']).toBe('11');
    expect(Number(second.headers.age)).toBeGreaterThanOrEqual(0);
    expect(upstream.seen).toHaveLength(1);
    const events = await lastEvents(server, token, 2);
    expect(events.map((e: { cache: string }) => e.cache)).toEqual(['MISS', 'HIT']);
    expect(events[1].status).toBe(200);
    expect(events[1].bytesOut).toBe(11);
    expect(await stats(server, token)).toMatchObject({ entries: 1, hits: 1, misses: 1, hitRatio: 0.5 });
    const overview = (await server.request('GET', '/api/v1/overview', { token })).json;
    expect(overview.cache).toMatchObject({ entries: 1, hits: 1, misses: 1, hitRatio: 0.5 });
    expect(overview.cache.diskBytes).toBeGreaterThan(11);
    const metrics = (await server.request('GET', '/metrics', { token })).text;
    expect(metrics).toContain('p2pstream_cache_answers_total{result="hit"} 1');
    expect(metrics).toContain('p2pstream_cache_answers_total{result="miss"} 1');
    expect(metrics).toContain('p2pstream_cache_entries 1');
    expect(metrics).toMatch(/p2pstream_cache_bytes\{tier="disk"\} \d+/);
    // The query is part of the key by default.
    expect((await client.send(port, '/page?x=1')).headers['cache-status']).toContain('fwd=miss');
    // A conditional request for what is stored gets a 304 from the cache.
    const conditional = await client.send(port, '/page', { headers: { 'if-none-match': '"v1"' } });
    expect(conditional.status).toBe(304);
    expect(conditional.headers.etag).toBe('"v1"');
    expect(upstream.seen).toHaveLength(2);
  });

  it('answers HEAD from a stored GET and does not store a HEAD miss', async () => {
    const { port, client, upstream } = await setup((req, res) => {
      res.writeHead(200, { 'cache-control': 'max-age=60', 'content-length': '5' });
      res.end(req.method === 'HEAD' ? undefined : 'hello');
    });
    const headMiss = await client.send(port, '/h', { method: 'HEAD' });
    expect(headMiss.headers['cache-status']).toContain('fwd=miss');
    expect(headMiss.headers['content-length']).toBe('5');
    await client.send(port, '/h');
    const headHit = await client.send(port, '/h', { method: 'HEAD' });
    expect(headHit.status).toBe(200);
    expect(headHit.text).toBe('');
    expect(headHit.headers['cache-status'], String(headHit.headers['cache-status'])).toContain('hit');
    expect(headHit.headers['content-length']).toBe('5');
    expect(upstream.seen.map((r) => r.method)).toEqual(['HEAD', 'GET']);
  });

  it('never stores no-store, private or Set-Cookie answers and bypasses Authorization and Cookie requests', async () => {
    const { server, token, port, client, upstream } = await setup((req, res) => {
      const headers: Record<string, string> = { 'cache-control': 'max-age=60' };
      if (req.url === '/no-store') headers['cache-control'] = 'no-store';
      if (req.url === '/private') headers['cache-control'] = 'private, max-age=60';
      if (req.url === '/cookie') headers['set-cookie'] = 'session=abc';
      res.writeHead(200, headers);
      res.end(`body ${req.url} ${req.headers.authorization ?? ''}`);
    });
    for (const url of ['/no-store', '/private', '/cookie']) {
      const a = await client.send(port, url);
      const b = await client.send(port, url);
      expect(b.headers['cache-status'], url).toContain('fwd=miss');
      expect(a.headers['cache-status'], url).not.toContain('stored');
    }
    expect((await client.send(port, '/no-store')).headers['cache-status']).toContain('detail=no-store');
    expect((await client.send(port, '/private')).headers['cache-status']).toContain('detail=private');
    expect((await client.send(port, '/cookie')).headers['set-cookie']).toBe('session=abc');
    expect(upstream.seen).toHaveLength(9);

    await client.send(port, '/public');
    const withAuth = await client.send(port, '/public', { headers: { authorization: 'Bearer alice' } });
    expect(withAuth.text).toBe('body /public Bearer alice');
    expect(withAuth.headers['cache-status']).toBe('p2pstream; fwd=bypass; detail=authorization');
    const withCookie = await client.send(port, '/public', { headers: { cookie: 'a=b' } });
    expect(withCookie.headers['cache-status']).toBe('p2pstream; fwd=bypass; detail=cookie');
    const post = await client.send(port, '/public', { method: 'POST', body: 'x' });
    expect(post.headers['cache-status']).toBe('p2pstream; fwd=bypass; detail=method');
    expect((await client.send(port, '/public')).headers['cache-status']).toContain('hit');
    const events = await lastEvents(server, token, 4);
    expect(events.map((e: { cache: string }) => e.cache)).toEqual(['BYPASS', 'BYPASS', 'BYPASS', 'HIT']);
  });

  it('caches only what the rule expression matches, in priority order, and records the rule in the trace', async () => {
    const { server, token, port, client } = await setup(
      (req, res) => {
        res.writeHead(200, { 'cache-control': 'max-age=60' });
        res.end(`at ${req.url}`);
      },
      { expression: 'path_prefix(path, "/assets") && method == "GET"', priority: 10 },
    );
    const second = await server.request('POST', '/api/v1/cache/rules', {
      token,
      body: {
        name: 'images',
        priority: 5,
        expression: 'path.endsWith(".png")',
        ttl: { mode: 'fixed', seconds: 5 },
      },
    });
    expect(second.status, second.text).toBe(201);
    await client.send(port, '/assets/app.js');
    expect((await client.send(port, '/assets/app.js')).headers['cache-status']).toContain('hit');
    const page = await client.send(port, '/page');
    expect(page.headers['cache-status']).toBeUndefined();
    await client.send(port, '/assets/logo.png');
    const png = await client.send(port, '/assets/logo.png');
    // The lower priority wins: the fixed 5 s of "images", not the origin's 60.
    expect(png.headers['cache-status']).toMatch(/^p2pstream; hit; ttl=[45]$/);
    const events = await lastEvents(server, token, 5);
    expect(events.map((e: { policy?: unknown }) => e.policy ?? null)).toEqual([
      [{ stage: 'cache', rule: 'all', action: 'miss' }],
      [{ stage: 'cache', rule: 'all', action: 'hit' }],
      null,
      [{ stage: 'cache', rule: 'images', action: 'miss' }],
      [{ stage: 'cache', rule: 'images', action: 'hit' }],
    ]);
    const invalid = await server.request('POST', '/api/v1/cache/rules', {
      token,
      body: { name: 'broken', expression: 'path_prefix(path, ' },
    });
    expect(invalid.status).toBe(400);
    expect(invalid.json.error.details).toMatchObject({ field: 'expression' });
    expect(typeof invalid.json.error.details.position).toBe('number');
  });

  it('keeps one entry per Vary variant and adds the rule vary headers to the key', async () => {
    const { port, client, upstream } = await setup(
      (req, res) => {
        res.writeHead(200, { 'cache-control': 'max-age=60', vary: 'Accept-Language' });
        res.end(`${req.headers['accept-language']}/${req.headers['x-tenant']}`);
      },
      { varyHeaders: ['X-Tenant'] },
    );
    const get = (lang: string, tenant: string) =>
      client.send(port, '/v', { headers: { 'accept-language': lang, 'x-tenant': tenant } });
    expect((await get('en', 'a')).text).toBe('en/a');
    expect((await get('de', 'a')).text).toBe('de/a');
    expect((await get('en', 'b')).text).toBe('en/b');
    expect(upstream.seen).toHaveLength(3);
    const en = await get('en', 'a');
    expect(en.text).toBe('en/a');
    expect(en.headers['cache-status']).toContain('hit');
    expect((await get('de', 'a')).text).toBe('de/a');
    expect((await get('en', 'b')).text).toBe('en/b');
    expect(upstream.seen).toHaveLength(3);
  });

  it('revalidates a stale entry with its validators; a 304 refreshes it', async () => {
    let version = 'v1';
    const { server, token, port, client, upstream } = await setup((req, res) => {
      if (req.headers['if-none-match'] === `"${version}"`) {
        res.writeHead(304, { etag: `"${version}"`, 'cache-control': 'max-age=1' });
        res.end();
        return;
      }
      res.writeHead(200, { etag: `"${version}"`, 'cache-control': 'max-age=1' });
      res.end(`content ${version}`);
    });
    const clock = movableClock();
    await client.send(port, '/r');
    clock.later(1100);
    const revalidated = await client.send(port, '/r');
    expect(revalidated.status).toBe(200);
    expect(revalidated.text).toBe('content v1');
    expect(revalidated.headers['cache-status']).toMatch(/^p2pstream; fwd=stale; fwd-status=304; ttl=/);
    expect(upstream.seen[1]!.headers['if-none-match']).toBe('"v1"');
    // Refreshed: fresh again without asking.
    expect((await client.send(port, '/r')).headers['cache-status']).toContain('hit');
    expect(upstream.seen).toHaveLength(2);

    version = 'v2';
    clock.later(1100);
    const changed = await client.send(port, '/r');
    expect(changed.text).toBe('content v2');
    expect(changed.headers['cache-status']).toBe('p2pstream; fwd=stale; fwd-status=200; stored');
    const events = await lastEvents(server, token, 4);
    expect(events.map((e: { cache: string }) => e.cache)).toEqual(['MISS', 'REVALIDATED', 'HIT', 'EXPIRED']);
    expect(await stats(server, token)).toMatchObject({ revalidated: 1 });
  });

  it('serves stale while revalidating in the background, and stale if the origin fails', async () => {
    let count = 0;
    let failing = false;
    const { server, token, port, client, upstream } = await setup((req, res) => {
      count++;
      if (failing) {
        res.writeHead(503);
        res.end('down');
        return;
      }
      const cc = req.url === '/s' ? 'max-age=1, stale-while-revalidate=30' : 'max-age=1, stale-if-error=60';
      res.writeHead(200, { 'cache-control': cc });
      res.end(`n${count}`);
    });
    const clock = movableClock();
    expect((await client.send(port, '/s')).text).toBe('n1');
    expect((await client.send(port, '/e')).text).toBe('n2');
    clock.later(1100);
    const stale = await client.send(port, '/s');
    expect(stale.text).toBe('n1');
    expect(stale.headers['cache-status']).toMatch(
      /^p2pstream; hit; ttl=-\d+; detail=stale-while-revalidate$/,
    );
    await eventually(() => count === 3);
    await eventually(async () => (await client.send(port, '/s')).text === 'n3');

    // /e has no stale-while-revalidate: a synchronous revalidation; the origin fails; the stale copy answers.
    failing = true;
    const fallback = await client.send(port, '/e');
    expect(fallback.status).toBe(200);
    expect(fallback.text).toBe('n2');
    expect(fallback.headers['cache-status']).toBe(
      'p2pstream; fwd=stale; fwd-status=503; detail=stale-if-error',
    );
    // The origin cannot be reached at all: the same.
    await upstream.close();
    const unreachable = await client.send(port, '/e');
    expect(unreachable.text).toBe('n2');
    expect(unreachable.headers['cache-status']).toBe('p2pstream; fwd=stale; detail=stale-if-error');
    const events = await lastEvents(server, token, 2);
    expect(events.map((e: { cache: string; error: string | null }) => [e.cache, e.error])).toEqual([
      ['STALE', null],
      ['STALE', null],
    ]);
  });

  it('makes one upstream request for concurrent misses of one key', async () => {
    let release: () => void = () => {};
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const { server, token, port, client, upstream } = await setup(async (_req, res) => {
      await gate;
      res.writeHead(200, { 'cache-control': 'max-age=60' });
      res.end('shared');
    });
    const many = Array.from({ length: 50 }, () => client.send(port, '/same'));
    // The one miss is at the upstream and the other 49 wait for it in the proxy.
    await eventually(() => upstream.seen.length === 1 && server.server.cacheWaiting() === 49);
    expect(upstream.seen).toHaveLength(1);
    release();
    const answers = await Promise.all(many);
    expect(answers.every((a) => a.status === 200 && a.text === 'shared')).toBe(true);
    expect(upstream.seen).toHaveLength(1);
    // The waiters answer from the one stored response. None went to the upstream.
    const statuses = answers.map((a) => String(a.headers['cache-status'])).sort();
    expect(statuses).toEqual([
      ...Array.from({ length: 49 }, () => 'p2pstream; fwd=miss; fwd-status=200; collapsed'),
      'p2pstream; fwd=miss; fwd-status=200; stored',
    ]);
    expect(server.server.cacheWaiting()).toBe(0);
    expect((await stats(server, token)).entries).toBe(1);
  });

  it('streams an object over maxObjectBytes through without storing it', async () => {
    const big = Buffer.alloc(300_000, 7);
    const { server, token, port, client, upstream } = await setup(
      (_req, res) => {
        res.writeHead(200, { 'cache-control': 'max-age=60' });
        // No content-length: the size is only known while streaming.
        res.write(big.subarray(0, 100_000), () => res.end(big.subarray(100_000)));
      },
      { maxObjectBytes: 200_000 },
    );
    const first = await client.send(port, '/big');
    expect(first.text.length).toBe(300_000);
    const second = await client.send(port, '/big');
    expect(second.text.length).toBe(300_000);
    expect(second.headers['cache-status']).toContain('fwd=miss');
    expect(upstream.seen).toHaveLength(2);
    expect((await stats(server, token)).entries).toBe(0);
  });

  it('streams a large body to the client while storing it, then serves it from disk', async () => {
    const body = Buffer.alloc(3 * 1024 * 1024);
    for (let i = 0; i < body.length; i++) body[i] = (i * 31) & 0xff;
    const digest = createHash('sha256').update(body).digest('hex');
    const { server, token, port, client } = await setup((_req, res) => {
      res.writeHead(200, { 'cache-control': 'max-age=60', 'content-length': String(body.length) });
      res.end(body);
    });
    const { request } = await import('undici');
    const fetchBody = async () => {
      const res = await request(`http://127.0.0.1:${port}/large`, { dispatcher: client.dispatcher });
      const chunks: Buffer[] = [];
      for await (const chunk of res.body) chunks.push(chunk as Buffer);
      return { status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) };
    };
    const first = await fetchBody();
    expect(createHash('sha256').update(first.body).digest('hex')).toBe(digest);
    const second = await fetchBody();
    expect(second.headers['cache-status'], String(second.headers['cache-status'])).toContain('hit');
    expect(createHash('sha256').update(second.body).digest('hex')).toBe(digest);
    const s = await stats(server, token);
    expect(s.diskBytes).toBeGreaterThan(body.length);
    // Bigger than hotObjectKiB (256): not in memory, only its index record.
    expect(s.memoryBytes).toBeLessThan(64 * 1024);
  });

  it('keeps entries across a restart and drops a corrupt or truncated one instead of serving it', async () => {
    const small = 'x'.repeat(1000);
    const large = Buffer.alloc(2 * 1024 * 1024, 1);
    const first = await setup((req, res) => {
      res.writeHead(200, { 'cache-control': 'max-age=600' });
      res.end(req.url === '/large' ? large : `${small}${req.url}`);
    });
    for (const p of ['/a', '/b', '/c', '/large']) await first.client.send(first.port, p);
    expect((await stats(first.server, first.token)).entries).toBe(4);
    const dataDir = first.server.dataDir;
    const port = first.port;
    await first.client.close();
    await first.server.stop();

    // Damage two entries on disk: flip a byte of /b's body, truncate /c's.
    const cacheDir = path.join(dataDir, 'cache');
    const metas: { path: string; bodyFile: string; size: number }[] = [];
    for (const sub of await readdir(cacheDir)) {
      if (!/^[0-9a-f]{2}$/.test(sub)) continue;
      for (const name of await readdir(path.join(cacheDir, sub))) {
        if (!name.endsWith('.m')) continue;
        const meta = JSON.parse(await readFile(path.join(cacheDir, sub, name), 'utf8'));
        metas.push({ path: meta.path, bodyFile: meta.bodyFile, size: meta.bodyLength });
      }
    }
    expect(metas.map((m) => m.path).sort()).toEqual(['/a', '/b', '/c', '/large']);
    const bodyOf = (p: string) => path.join(cacheDir, metas.find((m) => m.path === p)!.bodyFile);
    const b = await readFile(bodyOf('/b'));
    b[10] = b[10]! ^ 0xff;
    await writeFile(bodyOf('/b'), b);
    await truncate(bodyOf('/c'), 100);
    const largeBody = await readFile(bodyOf('/large'));
    largeBody[largeBody.length - 5] = 0;
    await writeFile(bodyOf('/large'), largeBody);

    await first.upstream.close();
    const upstream = await startUpstream((req, res) => {
      res.writeHead(200, { 'cache-control': 'max-age=600' });
      res.end(`fresh ${req.url}`);
    }, cleanups);
    const server = await first.server.restart();
    const client = proxyClient(cleanups);
    const token = await login(server);
    // The route still points at the old upstream's port: point it at the new one (entries are keyed by route, not URL).
    const routes = (await server.request('GET', '/api/v1/proxy/routes', { token })).json.routes;
    await server.request('PATCH', `/api/v1/proxy/routes/${routes[0].id}`, {
      token,
      body: { target: { type: 'upstream', url: upstream.url } },
    });
    // The truncated entry is dropped at load; the others are back.
    await eventually(async () => (await stats(server, token)).entries === 3);
    const a = await client.send(port, '/a');
    expect(a.text).toBe(`${small}/a`);
    expect(a.headers['cache-status']).toContain('hit');
    // The flipped byte is caught before anything is sent: answered from the origin instead.
    const bAnswer = await client.send(port, '/b');
    expect(bAnswer.text).toBe('fresh /b');
    expect((await client.send(port, '/c')).text).toBe('fresh /c');
    // A large body streams; its checksum fails at the end and the connection is cut before the last bytes.
    await expect(client.send(port, '/large')).rejects.toThrow();
    expect((await client.send(port, '/large')).text).toBe('fresh /large');
    expect(upstream.seen.map((r) => r.url)).toEqual(['/b', '/c', '/large']);
    expect((await stat(path.join(dataDir, 'p2pstream.json'))).isFile()).toBe(true);
  });

  it('answers an unreachable upstream with the error template, as the target would', async () => {
    const { server, token, port, client, upstream } = await setup((_req, res) => {
      res.end('never used');
    });
    const page = await server.request('POST', '/api/v1/templates', {
      token,
      body: { name: 'down', kind: 'error', contentType: 'text/plain', body: 'down {{status}}' },
    });
    const routes = (await server.request('GET', '/api/v1/proxy/routes', { token })).json.routes;
    await server.request('PATCH', `/api/v1/proxy/routes/${routes[0].id}`, {
      token,
      body: { errorTemplateId: page.json.template.id },
    });
    await upstream.close();
    const res = await client.send(port, '/gone');
    expect(res.status).toBe(502);
    expect(res.text).toBe('down 502');
    const [event] = await lastEvents(server, token, 1);
    expect(event).toMatchObject({ status: 502, error: 'upstream_refused', cache: 'MISS' });
  });

  it('purges all, by host, by path prefix and by rule', async () => {
    const { server, token, port, ruleId, client } = await setup((req, res) => {
      res.writeHead(200, { 'cache-control': 'max-age=600' });
      res.end(`${req.headers.host}${req.url}`);
    });
    const fill = async () => {
      for (const host of ['a.example', 'b.example'])
        for (const p of ['/x/1', '/x/2', '/y']) await client.send(port, p, { headers: { host } });
    };
    await fill();
    expect((await stats(server, token)).entries).toBe(6);
    const purge = (body: unknown) => server.request('POST', '/api/v1/cache/purge', { token, body });
    expect((await purge({ host: 'A.example' })).json).toEqual({ purged: 3 });
    expect((await purge({ pathPrefix: '/x/' })).json).toEqual({ purged: 2 });
    expect((await purge({ ruleId: 'other' })).json).toEqual({ purged: 0 });
    expect((await purge({ ruleId })).json).toEqual({ purged: 1 });
    await fill();
    expect((await purge({ all: true })).json).toEqual({ purged: 6 });
    expect(
      (await client.send(port, '/y', { headers: { host: 'a.example' } })).headers['cache-status'],
    ).toContain('fwd=miss');
    for (const bad of [{}, { all: false }, { all: true, host: 'a' }, { pathPrefix: 'x' }, { nope: 1 }]) {
      const res = await purge(bad);
      expect(res.status, JSON.stringify(bad)).toBe(400);
      expect(res.json.error.code).toBe('VALIDATION_FAILED');
    }
  });

  it('refuses bad settings and rules with 400 and keeps what is stored', async () => {
    const { server, token } = await setup(() => {});
    const before = (await server.request('GET', '/api/v1/cache/settings', { token })).json;
    const settingsCases: [Record<string, unknown>, string][] = [
      [{ memoryMiB: 0 }, 'memoryMiB'],
      [{ diskMiB: -1 }, 'diskMiB'],
      [{ diskMiB: 16_000_000 }, 'diskMiB'],
      [{ hotObjectKiB: 4096, memoryMiB: 2 }, 'hotObjectKiB'],
      [{ cleanupSeconds: 1 }, 'cleanupSeconds'],
      [{ maxEntries: 1.5 }, 'maxEntries'],
      [{ extra: true }, 'extra'],
    ];
    for (const [body, field] of settingsCases) {
      const res = await server.request('PUT', '/api/v1/cache/settings', { token, body });
      expect(res.status, JSON.stringify(body)).toBe(400);
      expect(res.json.error.code).toBe('VALIDATION_FAILED');
      if (res.json.error.details) expect(res.json.error.details.field).toBe(field);
    }
    expect((await server.request('GET', '/api/v1/cache/settings', { token })).json).toEqual(before);
    const ruleCases: Record<string, unknown>[] = [
      { name: 'r', ttl: { mode: 'fixed', seconds: 0 } },
      { name: 'r', ttl: { mode: 'fixed', seconds: -5 } },
      { name: 'r', ttl: { mode: 'forever' } },
      { name: 'r', ttl: { mode: 'origin', seconds: 99_999_999 } },
      { name: 'r', maxObjectBytes: 2 * 1024 * 1024 * 1024 },
      { name: 'r', varyHeaders: ['Cookie'] },
      { name: 'r', queryMode: 'sometimes' },
      { name: 'r', expression: 'path.startsWith("/x"' },
      { name: 'r', expression: 'path' },
      { name: 'all' },
    ];
    for (const body of ruleCases) {
      const res = await server.request('POST', '/api/v1/cache/rules', { token, body });
      expect([400, 409], JSON.stringify(body)).toContain(res.status);
    }
    expect((await server.request('GET', '/api/v1/cache/rules', { token })).json.rules).toHaveLength(1);
    const ok = await server.request('PUT', '/api/v1/cache/settings', {
      token,
      body: { memoryMiB: 16, cleanupSeconds: 30 },
    });
    expect(ok.json).toMatchObject({ ...before, memoryMiB: 16, cleanupSeconds: 30 });
  });
  it('refuses invalid TTLs, sizes over the disk and bad rule fields with 400 naming the field, changing nothing', async () => {
    const { server, token } = await setup(() => {});
    const kept = await server.request('POST', '/api/v1/cache/rules', {
      token,
      body: { name: 'kept', ttl: { mode: 'fixed', seconds: 60 }, maxObjectBytes: 1024 },
    });
    expect(kept.status).toBe(201);
    const id = kept.json.rule.id as string;
    const readBack = async () => ({
      settings: (await server.request('GET', '/api/v1/cache/settings', { token })).json,
      rules: (await server.request('GET', '/api/v1/cache/rules', { token })).json,
    });
    const before = await readBack();
    const refused = async (method: 'POST' | 'PATCH' | 'PUT', url: string, body: unknown, field: string) => {
      const res = await server.request(method, url, { token, body });
      expect(res.status, `${method} ${JSON.stringify(body)}: ${res.text}`).toBe(400);
      expect(res.json.error.code).toBe('VALIDATION_FAILED');
      expect(res.json.error.details?.field, JSON.stringify(body)).toBe(field);
      return res.json.error.message as string;
    };
    const ruleCases: [Record<string, unknown>, string][] = [
      [{ ttl: { mode: 'fixed', seconds: 0 } }, 'ttl.seconds'],
      [{ ttl: { mode: 'fixed', seconds: -5 } }, 'ttl.seconds'],
      [{ ttl: { mode: 'fixed' } }, 'ttl.seconds'],
      [{ ttl: { mode: 'origin', seconds: 31_536_001 } }, 'ttl.seconds'],
      [{ ttl: { mode: 'forever', seconds: 60 } }, 'ttl.mode'],
      [{ ttl: { mode: 'fixed', seconds: 60, extra: 1 } }, 'ttl.extra'],
      [{ maxObjectBytes: 0 }, 'maxObjectBytes'],
      [{ maxObjectBytes: 5 * 1024 * 1024 * 1024 }, 'maxObjectBytes'],
      // Over the disk tier (diskMiB 1024 by default): more than the cache could ever hold.
      [{ maxObjectBytes: 2 * 1024 * 1024 * 1024 }, 'maxObjectBytes'],
      [{ varyHeaders: ['Cookie'] }, 'varyHeaders[0]'],
      [{ queryMode: 'sometimes' }, 'queryMode'],
      [{ expression: 'path' }, 'expression'],
    ];
    for (const [body, field] of ruleCases) {
      await refused('POST', '/api/v1/cache/rules', { name: 'new', ...body }, field);
      await refused('PATCH', `/api/v1/cache/rules/${id}`, body, field);
    }
    const taken = await server.request('PATCH', `/api/v1/cache/rules/${id}`, {
      token,
      body: { name: 'all' },
    });
    expect(taken.status).toBe(409);
    expect(taken.json.error).toMatchObject({ code: 'CONFLICT', details: { field: 'name' } });
    // A disk tier larger than the file system can hold.
    expect(await refused('PUT', '/api/v1/cache/settings', { diskMiB: 16_000_000 }, 'diskMiB')).toMatch(
      /disk can hold/,
    );
    expect(await readBack()).toEqual(before);

    // Memory only: an object must fit in the memory tier's hot objects.
    const memoryOnly = await server.request('PUT', '/api/v1/cache/settings', {
      token,
      body: { diskMiB: 0, hotObjectKiB: 64 },
    });
    expect(memoryOnly.status).toBe(200);
    const after = await readBack();
    expect(
      await refused(
        'POST',
        '/api/v1/cache/rules',
        { name: 'big', maxObjectBytes: 65 * 1024 },
        'maxObjectBytes',
      ),
    ).toMatch(/hotObjectKiB 64/);
    await refused('PATCH', `/api/v1/cache/rules/${id}`, { maxObjectBytes: 65 * 1024 }, 'maxObjectBytes');
    expect(await readBack()).toEqual(after);
    expect(after.rules).toEqual(before.rules);
  });
});
