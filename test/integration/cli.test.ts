import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Agent, fetch } from 'undici';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';

const ROOT = path.resolve(import.meta.dirname, '../..');
const BIN = path.join(ROOT, 'dist/src/cli.js');
const children: ChildProcess[] = [];
const dirs: string[] = [];

beforeAll(() => {
  // The published entry point must run with plain node: build it as `npm install` does.
  if (!existsSync(BIN)) {
    const build = spawnSync('npm', ['run', 'build'], { cwd: ROOT, stdio: 'inherit' });
    if (build.status !== 0) throw new Error('npm run build failed');
  }
}, 120_000);

afterEach(async () => {
  for (const child of children.splice(0)) if (child.exitCode === null) child.kill('SIGKILL');
  for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
});

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-cli-'));
  dirs.push(dir);
  return dir;
}

function startBin(env: Record<string, string>): {
  child: ChildProcess;
  output: () => string;
  ready: Promise<string>;
} {
  const child = spawn(process.execPath, [BIN, 'server'], {
    env: { PATH: process.env.PATH ?? '', MANAGEMENT_ADDR: '127.0.0.1', MANAGEMENT_PORT: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  let out = '';
  const ready = new Promise<string>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      out += chunk.toString();
      const match = /management listening on (https:\/\/[^"\s]+)/.exec(out);
      if (match) resolve(match[1]!);
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.on('exit', (code) => reject(new Error(`server exited with ${code}: ${out}`)));
  });
  return { child, output: () => out, ready };
}

describe('the p2pstream bin', () => {
  it('starts with plain node, prints the setup code, reuses its certificate, and stops cleanly on SIGTERM', async () => {
    const dataDir = await tempDir();
    const first = startBin({ P2PSTREAM_DATA_DIR: dataDir });
    const url = await first.ready;
    const code = /setup code ([A-Za-z0-9_-]+)/.exec(first.output())?.[1];
    expect(code).toBeDefined();
    const { readFile } = await import('node:fs/promises');
    const cert = await readFile(path.join(dataDir, 'management-cert.pem'), 'utf8');
    const dispatcher = new Agent({ connect: { ca: cert, servername: 'localhost' } });
    const res = await fetch(`${url}/api/v1/setup`, { dispatcher });
    expect(await res.json()).toEqual({ setupRequired: true });
    const exited = new Promise<number | null>((resolve) => first.child.on('exit', resolve));
    first.child.kill('SIGTERM');
    expect(await exited).toBe(0);

    const second = startBin({ P2PSTREAM_DATA_DIR: dataDir });
    const url2 = await second.ready;
    // The certificate generated on the first start is reused, so the same trust anchor works.
    const pinned = new Agent({ connect: { ca: cert, servername: 'localhost' } });
    const setup = await fetch(`${url2}/api/v1/setup`, {
      method: 'POST',
      dispatcher: pinned,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username: 'admin', password: 'a long enough password', setupToken: code }),
    });
    // A new code is generated per start while setup is pending, so the old one no longer works.
    expect(setup.status).toBe(403);
    await dispatcher.close();
    await pinned.close();
  });

  it('resets a password offline and revokes the sessions of that user', async () => {
    const dataDir = await tempDir();
    const server = startBin({ P2PSTREAM_DATA_DIR: dataDir, P2PSTREAM_SETUP_TOKEN: 'cli-setup-code' });
    const url = await server.ready;
    const { readFile } = await import('node:fs/promises');
    const cert = await readFile(path.join(dataDir, 'management-cert.pem'), 'utf8');
    const dispatcher = new Agent({ connect: { ca: cert, servername: 'localhost' } });
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
      setupToken: 'cli-setup-code',
    });
    expect(setup.status).toBe(201);
    const exited = new Promise((resolve) => server.child.on('exit', resolve));
    server.child.kill('SIGTERM');
    await exited;

    const reset = spawnSync(process.execPath, [BIN, 'users', 'reset-password', 'admin'], {
      env: { PATH: process.env.PATH ?? '', P2PSTREAM_DATA_DIR: dataDir },
      input: 'new password 456\n',
      encoding: 'utf8',
    });
    expect(reset.status).toBe(0);
    expect(reset.stdout).toContain('password of admin changed');
    expect(reset.stdout + reset.stderr).not.toContain('new password 456');

    const again = startBin({ P2PSTREAM_DATA_DIR: dataDir });
    const url2 = await again.ready;
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
    await dispatcher.close();
  });

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
