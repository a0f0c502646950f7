import { once } from 'node:events';
import { readFile, writeFile } from 'node:fs/promises';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { DATABASE_FILE_NAME } from '../../src/storage/lowdb-store.js';
import { useCleanups } from '../helpers/cleanup.js';
import { freePort } from '../helpers/processes.js';
import type { TestServer } from '../helpers/server.js';
import { configureProxy, proxyClient, startProxyTest, startUpstream } from './proxy-helpers.js';

const cleanups = useCleanups();

const setup = () => startProxyTest(cleanups);

/** A GET through node:http, which sends the path as written (undici would percent-encode `<`). */
async function rawGet(port: number, pathname: string, headers: Record<string, string> = {}) {
  const req = httpRequest({ host: '127.0.0.1', port, path: pathname, headers, agent: false });
  req.end();
  const [res] = (await once(req, 'response')) as [IncomingMessage];
  let text = '';
  res.setEncoding('utf8');
  for await (const chunk of res) text += chunk;
  return { status: res.statusCode ?? 0, headers: res.headers, text };
}

async function createTemplate(s: TestServer, token: string, body: Record<string, unknown>) {
  const res = await s.request('POST', '/api/v1/templates', { token, body });
  expect(res.status, res.text).toBe(201);
  return res.json.template as { id: string; status: number };
}

