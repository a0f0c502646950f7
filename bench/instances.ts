/**
 * Real p2pstream processes for the benchmarks: `p2pstream server` and
 * `p2pstream agent` started from the built bin as child processes on
 * loopback, each with its own temporary data dir, so the CPU time and memory
 * of the control plane, the agent and the target are read per process from
 * /proc. Set up through the public API only, as an operator would.
 */
import { type ChildProcess, fork, spawn } from 'node:child_process';
import { randomBytes, X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Pool } from 'undici';
import { freePort } from '../scripts/local-services.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
/** The repository's dist/, whether this module runs compiled (dist/bench/) or from source (bench/). */
export const DIST =
  path.basename(path.dirname(HERE)) === 'dist' ? path.dirname(HERE) : path.join(HERE, '..', 'dist');
const CLI = path.join(DIST, 'src', 'cli.js');
const CLOCK_TICKS_PER_SECOND = 100;
const PAGE_SIZE = 4096;

/** CPU time (user + system) and resident memory of a process, from /proc. */
export interface ProcessSample {
  cpuMs: number;
  rssBytes: number;
}

export async function sampleProcess(pid: number): Promise<ProcessSample> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name (which may hold spaces) start after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  return { cpuMs: (ticks / CLOCK_TICKS_PER_SECOND) * 1000, rssBytes: Number(fields[21]) * PAGE_SIZE };
}

/** Samples the RSS of `pids` every `intervalMs` until stopped; reports each one's peak. */
export function watchPeakRss(pids: readonly number[], intervalMs = 20): { stop(): Promise<number[]> } {
  const peaks = pids.map(() => 0);
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      const samples = await Promise.all(pids.map((pid) => sampleProcess(pid)));
      samples.forEach((s, i) => {
        peaks[i] = Math.max(peaks[i]!, s.rssBytes);
      });
      await new Promise((resolve) => setTimeout(resolve, intervalMs));
    }
  })();
  return {
    async stop() {
      stopped = true;
      await loop;
      return peaks;
    },
  };
}

interface ApiAnswer {
  status: number;
  // biome-ignore lint/suspicious/noExplicitAny: the benchmark reads API answers freely
  json: any;
}

/** A running `p2pstream server` child process with its admin set up. */
export interface Instance {
  name: string;
  url: string;
  pid: number;
  certificate: string;
  /** An API token of the admin. */
  token: string;
  /** A keep-alive pool to the management listener that trusts its certificate. */
  pool(connections?: number): Pool;
  /** Calls the API with the admin token; throws on an error answer. */
  api(method: string, pathname: string, body?: unknown, environment?: string): Promise<ApiAnswer>;
  stop(): Promise<void>;
}

const children = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});

