/**
 * Runs Debian's real PostgreSQL for a test: `initdb` and `postgres` from
 * /usr/lib/postgresql/<version>/bin in a temp dir, listening on 127.0.0.1 on
 * a free port (and a unix socket inside the temp dir). PostgreSQL refuses to
 * run as root, so when the tests run as root both run as the `postgres`
 * system user (or `nobody`), which owns the temp dir. Connections over TCP
 * need the password (SCRAM); `close()` stops the server (fast shutdown),
 * proves its port is closed and removes the dir.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { chmod, chown, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { expectPortClosed, freePort, stopChild, waitForOutput } from './processes.js';

export const TEST_PG_USER = 'p2pstream';
export const TEST_PG_PASSWORD = 'pg-test-password-1';

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

export async function startPostgres(): Promise<TestPostgres> {
  const bin = postgresBinDir();
  const dir = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-pg-'));
  const user = runAs();
  const ids = user ?? {};
  await chmod(dir, 0o700);
  if (user) await chown(dir, user.uid, user.gid);
  const dataDir = path.join(dir, 'data');
  const pwFile = path.join(dir, 'password');
  await writeFile(pwFile, `${TEST_PG_PASSWORD}\n`, { mode: 0o600 });
  if (user) await chown(pwFile, user.uid, user.gid);
  try {
    execFileSync(
      path.join(bin, 'initdb'),
      [
        '-D',
        dataDir,
        `--username=${TEST_PG_USER}`,
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
    `postgres://${TEST_PG_USER}:${TEST_PG_PASSWORD}@127.0.0.1:${port}/${database}`;

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
