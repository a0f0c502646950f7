/**
 * Credentials housekeeping:
 * - a token cannot mint a token that outlives it;
 * - `POST /api/v1/auth/password` (a local route) checks the current password
 *   and revokes the user's other sessions;
 * - the database file is 0600, and a data dir other users can read is refused;
 * - answers that carry a secret say `Cache-Control: no-store`;
 * - the session cookie is a `__Host-` cookie;
 * - traced query strings hide `sig`, `signature`, `code`, `token`, `key`, `password`.
 * (`users reset-password` refusing a held data dir: test/integration/cli.test.ts.)
 */
import { chmod, mkdtemp, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { REDACTED, redactQuery } from '../../src/dataplane/redact.js';
import { useCleanups } from '../helpers/cleanup.js';
import {
  startTestServer,
  TEST_PASSWORD,
  TEST_USERNAME,
  type TestServer,
  type TestServerOptions,
} from '../helpers/server.js';

const cleanups = useCleanups();

const server = (options: TestServerOptions = {}): Promise<TestServer> => startTestServer(options, cleanups);

const HOUR = 3600_000;

describe('credentials housekeeping', () => {
  it('a token cannot mint a token that outlives it', async () => {
    const target = await server();
    const cookie = await target.setupAdmin();
    const expiresAt = new Date(Date.now() + HOUR).toISOString();
    const issued = await target.request('POST', '/api/v1/tokens', {
      cookie,
      body: { name: 'short', expiresAt },
    });
    expect(issued.status).toBe(201);
    const token = issued.json.token as string;
    const mint = (body: Record<string, unknown>) => target.request('POST', '/api/v1/tokens', { token, body });

    const inherited = await mint({ name: 'inherits' });
    expect([inherited.status, inherited.json.apiToken.expiresAt]).toEqual([201, expiresAt]);
    for (const later of [null, new Date(Date.now() + 2 * HOUR).toISOString()]) {
      const refused = await mint({ name: `later-${later}`, expiresAt: later });
      expect([refused.status, refused.json.error.code, refused.json.error.details]).toEqual([
        400,
        'VALIDATION_FAILED',
        { field: 'expiresAt' },
      ]);
    }
    const sooner = new Date(Date.now() + HOUR / 2).toISOString();
    expect((await mint({ name: 'sooner', expiresAt: sooner })).status).toBe(201);
    // A session (or a token that never expires) may still mint a token that never expires.
    const forever = await target.request('POST', '/api/v1/tokens', { cookie, body: { name: 'forever' } });
    expect(forever.json.apiToken.expiresAt).toBeNull();
  });

  it('changes the password on a local route, keeping this session and revoking the others', async () => {
    const target = await server();
    const setupCookie = await target.setupAdmin();
    const login = async (password: string) => {
      const res = await target.request('POST', '/api/v1/auth/login', {
        body: { username: TEST_USERNAME, password },
      });
      return { status: res.status, cookie: (res.headers.get('set-cookie') ?? '').split(';')[0] ?? '' };
    };
    const mine = (await login(TEST_PASSWORD)).cookie;
    const other = (await login(TEST_PASSWORD)).cookie;
    // An environment selected does not matter: the route is local (a relay would answer 412 here).
    const env = await target.request('POST', '/api/v1/environments', {
      cookie: mine,
      body: { name: 'elsewhere', url: 'https://127.0.0.1:9', transport: 'direct', accessToken: 'p2pat_x' },
    });
    const selected = { 'x-p2pstream-environment': env.json.environment.id as string };
    const change = (currentPassword: string, newPassword: string) =>
      target.request('POST', '/api/v1/auth/password', {
        cookie: mine,
        headers: selected,
        body: { currentPassword, newPassword },
      });

    const wrong = await change('not the password', 'a brand new password');
    expect([wrong.status, wrong.json.error.code]).toEqual([401, 'INVALID_CREDENTIALS']);
    const short = await change(TEST_PASSWORD, 'short');
    expect([short.status, short.json.error.details]).toEqual([400, { field: 'newPassword' }]);
    expect((await change(TEST_PASSWORD, 'a brand new password')).status).toBe(204);

    const me = (cookie: string) => target.request('GET', '/api/v1/auth/me', { cookie });
    expect((await me(mine)).status).toBe(200);
    expect((await me(other)).status).toBe(401);
    expect((await me(setupCookie)).status).toBe(401);
    expect((await login(TEST_PASSWORD)).status).toBe(401);
    expect((await login('a brand new password')).status).toBe(200);
  });

  it('marks answers that carry a secret no-store and the session cookie __Host-', async () => {
    const target = await server();
    const setup = await target.request('POST', '/api/v1/setup', {
      body: { username: TEST_USERNAME, password: TEST_PASSWORD, setupToken: 'test-setup-code-123' },
    });
    expect(setup.headers.get('cache-control')).toBe('no-store');
    const setCookie = setup.headers.get('set-cookie') ?? '';
    expect(setCookie).toMatch(/^__Host-p2pstream_session=[^;]+; Path=\/;/);
    expect(setCookie).toContain('Secure');
    expect(setCookie).not.toMatch(/Domain=/i);
    const cookie = setCookie.split(';')[0] ?? '';
    const token = await target.request('POST', '/api/v1/tokens', { cookie, body: { name: 'cached?' } });
    const agent = await target.request('POST', '/api/v1/agents', { cookie, body: { name: 'edge' } });
    const rotated = await target.request('POST', `/api/v1/agents/${agent.json.agent.id}/rotate`, { cookie });
    const login = await target.request('POST', '/api/v1/auth/login', {
      body: { username: TEST_USERNAME, password: TEST_PASSWORD },
    });
    for (const res of [token, agent, rotated, login]) {
      expect([res.status < 300, res.headers.get('cache-control')]).toEqual([true, 'no-store']);
    }
  });

  it('writes the database 0600 and refuses a data dir others can read', async () => {
    const target = await server();
    await target.setupAdmin();
    await target.server.store.flush();
    expect((await stat(path.join(target.dataDir, 'p2pstream.json'))).mode & 0o777).toBe(0o600);

    const open = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-open-'));
    cleanups.push(() => rm(open, { recursive: true, force: true }));
    await chmod(open, 0o755);
    await expect(startTestServer({ dataDir: open })).rejects.toThrow(
      /accessible to other users \(mode 755\)/,
    );
  });

  it('redacts signature, code, token, key and password query parameters in traces', () => {
    const query =
      'sig=s1&signature=s2&X-Amz-Signature=s3&code=c&token=t&api_key=k&password=p&page=2&encode=utf8';
    expect(redactQuery(query)).toBe(
      `sig=${REDACTED}&signature=${REDACTED}&X-Amz-Signature=${REDACTED}&code=${REDACTED}&token=${REDACTED}` +
        `&api_key=${REDACTED}&password=${REDACTED}&page=2&encode=utf8`,
    );
  });
});
