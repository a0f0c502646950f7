/**
 * The server side of the hub-scale benchmark, run as a child process (forked
 * with --expose-gc) so its memory is measured alone. Two kinds:
 *
 * - `hub`: a real p2pstream control plane (startServer) on a data dir holding
 *   N agents, created in one store update with their tokens handed back to the
 *   parent (creating 10,000 through the API would measure the registry, not
 *   the hub);
 * - `bare`: a bare `ws` WebSocketServer on an https server with the same kind
 *   of certificate (ECDSA P-256), the baseline;
 * - `replica` (the cluster bench): a control plane on the PostgreSQL database
 *   and NATS server it is given, in the data dir the parent made (the parent
 *   writes the agents into the database and copies the first replica's secrets
 *   key and certificate to the others); answered once it takes agents.
 *
 * Messages from the parent: `{cmd: 'start', kind, agents}` (`{cmd: 'start',
 * kind: 'replica', dataDir, databaseUrl, natsUrl}`), `{cmd: 'stats'}` (after two GCs: RSS,
 * JS heap and buffers, the young generation's resident bytes, agents held),
 * `{cmd: 'discoverEach', url}` (hub only: one discovery through each agent),
 * `{cmd: 'sample'}` (from now on, the connected agents every 100 ms),
 * `{cmd: 'samples'}` (those samples, `[ms since the epoch, count]`, and the
 * CPU time this process used since `sample`, `cpuMs`, and its event loop's
 * delays meanwhile, `loopDelayMs: {p99, max}`),
 * `{cmd: 'stop'}`. Every answer is one message back.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import v8 from 'node:v8';
import { WebSocketServer } from 'ws';
import { loadConfig } from '../src/config.js';
import { createLogger } from '../src/logger.js';
import { type RunningServer, startServer } from '../src/server.js';
import { LowdbStore } from '../src/storage/lowdb-store.js';
import { createCertificate } from '../src/tls/certificates.js';
import { newAgentRecords } from './light-agents.js';

type Message =
  | { cmd: 'start'; kind: 'hub' | 'bare'; agents: number }
  | { cmd: 'start'; kind: 'replica'; dataDir: string; databaseUrl: string; natsUrl: string }
  | { cmd: 'sample' }
  | { cmd: 'samples' }
  | { cmd: 'stats' }
  | { cmd: 'discoverEach'; url: string }
  | { cmd: 'stop' };

const gc = (globalThis as { gc?: () => void }).gc;
let stop: () => Promise<void> = async () => {};
let server: RunningServer | null = null;
let agentIds: string[] = [];
let connections = (): number => 0;

function reply(message: unknown): void {
  process.send!(message);
}

async function startHub(count: number): Promise<unknown> {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-bench-hub-'));
  const store = await LowdbStore.open(dataDir);
  const { records, credentials } = newAgentRecords(count);
  await store.update((db) => {
    db.agents.push(...records);
  });
  await store.close();
  const config = loadConfig({
    P2PSTREAM_DATA_DIR: dataDir,
    MANAGEMENT_ADDR: '127.0.0.1',
    MANAGEMENT_PORT: '0',
  });
  const running = await startServer(config, createLogger('error'));
  server = running;
  agentIds = credentials.map((a) => a.id);
  connections = () => running.hub.connectedCount();
  stop = async () => {
    await running.close();
    await rm(dataDir, { recursive: true, force: true });
  };
  return { url: running.url, ca: running.certificate, agents: credentials };
}

async function startReplica(dataDir: string, databaseUrl: string, natsUrl: string): Promise<unknown> {
  const config = loadConfig({
    P2PSTREAM_DATA_DIR: dataDir,
    P2PSTREAM_DATABASE_URL: databaseUrl,
    P2PSTREAM_NATS_URL: natsUrl,
    MANAGEMENT_ADDR: '127.0.0.1',
    MANAGEMENT_PORT: '0',
  });
  const running = await startServer(config, createLogger('error'));
  server = running;
  connections = () => running.hub.connectedCount();
  stop = () => running.close();
  const deadline = Date.now() + 30_000;
  while (!running.hub.acceptingAgents) {
    if (Date.now() > deadline) throw new Error('the replica did not take agents within 30 s');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return { url: running.url, ca: running.certificate, replicaId: running.replicaId, agents: [] };
}

let samples: Array<[number, number]> = [];
let sampler: ReturnType<typeof setInterval> | null = null;
/** This process's CPU time when sampling started. */
let cpuAtSample = process.cpuUsage();
const loopDelay = monitorEventLoopDelay({ resolution: 20 });

