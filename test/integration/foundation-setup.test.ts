import { afterEach, describe, expect, it } from 'vitest';
import {
  cookieOf,
  startTestServer,
  TEST_PASSWORD,
  TEST_SETUP_TOKEN,
  type TestServer,
} from '../helpers/server.js';

let server: TestServer;
afterEach(async () => {
  await server?.close();
});

describe('first-admin setup', () => {
  it('reports setup as required until an admin exists, then refuses a second setup', async () => {
    server = await startTestServer();
    expect((await server.request('GET', '/api/v1/setup')).json).toEqual({ setupRequired: true });
    const res = await server.request('POST', '/api/v1/setup', {
      body: { username: 'Admin', password: TEST_PASSWORD, setupToken: TEST_SETUP_TOKEN },
    });
    expect(res.status).toBe(201);
    expect(res.json.user.username).toBe('admin');
    expect(res.json.user).not.toHaveProperty('passwordHash');
    expect((await server.request('GET', '/api/v1/setup')).json).toEqual({ setupRequired: false });
    const again = await server.request('POST', '/api/v1/setup', {
      body: { username: 'other', password: TEST_PASSWORD, setupToken: TEST_SETUP_TOKEN },
    });
    expect(again.status).toBe(409);
    expect(again.json.error.code).toBe('SETUP_DONE');
  });

  it('checks the setup code before any other field', async () => {
    server = await startTestServer();
    const wrong = await server.request('POST', '/api/v1/setup', {
      body: { username: 'x', password: 'short', setupToken: 'wrong-code' },
    });
    expect(wrong.status).toBe(403);
    expect(wrong.json.error.code).toBe('FORBIDDEN');
    const missing = await server.request('POST', '/api/v1/setup', {
      body: { username: 'admin', password: TEST_PASSWORD },
    });
    expect(missing.json.error.code).toBe('FORBIDDEN');
    const badUser = await server.request('POST', '/api/v1/setup', {
      body: { username: 'x', password: TEST_PASSWORD, setupToken: TEST_SETUP_TOKEN },
    });
    expect(badUser.status).toBe(400);
    expect(badUser.json.error).toMatchObject({ code: 'VALIDATION_FAILED', field: 'username' });
    const badPassword = await server.request('POST', '/api/v1/setup', {
      body: { username: 'admin', password: 'too short', setupToken: TEST_SETUP_TOKEN },
    });
    expect(badPassword.json.error).toMatchObject({ code: 'VALIDATION_FAILED', field: 'password' });
    expect((await server.request('GET', '/api/v1/setup')).json.setupRequired).toBe(true);
  });
});

describe('login, logout and the current user', () => {
  it('sets a hardened session cookie, answers me, and revokes the session on logout', async () => {
    server = await startTestServer();
    await server.setupAdmin();
    const login = await server.request('POST', '/api/v1/auth/login', {
      body: { username: 'admin', password: TEST_PASSWORD },
    });
    expect(login.status).toBe(200);
    const header = login.headers.get('set-cookie') ?? '';
    expect(header).toMatch(/^__Host-p2pstream_session=[A-Za-z0-9_-]{43};/);
    expect(header).toContain('HttpOnly');
    expect(header).toContain('Secure');
    expect(header).toContain('SameSite=Strict');
    const expires = Date.parse(/Expires=([^;]+)/.exec(header)![1]!);
    expect(expires - Date.now()).toBeGreaterThan(6.9 * 24 * 3600 * 1000);
    const cookie = cookieOf(login);
    const me = await server.request('GET', '/api/v1/auth/me', { cookie });
    expect(me.json).toMatchObject({ user: { username: 'admin' }, authMethod: 'session' });
    expect((await server.request('POST', '/api/v1/auth/logout', { cookie })).status).toBe(204);
    const after = await server.request('GET', '/api/v1/auth/me', { cookie });
    expect(after.status).toBe(401);
    expect(after.json.error.code).toBe('UNAUTHENTICATED');
  });

  it('answers unknown users and wrong passwords alike', async () => {
    server = await startTestServer();
    await server.setupAdmin();
    const unknown = await server.request('POST', '/api/v1/auth/login', {
      body: { username: 'nobody', password: TEST_PASSWORD },
    });
    const wrong = await server.request('POST', '/api/v1/auth/login', {
      body: { username: 'admin', password: 'wrong password!' },
    });
    expect(unknown.status).toBe(401);
    expect(wrong.status).toBe(401);
    expect(unknown.json).toEqual(wrong.json);
    expect(wrong.json.error.code).toBe('INVALID_CREDENTIALS');
  });

  it('refuses cookie-authenticated writes from another origin', async () => {
    server = await startTestServer();
    const cookie = await server.setupAdmin();
    const foreign = await server.request('POST', '/api/v1/tokens', {
      cookie,
      body: { name: 'x' },
      headers: { origin: 'https://evil.example' },
    });
    expect(foreign.status).toBe(403);
    expect(foreign.json.error.code).toBe('FORBIDDEN');
    const same = await server.request('POST', '/api/v1/tokens', { cookie, body: { name: 'x' } });
    expect(same.status).toBe(201);
  });

  it('throttles a user after five failures, even for the right password, per client and name', async () => {
    server = await startTestServer();
    await server.setupAdmin();
    for (let i = 0; i < 4; i++) {
      const res = await server.request('POST', '/api/v1/auth/login', {
        body: { username: 'admin', password: 'wrong password!' },
      });
      expect(res.json.error.code).toBe('INVALID_CREDENTIALS');
    }
    const fifth = await server.request('POST', '/api/v1/auth/login', {
      body: { username: 'admin', password: 'wrong password!' },
    });
    expect(fifth.status).toBe(429);
    expect(fifth.json.error.code).toBe('LOGIN_THROTTLED');
    const right = await server.request('POST', '/api/v1/auth/login', {
      body: { username: 'admin', password: TEST_PASSWORD },
    });
    expect(right.status).toBe(429);
  });

  it('clears the failure count after a successful login', async () => {
    server = await startTestServer();
    await server.setupAdmin();
    const fail = () =>
      server.request('POST', '/api/v1/auth/login', {
        body: { username: 'admin', password: 'wrong password!' },
      });
    for (let i = 0; i < 4; i++) await fail();
    expect(
      (
        await server.request('POST', '/api/v1/auth/login', {
          body: { username: 'admin', password: TEST_PASSWORD },
        })
      ).status,
    ).toBe(200);
    for (let i = 0; i < 4; i++) expect((await fail()).status).toBe(401);
  });
});
