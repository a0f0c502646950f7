/**
 * `npm run demo:ha`: several control planes as one, on loopback, in one command.
 *
 * Starts Debian's PostgreSQL and nats-server in temp dirs, then two
 * `p2pstream server` replicas (child processes) sharing them: the second
 * replica's data dir gets a copy of the first's `secrets.key` and management
 * certificate, as an operator would deploy them behind one name. Creates the
 * admin on one replica, starts `p2pstream agent` with both replicas' URLs,
 * and prints both console URLs and the login, which work on either replica.
 * Runs until Ctrl-C, which stops everything and removes the temp dirs.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes, X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { copyFile, mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Agent, fetch } from 'undici';
import { SECRETS_KEY_FILE_NAME } from '../src/storage/secrets-box.js';
import { GENERATED_CERT_FILE, GENERATED_KEY_FILE } from '../src/tls/management-certificate.js';
import { startNats, startPostgres } from './local-services.js';

const USERNAME = 'admin';
const CLI = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'src', 'cli.js');

function step(message: string): void {
  process.stdout.write(`  • ${message}\n`);
}

interface Replica {
  name: string;
  url: string;
  dataDir: string;
  child: ChildProcess;
}

/** Starts `p2pstream server` and resolves with its URL once it logs that it listens. */
async function startReplica(name: string, env: Record<string, string>, dataDir: string): Promise<Replica> {
  const child = spawn(process.execPath, [CLI, 'server'], {
    env: {
      PATH: process.env.PATH ?? '',
      P2PSTREAM_DATA_DIR: dataDir,
      MANAGEMENT_ADDR: '127.0.0.1',
      MANAGEMENT_PORT: '0',
      LOG_LEVEL: 'info',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const url = await new Promise<string>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      const match = /management listening on (https:\/\/\S+?)"/.exec(output);
      if (match) resolve(match[1]!);
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    child.once('exit', (code) =>
      reject(new Error(`replica ${name} exited with ${code}:\n${output.slice(-2000)}`)),
    );
  });
  // Keep the pipes drained; the demo prints its own summary.
  child.stdout!.resume();
  child.stderr!.resume();
  return { name, url, dataDir, child };
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  await exited;
}

async function main(): Promise<void> {
  const password = `demo-${randomBytes(9).toString('base64url')}`;
  const setupToken = randomBytes(12).toString('base64url');
  const cleanups: Array<() => Promise<void> | void> = [];
  let stopping = false;
  const stop = async (code: number) => {
    if (stopping) return;
    stopping = true;
    for (const cleanup of cleanups.reverse()) {
      try {
        await cleanup();
      } catch {
        // Best effort: the rest still gets cleaned up.
      }
    }
    process.exit(code);
  };
  process.on('SIGINT', () => void stop(0));
  process.on('SIGTERM', () => void stop(0));

  try {
    process.stdout.write('p2pstream demo:ha: two control-plane replicas on loopback\n');
    const postgres = await startPostgres({ password: randomBytes(12).toString('base64url') });
    cleanups.push(() => postgres.close());
    const databaseUrl = await postgres.createDatabase('p2pstream');
    step(`PostgreSQL on 127.0.0.1:${postgres.port} (temp dir ${postgres.dir})`);
    const nats = await startNats();
    cleanups.push(() => nats.close());
    step(`nats-server with JetStream on ${nats.url} (temp dir ${nats.dir})`);

    const env = {
      P2PSTREAM_DATABASE_URL: databaseUrl,
      P2PSTREAM_NATS_URL: nats.url,
      P2PSTREAM_SETUP_TOKEN: setupToken,
    };
    const dirA = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-demo-ha-a-'));
    cleanups.push(() => rm(dirA, { recursive: true, force: true }));
    const a = await startReplica('a', env, dirA);
    cleanups.push(() => stopChild(a.child));
    step(`replica a at ${a.url}`);
    const dirB = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-demo-ha-b-'));
    cleanups.push(() => rm(dirB, { recursive: true, force: true }));
    // Replicas share the secrets key (to open what another sealed) and, behind one name, the certificate.
    for (const file of [SECRETS_KEY_FILE_NAME, GENERATED_CERT_FILE, GENERATED_KEY_FILE]) {
      await copyFile(path.join(dirA, file), path.join(dirB, file));
    }
    const b = await startReplica('b', env, dirB);
    cleanups.push(() => stopChild(b.child));
    step(`replica b at ${b.url} (same database, same secrets.key and certificate)`);

    const certificate = await readFile(path.join(dirA, GENERATED_CERT_FILE), 'utf8');
    const dispatcher = new Agent({ connect: { ca: certificate, servername: 'localhost' } });
    cleanups.push(() => dispatcher.close());
    let cookie = '';
    // biome-ignore lint/suspicious/noExplicitAny: the demo reads API answers freely
    const api = async (base: string, method: string, pathname: string, body?: unknown): Promise<any> => {
      const headers: Record<string, string> = { origin: base };
      if (cookie) headers.cookie = cookie;
      if (body !== undefined) headers['content-type'] = 'application/json';
      const res = await fetch(`${base}${pathname}`, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        dispatcher,
      });
      const text = await res.text();
      const setCookie = res.headers.get('set-cookie');
      if (setCookie) cookie = setCookie.split(';')[0]!;
      const json = text ? JSON.parse(text) : null;
      if (res.status >= 400)
        throw new Error(`${method} ${pathname} → ${res.status} ${json?.error?.code ?? ''}`);
      return json;
    };
    await api(a.url, 'POST', '/api/v1/setup', { username: USERNAME, password, setupToken });
    step('admin created on replica a; the session works on replica b too');

    const created = await api(b.url, 'POST', '/api/v1/agents', {
      name: 'demo-agent',
      labels: { site: 'loopback' },
    });
    const agentId = created.agent.id as string;
    const agent = spawn(process.execPath, [CLI, 'agent'], {
      env: {
        PATH: process.env.PATH ?? '',
        MANAGEMENT_URL: `${a.url},${b.url}`,
        AGENT_ID: agentId,
        AGENT_TOKEN: created.token as string,
        MANAGEMENT_FINGERPRINT: new X509Certificate(certificate).fingerprint256,
        LOG_LEVEL: 'warn',
      },
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    cleanups.push(() => stopChild(agent));
    const deadline = Date.now() + 15_000;
    let holder = '';
    for (;;) {
      const seen = await api(b.url, 'GET', `/api/v1/agents/${agentId}`);
      if (seen.agent.status === 'connected') {
        holder = seen.agent.replicaId as string;
        break;
      }
      if (agent.exitCode !== null) throw new Error(`the agent exited with code ${agent.exitCode}`);
      if (Date.now() > deadline) throw new Error('the agent did not connect within 15 s');
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const info = await api(a.url, 'GET', '/api/v1/system/info');
    const names = new Map<string, string>();
    for (const r of info.replicas as Array<{ id: string; self: boolean }>)
      names.set(r.id, r.self ? 'a' : 'b');
    step(
      `agent ${agentId} connected (p2pstream agent, pid ${agent.pid}), held by replica ${names.get(holder) ?? holder}`,
    );
    step(`replicas seen from a: ${[...names.entries()].map(([id, n]) => `${n}=${id}`).join(', ')}`);

    const consoleA = a.url.replace('127.0.0.1', 'localhost');
    const consoleB = b.url.replace('127.0.0.1', 'localhost');
    process.stdout.write(
      [
        '',
        `Console:   ${consoleA}/`,
        `           ${consoleB}/`,
        `Login:     ${USERNAME} / ${password}`,
        `Certificate (self-signed, shared by both replicas): SHA-256 ${new X509Certificate(certificate).fingerprint256}`,
        `           ${path.join(dirA, GENERATED_CERT_FILE)}`,
        '',
        'Log in on either replica: the overview and system info list both replicas, the agents page',
        'shows which replica holds the agent. Stop one replica (kill its pid) and watch the other.',
        `Replica pids: a=${a.child.pid} b=${b.child.pid}`,
        '',
        'Ctrl-C stops everything and removes the temporary dirs.',
        '',
      ].join('\n'),
    );
  } catch (err) {
    process.stderr.write(`demo:ha failed: ${err instanceof Error ? err.message : String(err)}\n`);
    await stop(1);
  }
}

void main();
