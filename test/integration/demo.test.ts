/**
 * `npm run demo` as a new user meets it: one process brings up a control
 * plane, a second instance and an agent, and prints a console URL and a login
 * that work, with both environments trusted and operating the second instance,
 * and the public URL of a private app published through the agent.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { Agent, fetch } from 'undici';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt, ROOT } from '../helpers/bin.js';

const DEMO = path.join(ROOT, 'dist/scripts/demo.js');
let child: ChildProcess | undefined;
let dispatcher: Agent | undefined;

beforeAll(() => ensureBuilt(), 120_000);

afterEach(async () => {
  if (child && child.exitCode === null) child.kill('SIGKILL');
  await dispatcher?.close();
});

/** Waits until the demo's output matches `pattern`; fails with the output if it exits first. */
function waitFor(proc: ChildProcess, pattern: RegExp): Promise<RegExpExecArray> {
  let out = '';
  return new Promise((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      out += chunk.toString();
      const match = pattern.exec(out);
      if (match) resolve(match);
    };
    proc.stdout!.on('data', onData);
    proc.stderr!.on('data', onData);
    proc.on('exit', (code) => reject(new Error(`demo exited with ${code}: ${out}`)));
  });
}

describe('npm run demo', () => {
  it('prints a working login, both environments trusted and relaying, and a private app served through the agent', async () => {
    child = spawn(process.execPath, [DEMO], {
      env: { PATH: process.env.PATH ?? '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const output = waitFor(
      child,
      /Console: +(https:\/\/\S+)\/\nLogin: +(\S+) \/ (\S+)\n[\s\S]*?\n {11}(\S+management-cert\.pem)\n[\s\S]*?\nPrivate app: +(http:\/\/\S+)\n/,
    );
    const [, consoleUrl, username, password, certFile, privateAppUrl] = await output;
    const { readFile } = await import('node:fs/promises');
    dispatcher = new Agent({ connect: { ca: await readFile(certFile!, 'utf8'), servername: 'localhost' } });
    const url = consoleUrl!.replace('localhost', '127.0.0.1');

    const login = await fetch(`${url}/api/v1/auth/login`, {
      method: 'POST',
      dispatcher,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username, password }),
    });
    expect(login.status).toBe(200);
    const cookie = (login.headers.get('set-cookie') ?? '').split(';')[0]!;
    const get = async (pathname: string, environment?: string) => {
      const headers: Record<string, string> = { cookie };
      if (environment) headers['x-p2pstream-environment'] = environment;
      const res = await fetch(`${url}${pathname}`, { dispatcher, headers });
      // biome-ignore lint/suspicious/noExplicitAny: the test reads API answers freely
      return { status: res.status, json: (await res.json()) as any };
    };

    const { json } = await get('/api/v1/environments');
    const remotes = json.environments.filter((e: { virtual?: boolean }) => !e.virtual);
    expect(
      remotes.map((e: { transport: string; trustState: string }) => [e.transport, e.trustState]),
    ).toEqual([
      ['direct', 'TRUSTED'],
      ['agent', 'TRUSTED'],
    ]);
    const local = await get('/api/v1/system/info');
    for (const environment of remotes) {
      // Both environments reach the second instance: its token list, not the control plane's.
      const tokens = await get('/api/v1/tokens', environment.id);
      expect(tokens.status).toBe(200);
      expect(tokens.json.tokens.map((t: { name: string }) => t.name)).toEqual(['control-plane']);
      const info = await get('/api/v1/system/info', environment.id);
      expect(info.json.instanceId).not.toBe(local.json.instanceId);
    }

    // The private app answers on the control plane's public listener, through the agent.
    const published = await fetch(`${privateAppUrl}hello?x=1`);
    expect(published.status).toBe(200);
    expect(await published.text()).toBe('hello from the private app of the second site: GET /hello?x=1\n');
    const agents = (await get('/api/v1/agents')).json.agents;
    expect(agents).toHaveLength(1);
    const traced = (await get('/api/v1/traffic/recent')).json.events.filter(
      (e: { path: string }) => e.path === '/hello',
    );
    expect(traced).toHaveLength(1);
    expect(traced[0].status).toBe(200);
    expect(traced[0].backend.agentId).toBe(agents[0].id);
    const overview = (await get('/api/v1/overview')).json;
    expect(overview.tunnelled.last5m).toBeGreaterThanOrEqual(2);

    const exited = new Promise<number | null>((resolve) => child!.on('exit', resolve));
    child.kill('SIGINT');
    expect(await exited).toBe(0);
    // The temporary data dirs are removed on the way out.
    expect(existsSync(path.dirname(certFile!))).toBe(false);
  }, 120_000);
});
