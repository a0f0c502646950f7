import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { startTestServer, TEST_PASSWORD, type TestServer } from '../helpers/server.js';
import { eventually } from '../helpers/wait.js';

let server: TestServer;
afterEach(async () => {
  await server?.close();
});

/** Every file under the data dir, subdirectories included, as one text. */
async function dataDirText(dir: string): Promise<string> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  const parts = await Promise.all(
    entries
      .filter((entry) => entry.isFile())
      .map((entry) => readFile(path.join(entry.parentPath, entry.name)).then((b) => b.toString('latin1'))),
  );
  return parts.join('\n');
}

describe('API tokens', () => {
  it('shows a token once, stores only its hash, and the token works with a bearer header', async () => {
    server = await startTestServer();
    const cookie = await server.setupAdmin();
    const created = await server.request('POST', '/api/v1/tokens', { cookie, body: { name: 'ci' } });
    expect(created.status).toBe(201);
    expect(created.json.token).toMatch(/^p2pat_[A-Za-z0-9_-]{43}$/);
    expect(created.json.apiToken).toMatchObject({
      name: 'ci',
      enabled: true,
      expiresAt: null,
      lastUsedAt: null,
    });
    const token = created.json.token as string;
    const list = await server.request('GET', '/api/v1/tokens', { cookie });
    expect(list.json.tokens).toHaveLength(1);
    expect(list.text).not.toContain(token);
    expect(list.json.tokens[0]).not.toHaveProperty('tokenHash');
    const me = await server.request('GET', '/api/v1/auth/me', { token });
    expect(me.json).toMatchObject({ authMethod: 'apiToken', user: { username: 'admin' } });
    await server.server.store.flush();
    const files = await dataDirText(server.dataDir);
    expect(files).not.toContain(token);
    expect(files).not.toContain(TEST_PASSWORD);
    expect(files).not.toContain(cookie.split('=')[1]);
  });

  it('refuses malformed, disabled, expired and deleted tokens with 401', async () => {
    server = await startTestServer();
    const cookie = await server.setupAdmin();
    const expect401 = async (token: string) => {
      const res = await server.request('GET', '/api/v1/system/info', { token });
      expect(res.status).toBe(401);
      expect(res.json.error.code).toBe('UNAUTHENTICATED');
    };
    await expect401('p2pat_short');
    await expect401(`p2pat_${'A'.repeat(43)}`);
    await expect401('not-a-token');
    await expect401(`p2pag_${'A'.repeat(43)}`);

    const a = await server.request('POST', '/api/v1/tokens', { cookie, body: { name: 'a' } });
    expect((await server.request('GET', '/api/v1/system/info', { token: a.json.token })).status).toBe(200);
    const disabled = await server.request('PATCH', `/api/v1/tokens/${a.json.apiToken.id}`, {
      cookie,
      body: { enabled: false },
    });
    expect(disabled.json.apiToken.enabled).toBe(false);
    await expect401(a.json.token);
    await server.request('PATCH', `/api/v1/tokens/${a.json.apiToken.id}`, {
      cookie,
      body: { enabled: true },
    });
    expect((await server.request('GET', '/api/v1/system/info', { token: a.json.token })).status).toBe(200);
    expect((await server.request('DELETE', `/api/v1/tokens/${a.json.apiToken.id}`, { cookie })).status).toBe(
      204,
    );
    await expect401(a.json.token);

    const soon = new Date(Date.now() + 1500).toISOString();
    const b = await server.request('POST', '/api/v1/tokens', {
      cookie,
      body: { name: 'b', expiresAt: soon },
    });
    expect(b.status).toBe(201);
    expect((await server.request('GET', '/api/v1/system/info', { token: b.json.token })).status).toBe(200);
    // Refused once its expiry has passed: waited for, not slept through.
    await eventually(async () => {
      await expect401(b.json.token);
    });
  });

  it('validates names and expiry, and keeps names unique', async () => {
    server = await startTestServer();
    const cookie = await server.setupAdmin();
    const bad = async (body: unknown, field: string) => {
      const res = await server.request('POST', '/api/v1/tokens', { cookie, body });
      expect(res.status).toBe(400);
      expect(res.json.error).toMatchObject({ code: 'VALIDATION_FAILED', field });
    };
    await bad({}, 'name');
    await bad({ name: '' }, 'name');
    await bad({ name: 'x'.repeat(129) }, 'name');
    await bad({ name: 'line\nbreak' }, 'name');
    await bad({ name: 'ok', expiresAt: '2001-01-01T00:00:00Z' }, 'expiresAt');
    await bad({ name: 'ok', expiresAt: 'tomorrow' }, 'expiresAt');
    await bad({ name: 'ok', extra: 1 }, 'extra');
    expect((await server.request('POST', '/api/v1/tokens', { cookie, body: { name: 'dup' } })).status).toBe(
      201,
    );
    const dup = await server.request('POST', '/api/v1/tokens', { cookie, body: { name: 'dup' } });
    expect(dup.status).toBe(409);
    expect(dup.json.error.code).toBe('CONFLICT');
    // Unique regardless of case, like environment names, on create and on rename.
    const upper = await server.request('POST', '/api/v1/tokens', { cookie, body: { name: 'DUP' } });
    expect([upper.status, upper.json.error.code, upper.json.error.details]).toEqual([
      409,
      'CONFLICT',
      { field: 'name' },
    ]);
    const other = await server.request('POST', '/api/v1/tokens', { cookie, body: { name: 'other' } });
    expect(other.status).toBe(201);
    const renamed = await server.request('PATCH', `/api/v1/tokens/${other.json.apiToken.id}`, {
      cookie,
      body: { name: 'Dup' },
    });
    expect([renamed.status, renamed.json.error.code]).toEqual([409, 'CONFLICT']);
    // Its own name in another case is no conflict.
    const recased = await server.request('PATCH', `/api/v1/tokens/${other.json.apiToken.id}`, {
      cookie,
      body: { name: 'Other' },
    });
    expect([recased.status, recased.json.apiToken.name]).toEqual([200, 'Other']);
    const unknown = await server.request('PATCH', '/api/v1/tokens/does-not-exist', {
      cookie,
      body: { enabled: false },
    });
    expect(unknown.status).toBe(404);
    expect(unknown.json.error.code).toBe('NOT_FOUND');
  });

  it('records lastUsedAt after a successful bearer call', async () => {
    server = await startTestServer();
    const cookie = await server.setupAdmin();
    const created = await server.request('POST', '/api/v1/tokens', { cookie, body: { name: 'used' } });
    const before = Date.now();
    await server.request('GET', '/api/v1/system/info', { token: created.json.token });
    const after = Date.now();
    await server.server.store.flush();
    const list = await server.request('GET', '/api/v1/tokens', { cookie });
    const lastUsedAt = Date.parse(list.json.tokens[0].lastUsedAt as string);
    // Set by that call: not before it started, not after it answered.
    expect(lastUsedAt).toBeGreaterThanOrEqual(before);
    expect(lastUsedAt).toBeLessThanOrEqual(after);
  });

  it('moves lastUsedAt on every successful bearer call, and writes it to disk soon after', async () => {
    server = await startTestServer();
    const cookie = await server.setupAdmin();
    const created = await server.request('POST', '/api/v1/tokens', { cookie, body: { name: 'busy' } });
    const id = created.json.apiToken.id as string;
    const lastUsed = async () =>
      (await server.request('GET', `/api/v1/tokens/${id}`, { cookie })).json.apiToken.lastUsedAt as
        | string
        | null;
    const stored = async () => {
      const db = JSON.parse(await readFile(path.join(server.dataDir, 'p2pstream.json'), 'utf8'));
      return db.apiTokens.find((t: { id: string }) => t.id === id).lastUsedAt as string | null;
    };

    await server.request('GET', '/api/v1/system/info', { token: created.json.token });
    const first = await lastUsed();
    expect(first).not.toBeNull();
    // A second call a moment later (well within the old 30 s throttle) moves it again.
    await eventually(() => Date.now() > Date.parse(first!));
    await server.request('GET', '/api/v1/system/info', { token: created.json.token });
    const second = await lastUsed();
    expect(Date.parse(second!)).toBeGreaterThan(Date.parse(first!));
    // The deferred bookkeeping write puts it on disk.
    await eventually(async () => expect(await stored()).toBe(second));
    // A refused call (disabled token) does not move it.
    await server.request('PATCH', `/api/v1/tokens/${id}`, { cookie, body: { enabled: false } });
    const refused = await server.request('GET', '/api/v1/system/info', { token: created.json.token });
    expect(refused.status).toBe(401);
    expect(await lastUsed()).toBe(second);
  });

  it('answers system info with a stable instance id', async () => {
    server = await startTestServer({ keepDataDir: true });
    const cookie = await server.setupAdmin();
    const info = await server.request('GET', '/api/v1/system/info', { cookie });
    expect(info.json).toMatchObject({ version: expect.any(String), instanceId: expect.any(String) });
    expect(info.json.uptimeSeconds).toBeGreaterThanOrEqual(0);
    const { dataDir } = server;
    await server.close();
    server = await startTestServer({ dataDir });
    const login = await server.request('POST', '/api/v1/auth/login', {
      body: { username: 'admin', password: TEST_PASSWORD },
    });
    expect(login.status).toBe(200);
    const again = await server.request('GET', '/api/v1/system/info', { cookie });
    expect(again.json.instanceId).toBe(info.json.instanceId);
  });
});
