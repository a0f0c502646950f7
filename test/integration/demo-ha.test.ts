/**
 * `npm run demo:ha` as a new user meets it: PostgreSQL, NATS, two replicas and
 * an agent come up, the printed login works on both consoles, both replicas
 * see each other, and Ctrl-C leaves no process or temp dir behind.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Agent, fetch } from 'undici';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt, ROOT } from '../helpers/bin.js';

const DEMO = path.join(ROOT, 'dist/scripts/demo-ha.js');
let child: ChildProcess | undefined;
let dispatcher: Agent | undefined;

beforeAll(() => ensureBuilt(), 120_000);

afterEach(async () => {
  // The demo runs in its own process group, so a test that failed or timed out
  // stops its replicas, PostgreSQL, NATS and agent too, not only the demo.
  if (child?.pid && child.exitCode === null && child.signalCode === null) {
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  }
  await dispatcher?.close();
});

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('npm run demo:ha', () => {
  it('prints a login that works on both replicas, which list each other, and cleans up on Ctrl-C', async () => {
    child = spawn(process.execPath, [DEMO], {
      env: { PATH: process.env.PATH ?? '' },
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    const match = await new Promise<RegExpExecArray>((resolve, reject) => {
      const onData = (chunk: Buffer) => {
        out += chunk.toString();
        const found =
          /Console: +(https:\/\/\S+)\/\n +(https:\/\/\S+)\/\nLogin: +(\S+) \/ (\S+)\n[\s\S]*?\n {11}(\S+management-cert\.pem)\n[\s\S]*?Replica pids: a=(\d+) b=(\d+)/.exec(
            out,
          );
        if (found) resolve(found);
      };
      child!.stdout!.on('data', onData);
      child!.stderr!.on('data', onData);
      child!.once('exit', (code) => reject(new Error(`demo:ha exited with ${code}: ${out}`)));
    });
    const [, consoleA, consoleB, username, password, certFile, pidA, pidB] = match;
    const dirs = [...out.matchAll(/temp dir (\S+)\)/g)].map((m) => m[1]!);
    expect(dirs).toHaveLength(2);
    dispatcher = new Agent({ connect: { ca: await readFile(certFile!, 'utf8'), servername: 'localhost' } });
    const ids = new Set<string>();
    for (const consoleUrl of [consoleA!, consoleB!]) {
      const url = consoleUrl.replace('localhost', '127.0.0.1');
      const login = await fetch(`${url}/api/v1/auth/login`, {
        method: 'POST',
        dispatcher,
        headers: { 'content-type': 'application/json', origin: url },
        body: JSON.stringify({ username, password }),
      });
      expect(login.status).toBe(200);
      const cookie = login.headers.get('set-cookie')!.split(';')[0]!;
      const info = (await (
        await fetch(`${url}/api/v1/system/info`, { dispatcher, headers: { cookie } })
      ).json()) as {
        replica: { store: string; bus: string };
        replicas: Array<{ id: string }>;
      };
      expect(info.replica).toMatchObject({ store: 'postgres', bus: 'connected' });
      expect(info.replicas).toHaveLength(2);
      for (const r of info.replicas) ids.add(r.id);
      const agents = (await (
        await fetch(`${url}/api/v1/agents`, { dispatcher, headers: { cookie } })
      ).json()) as {
        agents: Array<{ status: string }>;
      };
      expect(agents.agents.map((a) => a.status)).toEqual(['connected']);
    }
    expect(ids.size).toBe(2);

    const exited = new Promise((resolve) => child!.once('exit', resolve));
    child.kill('SIGINT');
    expect(await exited).toBe(0);
    expect(alive(Number(pidA))).toBe(false);
    expect(alive(Number(pidB))).toBe(false);
    for (const dir of dirs) expect(existsSync(dir)).toBe(false);
  }, 180_000);
});
