/**
 * Bench group `cluster`: several control planes as one.
 *
 * - forwarded ÷ holding p50: a relayed call (`GET /api/v1/system/info` of a
 *   target through an agent) made on the replica that does not hold the
 *   agent (X → NATS → Y → agent) against the same call on the replica that
 *   holds it, same run (goal ≤ 1.3).
 *
 * PostgreSQL and nats-server run as their own processes (Debian's, in temp
 * dirs); the two replicas, the agent and the target run in this process, so
 * the ratio shows what the extra hop costs, not what separate machines would.
 */
import { randomBytes, X509Certificate } from 'node:crypto';
import { copyFile, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Agent, fetch } from 'undici';
import { startAgent } from '../agent/agent.js';
import { createAgentExecutor } from '../agent/main.js';
import { startNats, startPostgres } from '../scripts/local-services.js';
import { loadConfig, type ServerConfig } from '../src/config.js';
import { createLogger } from '../src/logger.js';
import { type RunningServer, startServer } from '../src/server.js';
import { SECRETS_KEY_FILE_NAME } from '../src/storage/secrets-box.js';
import { GENERATED_CERT_FILE, GENERATED_KEY_FILE } from '../src/tls/management-certificate.js';
import { type BenchRow, percentile, repeat, spread } from './harness.js';

export interface ClusterBenchOptions {
  /** Calls per measurement on each replica (default 300). */
  calls?: number;
  repetitions?: number;
}

interface Node {
  server: RunningServer;
  dataDir: string;
  dispatcher: Agent;
}

const SETUP = 'bench-cluster-setup';

async function startNode(
  env: Record<string, string>,
  dataDir: string,
  extra: Partial<ServerConfig> = {},
): Promise<Node> {
  const config = {
    ...loadConfig({
      P2PSTREAM_DATA_DIR: dataDir,
      MANAGEMENT_ADDR: '127.0.0.1',
      MANAGEMENT_PORT: '0',
      P2PSTREAM_SETUP_TOKEN: SETUP,
      LOG_LEVEL: 'silent',
      ...env,
    }),
    ...extra,
  };
  const server = await startServer(config, createLogger('silent'));
  const dispatcher = new Agent({ connect: { ca: server.certificate, servername: 'localhost' } });
  return { server, dataDir, dispatcher };
}

interface Reply {
  status: number;
  // biome-ignore lint/suspicious/noExplicitAny: bench reads API answers freely
  json: any;
  cookie: string | null;
}

async function api(
  node: Node,
  method: string,
  pathname: string,
  options: { body?: unknown; auth?: string; headers?: Record<string, string> } = {},
): Promise<Reply> {
  const headers: Record<string, string> = { origin: node.server.url, ...options.headers };
  if (options.auth)
    headers[options.auth.startsWith('p2pat_') ? 'authorization' : 'cookie'] = options.auth.startsWith(
      'p2pat_',
    )
      ? `Bearer ${options.auth}`
      : options.auth;
  if (options.body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`${node.server.url}${pathname}`, {
    method,
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    dispatcher: node.dispatcher,
  });
  const text = await res.text();
  return {
    status: res.status,
    json: text ? JSON.parse(text) : null,
    cookie: res.headers.get('set-cookie')?.split(';')[0] ?? null,
  };
}

