import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { hashSecret } from '../../src/domain/ids.js';
import { DATABASE_FILE_NAME } from '../../src/storage/lowdb-store.js';
import { startTestServer, type TestServer } from '../helpers/server.js';

let server: TestServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

describe('API abuse', () => {
  it('answers deeply nested and huge JSON with 4xx and keeps serving', async () => {
    server = await startTestServer();
    const cookie = await server.setupAdmin();
    const deep = `${'['.repeat(100_000)}${']'.repeat(100_000)}`;
    const nested = await server.request('POST', '/api/v1/tokens', {
      cookie,
      rawBody: deep,
      headers: { 'content-type': 'application/json' },
    });
    expect(nested.status).toBe(400);
    const deepObject = `${'{"a":'.repeat(50_000)}1${'}'.repeat(50_000)}`;
    const nestedObject = await server.request('POST', '/api/v1/tokens', {
      cookie,
      rawBody: deepObject,
      headers: { 'content-type': 'application/json' },
    });
    expect(nestedObject.status).toBe(400);
    const wide = await server.request('POST', '/api/v1/tokens', {
      cookie,
      rawBody: JSON.stringify({
        name: 'wide',
        ...Object.fromEntries(Array.from({ length: 20_000 }, (_, i) => [`k${i}`, i])),
      }),
      headers: { 'content-type': 'application/json' },
    });
    expect(wide.status).toBe(400);
    expect(wide.json.error.code).toBe('VALIDATION_FAILED');
    const ok = await server.request('GET', '/api/v1/tokens', { cookie });
    expect(ok.json.tokens).toEqual([]);
  });

  it('refuses control characters in names but keeps other unicode intact', async () => {
    server = await startTestServer();
    const cookie = await server.setupAdmin();
    for (const name of [
      'a\u0000b',
      'tab\tname',
      'crlf\r\nSet-Cookie: x=1',
      'del\u007f',
      'c1\u0085',
      'l\u2028s',
    ]) {
      const res = await server.request('POST', '/api/v1/tokens', { cookie, body: { name } });
      expect(res.status, JSON.stringify(name)).toBe(400);
      expect(res.json.error.code).toBe('VALIDATION_FAILED');
    }
    const unicode = 'Ünïcødé 名前 🚀 עברית';
    const res = await server.request('POST', '/api/v1/tokens', { cookie, body: { name: unicode } });
    expect(res.status).toBe(201);
    expect(res.json.apiToken.name).toBe(unicode);
    const list = await server.request('GET', '/api/v1/tokens', { cookie });
    expect(list.json.tokens.map((t: { name: string }) => t.name)).toEqual([unicode]);
  });

  it('treats path traversal and odd ids as unknown ids', async () => {
    server = await startTestServer();
    const cookie = await server.setupAdmin();
    for (const id of [
      '..%2F..%2Fetc%2Fpasswd',
      '%2e%2e',
      '__proto__',
      'constructor',
      '%00',
      'x'.repeat(5000),
    ]) {
      for (const method of ['GET', 'PATCH', 'DELETE']) {
        const res = await server.request(method, `/api/v1/tokens/${id}`, {
          cookie,
          ...(method === 'PATCH' ? { body: { enabled: false } } : {}),
        });
        expect(res.status, `${method} ${id.slice(0, 20)}`).toBe(404);
        expect(res.json.error.code).toBe('NOT_FOUND');
      }
    }
  });

  it('serves 10,000 stored tokens: listing, authenticating and creating still work', async () => {
    server = await startTestServer({ keepDataDir: true });
    await server.setupAdmin();
    const { dataDir } = server;
    await server.close();
    const file = path.join(dataDir, DATABASE_FILE_NAME);
    const db = JSON.parse(await readFile(file, 'utf8'));
    const now = new Date().toISOString();
    for (let i = 0; i < 10_000; i++) {
      db.apiTokens.push({
        id: `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`,
        name: `bulk-${i}`,
        tokenHash: hashSecret(`p2pat_bulk${i}`),
        enabled: true,
        expiresAt: null,
        lastUsedAt: null,
        createdAt: now,
      });
    }
    await writeFile(file, JSON.stringify(db));
    server = await startTestServer({ dataDir });
    const login = await server.request('POST', '/api/v1/auth/login', {
      body: { username: 'admin', password: 'correct horse battery' },
    });
    const cookie = (login.headers.get('set-cookie') ?? '').split(';')[0]!;
    const list = await server.request('GET', '/api/v1/tokens', { cookie });
    expect(list.json.tokens).toHaveLength(10_000);
    const created = await server.request('POST', '/api/v1/tokens', { cookie, body: { name: 'fresh' } });
    expect(created.status).toBe(201);
    const dup = await server.request('POST', '/api/v1/tokens', { cookie, body: { name: 'bulk-9999' } });
    expect(dup.status).toBe(409);
    expect((await server.request('GET', '/api/v1/system/info', { token: created.json.token })).status).toBe(
      200,
    );
    const removed = await server.request('DELETE', `/api/v1/tokens/${created.json.apiToken.id}`, { cookie });
    expect(removed.status).toBe(204);
    expect((await server.request('GET', '/api/v1/system/info', { token: created.json.token })).status).toBe(
      401,
    );
  });
});
