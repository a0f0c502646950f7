/**
 * Login and setup under abuse:
 * - failed logins are limited per address across user names, not only per
 *   (address, user);
 * - password hashing is bounded: a flood of logins with random user names from
 *   many addresses gets 429 LOGIN_THROTTLED with Retry-After for the excess,
 *   at most the gate's bound hashes at once, while store writes and relayed
 *   calls keep answering;
 * - setup has an attempt limit, and P2PSTREAM_SETUP_TOKEN at least 16 characters;
 * - scrypt runs at N=2^17, r=8, p=1 by default, and an older hash is upgraded
 *   on the next successful login.
 */
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Agent, fetch } from 'undici';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { DEFAULT_MAX_CONCURRENT_HASHES, DEFAULT_SCRYPT, hashPassword } from '../../src/domain/passwords.js';
import { AppError } from '../../src/errors.js';
import { useCleanups } from '../helpers/cleanup.js';
import {
  startTestServer,
  TEST_PASSWORD,
  TEST_SETUP_TOKEN,
  TEST_USERNAME,
  type TestServer,
  type TestServerOptions,
} from '../helpers/server.js';
import { registerEnvironment, startInstance } from '../integration/environment-helpers.js';

const cleanups = useCleanups();

const server = (options: TestServerOptions = {}): Promise<TestServer> => startTestServer(options, cleanups);

