/**
 * The real PostgreSQL and nats-server on loopback, for `npm run demo:ha` and
 * the tests: each in its own temp dir, on a free 127.0.0.1 port, stopped by
 * `close()`, which proves no process or port is left and removes the dir.
 *
 * PostgreSQL runs from Debian's /usr/lib/postgresql/<version>/bin (`initdb`,
 * then `postgres`); it refuses to run as root, so when we are root both run
 * as the `postgres` system user (or `nobody`), which owns the temp dir.
 * Connections over TCP need the password (SCRAM).
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { chmod, chown, mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';

/** A port that was free on 127.0.0.1 a moment ago (the caller retries when it is taken meanwhile). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** True when something accepts TCP connections on 127.0.0.1:port. */
export async function portAccepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/**
 * Resolves once `pattern` appears in the child's output (stdout and stderr,
 * collected in `output`); rejects when the child exits first or after `timeoutMs`.
 */
export function waitForOutput(
  child: ChildProcess,
  output: string[],
  pattern: RegExp,
  timeoutMs: number,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const check = () => {
      if (pattern.test(output.join(''))) done(null);
    };
    const onExit = (code: number | null, signal: string | null) =>
      done(new Error(`exited (${code ?? signal}) before ready:\n${output.join('').slice(-2000)}`));
    const timer = setTimeout(
      () => done(new Error(`not ready within ${timeoutMs} ms:\n${output.join('').slice(-2000)}`)),
      timeoutMs,
    );
    const done = (err: Error | null) => {
      clearTimeout(timer);
      child.stdout?.off('data', check);
      child.stderr?.off('data', check);
      child.off('exit', onExit);
      if (err) reject(err);
      else resolve();
    };
    child.stdout?.on('data', check);
    child.stderr?.on('data', check);
    child.once('exit', onExit);
    check();
  });
}

/** Sends `signal` and waits for the exit; SIGKILL after `graceMs`. */
export async function stopChild(
  child: ChildProcess,
  signal: NodeJS.Signals,
  graceMs = 10_000,
): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill(signal);
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