function spawnBin(args: string[], env: Record<string, string>): ChildProcess {
  // e.g. BENCH_NODE_ARGS='--cpu-prof --cpu-prof-dir=prof' profiles every server and agent process.
  const nodeArgs = (process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean);
  const child = spawn(process.execPath, [...nodeArgs, CLI, ...args], {
    env: {
      PATH: process.env.PATH ?? '',
      LOG_LEVEL: 'warn',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

/** A helper process of the benchmarks forked from a built entry file of bench/. */
export interface ForkedEntry<Ready> {
  pid: number;
  /** The first message the entry sent (it sends one once it is ready). */
  ready: Ready;
  stop(): Promise<void>;
}

/**
 * Forks `dist/bench/<name>.js` (always the built file, also when this module
 * runs from source) with `args` and no inherited node flags, and waits for its
 * first IPC message; rejects if it exits before sending one.
 */
export async function forkEntry<Ready>(
  name: string,
  args: readonly string[] = [],
): Promise<ForkedEntry<Ready>> {
  const child = fork(path.join(DIST, 'bench', `${name}.js`), [...args], {
    execArgv: [],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  children.add(child);
  child.once('exit', () => children.delete(child));
  const ready = await new Promise<Ready>((resolve, reject) => {
    child.once('message', (message) => resolve(message as Ready));
    child.once('exit', (code) => reject(new Error(`${name} exited with ${code} before it was ready`)));
  });
  return {
    pid: child.pid!,
    ready,
    async stop() {
      if (child.connected) child.disconnect();
      await stopChild(child);
    },
  };
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

/** Starts `p2pstream server` on 127.0.0.1 (any free port), sets up its admin and an API token. */
export async function startInstance(name: string): Promise<Instance> {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), `p2pstream-bench-${name}-`));
  const setupToken = randomBytes(12).toString('base64url');
  const child = spawnBin(['server'], {
    P2PSTREAM_DATA_DIR: dataDir,
    MANAGEMENT_ADDR: '127.0.0.1',
    MANAGEMENT_PORT: '0',
    P2PSTREAM_SETUP_TOKEN: setupToken,
    LOG_LEVEL: 'info',
  });
  let output = '';
  const url = await new Promise<string>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      const match = /management listening on (https:\/\/[^"\s]+)/.exec(output);
      if (match) resolve(match[1]!);
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code) => reject(new Error(`${name} exited with ${code}: ${output}`)));
  });
  // From here on the per-request info lines are only drained, not kept.
  child.stdout!.removeAllListeners('data');
  child.stderr!.removeAllListeners('data');
  child.stdout!.resume();
  child.stderr!.resume();
  const certificate = await readFile(path.join(dataDir, 'management-cert.pem'), 'utf8');
  const pools: Pool[] = [];
  const pool = (connections = 1) => {
    const created = new Pool(url, {
      connections,
      connect: { ca: certificate, servername: 'localhost' },
      keepAliveTimeout: 30_000,
    });
    pools.push(created);
    return created;
  };
  const apiPool = pool(4);
  let cookie = '';
  let token = '';
  const call = async (
    method: string,
    pathname: string,
    body: unknown,
    environment: string | undefined,
  ): Promise<ApiAnswer> => {
    const headers: Record<string, string> = { origin: url };
    if (token) headers.authorization = `Bearer ${token}`;
    else if (cookie) headers.cookie = cookie;
    if (environment) headers['x-p2pstream-environment'] = environment;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await apiPool.request({
      method: method as 'GET',
      path: pathname,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.body.text();
    const setCookie = res.headers['set-cookie'];
    if (setCookie) cookie = String(setCookie).split(';')[0]!;
    const json = text ? JSON.parse(text) : null;
    if (res.statusCode >= 400) {
      throw new Error(`${name}: ${method} ${pathname} → ${res.statusCode} ${text}`);
    }
    return { status: res.statusCode, json };
  };
  await call(
    'POST',
    '/api/v1/setup',
    { username: 'bench', password: randomBytes(18).toString('base64url'), setupToken },
    undefined,
  );
  token = (await call('POST', '/api/v1/tokens', { name: 'bench' }, undefined)).json.token as string;
  return {
    name,
    url,
    pid: child.pid!,
    certificate,
    token,
    pool,
    api: (method, pathname, body, environment) => call(method, pathname, body, environment),
    async stop() {
      await Promise.all(pools.map((p) => p.close()));
      await stopChild(child);
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** A running `p2pstream agent` child process connected to `control`. */
export interface AgentProcess {
  id: string;
  pid: number;
  stop(): Promise<void>;
}

/**
 * Creates an agent on `control`, starts `p2pstream agent` (with `env` added
 * to its environment, e.g. AGENT_ALLOWED_TARGETS) and waits until it is
 * connected.
 */
export async function startAgentProcess(
  control: Instance,
  env: Readonly<Record<string, string>> = {},
): Promise<AgentProcess> {
  const created = await control.api('POST', '/api/v1/agents', {
    name: `bench-${randomBytes(3).toString('hex')}`,
  });
  const id = created.json.agent.id as string;
  const child = spawnBin(['agent'], {
    MANAGEMENT_URL: control.url,
    AGENT_ID: id,
    AGENT_TOKEN: created.json.token as string,
    MANAGEMENT_FINGERPRINT: new X509Certificate(control.certificate).fingerprint256,
    ...env,
  });
  child.stdout!.resume();
  child.stderr!.resume();
  const deadline = Date.now() + 15_000;
  while ((await control.api('GET', `/api/v1/agents/${id}`)).json.agent.status !== 'connected') {
    if (child.exitCode !== null) throw new Error(`the agent exited with ${child.exitCode}`);
    if (Date.now() > deadline) throw new Error('the agent did not connect within 15 s');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return { id, pid: child.pid!, stop: () => stopChild(child) };
}

/**
 * Registers `url` as an environment of `control` (direct, or through
 * `agentId`), discovers and trusts its certificate; returns its id.
 */
export async function registerEnvironment(
  control: Instance,
  target: { url: string; accessToken: string },
  agentId?: string,
): Promise<string> {
  const created = await control.api('POST', '/api/v1/environments', {
    name: `bench-${agentId ? 'agent' : 'direct'}-${randomBytes(3).toString('hex')}`,
    url: target.url,
    transport: agentId ? 'agent' : 'direct',
    ...(agentId ? { agentId } : {}),
    accessToken: target.accessToken,
    timeoutMs: 60_000,
  });
  const id = created.json.environment.id as string;
  const discovered = await control.api('POST', `/api/v1/environments/${id}/discover`);
  await control.api('POST', `/api/v1/environments/${id}/trust`, {
    fingerprintSha256: discovered.json.certificate.fingerprintSha256,
  });
  return id;
}

/**
 * Creates an enabled listener on 127.0.0.1 (a free port) through `instance`'s
 * API; with `certificateId` an https one serving that certificate by default.
 */
export async function addListener(
  instance: Instance,
  name: string,
  certificateId?: string,
): Promise<{ id: string; url: string }> {
  const port = await freePort();
  const created = await instance.api('POST', '/api/v1/proxy/listeners', {
    name,
    bindAddress: '127.0.0.1',
    port,
    enabled: true,
    ...(certificateId ? { protocol: 'https', defaultCertificateId: certificateId } : {}),
  });
  return {
    id: created.json.listener.id as string,
    url: `${certificateId ? 'https' : 'http'}://127.0.0.1:${port}`,
  };
}
