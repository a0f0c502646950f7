import { describe, expect, it } from 'vitest';
import { ProxyConfigService } from '../../src/domain/proxy-config-service.js';
import {
  builtinPage,
  compileTemplate,
  compileTemplates,
  escapeHtml,
  parseTemplate,
  renderTemplate,
  renderTemplateResponse,
} from '../../src/domain/template-render.js';
import { MAX_TEMPLATE_BODY_BYTES, TemplateService } from '../../src/domain/template-service.js';
import { AppError } from '../../src/errors.js';
import { emptyDatabase, type TemplateRecord } from '../../src/storage/schema.js';
import { MemoryStore } from '../../src/storage/store.js';

function record(body: string, contentType = 'text/html; charset=utf-8'): TemplateRecord {
  return {
    id: 't1',
    name: 'page',
    kind: 'error',
    status: 503,
    contentType,
    body,
    createdAt: '',
    updatedAt: '',
  };
}

function services() {
  const store = new MemoryStore(emptyDatabase('instance-1'));
  const applied: number[] = [];
  const templates = new TemplateService({
    store,
    runtime: { setTemplates: (list) => applied.push(list.length) },
    now: () => Date.UTC(2026, 0, 2, 3, 4, 5),
  });
  const proxy = new ProxyConfigService({ store, templates });
  return { store, templates, proxy, applied };
}

async function thrown(promise: Promise<unknown> | (() => unknown)): Promise<AppError> {
  try {
    await (typeof promise === 'function' ? promise() : promise);
  } catch (err) {
    if (err instanceof AppError) return err;
    throw err;
  }
  throw new Error('expected an AppError');
}

describe('template rendering', () => {
  it('fills every placeholder and tolerates spaces inside the braces', () => {
    const t = compileTemplate(
      record(
        '{{status}}|{{ requestId }}|{{host}}|{{path}}|{{clientIp}}|{{retryAfter}}|{{ruleName}}|{{time}}',
        'text/plain',
      ),
    );
    expect(
      renderTemplate(t, {
        status: 429,
        requestId: 'r-1',
        host: 'a.example',
        path: '/x',
        clientIp: '10.0.0.1',
        retryAfter: 7,
        ruleName: 'burst',
        time: '2026-01-01T00:00:00.000Z',
      }),
    ).toBe('429|r-1|a.example|/x|10.0.0.1|7|burst|2026-01-01T00:00:00.000Z');
  });

  it('escapes values for HTML content types, and not for plain text', () => {
    const values = { host: '<script>alert("x")</script>', path: "/a'b&c" };
    const html = compileTemplate(record('<p>{{host}} {{path}}</p>'));
    expect(renderTemplate(html, values)).toBe(
      '<p>&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; /a&#39;b&amp;c</p>',
    );
    const xhtml = compileTemplate(record('{{host}}', 'application/xhtml+xml'));
    expect(renderTemplate(xhtml, values)).toBe('&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;');
    const text = compileTemplate(record('{{host}}', 'text/plain'));
    expect(renderTemplate(text, values)).toBe('<script>alert("x")</script>');
  });

  it('escapes values as JSON string content for JSON content types', () => {
    const json = compileTemplate(record('{"path":"{{path}}"}', 'application/problem+json'));
    const out = renderTemplate(json, { path: '/a"b\\c\n' });
    expect(JSON.parse(out)).toEqual({ path: '/a"b\\c\n' });
  });

  it('keeps unknown placeholders literally and lists each once', () => {
    const { unknown } = parseTemplate('{{ .host }} {{nope}} {{nope}} {{host}}');
    expect(unknown).toEqual(['{{ .host }}', '{{nope}}']);
    const t = compileTemplate(record('{{ .host }} {{nope}} {{host}}', 'text/plain'));
    expect(renderTemplate(t, { host: 'h' })).toBe('{{ .host }} {{nope}} h');
  });

  it('renders missing values as empty text', () => {
    expect(renderTemplate(compileTemplate(record('[{{retryAfter}}]', 'text/plain')), {})).toBe('[]');
  });

  it('falls back to the plain built-in page for a missing or broken template', () => {
    const broken = { ...record('x'), id: 'bad', body: 42 as unknown as string };
    const map = compileTemplates([record('<b>{{status}}</b>'), broken]);
    expect(map.has('bad')).toBe(false);
    const ok = renderTemplateResponse(map, 't1', { requestId: 'r' }, 502);
    expect(ok).toMatchObject({ status: 502, contentType: 'text/html; charset=utf-8', fallback: false });
    expect(ok.body.toString()).toBe('<b>502</b>');
    const missing = renderTemplateResponse(map, 'bad', { requestId: 'r-9' }, 504);
    expect(missing.fallback).toBe(true);
    expect(missing.status).toBe(504);
    expect(missing.contentType).toBe('text/plain; charset=utf-8');
    expect(missing.body.toString()).toBe('504 Gateway Timeout\nrequest id: r-9\n');
  });

  it('falls back when rendering itself throws', () => {
    const template = compileTemplate(record('{{host}}'));
    const throwing = {
      ...template,
      escape: () => {
        throw new Error('boom');
      },
    };
    const out = renderTemplateResponse(new Map([['t1', throwing]]), 't1', { host: 'h' }, 503);
    expect(out.fallback).toBe(true);
    expect(out.body.toString()).toBe(builtinPage(503).body.toString());
  });

  it('uses the template status when the caller gives none', () => {
    const out = renderTemplateResponse(
      compileTemplates([record('{{status}}', 'text/plain')]),
      't1',
      {},
      null,
    );
    expect(out.status).toBe(503);
    expect(out.body.toString()).toBe('503');
  });

  it('escapes every HTML metacharacter', () => {
    expect(escapeHtml(`&<>"'\``)).toBe('&amp;&lt;&gt;&quot;&#39;&#96;');
  });
});

