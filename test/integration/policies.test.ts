/**
 * Traffic policies end to end: rules saved through the API act on a real
 * listener in front of a real upstream, show in the trace, and bad input is
 * refused without touching the running rule set.
 */
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';
import { useCleanups } from '../helpers/cleanup.js';
import type { TestServer } from '../helpers/server.js';
import { configureProxy, eventually, startProxyTest, startUpstream } from './proxy-helpers.js';

const cleanups = useCleanups();

async function setup() {
  const { server, token, client } = await startProxyTest(cleanups);
  const upstream = await startUpstream((req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(`upstream ${req.url}`);
  }, cleanups);
  const proxy = await configureProxy(server, token, { type: 'upstream', url: upstream.url });
  const api = async (method: string, path: string, body?: unknown) =>
    server.request(method, path, { token, ...(body === undefined ? {} : { body }) });
  return { server, token, api, port: proxy.port, listenerId: proxy.listenerId, client, upstream };
}

async function lastEvents(s: TestServer, token: string, n: number) {
  const res = await s.request('GET', `/api/v1/traffic/recent?limit=${n}`, { token });
  return res.json.events as { path: string; status: number; policy?: unknown[] }[];
}

describe('WAF rules', () => {
  it('blocks an admin path to all but one network, allows and logs, and traces each decision', async () => {
    const { api, port, client, server, token } = await setup();
    const block = await api('POST', '/api/v1/policies/waf', {
      name: 'admin only from the office',
      priority: 10,
      expression: 'path_prefix(path, "/admin") && !ip_in(ip, "10.0.0.0/8")',
      action: 'block',
    });
    expect(block.status).toBe(201);
    expect(block.json.rule).toMatchObject({ action: 'block', status: 403, mode: 'always', enabled: true });
    expect((await client.send(port, '/admin/users')).status).toBe(403);
    expect((await client.send(port, '/public')).text).toBe('upstream /public');

    // An allow rule with a lower priority runs first and skips the block; a log rule only records.
    await api('POST', '/api/v1/policies/waf', {
      name: 'watch admin',
      priority: 1,
      expression: 'path_prefix(path, "/admin")',
      action: 'log',
    });
    const allow = await api('POST', '/api/v1/policies/waf', {
      name: 'health checker',
      priority: 5,
      expression: 'headers["x-health"] == "yes"',
      action: 'allow',
    });
    const allowed = await client.send(port, '/admin/health', { headers: { 'x-health': 'yes' } });
    expect(allowed.status).toBe(200);
    const blocked = await client.send(port, '/admin/users');
    expect(blocked.status).toBe(403);
    await eventually(async () => (await lastEvents(server, token, 1))[0]?.path === '/admin/users');
    const [allowedEvent, blockedEvent] = await lastEvents(server, token, 2);
    expect(allowedEvent!.policy).toEqual([
      { stage: 'waf', rule: 'watch admin', action: 'log' },
      { stage: 'waf', rule: 'health checker', action: 'allow' },
    ]);
    expect(blockedEvent!.policy).toEqual([
      { stage: 'waf', rule: 'watch admin', action: 'log' },
      { stage: 'waf', rule: 'admin only from the office', action: 'block' },
    ]);

    // A header read by name is '' when absent: a rule on a missing key does not let the request slip through.
    await api('POST', '/api/v1/policies/waf', {
      name: 'key required on /private',
      priority: 20,
      expression: 'path_prefix(path, "/private") && headers["x-key"] != "k"',
      action: 'block',
    });
    expect((await client.send(port, '/private/a')).status).toBe(403);
    expect((await client.send(port, '/private/a', { headers: { 'x-key': 'k' } })).status).toBe(200);

    // Disabled: the next request passes.
    await api('PATCH', `/api/v1/policies/waf/${block.json.rule.id}`, { enabled: false });
    expect((await client.send(port, '/admin/users')).status).toBe(200);
    await api('DELETE', `/api/v1/policies/waf/${allow.json.rule.id}`);
    const list = await api('GET', '/api/v1/policies/waf');
    expect(list.json.rules.map((r: { name: string }) => r.name)).toEqual([
      'watch admin',
      'admin only from the office',
      'key required on /private',
    ]);
  });

  it('answers a block with its template, and keeps a template in use from being deleted', async () => {
    const { api, port, client } = await setup();
    const template = await api('POST', '/api/v1/templates', {
      name: 'forbidden page',
      kind: 'block',
      contentType: 'text/html; charset=utf-8',
      body: '<h1>{{status}}</h1><p>{{ruleName}} stopped {{path}}</p>',
    });
    expect(template.status).toBe(201);
    const rule = await api('POST', '/api/v1/policies/waf', {
      name: 'no <scripts>',
      expression: 'path.endsWith(".php")',
      action: 'block',
      status: 451,
      templateId: template.json.template.id,
    });
    expect(rule.status).toBe(201);
    const res = await client.send(port, '/index.php');
    expect(res.status).toBe(451);
    expect(res.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(res.text).toBe('<h1>451</h1><p>no &lt;scripts&gt; stopped /index.php</p>');
    const del = await api('DELETE', `/api/v1/templates/${template.json.template.id}`);
    expect(del.status).toBe(409);
    expect(del.json.error.details.usedBy).toEqual([
      { type: 'waf_rule', id: rule.json.rule.id, name: 'no <scripts>' },
    ]);
  });

  it('challenges with a proof-of-work page whose solution earns a pass cookie', async () => {
    const { api, port, client, server, token } = await setup();
    await api('POST', '/api/v1/policies/waf', {
      name: 'prove it',
      expression: 'path_prefix(path, "/download")',
      action: 'challenge',
      passTtlSeconds: 600,
    });
    const page = await client.send(port, '/download/file?x=1');
    expect(page.status).toBe(403);
    expect(page.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(page.text).toContain('<script>');
    // Run the page's own script (as a browser would) to find the URL it opens.
    const script = page.text.slice(page.text.indexOf('<script>') + 8, page.text.indexOf('</script>'));
    const opened = await new Promise<string>((resolve) => {
      runInNewContext(script, {
        location: { replace: resolve },
        setTimeout: (fn: () => void) => setImmediate(fn),
        unescape,
        encodeURIComponent,
      });
    });
    expect(opened).toMatch(/^\/\.well-known\/p2pstream\/challenge\?c=/);
    const tampered = await client.send(port, opened.replace(/s=\d+/, 's=1'));
    expect(tampered.status).toBe(403);
    const solved = await client.send(port, opened);
    expect(solved.status).toBe(303);
    expect(solved.headers.location).toBe('/download/file?x=1');
    const setCookie = String(solved.headers['set-cookie']);
    expect(setCookie).toMatch(/Max-Age=600; HttpOnly; SameSite=Lax/);
    const cookie = setCookie.split(';')[0]!;
    const passed = await client.send(port, '/download/file', { headers: { cookie } });
    expect(passed.status).toBe(200);
    const forged = await client.send(port, '/download/file', { headers: { cookie: `${cookie}x` } });
    expect(forged.status).toBe(403);
    await eventually(async () => (await lastEvents(server, token, 1))[0]?.status === 403);
    const events = await lastEvents(server, token, 3);
    expect(events.map((e) => e.policy)).toEqual([
      [{ stage: 'waf', rule: 'prove it', action: 'challenge_solved' }],
      [{ stage: 'waf', rule: 'prove it', action: 'pass' }],
      [{ stage: 'waf', rule: 'prove it', action: 'challenge' }],
    ]);
  });
});

describe('auto-mode WAF rules', () => {
  it('switch on under load, block while on, and show the switch on the rule', async () => {
    const { api, port, client, listenerId } = await setup();
    const created = await api('POST', '/api/v1/policies/waf', {
      name: 'shield',
      action: 'block',
      status: 503,
      mode: 'auto',
      auto: { requestsPerSecond: 5, forSeconds: 1, coolDownSeconds: 3600 },
    });
    expect(created.status).toBe(201);
    expect(created.json.rule.state).toEqual({ activeListeners: [], switches: [] });
    // Off until the listener has been busy for a second: requests pass.
    expect((await client.send(port, '/')).status).toBe(200);
    // Keep the listener busy (ten requests per round) until the rule switches on.
    await eventually(
      async () => {
        const answers = await Promise.all(Array.from({ length: 10 }, () => client.send(port, '/')));
        return answers.some((a) => a.status === 503);
      },
      { timeoutMs: 15_000, intervalMs: 200 },
    );
    const rule = (await api('GET', `/api/v1/policies/waf/${created.json.rule.id}`)).json.rule;
    expect(rule.state.activeListeners).toEqual([listenerId]);
    expect(rule.state.switches).toEqual([
      { at: expect.any(String), listenerId, active: true, reason: expect.stringMatching(/requests\/s ≥ 5/) },
    ]);
    const tested = await api('POST', '/api/v1/policies/test', {
      method: 'GET',
      host: 'x',
      path: '/',
      listenerId,
    });
    expect(tested.json.stages[0]).toMatchObject({ stage: 'waf', rule: 'shield', action: 'block' });
  });
});

describe('rate limits', () => {
  it('limits per key with RateLimit headers and Retry-After, other keys unaffected', async () => {
    const { api, port, client, server, token } = await setup();
    const created = await api('POST', '/api/v1/policies/rate-limits', {
      name: 'api',
      expression: 'path_prefix(path, "/api")',
      key: ['ip', 'header:X-Api-Key'],
      algorithm: 'fixed_window',
      limit: 3,
      windowSeconds: 3600,
    });
    expect(created.status).toBe(201);
    expect(created.json.rule.key).toEqual(['ip', 'header:x-api-key']);
    const a = { headers: { 'x-api-key': 'a' } };
    const first = await client.send(port, '/api/x', a);
    expect(first.status).toBe(200);
    expect(first.headers['ratelimit-policy']).toBe('"api";q=3;w=3600');
    expect(first.headers.ratelimit).toMatch(/^"api";r=2;t=\d+$/);
    await client.send(port, '/api/x', a);
    await client.send(port, '/api/x', a);
    const refused = await client.send(port, '/api/x', a);
    expect(refused.status).toBe(429);
    expect(Number(refused.headers['retry-after'])).toBeGreaterThan(0);
    expect(refused.headers.ratelimit).toMatch(/^"api";r=0;t=\d+$/);
    expect((await client.send(port, '/api/x', { headers: { 'x-api-key': 'b' } })).status).toBe(200);
    expect((await client.send(port, '/other', a)).headers.ratelimit).toBeUndefined();
    await eventually(async () => (await lastEvents(server, token, 1))[0]?.path === '/other');
    const events = await lastEvents(server, token, 3);
    expect(events[0]!.policy).toEqual([{ stage: 'rate_limit', rule: 'api', action: 'limit' }]);

    const tested = await api('POST', '/api/v1/policies/test', {
      method: 'GET',
      host: 'example.com',
      path: '/api/x',
      headers: { 'X-Api-Key': 'b' },
      ip: '127.0.0.1',
    });
    expect(tested.status).toBe(200);
    expect(tested.json.stages).toEqual([
      { stage: 'waf', rule: null, action: 'continue', detail: 'no WAF rule matches' },
      { stage: 'rate_limit', rule: 'api', action: 'count', detail: '1 left of 3 (fixed_window)' },
      { stage: 'shaper', rule: null, action: 'continue', detail: 'no shaper matches' },
    ]);
    // Testing counted nothing: key b still has two requests left.
    expect((await client.send(port, '/api/x', { headers: { 'x-api-key': 'b' } })).headers.ratelimit).toMatch(
      /r=1;/,
    );
  });
});

describe('shapers', () => {
  it('holds downloads and uploads to the rate by backpressure, sharing one key fairly', async () => {
    const { api, client, server, token, upstream: first } = await setup();
    const KiB = 1024;
    await first.close();
    const upstream = await startUpstream((req, res) => {
      let received = 0;
      req.on('data', (c: Buffer) => {
        received += c.length;
      });
      req.on('end', () => {
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        res.end(req.method === 'POST' ? `received ${received}` : Buffer.alloc(256 * KiB, 1));
      });
    }, cleanups);
    const proxy = await configureProxy(server, token, { type: 'upstream', url: upstream.url });
    const created = await api('POST', '/api/v1/policies/shapers', {
      name: 'downloads',
      expression: 'path_prefix(path, "/files")',
      key: ['header:x-user'],
      downloadBytesPerSecond: 256 * KiB,
      uploadBytesPerSecond: 128 * KiB,
      burstBytes: 0,
      exemptBytes: 16 * KiB,
    });
    expect(created.status).toBe(201);
    const user = { headers: { 'x-user': 'u1' } };
    const timed = async (run: () => Promise<{ status: number; text: string }>) => {
      const t0 = performance.now();
      const res = await run();
      return { ...res, ms: performance.now() - t0 };
    };
    // Two downloads of one key at once share its 256 KiB/s: 2 × 240 KiB shaped take ≥ 1.8 s each.
    const [one, two] = await Promise.all([
      timed(() => client.send(proxy.port, '/files/a', user)),
      timed(() => client.send(proxy.port, '/files/b', user)),
    ]);
    expect(one.text.length).toBe(256 * KiB);
    expect(two.text.length).toBe(256 * KiB);
    expect(Math.min(one.ms, two.ms)).toBeGreaterThanOrEqual(1700);
    // Fair: neither finished while the other had most of its body still to come.
    expect(Math.min(one.ms, two.ms) / Math.max(one.ms, two.ms)).toBeGreaterThan(0.75);
    // Another key is not held back by the first one's bucket: exempt bytes and its own rate only.
    const other = await timed(() => client.send(proxy.port, '/files/c', { headers: { 'x-user': 'u2' } }));
    expect(other.text.length).toBe(256 * KiB);
    // Uploads: 256 KiB at 128 KiB/s after 16 KiB exempt → ≥ 1.8 s, the body intact.
    const up = await timed(() =>
      client.send(proxy.port, '/files/up', {
        method: 'POST',
        body: 'x'.repeat(256 * KiB),
        headers: { 'x-user': 'u3' },
      }),
    );
    expect(up.text).toBe(`received ${256 * KiB}`);
    expect(up.ms).toBeGreaterThanOrEqual(1800);
    // Not matched: not shaped, and no decision traced.
    expect((await client.send(proxy.port, '/elsewhere', user)).status).toBe(200);
    await eventually(async () => (await lastEvents(server, token, 1))[0]?.path === '/elsewhere');
    const events = await lastEvents(server, token, 2);
    expect(events[0]!.policy).toEqual([{ stage: 'shaper', rule: 'downloads', action: 'shape' }]);
    expect(events[1]!.policy).toBeUndefined();
  });
});

describe('bad input', () => {
  it('refuses bad rules with the field, and leaves the running rule set untouched', async () => {
    const { api, port, client } = await setup();
    const good = await api('POST', '/api/v1/policies/waf', {
      name: 'block php',
      expression: 'path.endsWith(".php")',
      action: 'block',
    });
    expect(good.status).toBe(201);
    const cases: [string, string, unknown, number, Record<string, unknown>][] = [
      [
        'POST',
        '/api/v1/policies/waf',
        { name: 'x', expression: 'user == "a"', action: 'block' },
        400,
        { field: 'expression', position: 0 },
      ],
      [
        'POST',
        '/api/v1/policies/waf',
        { name: 'x', expression: 'path ==', action: 'block' },
        400,
        { field: 'expression', position: 7, line: 1, column: 8 },
      ],
      [
        'POST',
        '/api/v1/policies/waf',
        { name: 'x', expression: 'nope(path)', action: 'block' },
        400,
        { field: 'expression' },
      ],
      [
        'POST',
        '/api/v1/policies/waf',
        { name: 'x', expression: 'path == 1', action: 'block' },
        400,
        { field: 'expression' },
      ],
      ['POST', '/api/v1/policies/waf', { name: 'x', action: 'explode' }, 400, { field: 'action' }],
      [
        'POST',
        '/api/v1/policies/waf',
        { name: 'x', action: 'block', templateId: 'nope' },
        400,
        { field: 'templateId' },
      ],
      ['POST', '/api/v1/policies/waf', { name: 'x', action: 'block', mode: 'auto' }, 400, { field: 'auto' }],
      ['POST', '/api/v1/policies/waf', { name: 'block php', action: 'log' }, 409, { field: 'name' }],
      [
        'POST',
        '/api/v1/policies/rate-limits',
        { name: 'r', algorithm: 'fixed_window', limit: -1, windowSeconds: 1 },
        400,
        { field: 'limit' },
      ],
      [
        'POST',
        '/api/v1/policies/rate-limits',
        { name: 'r', algorithm: 'fixed_window', limit: 1e12, windowSeconds: 1 },
        400,
        { field: 'limit' },
      ],
      [
        'POST',
        '/api/v1/policies/rate-limits',
        { name: 'r', algorithm: 'token_bucket' },
        400,
        { field: 'ratePerSecond' },
      ],
      [
        'POST',
        '/api/v1/policies/rate-limits',
        { name: 'r', algorithm: 'leaky' },
        400,
        { field: 'algorithm' },
      ],
      [
        'POST',
        '/api/v1/policies/rate-limits',
        { name: 'r', algorithm: 'fixed_window', limit: 1, windowSeconds: 1, key: ['ip', 'ip'] },
        400,
        { field: 'key.1' },
      ],
      [
        'POST',
        '/api/v1/policies/rate-limits',
        { name: 'r', algorithm: 'fixed_window', limit: 1, windowSeconds: 1, key: ['cookie'] },
        400,
        { field: 'key.0' },
      ],
      ['POST', '/api/v1/policies/shapers', { name: 's' }, 400, { field: 'downloadBytesPerSecond' }],
      [
        'POST',
        '/api/v1/policies/shapers',
        { name: 's', downloadBytesPerSecond: -5 },
        400,
        { field: 'downloadBytesPerSecond' },
      ],
      [
        'PATCH',
        `/api/v1/policies/waf/${good.json.rule.id}`,
        { expression: 'path ==' },
        400,
        { field: 'expression' },
      ],
      ['PATCH', '/api/v1/policies/waf/nope', { enabled: false }, 404, {}],
      [
        'POST',
        '/api/v1/policies/test',
        { method: 'GET', host: 'x', path: 'no-slash' },
        400,
        { field: 'path' },
      ],
    ];
    for (const [method, path, body, status, details] of cases) {
      const res = await api(method, path, body);
      expect(res.status, `${method} ${path} ${JSON.stringify(body)}: ${res.text}`).toBe(status);
      if (status === 400) expect(res.json.error.code).toBe('VALIDATION_FAILED');
      if (Object.keys(details).length > 0) expect(res.json.error.details).toMatchObject(details);
    }
    // The running set is the saved one: the good rule still blocks, nothing else was added.
    expect((await client.send(port, '/a.php')).status).toBe(403);
    expect((await client.send(port, '/a.html')).status).toBe(200);
    expect((await api('GET', '/api/v1/policies/waf')).json.rules).toHaveLength(1);
    expect((await api('GET', '/api/v1/policies/rate-limits')).json.rules).toHaveLength(0);
    expect((await api('GET', '/api/v1/policies/shapers')).json.shapers).toHaveLength(0);
  });
});