function startSampling(): void {
  cpuAtSample = process.cpuUsage();
  loopDelay.reset();
  loopDelay.enable();
  samples = [[Date.now(), connections()]];
  if (sampler) clearInterval(sampler);
  sampler = setInterval(() => samples.push([Date.now(), connections()]), 100);
}

async function startBare(): Promise<unknown> {
  const cert = await createCertificate({ altNames: ['localhost', '127.0.0.1'] });
  const httpsServer = https.createServer({ cert: cert.cert, key: cert.key });
  const wss = new WebSocketServer({ server: httpsServer, perMessageDeflate: false, maxPayload: 1024 * 1024 });
  wss.on('connection', (ws) => ws.on('error', () => {}));
  httpsServer.listen(0, '127.0.0.1');
  await new Promise((resolve) => httpsServer.once('listening', resolve));
  connections = () => wss.clients.size;
  stop = async () => {
    for (const ws of wss.clients) ws.terminate();
    await new Promise<void>((resolve) => wss.close(() => resolve()));
    await new Promise<void>((resolve) => httpsServer.close(() => resolve()));
  };
  return {
    url: `https://127.0.0.1:${(httpsServer.address() as AddressInfo).port}`,
    ca: cert.cert,
    agents: [],
  };
}

/** One discovery through each connected agent, 256 at a time; answers the time and the failures. */
async function discoverEach(url: string): Promise<unknown> {
  const hub = server!.hub;
  const started = performance.now();
  let next = 0;
  let failed = 0;
  await Promise.all(
    Array.from({ length: 256 }, async () => {
      while (next < agentIds.length) {
        const id = agentIds[next++]!;
        try {
          await hub.transportFor(id).discover({ url, timeoutMs: 30_000 });
        } catch {
          failed++;
        }
      }
    }),
  );
  return { ms: performance.now() - started, failed };
}

// A profiled run (BENCH_NODE_ARGS=--cpu-prof) writes its profile on exit; a plain SIGTERM would not.
process.on('SIGTERM', () => process.exit(0));

process.on('message', (message: Message) => {
  const answer = async (): Promise<unknown> => {
    switch (message.cmd) {
      case 'start':
        if (message.kind === 'replica')
          return startReplica(message.dataDir, message.databaseUrl, message.natsUrl);
        return message.kind === 'hub' ? startHub(message.agents) : startBare();
      case 'sample':
        startSampling();
        return {};
      case 'samples': {
        samples.push([Date.now(), connections()]);
        const cpu = process.cpuUsage(cpuAtSample);
        return {
          samples,
          cpuMs: (cpu.user + cpu.system) / 1000,
          loopDelayMs: { p99: loopDelay.percentile(99) / 1e6, max: loopDelay.max / 1e6 },
        };
      }
      case 'stats':
        gc?.();
        gc?.();
        {
          const { rss, heapUsed, external, arrayBuffers } = process.memoryUsage();
          // The young generation: semi-spaces that grow (to a fixed cap) with the allocation rate.
          const young = v8
            .getHeapSpaceStatistics()
            .filter((space) => space.space_name.startsWith('new_'))
            .reduce((sum, space) => sum + space.physical_space_size, 0);
          return { rss, heap: heapUsed + external + arrayBuffers, young, connections: connections() };
        }
      case 'discoverEach':
        return discoverEach(message.url);
      case 'stop':
        if (sampler) clearInterval(sampler);
        await stop();
        return {};
    }
  };
  answer().then(reply, (err: unknown) => reply({ error: err instanceof Error ? err.message : String(err) }));
});