describe('template service', () => {
  it('creates with defaults per kind and warns about unknown placeholders', async () => {
    const { templates, applied } = services();
    const { template, warnings } = await templates.create({
      name: 'blocked',
      kind: 'block',
      body: '<h1>{{host}}</h1>{{who}}',
    });
    expect(template).toMatchObject({
      name: 'blocked',
      kind: 'block',
      status: 403,
      contentType: 'text/html; charset=utf-8',
      usedBy: [],
    });
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain('{{who}}');
    expect(applied).toEqual([1]);
    const rate = await templates.create({ name: 'slow', kind: 'rate_limit' });
    expect(rate.template.status).toBe(429);
    expect(rate.warnings).toEqual([]);
  });

  it('refuses bad input with the field and stores nothing', async () => {
    const { templates, store } = services();
    const cases: [unknown, string][] = [
      [{ name: 'a' }, 'kind'],
      [{ name: 'a', kind: 'captcha' }, 'kind'],
      [{ name: '', kind: 'generic' }, 'name'],
      [{ name: 'a', kind: 'generic', status: 99 }, 'status'],
      [{ name: 'a', kind: 'generic', status: 200.5 }, 'status'],
      [{ name: 'a', kind: 'generic', contentType: 'html' }, 'contentType'],
      [{ name: 'a', kind: 'generic', contentType: 'text/html\r\nx: y' }, 'contentType'],
      [{ name: 'a', kind: 'generic', body: 5 }, 'body'],
      [{ name: 'a', kind: 'generic', body: 'x'.repeat(MAX_TEMPLATE_BODY_BYTES + 1) }, 'body'],
      [{ name: 'a', kind: 'generic', extra: 1 }, 'extra'],
    ];
    for (const [body, field] of cases) {
      const err = await thrown(templates.create(body));
      expect(err.code, JSON.stringify(body).slice(0, 80)).toBe('VALIDATION_FAILED');
      expect(err.details?.field).toBe(field);
    }
    expect(store.read().templates).toEqual([]);
  });

  it('accepts a body of exactly 256 KiB, counted in UTF-8 bytes', async () => {
    const { templates } = services();
    await templates.create({ name: 'big', kind: 'generic', body: 'x'.repeat(MAX_TEMPLATE_BODY_BYTES) });
    // 'é' is two bytes: half as many characters already reach the limit.
    const err = await thrown(
      templates.create({ name: 'wide', kind: 'generic', body: 'é'.repeat(MAX_TEMPLATE_BODY_BYTES / 2 + 1) }),
    );
    expect(err.details?.field).toBe('body');
  });

  it('refuses a duplicate name with CONFLICT', async () => {
    const { templates } = services();
    await templates.create({ name: 'one', kind: 'generic' });
    const err = await thrown(templates.create({ name: 'one', kind: 'error' }));
    expect(err.code).toBe('CONFLICT');
    const other = await templates.create({ name: 'two', kind: 'generic' });
    expect((await thrown(templates.update(other.template.id, { name: 'one' }))).code).toBe('CONFLICT');
  });

  it('updates fields and keeps the others', async () => {
    const { templates } = services();
    const { template } = await templates.create({ name: 'e', kind: 'error', body: 'a' });
    const updated = await templates.update(template.id, { body: 'b {{x}}', status: 504 });
    expect(updated.template).toMatchObject({ name: 'e', kind: 'error', status: 504, body: 'b {{x}}' });
    expect(updated.warnings).toHaveLength(1);
    expect((await thrown(templates.update('nope', { body: '' }))).code).toBe('NOT_FOUND');
  });

  it('previews with sample values, replaced by the given ones', async () => {
    const { templates } = services();
    const { template } = await templates.create({
      name: 'p',
      kind: 'rate_limit',
      body: '<p>{{status}} {{host}} {{retryAfter}} {{time}}</p>',
    });
    const preview = templates.preview(template.id, { values: { host: '<b>x</b>' } });
    expect(preview).toEqual({
      status: 429,
      contentType: 'text/html; charset=utf-8',
      body: '<p>429 &lt;b&gt;x&lt;/b&gt; 30 2026-01-02T03:04:05.000Z</p>',
      warnings: [],
    });
    expect(templates.preview(template.id, undefined).body).toContain('www.example.com');
    expect((await thrown(() => templates.preview(template.id, { values: { nope: 1 } }))).details?.field).toBe(
      'values.nope',
    );
    expect(
      (await thrown(() => templates.preview(template.id, { values: { host: {} } }))).details?.field,
    ).toBe('values.host');
    const draft = templates.previewDraft({ contentType: 'text/plain', body: '{{path}} {{bad}}' });
    expect(draft).toMatchObject({ status: 200, body: '/some/page {{bad}}' });
    expect(draft.warnings).toHaveLength(1);
  });

  it('refuses to delete a template used by routes and listeners, naming them', async () => {
    const { templates, proxy, store } = services();
    const { template } = await templates.create({ name: 'oops', kind: 'error', body: 'x' });
    const page = await templates.create({ name: 'page', kind: 'generic', status: 503, body: 'y' });
    const listener = await proxy.createListener({
      name: 'web',
      bindAddress: '127.0.0.1',
      port: 8080,
      errorTemplateId: template.id,
    });
    const route = await proxy.createRoute({
      listenerId: listener.id,
      pathPrefix: '/app',
      target: { type: 'upstream', url: 'http://127.0.0.1:9' },
      errorTemplateId: template.id,
    });
    const staticRoute = await proxy.createRoute({
      listenerId: listener.id,
      host: 'down.example',
      target: { type: 'static', templateId: page.template.id },
    });
    // Without its own status the static target takes the template's.
    expect(staticRoute.target).toMatchObject({ type: 'static', status: 503, templateId: page.template.id });

    const err = await thrown(templates.remove(template.id));
    expect(err.code).toBe('CONFLICT');
    expect(err.details?.usedBy).toEqual([
      { type: 'route', id: route.id, name: '*/app (error pages)' },
      { type: 'listener', id: listener.id, name: 'web (error pages)' },
    ]);
    expect(templates.get(template.id).usedBy).toHaveLength(2);
    expect((await thrown(templates.remove(page.template.id))).details?.usedBy).toEqual([
      { type: 'route', id: staticRoute.id, name: 'down.example/' },
    ]);
    expect(store.read().templates).toHaveLength(2);

    await proxy.updateRoute(route.id, { errorTemplateId: null });
    await proxy.updateListener(listener.id, { errorTemplateId: null });
    await templates.remove(template.id);
    expect(store.read().templates).toHaveLength(1);
    expect((await thrown(templates.remove(template.id))).code).toBe('NOT_FOUND');
  });

  it('refuses references to templates that do not exist', async () => {
    const { proxy, store } = services();
    const bad = await thrown(
      proxy.createListener({ name: 'x', bindAddress: '127.0.0.1', port: 8081, errorTemplateId: 'nope' }),
    );
    expect(bad.details?.field).toBe('errorTemplateId');
    const listener = await proxy.createListener({ name: 'y', bindAddress: '127.0.0.1', port: 8082 });
    expect(listener.errorTemplateId).toBeNull();
    const route = await thrown(
      proxy.createRoute({ listenerId: listener.id, target: { type: 'static', templateId: 'nope' } }),
    );
    expect(route.details?.field).toBe('target.templateId');
    const errorRef = await thrown(
      proxy.createRoute({
        listenerId: listener.id,
        target: { type: 'upstream', url: 'http://127.0.0.1:9' },
        errorTemplateId: 42,
      }),
    );
    expect(errorRef.details?.field).toBe('errorTemplateId');
    expect(store.read().proxy.routes).toEqual([]);
    expect(
      (await thrown(proxy.updateListener(listener.id, { errorTemplateId: 'nope' }))).details?.field,
    ).toBe('errorTemplateId');
  });
});
