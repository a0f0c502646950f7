/**
 * Bench group `cluster`: several control planes as one.
 *
 * - forwarded ÷ holding p50: a relayed call (`GET /api/v1/system/info` of a
 *   target through an agent) made on the replica that does not hold the
 *   agent (X → NATS → Y → agent) against the same call on the replica that
 *   holds it, the calls alternating (goal ≤ 1.3). The two replicas, the
 *   agent and the target run in this process, so the ratio shows what the
 *   extra hop costs, not what separate machines would. Beside it, figures
 *   that do not move with the machine's load: CPU per call of this process
 *   and of nats-server, and the NATS messages and bytes per forwarded call
 *   (a tap on the link subjects).
 * - memory per agent, replica ÷ one process: 3 replicas each holding 5,000
 *   idle agents (of the 15,000 in their shared database and presence) against
 *   one process (the embedded store, no cluster) holding 5,000, each figure
 *   the RSS growth of its process from connecting them, without the young
 *   generation's growth (see {@link rssPerAgent}), divided by the agents it
 *   holds (goal ≤ 1.1).
 * - settling after a replica dies: 10,000 agents, each with two connections
 *   to 3 replicas as the agent keeps them, one replica killed (SIGKILL); the
 *   time until every agent again has two connections on the survivors (goal
 *   ≤ 30 s), and the busiest second of upgrades the survivors accepted
 *   meanwhile against the busiest second the agents' own reconnect schedule
 *   (backoff with jitter, agent/backoff.ts) can produce (no reconnect storm).
 *
 * For the last two, each replica (and the one process) runs in a child
 * process of its own (bench/hub-scale-server.ts), so its RSS is its own and
 * a kill is a real process dying; the agents are light WebSocket clients
 * (bench/light-agents.ts) in this process for the memory, and in host
 * processes of their own (bench/light-agents-host.ts) for the kill.
 * PostgreSQL and nats-server run as their own processes (Debian's, in temp
 * dirs).
 */
import { type ChildProcess, fork } from 'node:child_process';
import { randomBytes, X509Certificate } from 'node:crypto';
import { copyFile, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Kvm } from '@nats-io/kv';
import { connect as connectNats } from '@nats-io/transport-node';
import { Agent, fetch } from 'undici';
import type WebSocket from 'ws';
import { DEFAULT_STABLE_AFTER_MS, pickManagementUrl, startAgent } from '../agent/agent.js';
import { Backoff, DEFAULT_BACKOFF_INITIAL_MS, DEFAULT_BACKOFF_MAX_MS } from '../agent/backoff.js';
import { createAgentExecutor } from '../agent/main.js';
import { startNats, startPostgres, type TestNats, type TestPostgres } from '../scripts/local-services.js';
import { AGENTS_BUCKET } from '../src/cluster/cluster-presence.js';
import { LINK_SUBJECT_PREFIX } from '../src/cluster/nats-frame-transport.js';
import { loadConfig, type ServerConfig } from '../src/config.js';
import { createLogger } from '../src/logger.js';
import { type RunningServer, startServer } from '../src/server.js';
import { PostgresStore } from '../src/storage/postgres-store.js';
import { SECRETS_KEY_FILE_NAME } from '../src/storage/secrets-box.js';
import { GENERATED_CERT_FILE, GENERATED_KEY_FILE } from '../src/tls/management-certificate.js';
import { type BenchRow, percentile, repeat, roundOrder, spread } from './harness.js';
import { ask, CONNECT_TIMEOUT_MS, IN_FLIGHT, SCALE_SERVER } from './hub-scale.js';
import { DIST, sampleProcess } from './instances.js';
import { type LightCredentials, newAgentRecords, openLightConnection } from './light-agents.js';