describe('response templates through the API', () => {
  it('creates, lists, reads, updates, previews and deletes a template', async () => {
    const { server, token } = await setup();
    const created = await server.request('POST', '/api/v1/templates', {
      token,
      body: {
        name: 'maintenance',
        kind: 'error',
        status: 503,
        body: '<h1>{{host}} is down</h1>{{ whoami }}',
      },
    });
    expect(created.status).toBe(201);
    expect(created.json.template).toMatchObject({
      name: 'maintenance',
      kind: 'error',
      status: 503,
      contentType: 'text/html; charset=utf-8',
      usedBy: [],
    });
    expect(created.json.warnings).toHaveLength(1);
    expect(created.json.warnings[0]).toContain('{{ whoami }}');
    const id = created.json.template.id;

    const list = await server.request('GET', '/api/v1/templates', { token });
    expect(list.json.templates.map((t: { id: string }) => t.id)).toEqual([id]);
    expect((await server.request('GET', `/api/v1/templates/${id}`, { token })).json.template.name).toBe(
      'maintenance',
    );

    const preview = await server.request('POST', `/api/v1/templates/${id}/preview`, {
      token,
      body: { values: { host: '<i>shop</i>' } },
    });
    expect(preview.status).toBe(200);
    expect(preview.json).toMatchObject({
      status: 503,
      contentType: 'text/html; charset=utf-8',
      body: '<h1>&lt;i&gt;shop&lt;/i&gt; is down</h1>{{ whoami }}',
    });
    const bare = await server.request('POST', `/api/v1/templates/${id}/preview`, { token });
    expect(bare.status, bare.text).toBe(200);
    expect(bare.json.body).toContain('www.example.com');

    const draft = await server.request('POST', '/api/v1/templates/preview', {
      token,
      body: { contentType: 'text/plain', body: 'path={{path}}', values: { path: '/x' } },
    });
    expect(draft.json).toMatchObject({
      status: 200,
      contentType: 'text/plain',
      body: 'path=/x',
      warnings: [],
    });

    const patched = await server.request('PATCH', `/api/v1/templates/${id}`, {
      token,
      body: { body: '<h1>back soon</h1>' },
    });
    expect(patched.status).toBe(200);
    expect(patched.json).toMatchObject({
      template: { body: '<h1>back soon</h1>', status: 503 },
      warnings: [],
    });

    expect((await server.request('DELETE', `/api/v1/templates/${id}`, { token })).status).toBe(204);
    expect((await server.request('GET', `/api/v1/templates/${id}`, { token })).json.error.code).toBe(
      'NOT_FOUND',
    );
  });

  it('answers bad input with 400 naming the field and keeps what is stored', async () => {
    const { server, token } = await setup();
    const kept = await createTemplate(server, token, { name: 'kept', kind: 'generic', body: 'same' });
    const big = await server.request('POST', '/api/v1/templates', {
      token,
      body: { name: 'big', kind: 'generic', body: 'x'.repeat(256 * 1024 + 1) },
    });
    expect(big.status).toBe(400);
    expect(big.json.error).toMatchObject({ code: 'VALIDATION_FAILED', details: { field: 'body' } });
    const tooBig = await server.request('PATCH', `/api/v1/templates/${kept.id}`, {
      token,
      body: { body: 'y'.repeat(256 * 1024 + 1) },
    });
    expect(tooBig.status).toBe(400);
    const badType = await server.request('PATCH', `/api/v1/templates/${kept.id}`, {
      token,
      body: { contentType: 'not a type' },
    });
    expect(badType.json.error).toMatchObject({
      code: 'VALIDATION_FAILED',
      details: { field: 'contentType' },
    });
    const badKind = await server.request('POST', '/api/v1/templates', {
      token,
      body: { name: 'k', kind: 'captcha' },
    });
    expect(badKind.status).toBe(400);
    expect(badKind.json.error.code).toBe('VALIDATION_FAILED');
    const badValue = await server.request('POST', `/api/v1/templates/${kept.id}/preview`, {
      token,
      body: { values: { secret: 'x' } },
    });
    expect(badValue.json.error).toMatchObject({
      code: 'VALIDATION_FAILED',
      details: { field: 'values.secret' },
    });
    const list = await server.request('GET', '/api/v1/templates', { token });
    expect(list.json.templates).toHaveLength(1);
    expect(list.json.templates[0].body).toBe('same');
    expect((await server.request('GET', '/api/v1/templates', {})).status).toBe(401);
  });

  it('keeps unknown placeholders literally with a warning, and refuses a body over 256 KiB of UTF-8 leaving the template as it was', async () => {
    const { server, token } = await setup();
    const kept = await createTemplate(server, token, {
      name: 'page',
      kind: 'error',
      status: 502,
      contentType: 'text/html; charset=utf-8',
      body: '<p>{{status}}</p>',
    });
    const read = async () => (await server.request('GET', `/api/v1/templates/${kept.id}`, { token })).json;
    const patched = await server.request('PATCH', `/api/v1/templates/${kept.id}`, {
      token,
      body: { body: '<p>{{status}} {{nope}} {{ host }} {{status.code}}</p>' },
    });
    expect(patched.status).toBe(200);
    expect(patched.json.warnings).toHaveLength(2);
    expect(patched.json.warnings[0]).toContain('{{nope}}');
    expect(patched.json.warnings[1]).toContain('{{status.code}}');
    const preview = await server.request('POST', `/api/v1/templates/${kept.id}/preview`, {
      token,
      body: { values: { host: 'a.example' } },
    });
    expect(preview.json.body).toBe('<p>502 {{nope}} a.example {{status.code}}</p>');
    expect(preview.json.warnings).toHaveLength(2);

    const before = await read();
    // 256 KiB is counted in bytes: 87,382 three-byte characters are 262,146 bytes.
    for (const body of ['x'.repeat(256 * 1024 + 1), '€'.repeat(87_382)]) {
      const refused = await server.request('PATCH', `/api/v1/templates/${kept.id}`, {
        token,
        body: { name: 'renamed', body },
      });
      expect(refused.status).toBe(400);
      expect(refused.json.error).toMatchObject({ code: 'VALIDATION_FAILED', details: { field: 'body' } });
      expect(refused.json.error.message).toMatch(/256 KiB/);
    }
    const exact = 'x'.repeat(256 * 1024);
    const atLimit = await server.request('POST', '/api/v1/templates', {
      token,
      body: { name: 'limit', kind: 'generic', body: exact },
    });
    expect(atLimit.status).toBe(201);
    expect(await read()).toEqual(before);
  });

  it('refuses to delete a template in use with 409 CONFLICT and details.usedBy', async () => {
    const { server, token } = await setup();
    const page = await createTemplate(server, token, { name: 'oops', kind: 'error', body: 'oops' });
    const { listenerId, routeId } = await configureProxy(server, token, {
      type: 'upstream',
      url: 'http://127.0.0.1:9',
    });
    const patched = await server.request('PATCH', `/api/v1/proxy/routes/${routeId}`, {
      token,
      body: { errorTemplateId: page.id },
    });
    expect(patched.json.route.errorTemplateId).toBe(page.id);
    await server.request('PATCH', `/api/v1/proxy/listeners/${listenerId}`, {
      token,
      body: { errorTemplateId: page.id },
    });
    const refused = await server.request('DELETE', `/api/v1/templates/${page.id}`, { token });
    expect(refused.status).toBe(409);
    expect(refused.json.error.code).toBe('CONFLICT');
    expect(refused.json.error.details.usedBy).toEqual([
      { type: 'route', id: routeId, name: '*/ (error pages)' },
      { type: 'listener', id: listenerId, name: expect.stringContaining('(error pages)') },
    ]);
    const shown = await server.request('GET', `/api/v1/templates/${page.id}`, { token });
    expect(shown.json.template.usedBy).toHaveLength(2);
    expect((await server.request('GET', `/api/v1/templates/${page.id}`, { token })).status).toBe(200);
  });
});