/** Posts JSON to `server` from a given loopback address (127.0.0.0/8 all reaches the server). */
function client(target: TestServer) {
  const agents = new Map<string, Agent>();
  cleanups.push(async () => {
    for (const agent of agents.values()) await agent.close();
  });
  return async (from: string, pathname: string, body: unknown) => {
    let dispatcher = agents.get(from);
    if (!dispatcher) {
      dispatcher = new Agent({
        localAddress: from,
        connect: { ca: target.server.certificate, servername: 'localhost' },
      });
      agents.set(from, dispatcher);
    }
    const res = await fetch(`${target.url}${pathname}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', origin: target.url },
      body: JSON.stringify(body),
      dispatcher,
    });
    const text = await res.text();
    return {
      status: res.status,
      retryAfter: res.headers.get('retry-after'),
      code: (text ? JSON.parse(text) : {})?.error?.code as string | undefined,
    };
  };
}

const randomName = () => `u${randomBytes(6).toString('hex')}`;

describe('login under abuse', () => {
  it('limits failures per address across user names; another address is unaffected', async () => {
    const target = await server();
    await target.setupAdmin();
    const post = client(target);
    for (let i = 0; i < 19; i++) {
      const res = await post('127.0.0.1', '/api/v1/auth/login', {
        username: randomName(),
        password: 'wrong',
      });
      expect(res.status).toBe(401);
    }
    // The 20th failure from the address blocks it, whatever the user names were.
    const blocked = await post('127.0.0.1', '/api/v1/auth/login', { username: randomName(), password: 'x' });
    expect([blocked.status, blocked.code]).toEqual([429, 'LOGIN_THROTTLED']);
    expect(Number(blocked.retryAfter)).toBeGreaterThan(0);
    // Blocked even with the right password, from that address.
    const right = { username: TEST_USERNAME, password: TEST_PASSWORD };
    expect((await post('127.0.0.1', '/api/v1/auth/login', right)).status).toBe(429);
    expect((await post('127.0.0.2', '/api/v1/auth/login', right)).status).toBe(200);
  });

  it('bounds password hashing under a flood of random user names; writes and relayed calls keep answering', async () => {
    const control = await startInstance({ config: { passwordCost: { N: 2 ** 14, r: 8, p: 1 } } });
    cleanups.push(() => control.server.close());
    const remote = await startInstance();
    cleanups.push(() => remote.server.close());
    const accessToken = await remote.server.createToken(remote.cookie, 'control-plane');
    const env = await registerEnvironment(control, { url: remote.server.url, accessToken });
    const post = client(control.server);

    const statuses = new Map<string, number>();
    let retryAfterSeen = false;
    let flooding = true;
    // 48 workers until the checks below are done, each moving to a fresh address every 15 attempts
    // (so the per-address limit never stops them: the hashing bound has to).
    const workers = Array.from({ length: 48 }, async (_, i) => {
      for (let sent = 0; flooding; sent++) {
        const from = `127.1.${i + 1}.${(Math.floor(sent / 15) % 250) + 1}`;
        const res = await post(from, '/api/v1/auth/login', { username: randomName(), password: 'guess' });
        const key = `${res.status} ${res.code}`;
        statuses.set(key, (statuses.get(key) ?? 0) + 1);
        if (res.status === 429 && Number(res.retryAfter) > 0) retryAfterSeen = true;
      }
    });
    // While the flood runs: store writes and relayed calls, each must answer.
    const during: number[] = [];
    for (let i = 0; i < 5; i++) {
      const write = await control.server.request('POST', '/api/v1/tokens', {
        token: control.token,
        body: { name: `during-flood-${i}` },
      });
      const relayed = await control.server.request('GET', '/api/v1/system/info', {
        token: control.token,
        headers: { 'x-p2pstream-environment': env },
      });
      during.push(write.status, relayed.status);
    }
    flooding = false;
    await Promise.all(workers);

    expect(during).toEqual([201, 200, 201, 200, 201, 200, 201, 200, 201, 200]);
    expect([...statuses.keys()].sort()).toEqual(['401 INVALID_CREDENTIALS', '429 LOGIN_THROTTLED']);
    expect(retryAfterSeen).toBe(true);
    const stats = control.server.server.hashingStats();
    expect(stats.peakActive).toBeLessThanOrEqual(DEFAULT_MAX_CONCURRENT_HASHES);
    expect(stats.refused).toBeGreaterThan(0);
    expect(stats.active).toBe(0);
  });
});

describe('setup under abuse', () => {
  it('limits wrong setup codes per address', async () => {
    const target = await server();
    const post = client(target);
    const body = (setupToken: string) => ({ username: TEST_USERNAME, password: TEST_PASSWORD, setupToken });
    for (let i = 0; i < 4; i++) {
      expect((await post('127.0.0.1', '/api/v1/setup', body(`wrong-${i}`))).status).toBe(403);
    }
    const fifth = await post('127.0.0.1', '/api/v1/setup', body('wrong-5'));
    expect([fifth.status, fifth.code]).toEqual([429, 'LOGIN_THROTTLED']);
    expect(Number(fifth.retryAfter)).toBeGreaterThan(0);
    expect((await post('127.0.0.1', '/api/v1/setup', body(TEST_SETUP_TOKEN))).status).toBe(429);
    expect((await post('127.0.0.3', '/api/v1/setup', body(TEST_SETUP_TOKEN))).status).toBe(201);
  });

  it('refuses a P2PSTREAM_SETUP_TOKEN shorter than 16 characters', () => {
    const env = (token: string) => ({ P2PSTREAM_DATA_DIR: '/tmp/unused', P2PSTREAM_SETUP_TOKEN: token });
    expect(() => loadConfig(env('x'.repeat(15)))).toThrow(AppError);
    expect(() => loadConfig(env('x'.repeat(15)))).toThrow(/at least 16/);
    expect(loadConfig(env('x'.repeat(16))).setupToken).toBe('x'.repeat(16));
  });
});

describe('password hashing cost', () => {
  it("hashes at OWASP's N=2^17, r=8, p=1 by default", async () => {
    expect(DEFAULT_SCRYPT).toEqual({ N: 131072, r: 8, p: 1 });
    expect((await hashPassword('a default-cost password')).startsWith('scrypt$131072$8$1$')).toBe(true);
  });

  it('upgrades a hash made at an older cost on the next successful login', async () => {
    const first = await server({ keepDataDir: true, config: { passwordCost: { N: 2 ** 12, r: 8, p: 1 } } });
    await first.setupAdmin();
    const dataDir = first.dataDir;
    const stored = async () => {
      const db = JSON.parse(await readFile(path.join(dataDir, 'p2pstream.json'), 'utf8'));
      return db.users[0].passwordHash as string;
    };
    await first.server.store.flush();
    expect(await stored()).toMatch(/^scrypt\$4096\$8\$1\$/);
    await first.close();
    const second = await server({ dataDir, config: { passwordCost: { N: 2 ** 13, r: 8, p: 1 } } });
    const login = await second.request('POST', '/api/v1/auth/login', {
      body: { username: TEST_USERNAME, password: TEST_PASSWORD },
    });
    expect(login.status).toBe(200);
    await second.server.store.flush();
    expect(await stored()).toMatch(/^scrypt\$8192\$8\$1\$/);
    // The upgraded hash still logs in.
    const again = await second.request('POST', '/api/v1/auth/login', {
      body: { username: TEST_USERNAME, password: TEST_PASSWORD },
    });
    expect(again.status).toBe(200);
  });
});
