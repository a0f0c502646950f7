/**
 * Runs a real `nats-server` (Debian's package) for a test: JetStream on (for
 * key-value buckets), store in a temp dir, listening on 127.0.0.1 on a free
 * port. `stop()`/`start()` take it down and bring it back on the same port
 * (a replica losing NATS); `close()` stops it, proves its port is closed and
 * removes the dir.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { expectPortClosed, freePort, stopChild, waitForOutput } from './processes.js';

export interface TestNats {
  port: number;
  /** The temp dir holding the JetStream store (removed by `close()`). */
  dir: string;
  /** `nats://127.0.0.1:PORT` */
  url: string;
  output(): string;
  /** Stops the server (SIGTERM), keeping its dir and port for `start()`. */
  stop(): Promise<void>;
  /** Starts it again on the same port after `stop()`. */
  start(): Promise<void>;
  close(): Promise<void>;
}

/** The nats-server binary; throws when it is not installed. */
export function natsServerBinary(): string {
  for (const candidate of ['/usr/sbin/nats-server', '/usr/bin/nats-server', '/usr/local/bin/nats-server']) {
    try {
      execFileSync(candidate, ['--version'], { stdio: 'ignore' });
      return candidate;
    } catch {
      // try the next one
    }
  }
  throw new Error('nats-server is not installed (apt-get install nats-server)');
}

export async function startNats(): Promise<TestNats> {
  const binary = natsServerBinary();
  const dir = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-nats-'));
  const output: string[] = [];
  let child: ChildProcess | null = null;
  let port = 0;

  const launch = async (): Promise<boolean> => {
    output.length = 0;
    const candidate = spawn(
      binary,
      ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', path.join(dir, 'js')],
      {
        cwd: dir,
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    candidate.stdout?.on('data', (d: Buffer) => output.push(d.toString()));
    candidate.stderr?.on('data', (d: Buffer) => output.push(d.toString()));
    try {
      await waitForOutput(candidate, output, /Server is ready/, 20_000);
      child = candidate;
      return true;
    } catch (err) {
      await stopChild(candidate, 'SIGKILL');
      if (/address already in use/i.test(output.join(''))) return false;
      throw err;
    }
  };

  try {
    for (let attempt = 0; attempt < 5 && !child; attempt++) {
      port = await freePort();
      await launch();
    }
    if (!child) throw new Error(`nats-server found no free port:\n${output.join('')}`);
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }

  const stop = async () => {
    if (child) await stopChild(child, 'SIGTERM');
    child = null;
    await expectPortClosed(port);
  };
  let closing: Promise<void> | null = null;
  return {
    port,
    dir,
    url: `nats://127.0.0.1:${port}`,
    output: () => output.join(''),
    stop,
    async start() {
      if (child) return;
      // The port was ours a moment ago; retry briefly in case the kernel still holds it.
      for (let attempt = 0; attempt < 20; attempt++) {
        if (await launch()) return;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      throw new Error(`nats-server could not bind ${port} again`);
    },
    close() {
      closing ??= (async () => {
        await stop();
        await rm(dir, { recursive: true, force: true });
      })();
      return closing;
    },
  };
}
