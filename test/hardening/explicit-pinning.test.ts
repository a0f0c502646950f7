/**
 * Pinning that no process setting can turn off. The control plane (this
 * process) and the agent (the built bin, its own process) both run with
 * NODE_TLS_REJECT_UNAUTHORIZED=0, the setting people reach for with
 * self-signed setups; with it, Node skips `checkServerIdentity` after a failed
 * chain check and still completes the connection. Every TLS client that can
 * send a credential must refuse an impostor anyway, before writing a byte:
 * - a relayed call through the direct transport (412 CERTIFICATE_CHANGED);
 * - a relayed call through the agent (412 CERTIFICATE_CHANGED);
 * - the agent's own link to the control plane, in CA mode and in fingerprint
 *   mode (a certificate swapped between the probe and the connection).
 * In each case the impostor receives zero application bytes.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import https from 'node:https';
import type net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { TLSSocket } from 'node:tls';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createCertificate, type GeneratedCertificate } from '../../src/tls/certificates.js';
import { createCloudflareProvider } from '../../src/tls/dns-cloudflare.js';
import { createTestAgent, serverFingerprint } from '../helpers/agent.js';
import { BIN, ensureBuilt } from '../helpers/bin.js';
import { useCleanups } from '../helpers/cleanup.js';
import type { TestServer } from '../helpers/server.js';
import {
  eventually,
  type Instance,
  registerEnvironment,
  startImpostor,
  startInstance,
} from '../integration/environment-helpers.js';

const previous = process.env.NODE_TLS_REJECT_UNAUTHORIZED;
// Declared before the afterEach below, so the agent processes are killed before these run.
const cleanups = useCleanups();
const children: ChildProcess[] = [];

beforeAll(() => {
  ensureBuilt();
  process.env.NODE_TLS_REJECT_UNAUTHORIZED = '0';
}, 120_000);
afterAll(() => {
  if (previous === undefined) delete process.env.NODE_TLS_REJECT_UNAUTHORIZED;
  else process.env.NODE_TLS_REJECT_UNAUTHORIZED = previous;
});
afterEach(async () => {
  for (const child of children.splice(0)) {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = once(child, 'exit');
      child.kill('SIGKILL');
      await exited;
    }
  }
});

const instance = (options: Parameters<typeof startInstance>[0] = {}): Promise<Instance> =>
  startInstance(options, cleanups);

/** The built agent with NODE_TLS_REJECT_UNAUTHORIZED=0; its output collected. */
function runAgent(env: Record<string, string>): { output(): string } {
  const child = spawn(process.execPath, [BIN, 'agent'], {
    env: { PATH: process.env.PATH ?? '', LOG_LEVEL: 'info', NODE_TLS_REJECT_UNAUTHORIZED: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  let out = '';
  child.stdout?.on('data', (chunk: Buffer) => {
    out += chunk.toString();
  });
  child.stderr?.on('data', (chunk: Buffer) => {
    out += chunk.toString();
  });
  return { output: () => out };
}

/** Waits until the hub of `server` has agent `id` connected; the agent's output names why not. */
async function connected(server: TestServer, id: string, agent: { output(): string }): Promise<void> {
  await eventually(() => server.server.hub.isConnected(id), 15_000).catch(() => {
    throw new Error(`agent did not connect:\n${agent.output()}`);
  });
}

/**
 * Waits until `agent` has refused `impostor` (its probe and one more
 * connection at least), which got not one application byte.
 */
async function refused(agent: { output(): string }, impostor: FakeControlPlane): Promise<void> {
  await eventually(
    () => /refusing the control plane/.test(agent.output()) && impostor.connections >= 2,
    15_000,
  ).catch(() => {
    throw new Error(`agent did not refuse (${impostor.connections} connections):\n${agent.output()}`);
  });
  expect(impostor.receivedBytes).toBe(0);
  expect(agent.output()).toMatch(/CERTIFICATE_CHANGED/);
}

interface FakeControlPlane {
  url: string;
  /** TCP connections accepted. */
  readonly connections: number;
  /** Application bytes received over all connections. */
  readonly receivedBytes: number;
  close(): Promise<void>;
}

/**
 * An HTTPS server posing as a control plane: presents `first` on the first
 * TCP connection and `then` on every later one, records every application byte.
 */
async function fakeControlPlane(
  first: GeneratedCertificate,
  then: GeneratedCertificate,
): Promise<FakeControlPlane> {
  let connections = 0;
  let receivedBytes = 0;
  const sockets = new Set<net.Socket>();
  const server = https.createServer({ cert: first.cert, key: first.key }, (_req, res) => {
    res.writeHead(404).end();
  });
  server.on('connection', (socket: net.Socket) => {
    connections++;
    // The TLS socket of this connection already holds `first`; later ones get `then`.
    if (connections === 1) server.setSecureContext({ cert: then.cert, key: then.key });
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  server.on('secureConnection', (socket: TLSSocket) => {
    socket.on('data', (data: Buffer) => {
      receivedBytes += data.length;
    });
  });
  server.on('tlsClientError', () => {});
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  return {
    url: `https://127.0.0.1:${port}`,
    get connections() {
      return connections;
    },
    get receivedBytes() {
      return receivedBytes;
    },
    async close() {
      const closed = once(server, 'close');
      server.close();
      for (const socket of sockets) socket.destroy();
      await closed;
    },
  };
}

/** A trusted environment whose target is then replaced by an impostor on the same port. */
async function impostorBehind(
  control: Instance,
  options: { transport: 'direct' | 'agent'; agentId?: string },
) {
  const target = await startInstance();
  const accessToken = await target.server.createToken(target.cookie, 'control-plane');
  const id = await registerEnvironment(
    control,
    { url: target.server.url, accessToken },
    { transport: options.transport, ...(options.agentId ? { agentId: options.agentId } : {}) },
  );
  const selected = { 'x-p2pstream-environment': id };
  const before = await control.server.request('GET', '/api/v1/system/info', {
    token: control.token,
    headers: selected,
  });
  expect(before.status).toBe(200);
  const port = target.server.server.port;
  await target.server.close();
  const impostor = await startImpostor(port);
  cleanups.push(() => impostor.close());
  return { id, selected, impostor };
}

describe('with NODE_TLS_REJECT_UNAUTHORIZED=0', () => {
  it('a relayed call through the direct transport refuses an impostor: 412, not one byte sent', async () => {
    const control = await instance();
    const { selected, impostor } = await impostorBehind(control, { transport: 'direct' });
    const refused = await control.server.request('POST', '/api/v1/tokens', {
      token: control.token,
      headers: selected,
      body: { name: 'must-not-arrive' },
    });
    expect([refused.status, refused.json.error?.code]).toEqual([412, 'CERTIFICATE_CHANGED']);
    expect(impostor.connections).toBeGreaterThan(0);
    expect(impostor.receivedBytes).toBe(0);
  });

  it('a relayed call through an agent process refuses an impostor: 412, not one byte sent', async () => {
    const control = await instance();
    const created = await createTestAgent(control.server, control.cookie);
    const agent = runAgent({
      MANAGEMENT_URL: control.server.url,
      AGENT_ID: created.id,
      AGENT_TOKEN: created.token,
      MANAGEMENT_FINGERPRINT: serverFingerprint(control.server),
    });
    await connected(control.server, created.id, agent);
    const { selected, impostor } = await impostorBehind(control, { transport: 'agent', agentId: created.id });
    const refused = await control.server.request('GET', '/api/v1/system/info', {
      token: control.token,
      headers: selected,
    });
    expect([refused.status, refused.json.error?.code]).toEqual([412, 'CERTIFICATE_CHANGED']);
    expect(impostor.connections).toBeGreaterThan(0);
    expect(impostor.receivedBytes).toBe(0);
    expect(agent.output()).not.toContain(created.token);
  });

  it('the agent in CA mode refuses a control plane outside its CA: no upgrade, no token sent', async () => {
    const real = await instance();
    const created = await createTestAgent(real.server, real.cookie);
    const dir = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-pin-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const caFile = path.join(dir, 'ca.pem');
    await writeFile(caFile, real.server.server.certificate);
    const impostorCert = await createCertificate({ altNames: ['localhost', '127.0.0.1'] });
    const impostor = await fakeControlPlane(impostorCert, impostorCert);
    cleanups.push(() => impostor.close());
    const agent = runAgent({
      MANAGEMENT_URL: impostor.url,
      AGENT_ID: created.id,
      AGENT_TOKEN: created.token,
      MANAGEMENT_CA_FILE: caFile,
    });
    await refused(agent, impostor);
    expect(agent.output()).not.toContain(created.token);

    // The same agent against the real control plane connects: the CA check itself works.
    const good = runAgent({
      MANAGEMENT_URL: real.server.url,
      AGENT_ID: created.id,
      AGENT_TOKEN: created.token,
      MANAGEMENT_CA_FILE: caFile,
    });
    await connected(real.server, created.id, good);
  });

  it('the agent in fingerprint mode refuses a certificate swapped after its probe: no token sent', async () => {
    const pinned = await createCertificate({ altNames: ['localhost', '127.0.0.1'] });
    const swapped = await createCertificate({ altNames: ['localhost', '127.0.0.1'] });
    const impostor = await fakeControlPlane(pinned, swapped);
    cleanups.push(() => impostor.close());
    const agent = runAgent({
      MANAGEMENT_URL: impostor.url,
      AGENT_ID: '6f1c1f7e-8a39-4c3e-9d7e-0c4f4f0e7a11',
      AGENT_TOKEN: `p2pag_${'a'.repeat(43)}`,
      MANAGEMENT_FINGERPRINT: pinned.fingerprintSha256,
    });
    // The probe (connection 1) sees the pinned leaf; the WebSocket (connection 2) gets the other one.
    await refused(agent, impostor);
  });

  it('the DNS provider client does not send its API token to an unverified server', async () => {
    const cert = await createCertificate({ altNames: ['localhost', '127.0.0.1'] });
    const impostor = await fakeControlPlane(cert, cert);
    cleanups.push(() => impostor.close());
    const provider = createCloudflareProvider({ apiToken: 'cf-secret-token', apiBaseUrl: impostor.url });
    await expect(provider.createTxt('_acme-challenge.example.com', 'v')).rejects.toThrow();
    expect(impostor.connections).toBeGreaterThan(0);
    expect(impostor.receivedBytes).toBe(0);
  });
});
