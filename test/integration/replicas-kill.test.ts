/**
 * kill -9 of a replica (a real `p2pstream server` process) during 200
 * concurrent relayed calls: calls served by the survivors' own agent
 * connections never fail, calls the survivors forwarded to the dead replica
 * stop failing once its link is noticed dead (about 2 s) and go through the
 * agent's other connection, an agent that reached it through a load balancer
 * is back on another replica, and no write it acknowledged is lost.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { copyFile, mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Agent, fetch } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SECRETS_KEY_FILE_NAME } from '../../src/storage/secrets-box.js';
import { GENERATED_CERT_FILE, GENERATED_KEY_FILE } from '../../src/tls/management-certificate.js';
import { createTestAgent, startTestAgent, type TestAgent } from '../helpers/agent.js';
import { ensureBuilt, ROOT } from '../helpers/bin.js';
import { startNats, type TestNats } from '../helpers/nats.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { freePort, startTcpBalancer } from '../helpers/processes.js';
import type { TestServer } from '../helpers/server.js';
import { eventually } from '../helpers/wait.js';
import { type Instance, registerEnvironment, startInstance } from './environment-helpers.js';

const CLI = path.join(ROOT, 'dist/src/cli.js');
const SETUP_TOKEN = 'kill-test-setup-123';
const PASSWORD = 'correct horse battery';

interface ReplicaProcess {
  url: string;
  port: number;
  dataDir: string;
  child: ChildProcess;
}

let postgres: TestPostgres;
let nats: TestNats;
let target: Instance;
const replicas: ReplicaProcess[] = [];
const dirs: string[] = [];
let dispatcher: Agent;

async function startReplica(env: Record<string, string>, template: string | null): Promise<ReplicaProcess> {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-kill-'));
  dirs.push(dataDir);
  if (template) {
    for (const file of [SECRETS_KEY_FILE_NAME, GENERATED_CERT_FILE, GENERATED_KEY_FILE]) {
      await copyFile(path.join(template, file), path.join(dataDir, file));
    }
  }
  const port = await freePort();
  const child = spawn(process.execPath, [CLI, 'server'], {
    env: {
      PATH: process.env.PATH ?? '',
      P2PSTREAM_DATA_DIR: dataDir,
      MANAGEMENT_ADDR: '127.0.0.1',
      MANAGEMENT_PORT: String(port),
      P2PSTREAM_SETUP_TOKEN: SETUP_TOKEN,
      LOG_LEVEL: 'info',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  await new Promise<void>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      if (output.includes('management listening on')) resolve();
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code) => reject(new Error(`replica exited with ${code}:\n${output.slice(-2000)}`)));
  });
  child.stdout!.resume();
  child.stderr!.resume();
  return { url: `https://127.0.0.1:${port}`, port, dataDir, child };
}

/** A TestServer-shaped handle on a replica process, for the agent helpers. */
function asTestServer(replica: ReplicaProcess, certificate: string): TestServer {
  return {
    url: replica.url,
    dispatcher,
    server: { certificate } as TestServer['server'],
    request: (method, pathname, options = {}) => call(replica, method, pathname, options),
  } as TestServer;
}

async function call(
  replica: ReplicaProcess,
  method: string,
  pathname: string,
  options: { body?: unknown; cookie?: string; token?: string; headers?: Record<string, string> } = {},
  // biome-ignore lint/suspicious/noExplicitAny: test responses are inspected freely
): Promise<{ status: number; text: string; json: any; headers: Headers }> {
  const headers: Record<string, string> = { origin: replica.url, ...options.headers };
  if (options.cookie) headers.cookie = options.cookie;
  if (options.token) headers.authorization = `Bearer ${options.token}`;
  if (options.body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`${replica.url}${pathname}`, {
    method,
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    dispatcher,
  });
  const text = await res.text();
  let json: unknown = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  return { status: res.status, text, json, headers: res.headers as unknown as Headers };
}

beforeAll(async () => {
  ensureBuilt();
  [postgres, nats] = await Promise.all([startPostgres(), startNats()]);
  const env = { P2PSTREAM_DATABASE_URL: await postgres.createDatabase(), P2PSTREAM_NATS_URL: nats.url };
  replicas.push(await startReplica(env, null));
  for (let i = 0; i < 2; i++) replicas.push(await startReplica(env, replicas[0]!.dataDir));
  const certificate = await readFile(path.join(replicas[0]!.dataDir, GENERATED_CERT_FILE), 'utf8');
  dispatcher = new Agent({ connect: { ca: certificate, servername: 'localhost' }, connections: 64 });
  target = await startInstance();
}, 120_000);

afterAll(async () => {
  for (const replica of replicas) {
    if (replica.child.exitCode === null && replica.child.signalCode === null) {
      const exited = new Promise((resolve) => replica.child.once('exit', resolve));
      replica.child.kill('SIGKILL');
      await exited;
    }
  }
  await target?.server.close();
  await dispatcher?.close();
  await Promise.all([nats?.close(), postgres?.close()]);
  await Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true })));
});