export interface ClusterBenchOptions {
  /** Calls per measurement on each replica (default 300). */
  calls?: number;
  repetitions?: number;
  /** Agents each of the 3 replicas holds in the memory measurement (default 5,000). */
  agentsPerReplica?: number;
  /** Agents (two connections each) in the settle measurement (default 10,000). */
  settleAgents?: number;
  /** Progress lines (default none). */
  log?: (line: string) => void;
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

/** Runs the cluster group; see the module comment. */
export async function benchCluster(options: ClusterBenchOptions = {}): Promise<BenchRow[]> {
  const log = options.log ?? (() => {});
  const postgres = await startPostgres({ password: randomBytes(12).toString('base64url') });
  try {
    return [
      ...(await benchForwarded(postgres, options)),
      await benchMemory(postgres, options.agentsPerReplica ?? 5000, log),
      ...(await benchSettle(postgres, options.settleAgents ?? 10_000, log)),
    ];
  } catch (err) {
    log(`cluster: failed: ${err instanceof Error ? err.message : String(err)}`);
    throw err;
  } finally {
    await postgres.close();
  }
}

export async function benchForwarded(
  postgres: TestPostgres,
  options: ClusterBenchOptions,
): Promise<BenchRow[]> {
  const calls = options.calls ?? 300;
  const cleanups: Array<() => Promise<unknown> | unknown> = [];
  try {
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

    const call = async (node: Node): Promise<number> => {
      const started = performance.now();
      const res = await api(node, 'GET', '/api/v1/system/info', {
        auth: token,
        headers: { 'x-p2pstream-environment': environmentId },
      });
      if (res.status !== 200) throw new Error(`cluster bench: relayed call answered ${res.status}`);
      return performance.now() - started;
    };
    // The p50s: holding and forwarding calls alternate (each leading in turn), so a busy moment of
    // the machine falls on both alike.
    const p50s = async (): Promise<{ holding: number; forwarded: number }> => {
      const times = { holding: [] as number[], forwarded: [] as number[] };
      for (let i = 0; i < calls; i++) {
        for (const side of roundOrder(['holding', 'forwarded'] as const, i)) {
          times[side].push(await call(side === 'holding' ? holder : forwarder));
        }
      }
      const p50 = (list: number[]) =>
        percentile(
          list.sort((a, b) => a - b),
          0.5,
        );
      return { holding: p50(times.holding), forwarded: p50(times.forwarded) };
    };
    // Load-independent: CPU per call (this process holds both replicas, the agent, the target and
    // the caller; nats-server its own) in a block of each, and the link's NATS messages per call.
    const natsPid = nats.pid();
    const tap = await connectNats({ servers: nats.url });
    cleanups.push(() => tap.close());
    let linkMessages = 0;
    let linkBytes = 0;
    tap.subscribe(`${LINK_SUBJECT_PREFIX}.>`, {
      callback: (_err, message) => {
        linkMessages++;
        linkBytes += message.data.byteLength;
      },
    });
    await tap.flush();
    const cpuPerCall = async (node: Node) => {
      const natsBefore = natsPid ? (await sampleProcess(natsPid)).cpuMs : 0;
      const messagesBefore = linkMessages;
      const bytesBefore = linkBytes;
      const before = process.cpuUsage();
      for (let i = 0; i < calls; i++) await call(node);
      const used = process.cpuUsage(before);
      await tap.flush();
      const natsAfter = natsPid ? (await sampleProcess(natsPid)).cpuMs : 0;
      return {
        cpu: (used.user + used.system) / 1000 / calls,
        natsCpu: (natsAfter - natsBefore) / calls,
        messages: (linkMessages - messagesBefore) / calls,
        bytes: (linkBytes - bytesBefore) / calls,
      };
    };
    const samples = await repeat(
      async () => {
        const { holding, forwarded } = await p50s();
        const cpuHolding = await cpuPerCall(holder);
        const cpuForwarded = await cpuPerCall(forwarder);
        return {
          holding,
          forwarded,
          ratio: forwarded / holding,
          cpuHolding: cpuHolding.cpu,
          cpuForwarded: cpuForwarded.cpu + cpuForwarded.natsCpu,
          natsCpu: cpuForwarded.natsCpu,
          messages: cpuForwarded.messages,
          bytes: cpuForwarded.bytes,
        };
      },
      { warmup: 1, repetitions: options.repetitions ?? 3 },
    );
    const ratio = spread(samples.map((s) => s.ratio));
    const median = (key: keyof (typeof samples)[number]) => spread(samples.map((s) => s[key])).median;
    return [
      {
        group: 'cluster',
        metric: 'relayed call p50, forwarding replica ÷ holding replica',
        value: ratio,
        unit: '×',
        goal: '≤ 1.3',
        met: ratio.median <= 1.3,
        note: `p50 holding ${median('holding').toFixed(2)} ms, forwarding ${median('forwarded').toFixed(2)} ms over ${calls} calls each, alternating; CPU per call (load-independent) holding ${median('cpuHolding').toFixed(2)} ms, forwarding ${median('cpuForwarded').toFixed(2)} ms (nats-server ${median('natsCpu').toFixed(2)} ms of it), ${median('messages').toFixed(1)} NATS messages (${Math.round(median('bytes'))} bytes) per forwarded call; replicas, agent and target share this process, PostgreSQL and NATS run beside it`,
      },
    ];
  } finally {
    await runCleanups(cleanups);
  }
}

type Cleanups = Array<() => Promise<unknown> | unknown>;

async function runCleanups(cleanups: Cleanups): Promise<void> {
  for (const cleanup of cleanups.reverse()) {
    try {
      await cleanup();
    } catch {
      // best effort
    }
  }
}

// ---- the replicas as processes: memory per agent, settling after a kill ----

const REPLICAS = 3;
/** The time an agent gets to settle before the run says it did not. */
const SETTLE_TIMEOUT_MS = 120_000;
const AGENTS_HOST = path.join(DIST, 'bench', 'light-agents-host.js');
/**
 * Agents in one host process (two sockets each). A real agent is a process of
 * its own; thousands reconnecting at once in one process (a TLS handshake
 * costs the client a few ms of CPU, more on a loaded machine) would block its
 * event loop for seconds and time their own handshakes out.
 */
const AGENTS_PER_HOST = 1000;

interface Stats {
  rss: number;
  heap: number;
  /** Resident bytes of the young generation (V8's semi-spaces). */
  young: number;
  connections: number;
}

/**
 * RSS growth per agent without the young generation's growth: the young
 * generation grows with the allocation rate to a fixed cap (32 MiB here)
 * whatever the agent count, and the one process had grown it while writing
 * its agents, before its baseline, a replica only while agents connect.
 */
function rssPerAgent(before: Stats, after: Stats, agents: number): number {
  return (after.rss - before.rss - (after.young - before.young)) / agents;
}

interface ScaleServer {
  child: ChildProcess & { killHard(): void };
  url: string;
  ca: string;
  replicaId: string;
}

function forkScaleServer(
  cleanups: Cleanups,
  log: (line: string) => void,
): ChildProcess & { killHard(): void } {
  const child = fork(SCALE_SERVER, [], {
    // BENCH_NODE_ARGS (e.g. '--cpu-prof --cpu-prof-dir=prof') applies to the replicas too.
    execArgv: ['--expose-gc', ...(process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean)],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  let ending = false;
  child.once('exit', (code, signal) => {
    if (!ending) log(`cluster: a server process (pid ${child.pid}) exited by itself with ${code ?? signal}`);
  });
  cleanups.push(async () => {
    if (child.connected && child.exitCode === null && child.signalCode === null)
      await ask(child, { cmd: 'stop' }).catch(() => {});
    ending = true;
    child.kill();
  });
  return Object.assign(child, {
    killHard: () => {
      ending = true;
      child.kill('SIGKILL');
    },
  });
}

/** Writes `count` agents into the shared database (one transaction) before any replica starts. */
async function seedAgents(databaseUrl: string, count: number): Promise<LightCredentials[]> {
  const store = await PostgresStore.open({ url: databaseUrl });
  try {
    const { records, credentials } = newAgentRecords(count);
    await store.update((db) => {
      db.agents.push(...records);
    });
    return credentials;
  } finally {
    await store.close();
  }
}

/**
 * A fresh database and NATS server holding `agents` agents, and `REPLICAS`
 * replica processes on them (the first one's secrets key and certificate
 * copied to the others, as docs/cluster.md asks).
 */
async function startCluster(
  postgres: TestPostgres,
  agents: number,
  cleanups: Cleanups,
  log: (line: string) => void,
): Promise<{ nats: TestNats; replicas: ScaleServer[]; credentials: LightCredentials[] }> {
  const nats = await startNats();
  cleanups.push(() => nats.close());
  const databaseUrl = await postgres.createDatabase();
  const credentials = await seedAgents(databaseUrl, agents);
  const dirs = await Promise.all(
    Array.from({ length: REPLICAS }, (_, i) =>
      mkdtemp(path.join(os.tmpdir(), `p2pstream-bench-replica-${i}-`)),
    ),
  );
  cleanups.push(() => Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true }))));
  const start = async (dataDir: string): Promise<ScaleServer> => {
    const child = forkScaleServer(cleanups, log);
    const started = await ask<{ url: string; ca: string; replicaId: string }>(child, {
      cmd: 'start',
      kind: 'replica',
      dataDir,
      databaseUrl,
      natsUrl: nats.url,
    });
    return { child, ...started };
  };
  const first = await start(dirs[0]!);
  for (const dir of dirs.slice(1)) {
    for (const file of [SECRETS_KEY_FILE_NAME, GENERATED_CERT_FILE, GENERATED_KEY_FILE]) {
      await copyFile(path.join(dirs[0]!, file), path.join(dir, file));
    }
  }
  const others = await Promise.all(dirs.slice(1).map((dir) => start(dir)));
  return { nats, replicas: [first, ...others], credentials };
}