describe('templates in the data plane', () => {
  it('serves a static route target from a template with the request values, HTML-escaped', async () => {
    const { server, token, client } = await setup();
    const page = await createTemplate(server, token, {
      name: 'closed',
      kind: 'generic',
      status: 503,
      body: '<p>{{host}} {{path}} {{status}} {{requestId}}</p>',
    });
    const { port } = await configureProxy(server, token, { type: 'static', templateId: page.id });
    const res = await rawGet(port, '/a/<x>"y', { host: 'shop.example' });
    expect(res.status).toBe(503);
    expect(res.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(res.headers['cache-control']).toBe('no-store');
    const match = /^<p>shop\.example \/a\/&lt;x&gt;&quot;y 503 ([0-9a-f-]{36})<\/p>$/.exec(res.text);
    expect(match, res.text).not.toBeNull();
    const events = (await server.request('GET', '/api/v1/traffic/recent?limit=1', { token })).json.events;
    // The id shown on the page is the trace event's: a visitor's report leads to the request.
    expect(events[0].id).toBe(match![1]);

    // An edit applies to the next answer.
    await server.request('PATCH', `/api/v1/templates/${page.id}`, {
      token,
      body: { body: 'now {{status}}' },
    });
    expect((await client.send(port, '/')).text).toBe('now 503');
  });

  it('answers upstream failures with the route error template, else the listener one, else plain text', async () => {
    const { server, token, client } = await setup();
    const routePage = await createTemplate(server, token, {
      name: 'route-page',
      kind: 'error',
      body: '<h1>route {{status}} {{path}}</h1>',
    });
    const listenerPage = await createTemplate(server, token, {
      name: 'listener-page',
      kind: 'error',
      contentType: 'text/plain',
      body: 'listener {{status}}',
    });
    const dead = await freePort();
    const { listenerId, routeId, port } = await configureProxy(
      server,
      token,
      { type: 'upstream', url: `http://127.0.0.1:${dead}` },
      { pathPrefix: '/app' },
    );
    const other = await server.request('POST', '/api/v1/proxy/routes', {
      token,
      body: {
        listenerId,
        pathPrefix: '/other',
        target: { type: 'upstream', url: `http://127.0.0.1:${dead}` },
      },
    });
    expect(other.status).toBe(201);

    const plain = await client.send(port, '/app/x');
    expect(plain.status).toBe(502);
    expect(plain.text).toBe('bad gateway\n');

    await server.request('PATCH', `/api/v1/proxy/routes/${routeId}`, {
      token,
      body: { errorTemplateId: routePage.id },
    });
    await server.request('PATCH', `/api/v1/proxy/listeners/${listenerId}`, {
      token,
      body: { errorTemplateId: listenerPage.id },
    });
    const fromRoute = await rawGet(port, '/app/<x>');
    expect(fromRoute.status).toBe(502);
    expect(fromRoute.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(fromRoute.text).toBe('<h1>route 502 /app/&lt;x&gt;</h1>');
    const fromListener = await client.send(port, '/other');
    expect(fromListener.status).toBe(502);
    expect(fromListener.text).toBe('listener 502');
  });

  it('answers a 504 with the error template when the upstream is too slow', async () => {
    const { server, token, client } = await setup();
    const upstream = await startUpstream(() => {
      // never answers
    }, cleanups);
    const page = await createTemplate(server, token, {
      name: 'slow',
      kind: 'error',
      contentType: 'text/plain',
      body: 'timed out: {{status}}',
    });
    const { routeId, port } = await configureProxy(server, token, {
      type: 'upstream',
      url: upstream.url,
      timeoutMs: 300,
    });
    await server.request('PATCH', `/api/v1/proxy/routes/${routeId}`, {
      token,
      body: { errorTemplateId: page.id },
    });
    const res = await client.send(port, '/');
    expect(res.status).toBe(504);
    expect(res.text).toBe('timed out: 504');
  });

  it('falls back to the plain built-in page when a stored template cannot be rendered', async () => {
    const { server, token, client } = await setup();
    const page = await createTemplate(server, token, { name: 'p', kind: 'error', body: 'fine' });
    const dead = await freePort();
    const { routeId, port } = await configureProxy(server, token, {
      type: 'upstream',
      url: `http://127.0.0.1:${dead}`,
    });
    await server.request('PATCH', `/api/v1/proxy/routes/${routeId}`, {
      token,
      body: { errorTemplateId: page.id },
    });
    expect((await client.send(port, '/')).text).toBe('fine');
    await client.close();
    await server.stop();

    // A hand-edited database: the template's body is no longer text.
    const file = path.join(server.dataDir, DATABASE_FILE_NAME);
    const doc = JSON.parse(await readFile(file, 'utf8'));
    doc.templates[0].body = { broken: true };
    await writeFile(file, JSON.stringify(doc));

    const restarted = await server.restart();
    const again = proxyClient(cleanups);
    const res = await again.send(port, '/');
    expect(res.status).toBe(502);
    expect(res.headers['content-type']).toBe('text/plain; charset=utf-8');
    expect(res.text).toMatch(/^502 Bad Gateway\nrequest id: [0-9a-f-]{36}\n$/);
    // The process stays up and keeps answering.
    expect((await again.send(port, '/')).status).toBe(502);
    expect(restarted.dataDir).toBe(server.dataDir);
  });
});