describe('kill -9 of a replica', () => {
  it('keeps the survivors serving 200 concurrent relayed calls, moves its agents to a survivor and loses no acknowledged write', async () => {
    const [r0, r1, r2] = replicas as [ReplicaProcess, ReplicaProcess, ReplicaProcess];
    const certificate = await readFile(path.join(r0.dataDir, GENERATED_CERT_FILE), 'utf8');
    const s0 = asTestServer(r0, certificate);
    const setup = await call(r0, 'POST', '/api/v1/setup', {
      body: { username: 'admin', password: PASSWORD, setupToken: SETUP_TOKEN },
    });
    expect(setup.status).toBe(201);
    const cookie = setup.headers.get('set-cookie')!.split(';')[0]!;
    const token = (await call(r0, 'POST', '/api/v1/tokens', { cookie, body: { name: 'kill-test' } })).json
      .token as string;
    const agents: TestAgent[] = [];
    // Every connection to r0 while it accepts them, else to r2.
    const balancer = await startTcpBalancer([r0.port, r2.port], [0]);
    try {
      // One agent with connections to r0 and r1; one that reaches r0 through the balancer.
      const both = await createTestAgent(s0, cookie, 'two-connections');
      const single = await createTestAgent(s0, cookie, 'behind-the-balancer');
      agents.push(startTestAgent(s0, both, { managementUrls: [r0.url, r1.url] }));
      agents.push(startTestAgent(s0, single, { url: `https://127.0.0.1:${balancer.port}` }));
      await eventually(async () => {
        const a = (await call(r2, 'GET', `/api/v1/agents/${both.id}`, { token })).json.agent;
        const b = (await call(r2, 'GET', `/api/v1/agents/${single.id}`, { token })).json.agent;
        expect(a.status).toBe('connected');
        expect(b.replicaId).toBeTruthy();
        expect(b.replicaId).toBe((await call(r0, 'GET', '/api/v1/system/info', { token })).json.replica.id);
      }, 20_000);
      const environmentId = await registerEnvironment(
        { server: asTestServer(r1, certificate), cookie, token },
        { url: target.server.url, accessToken: target.token },
        { transport: 'agent', agentId: both.id },
      );

      // Writes acknowledged by r0 right up to its death.
      const acknowledged: string[] = [];
      let writing = true;
      const writer = (async () => {
        for (let i = 0; writing; i++) {
          const res = await call(r0, 'POST', '/api/v1/tokens', {
            cookie,
            body: { name: `acked-${i}` },
          }).catch(() => null);
          if (res?.status === 201) acknowledged.push(res.json.apiToken.id as string);
          if (!res) return;
        }
      })();

      // r0 has acknowledged a write before the calls start (a loaded machine can be slow to).
      await eventually(() => expect(acknowledged.length).toBeGreaterThan(0));

      // 200 concurrent relayed calls through the survivors, r0 killed while they run.
      const relayed = (replica: ReplicaProcess) =>
        call(replica, 'GET', '/api/v1/system/info', {
          token,
          headers: { 'x-p2pstream-environment': environmentId },
        }).then(
          (res) => res.status,
          () => 0,
        );
      const survivors = [r1, r2];
      let answered = 0;
      const wave = Array.from({ length: 200 }, (_, i) => ({
        via: i % 2,
        status: relayed(survivors[i % 2]!).finally(() => {
          answered += 1;
        }),
      }));
      // The wave is under way (its first answers are in) when r0 dies.
      await eventually(() => answered > 0, 20_000);
      r0.child.kill('SIGKILL');
      writing = false;
      await writer;
      const results = await Promise.all(wave.map(async (w) => ({ via: w.via, status: await w.status })));
      // r1 serves through its own connection to the agent: nothing it answers depends on r0.
      expect(results.filter((r) => r.via === 0 && r.status !== 200)).toEqual([]);
      // r2 forwards: a call on its way to r0 may fail; once the link is noticed dead, none does.
      await eventually(async () => {
        const after = await Promise.all(Array.from({ length: 200 }, (_, i) => relayed(survivors[i % 2]!)));
        expect(after.filter((status) => status !== 200)).toEqual([]);
      }, 15_000);

      // The agent behind the balancer is back, on r2.
      await eventually(async () => {
        const agent = (await call(r1, 'GET', `/api/v1/agents/${single.id}`, { token })).json.agent;
        expect(agent.status).toBe('connected');
        expect(agent.replicaId).toBe(
          (await call(r2, 'GET', '/api/v1/system/info', { token })).json.replica.id,
        );
      }, 20_000);

      // Every write r0 acknowledged is there.
      expect(acknowledged.length).toBeGreaterThan(0);
      const listed = (await call(r1, 'GET', '/api/v1/tokens', { token })).json.tokens as Array<{
        id: string;
      }>;
      const ids = new Set(listed.map((t) => t.id));
      expect(acknowledged.filter((id) => !ids.has(id))).toEqual([]);
    } finally {
      for (const agent of agents) await agent.close();
      await balancer.close();
    }
  }, 120_000);
});
