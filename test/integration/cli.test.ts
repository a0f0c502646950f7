import { spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fetch } from 'undici';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BIN, type BinServer, ensureBuilt, startBinServer } from '../helpers/bin.js';

const servers: BinServer[] = [];
const dirs: string[] = [];

// The published entry point must run with plain node: build it as `npm install` does.
beforeAll(() => ensureBuilt(), 120_000);

afterEach(async () => {
  for (const server of servers.splice(0)) {
    if (server.child.exitCode === null) server.child.kill('SIGKILL');
    await server.dispatcher.close();
  }
  for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
});

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-cli-'));
  dirs.push(dir);
  return dir;
}

async function startBin(env: Record<string, string>): Promise<BinServer> {
  const server = await startBinServer(env);
  servers.push(server);
  return server;
}

describe('the p2pstream bin', () => {
  it('starts with plain node, prints the setup code, reuses its certificate, and stops cleanly on SIGTERM', async () => {
    const dataDir = await tempDir();
    const first = await startBin({ P2PSTREAM_DATA_DIR: dataDir });
    const code = /setup code ([A-Za-z0-9_-]+)/.exec(first.output())?.[1];
    expect(code).toBeDefined();
    const res = await fetch(`${first.url}/api/v1/setup`, { dispatcher: first.dispatcher });
    expect(await res.json()).toEqual({ setupRequired: true });
    first.child.kill('SIGTERM');
    expect(await first.exited).toBe(0);

    const second = await startBin({ P2PSTREAM_DATA_DIR: dataDir });
    // The certificate generated on the first start is reused, so the first trust anchor still works.
    const setup = await fetch(`${second.url}/api/v1/setup`, {
      method: 'POST',
      dispatcher: first.dispatcher,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username: 'admin', password: 'a long enough password', setupToken: code }),
    });
    // A new code is generated per start while setup is pending, so the old one no longer works.
    expect(setup.status).toBe(403);
  });

  it('resets a password offline and revokes the sessions of that user', async () => {
    const dataDir = await tempDir();
    const server = await startBin({
      P2PSTREAM_DATA_DIR: dataDir,
      P2PSTREAM_SETUP_TOKEN: 'cli-setup-code-long',
    });
    const { url, dispatcher } = server;
    const post = (p: string, body: unknown, cookie?: string) =>
      fetch(`${url}${p}`, {
        method: 'POST',
        dispatcher,
        headers: { 'content-type': 'application/json', origin: url, ...(cookie ? { cookie } : {}) },
        body: JSON.stringify(body),
      });
    const setup = await post('/api/v1/setup', {
      username: 'admin',
      password: 'old password 123',
      setupToken: 'cli-setup-code-long',
    });
    expect(setup.status).toBe(201);
    // Refused while the server holds the data dir: its next write would undo the reset.
    const refused = spawnSync(process.execPath, [BIN, 'users', 'reset-password', 'admin'], {
      env: { PATH: process.env.PATH ?? '', P2PSTREAM_DATA_DIR: dataDir },
      input: 'new password 456\n',
      encoding: 'utf8',
    });
    expect(refused.status).toBe(1);
    expect(refused.stderr).toMatch(/server \(pid \d+\) is running/);
    server.child.kill('SIGTERM');
    await server.exited;

    const reset = spawnSync(process.execPath, [BIN, 'users', 'reset-password', 'admin'], {
      env: { PATH: process.env.PATH ?? '', P2PSTREAM_DATA_DIR: dataDir },
      input: 'new password 456\n',
      encoding: 'utf8',
    });
    expect(reset.status).toBe(0);
    expect(reset.stdout).toContain('password of admin changed');
    expect(reset.stdout + reset.stderr).not.toContain('new password 456');

    const again = await startBin({ P2PSTREAM_DATA_DIR: dataDir });
    const url2 = again.url;
    const login = (password: string) =>
      fetch(`${url2}/api/v1/auth/login`, {
        method: 'POST',
        dispatcher,
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ username: 'admin', password }),
      });
    expect((await login('old password 123')).status).toBe(401);
    expect((await login('new password 456')).status).toBe(200);
    const oldCookie = (setup.headers.get('set-cookie') ?? '').split(';')[0]!;
    const me = await fetch(`${url2}/api/v1/auth/me`, { dispatcher, headers: { cookie: oldCookie } });
    expect(me.status).toBe(401);
  }, 120_000);

  it('exits non-zero with a clear message on a bad setting and an unknown command', () => {
    const bad = spawnSync(process.execPath, [BIN, 'server'], {
      env: { PATH: process.env.PATH ?? '', MANAGEMENT_PORT: '99999' },
      encoding: 'utf8',
    });
    expect(bad.status).toBe(1);
    expect(bad.stderr).toContain('MANAGEMENT_PORT');
    const unknown = spawnSync(process.execPath, [BIN, 'frobnicate'], { encoding: 'utf8' });
    expect(unknown.status).toBe(2);
    expect(unknown.stderr).toContain('usage');
  });
});