/** Polls until nothing accepts connections on the port; throws when something still does after `timeoutMs`. */
export async function expectPortClosed(port: number, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (await portAccepts(port)) {
    if (Date.now() > deadline) throw new Error(`port ${port} still accepts connections`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** The database user the local PostgreSQL is initialised with. */
export const LOCAL_PG_USER = 'p2pstream';
/** Its default password (loopback only; `startPostgres({password})` picks another). */
export const LOCAL_PG_PASSWORD = 'pg-test-password-1';

export interface TestPostgres {
  port: number;
  /** The temp dir holding the cluster and its socket (removed by `close()`). */
  dir: string;
  /** `postgres://p2pstream:…@127.0.0.1:PORT/postgres` */
  url: string;
  /** A fresh, empty database; its URL. */
  createDatabase(name?: string): Promise<string>;
  /** The server's log so far. */
  output(): string;
  /** The postgres process id (for tests that kill it). */
  pid(): number | undefined;
  close(): Promise<void>;
}

/** The newest installed PostgreSQL's bin directory; throws when none is installed. */
export function postgresBinDir(): string {
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root)
    ? readdirSync(root)
        .filter((v) => existsSync(path.join(root, v, 'bin', 'postgres')))
        .sort((a, b) => Number(b) - Number(a))
    : [];
  if (versions.length === 0) {
    throw new Error(
      'PostgreSQL is not installed (apt-get install postgresql): /usr/lib/postgresql/*/bin missing',
    );
  }
  return path.join(root, versions[0]!, 'bin');
}

/** uid/gid to run PostgreSQL as: ourselves unless we are root. */
function runAs(): { uid: number; gid: number } | null {
  if (process.getuid?.() !== 0) return null;
  for (const user of ['postgres', 'nobody']) {
    try {
      const uid = Number(execFileSync('id', ['-u', user], { encoding: 'utf8' }).trim());
      const gid = Number(execFileSync('id', ['-g', user], { encoding: 'utf8' }).trim());
      if (Number.isInteger(uid) && uid > 0) return { uid, gid };
    } catch {
      // try the next one
    }
  }
  throw new Error('running as root and no unprivileged user (postgres, nobody) to run PostgreSQL as');
}

let databaseCounter = 0;

export async function startPostgres(options: { password?: string } = {}): Promise<TestPostgres> {
  const password = options.password ?? LOCAL_PG_PASSWORD;
  const bin = postgresBinDir();
  const dir = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-pg-'));
  const user = runAs();
  const ids = user ?? {};
  await chmod(dir, 0o700);
  if (user) await chown(dir, user.uid, user.gid);
  const dataDir = path.join(dir, 'data');
  const pwFile = path.join(dir, 'password');
  await writeFile(pwFile, `${password}\n`, { mode: 0o600 });
  if (user) await chown(pwFile, user.uid, user.gid);
  try {
    execFileSync(
      path.join(bin, 'initdb'),
      [
        '-D',
        dataDir,
        `--username=${LOCAL_PG_USER}`,
        `--pwfile=${pwFile}`,
        '--auth-local=trust',
        '--auth-host=scram-sha-256',
        '--encoding=UTF8',
        '--locale=C',
        '--no-sync',
      ],
      { ...ids, cwd: dir, stdio: 'pipe' },
    );
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    const stderr = (err as { stderr?: Buffer }).stderr?.toString() ?? '';
    throw new Error(`initdb failed: ${stderr || (err as Error).message}`);
  }

  let child: ChildProcess | null = null;
  let port = 0;
  const output: string[] = [];
  for (let attempt = 0; attempt < 5 && !child; attempt++) {
    port = await freePort();
    output.length = 0;
    const candidate = spawn(
      path.join(bin, 'postgres'),
      [
        '-D',
        dataDir,
        '-p',
        String(port),
        '-c',
        'listen_addresses=127.0.0.1',
        '-c',
        `unix_socket_directories=${dir}`,
        // Tests never survive a power loss; skipping fsync keeps them fast on a busy machine.
        '-c',
        'fsync=off',
        '-c',
        'full_page_writes=off',
        '-c',
        'max_connections=200',
      ],
      { ...ids, cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    candidate.stdout?.on('data', (d: Buffer) => output.push(d.toString()));
    candidate.stderr?.on('data', (d: Buffer) => output.push(d.toString()));
    try {
      await waitForOutput(candidate, output, /database system is ready to accept connections/, 30_000);
      child = candidate;
    } catch (err) {
      await stopChild(candidate, 'SIGKILL');
      if (!/could not bind|Address already in use/i.test(output.join(''))) {
        await rm(dir, { recursive: true, force: true });
        throw err;
      }
    }
  }
  if (!child) {
    await rm(dir, { recursive: true, force: true });
    throw new Error(`postgres found no free port:\n${output.join('')}`);
  }
  const running = child;
  const urlFor = (database: string) =>
    `postgres://${LOCAL_PG_USER}:${encodeURIComponent(password)}@127.0.0.1:${port}/${database}`;

  let closing: Promise<void> | null = null;
  return {
    port,
    dir,
    url: urlFor('postgres'),
    async createDatabase(name) {
      databaseCounter += 1;
      const database = name ?? `p2pstream_test_${process.pid}_${databaseCounter}`;
      const client = new pg.Client({ connectionString: urlFor('postgres') });
      await client.connect();
      try {
        await client.query(`CREATE DATABASE "${database}"`);
      } finally {
        await client.end();
      }
      return urlFor(database);
    },
    output: () => output.join(''),
    pid: () => running.pid,
    close() {
      closing ??= (async () => {
        // SIGINT is PostgreSQL's fast shutdown: open client connections are cut, not waited for.
        await stopChild(running, 'SIGINT');
        await expectPortClosed(port);
        await rm(dir, { recursive: true, force: true });
      })();
      return closing;
    },
  };
}

export interface TestNats {
  port: number;
  /** The temp dir holding the JetStream store (removed by `close()`). */
  dir: string;
  /** `nats://127.0.0.1:PORT` */
  url: string;
  /** The server's process id while it runs (undefined when stopped). */
  pid(): number | undefined;
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
    pid: () => (child as ChildProcess | null)?.pid,
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