/** Runs `open(i)` for i < count, `IN_FLIGHT` at a time. */
async function inPool(
  count: number,
  open: (index: number) => Promise<void>,
  width = IN_FLIGHT,
): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(width, count) }, async () => {
      try {
        while (next < count) await open(next++);
      } catch (err) {
        next = count; // the others stop too
        throw err;
      }
    }),
  );
}

/** Asks for stats until the server holds `count` agents (the last welcomes may precede the count). */
async function statsWhenHolding(child: ChildProcess, count: number): Promise<Stats> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const stats = await ask<Stats>(child, { cmd: 'stats' });
    if (stats.connections >= count) return stats;
    if (Date.now() > deadline)
      throw new Error(`cluster bench: ${stats.connections} of ${count} agents held after 60 s`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** One connection, tried again with the agent's backoff when refused or reset (at most 5 times), as an agent would. */
async function connectRetrying(
  options: Parameters<typeof openLightConnection>[0],
  retried: () => void,
): Promise<WebSocket> {
  const backoff = new Backoff();
  for (let attempt = 1; ; attempt++) {
    try {
      return (await openLightConnection(options)).ws;
    } catch (err) {
      if (attempt >= 5) throw err;
      retried();
      await new Promise((resolve) => setTimeout(resolve, backoff.next()));
    }
  }
}

/** Memory per agent: 3 replicas holding `perReplica` each against one process holding `perReplica`. */
export async function benchMemory(
  postgres: TestPostgres,
  perReplica: number,
  log: (line: string) => void,
): Promise<BenchRow> {
  const clients: WebSocket[] = [];
  const cleanups: Cleanups = [];
  try {
    // One process, the embedded store, no cluster: the baseline.
    const single = forkScaleServer(cleanups, log);
    const started = await ask<{ url: string; ca: string; agents: LightCredentials[] }>(single, {
      cmd: 'start',
      kind: 'hub',
      agents: perReplica,
    });
    const der = new Uint8Array(new X509Certificate(started.ca).raw);
    const singleBefore = await ask<Stats>(single, { cmd: 'stats' });
    let retries = 0;
    const retried = () => {
      retries++;
    };
    await inPool(perReplica, async (i) => {
      clients.push(
        await connectRetrying(
          {
            url: started.url,
            ca: started.ca,
            der,
            agent: started.agents[i]!,
            handshakeTimeoutMs: CONNECT_TIMEOUT_MS,
          },
          retried,
        ),
      );
    });
    const singleAfter = await statsWhenHolding(single, perReplica);
    log(`cluster: one process holds ${perReplica} agents`);
    const singlePerAgent = rssPerAgent(singleBefore, singleAfter, perReplica);
    const singleYoung = singleAfter.young - singleBefore.young;
    const singleHeapPerAgent = (singleAfter.heap - singleBefore.heap) / perReplica;
    for (const ws of clients.splice(0)) ws.terminate();
    await ask(single, { cmd: 'stop' });
    single.killHard();

    const total = perReplica * REPLICAS;
    const { nats, replicas, credentials } = await startCluster(postgres, total, cleanups, log);
    const clusterDer = new Uint8Array(new X509Certificate(replicas[0]!.ca).raw);
    const before = await Promise.all(replicas.map((r) => ask<Stats>(r.child, { cmd: 'stats' })));
    await inPool(total, async (i) => {
      const replica = replicas[i % REPLICAS]!;
      clients.push(
        await connectRetrying(
          {
            url: replica.url,
            ca: replica.ca,
            der: clusterDer,
            agent: credentials[i]!,
            handshakeTimeoutMs: CONNECT_TIMEOUT_MS,
          },
          retried,
        ),
      );
    });
    await Promise.all(replicas.map((r) => statsWhenHolding(r.child, perReplica)));
    log(`cluster: ${REPLICAS} replicas hold ${perReplica} agents each`);
    // Every replica holds the whole picture: wait until all presence keys are written, and a
    // heartbeat longer, so that the figures include the other replicas' agents too.
    const nc = await connectNats({ servers: nats.url });
    try {
      const kv = await new Kvm(nc).open(AGENTS_BUCKET);
      const deadline = Date.now() + 60_000;
      while ((await kv.status()).values < total) {
        if (Date.now() > deadline) throw new Error('cluster bench: presence keys not all written after 60 s');
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    } finally {
      await nc.close();
    }
    await new Promise((resolve) => setTimeout(resolve, 2500));
    const after = await Promise.all(replicas.map((r) => ask<Stats>(r.child, { cmd: 'stats' })));
    const perAgent = after.map((a, i) => rssPerAgent(before[i]!, a, perReplica));
    const young = after.map((a, i) => a.young - before[i]!.young);
    const heapPerAgent = after.map((a, i) => (a.heap - before[i]!.heap) / perReplica);
    const ratio = spread(perAgent.map((b) => b / singlePerAgent));
    const kb = (bytes: number) => (bytes / 1024).toFixed(1);
    return {
      group: 'cluster',
      metric: `memory per agent, a replica of ${REPLICAS} holding ${perReplica} of ${total} ÷ one process holding ${perReplica}`,
      value: ratio,
      unit: '×',
      goal: '≤ 1.1',
      met: ratio.median <= 1.1,
      note: `RSS growth per agent without the young generation's: replicas ${perAgent.map(kb).join(', ')} KB (JS heap and buffers ${heapPerAgent.map(kb).join(', ')} KB), one process ${kb(singlePerAgent)} KB (${kb(singleHeapPerAgent)} KB); min/max are the replicas. The young generation grew by ${young.map((b) => (b / 1048576).toFixed(1)).join(', ')} MiB in the replicas and ${(singleYoung / 1048576).toFixed(1)} MiB in the one process (it had grown while writing its agents, before its baseline). A replica also keeps every other replica's agents in its presence picture and store document; one connection per agent here, ${retries} connects retried; each process measured after two GCs, so allocator slack and the heap's growth steps move the figure by a few KB at small counts`,
    };
  } finally {
    for (const ws of clients.splice(0)) ws.terminate();
    await runCleanups(cleanups);
  }
}

/** Cumulative accepted upgrades of a server at time t, linear between its samples of connected agents. */
function acceptedBy(samples: Array<[number, number]>): (t: number) => number {
  const cumulative: Array<[number, number]> = [];
  let sum = 0;
  for (let i = 0; i < samples.length; i++) {
    if (i > 0) sum += Math.max(0, samples[i]![1] - samples[i - 1]![1]);
    cumulative.push([samples[i]![0], sum]);
  }
  return (t) => {
    if (cumulative.length === 0 || t <= cumulative[0]![0]) return 0;
    for (let i = 1; i < cumulative.length; i++) {
      const [t1, c1] = cumulative[i]!;
      if (t <= t1) {
        const [t0, c0] = cumulative[i - 1]!;
        return t1 === t0 ? c1 : c0 + ((c1 - c0) * (t - t0)) / (t1 - t0);
      }
    }
    return sum;
  };
}

/** The largest count of `times` (ms) within any 1-s window. */
function busiestSecond(times: number[]): number {
  const sorted = [...times].sort((a, b) => a - b);
  let peak = 0;
  let from = 0;
  for (let to = 0; to < sorted.length; to++) {
    while (sorted[to]! - sorted[from]! >= 1000) from++;
    peak = Math.max(peak, to - from + 1);
  }
  return peak;
}

/**
 * The busiest second of reconnections the agents' own schedule allows: for
 * each lost connection, the backoff delays (agent/backoff.ts, default
 * settings, reset after a stable connection) and URL choices
 * (pickManagementUrl) of its reconnect loop until it names a live replica, as
 * if every attempt there were accepted at once; the largest over 100 draws.
 */
function scheduleBound(
  lost: Array<{ urls: string[]; url: string; otherUrl: string | null }>,
  dead: string,
): number {
  let bound = 0;
  for (let draw = 0; draw < 100; draw++) {
    const times = lost.map(({ urls, url, otherUrl }) => {
      const backoff = new Backoff();
      let t = 0;
      let current = url;
      let failed = false;
      for (let attempt = 0; attempt < 10; attempt++) {
        t += backoff.next();
        current = pickManagementUrl({
          urls,
          current,
          failed,
          taken: otherUrl ? [otherUrl] : [],
          draining: [],
        });
        if (current !== dead) break;
        failed = true;
      }
      return t;
    });
    bound = Math.max(bound, busiestSecond(times));
  }
  return bound;
}

/** Settling after a kill -9 of one replica of 3, with `count` agents keeping two connections each. */
export async function benchSettle(
  postgres: TestPostgres,
  count: number,
  log: (line: string) => void,
): Promise<BenchRow[]> {
  const cleanups: Cleanups = [];
  try {
    const { replicas, credentials } = await startCluster(postgres, count, cleanups, log);
    const urls = replicas.map((r) => r.url);
    // Two sockets per agent: the agents run in host processes of at most AGENTS_PER_HOST each.
    const hosts = Array.from({ length: Math.ceil(count / AGENTS_PER_HOST) }, () => {
      const child = fork(AGENTS_HOST, [], {
        execArgv: (process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean),
        stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      });
      cleanups.push(async () => {
        if (child.connected) await ask(child, { cmd: 'stop' }).catch(() => {});
        child.kill();
      });
      return child;
    });
    // Every agent lists the replicas in the same order, as agents configured alike do: each starts
    // at a place in the list drawn from its id (firstManagementUrl), so they spread over the replicas.
    await Promise.all(
      hosts.map((host, h) =>
        ask(host, {
          cmd: 'start',
          ca: replicas[0]!.ca,
          agents: credentials.map((agent) => ({ urls, agent })).filter((_, i) => i % hosts.length === h),
        }),
      ),
    );
    log(
      `cluster: ${count} agents hold two connections each; killing a replica in ${DEFAULT_STABLE_AFTER_MS / 1000 + 1} s`,
    );
    // Connections up this long reset their backoff when they drop, as the agent's do.
    await new Promise((resolve) => setTimeout(resolve, DEFAULT_STABLE_AFTER_MS + 1000));
    const [victim, ...survivors] = replicas;
    const lost = (
      await Promise.all(
        hosts.map((host) =>
          ask<{ lost: Array<{ urls: string[]; url: string; otherUrl: string | null }> }>(host, {
            cmd: 'lost',
            replicaId: victim!.replicaId,
          }),
        ),
      )
    ).flatMap((answer) => answer.lost);
    await Promise.all(survivors.map((r) => ask(r.child, { cmd: 'sample' })));
    const exited = new Promise((resolve) => victim!.child.once('exit', resolve));
    const killedAt = Date.now();
    victim!.child.killHard();
    await exited;
    const status = async () => {
      const answers = await Promise.all(
        hosts.map((host) =>
          ask<{
            settled: number;
            attempts: number;
            failures: number;
            failuresBy: Record<string, number>;
            cpuMs: number;
            loopDelayMaxMs: number;
          }>(host, { cmd: 'settled', replicaId: victim!.replicaId }),
        ),
      );
      const sum = (key: 'settled' | 'attempts' | 'failures') => answers.reduce((n, a) => n + a[key], 0);
      const by: Record<string, number> = {};
      for (const answer of answers)
        for (const [kind, n] of Object.entries(answer.failuresBy)) by[kind] = (by[kind] ?? 0) + n;
      const failuresBy = Object.entries(by)
        .sort((a, b) => b[1] - a[1])
        .map(([kind, n]) => `${n} ${kind}`)
        .join(', ');
      const hostCpu = answers.map((a) => (a.cpuMs / 1000).toFixed(1)).join(', ');
      const hostDelay = Math.max(...answers.map((a) => a.loopDelayMaxMs)).toFixed(0);
      return {
        settled: sum('settled'),
        attempts: sum('attempts'),
        failures: sum('failures'),
        failuresBy,
        hosts: `agent hosts' CPU ${hostCpu} s, event loop delay max ${hostDelay} ms`,
      };
    };
    let { settled, attempts, failures, failuresBy, hosts: hostLoad } = await status();
    while (settled < count && Date.now() - killedAt < SETTLE_TIMEOUT_MS) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      ({ settled, attempts, failures, failuresBy, hosts: hostLoad } = await status());
    }
    const settleSeconds = (Date.now() - killedAt) / 1000;
    const timelines = await Promise.all(
      survivors.map((r) =>
        ask<{ samples: Array<[number, number]>; cpuMs: number; loopDelayMs: { p99: number; max: number } }>(
          r.child,
          { cmd: 'samples' },
        ),
      ),
    );
    const accepted = timelines.map((t) => acceptedBy(t.samples));
    const at = (t: number) => accepted.reduce((sum, f) => sum + f(t), 0);
    const end = Date.now();
    let peak = 0;
    for (let t = killedAt; t + 1000 <= end; t += 50) peak = Math.max(peak, at(t + 1000) - at(t));
    peak = Math.round(peak);
    const totalAccepted = Math.round(at(end));
    // Load-independent: what a survivor's CPU buys, whatever else the machine runs.
    const perCpuSecond = timelines.map((t, i) => accepted[i]!(end) / Math.max(t.cpuMs / 1000, 0.001));
    const bound = scheduleBound(lost, victim!.url);
    const backoff = `backoff ${DEFAULT_BACKOFF_INITIAL_MS / 1000} s → ${DEFAULT_BACKOFF_MAX_MS / 1000} s, each delay drawn in [base/2, base]`;
    return [
      {
        group: 'cluster',
        metric: `${count} agents on ${REPLICAS} replicas: time to settle after a kill -9 of one`,
        value: spread([settleSeconds]),
        unit: 's',
        goal: '≤ 30',
        met: settled === count && settleSeconds <= 30,
        note: `${settled === count ? 'all' : `only ${settled} of`} ${count} agents back on two connections each on the survivors after ${settleSeconds.toFixed(1)} s; ${lost.length} connections were on the killed replica, ${attempts} attempts after the kill (${failures} failed: ${failuresBy || 'none'}); ${hostLoad}; the agents' own ${backoff}, first retrying the dead replica, make up most of it; the CPU the survivors and the agent hosts get on a shared machine the rest (timeouts, event loop delays)`,
      },
      {
        group: 'cluster',
        metric: `busiest second of accepted agent upgrades on the ${survivors.length} survivors while settling`,
        value: spread([peak]),
        unit: '/s',
        goal: `≤ ${bound}`,
        met: peak <= bound,
        note: `${totalAccepted} upgrades accepted for ${lost.length} lost connections, ${perCpuSecond.map((n) => n.toFixed(0)).join(' and ')} per CPU-second of each survivor (its CPU time from the kill to the end, load-independent), event loop delay p99 ${timelines.map((t) => t.loopDelayMs.p99.toFixed(0)).join(' and ')} ms, max ${timelines.map((t) => t.loopDelayMs.max.toFixed(0)).join(' and ')} ms; the bound is the busiest second of the agents' reconnect schedule (${backoff}, the URL choice of agent/agent.ts) if every attempt were accepted at once (largest of 100 draws): a storm (retries without backoff, or agents replacing each other's connections) would exceed it, and so can a survivor that was starved of CPU accepting its queue at once (then the attempts, two per lost connection without a storm, tell them apart); sampled every 100 ms on each survivor`,
      },
    ];
  } finally {
    await runCleanups(cleanups);
  }
}