async function waitFor(check: () => Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`cluster bench: ${what} did not happen within 20 s`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

export async function benchCluster(options: ClusterBenchOptions = {}): Promise<BenchRow[]> {
  const calls = options.calls ?? 300;
  const cleanups: Array<() => Promise<unknown> | unknown> = [];
  try {
    const postgres = await startPostgres({ password: randomBytes(12).toString('base64url') });
    cleanups.push(() => postgres.close());
    const nats = await startNats();
    cleanups.push(() => nats.close());
    const env = { P2PSTREAM_DATABASE_URL: await postgres.createDatabase(), P2PSTREAM_NATS_URL: nats.url };
    const dirs = await Promise.all(
      ['a', 'b', 't'].map((n) => mkdtemp(path.join(os.tmpdir(), `p2pstream-bench-cluster-${n}-`))),
    );
    cleanups.push(() => Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true }))));
    const holder = await startNode(env, dirs[0]!);
    cleanups.push(() => holder.server.close());
    for (const file of [SECRETS_KEY_FILE_NAME, GENERATED_CERT_FILE, GENERATED_KEY_FILE]) {
      await copyFile(path.join(dirs[0]!, file), path.join(dirs[1]!, file));
    }
    const forwarder = await startNode(env, dirs[1]!);
    cleanups.push(() => forwarder.server.close());
    const target = await startNode({}, dirs[2]!);
    cleanups.push(() => target.server.close());
    for (const node of [holder, forwarder, target]) cleanups.push(() => node.dispatcher.close());

    const password = 'bench cluster password';
    const setup = await api(holder, 'POST', '/api/v1/setup', {
      body: { username: 'admin', password, setupToken: SETUP },
    });
    const token = (
      await api(holder, 'POST', '/api/v1/tokens', { auth: setup.cookie!, body: { name: 'bench' } })
    ).json.token as string;
    const targetSetup = await api(target, 'POST', '/api/v1/setup', {
      body: { username: 'admin', password, setupToken: SETUP },
    });
    const targetToken = (
      await api(target, 'POST', '/api/v1/tokens', { auth: targetSetup.cookie!, body: { name: 'cp' } })
    ).json.token as string;
    const created = await api(holder, 'POST', '/api/v1/agents', {
      auth: token,
      body: { name: 'bench-agent' },
    });
    const agentId = created.json.agent.id as string;
    const agent = startAgent({
      managementUrl: holder.server.url,
      agentId,
      agentToken: created.json.token as string,
      fingerprint: new X509Certificate(holder.server.certificate).fingerprint256,
      createExecutor: createAgentExecutor,
    });
    cleanups.push(() => agent.close());
    await waitFor(
      async () =>
        (await api(forwarder, 'GET', `/api/v1/agents/${agentId}`, { auth: token })).json?.agent?.status ===
        'connected',
      'the agent connecting',
    );
    const env1 = await api(holder, 'POST', '/api/v1/environments', {
      auth: token,
      body: { name: 'target', url: target.server.url, transport: 'agent', agentId, accessToken: targetToken },
    });
    const environmentId = env1.json.environment.id as string;
    const discovered = await api(holder, 'POST', `/api/v1/environments/${environmentId}/discover`, {
      auth: token,
    });
    await api(holder, 'POST', `/api/v1/environments/${environmentId}/trust`, {
      auth: token,
      body: { fingerprintSha256: discovered.json.certificate.fingerprintSha256 },
    });

    const p50 = async (node: Node): Promise<number> => {
      const times: number[] = [];
      for (let i = 0; i < calls; i++) {
        const started = performance.now();
        const res = await api(node, 'GET', '/api/v1/system/info', {
          auth: token,
          headers: { 'x-p2pstream-environment': environmentId },
        });
        if (res.status !== 200) throw new Error(`cluster bench: relayed call answered ${res.status}`);
        times.push(performance.now() - started);
      }
      return percentile(
        times.sort((a, b) => a - b),
        0.5,
      );
    };
    const samples = await repeat(
      async () => {
        const holding = await p50(holder);
        const forwarded = await p50(forwarder);
        return { holding, forwarded, ratio: forwarded / holding };
      },
      { warmup: 1, repetitions: options.repetitions ?? 3 },
    );
    const ratio = spread(samples.map((s) => s.ratio));
    return [
      {
        group: 'cluster',
        metric: 'relayed call p50, forwarding replica ÷ holding replica',
        value: ratio,
        unit: '×',
        goal: '≤ 1.3',
        met: ratio.median <= 1.3,
        note: `p50 holding ${spread(samples.map((s) => s.holding)).median.toFixed(2)} ms, forwarding ${spread(samples.map((s) => s.forwarded)).median.toFixed(2)} ms over ${calls} sequential calls; replicas, agent and target share this process, PostgreSQL and NATS run beside it`,
      },
    ];
  } finally {
    for (const cleanup of cleanups.reverse()) {
      try {
        await cleanup();
      } catch {
        // best effort
      }
    }
  }
}
