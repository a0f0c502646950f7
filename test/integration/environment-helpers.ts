/**
 * Helpers for the environment tests: a control plane and a target instance
 * on loopback, an environment registered, discovered and trusted between
 * them, and an impostor TLS server that takes over a port and records every
 * application byte it receives.
 */

import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import https from 'node:https';
import type net from 'node:net';
import type { TLSSocket } from 'node:tls';
import { createCertificate } from '../../src/tls/certificates.js';
import type { Cleanup, Cleanups } from '../helpers/cleanup.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { eventually } from '../helpers/wait.js';

export interface Instance {
  server: TestServer;
  cookie: string;
  /** An API token of this instance's admin. */
  token: string;
}

/**
 * Starts an instance and sets its admin up; with `cleanups`, the instance is
 * closed after the test (the one instance/cleanup pattern of these tests).
 */
export async function startInstance(
  options: Parameters<typeof startTestServer>[0] = {},
  cleanups?: Pick<Cleanups, 'push'> | Cleanup[],
): Promise<Instance> {
  const server = await startTestServer(options, cleanups);
  const cookie = await server.setupAdmin();
  const token = await server.createToken(cookie, 'admin-token');
  return { server, cookie, token };
}

/** SHA-256 fingerprint of an instance's management certificate. */
export function fingerprintOf(server: TestServer): string {
  return new X509Certificate(server.server.certificate).fingerprint256;
}

export interface RegisterOptions {
  name?: string;
  url?: string;
  transport?: 'direct' | 'agent';
  agentId?: string;
  accessToken?: string;
  timeoutMs?: number;
  /** Discover and trust the certificate (default true). */
  trust?: boolean;
}

/** An instance's admin as the registration helpers act: by API token, else by session cookie. */
export type Admin = { server: TestServer } & ({ token: string } | { cookie: string });

function credentials(admin: Admin): { token: string } | { cookie: string } {
  return 'token' in admin ? { token: admin.token } : { cookie: admin.cookie };
}

/** Registers `target` on `control` (as the control's admin); returns the environment id. */
export async function registerEnvironment(
  control: Admin,
  target: { url: string; accessToken: string },
  options: RegisterOptions = {},
): Promise<string> {
  const created = await control.server.request('POST', '/api/v1/environments', {
    ...credentials(control),
    body: {
      name: options.name ?? `env-${Math.random().toString(36).slice(2)}`,
      url: options.url ?? target.url,
      transport: options.transport ?? 'direct',
      ...(options.agentId ? { agentId: options.agentId } : {}),
      accessToken: options.accessToken ?? target.accessToken,
      ...(options.timeoutMs ? { timeoutMs: options.timeoutMs } : {}),
    },
  });
  if (created.status !== 201) throw new Error(`environment create failed: ${created.status} ${created.text}`);
  const id = created.json.environment.id as string;
  if (options.trust !== false) await discoverAndTrust(control, id);
  return id;
}

/** Discovers the environment's certificate and trusts it. */
export async function discoverAndTrust(control: Admin, id: string): Promise<string> {
  const discovered = await control.server.request('POST', `/api/v1/environments/${id}/discover`, {
    ...credentials(control),
  });
  if (discovered.status !== 200) throw new Error(`discover failed: ${discovered.status} ${discovered.text}`);
  const fingerprint = discovered.json.certificate.fingerprintSha256 as string;
  const trusted = await control.server.request('POST', `/api/v1/environments/${id}/trust`, {
    ...credentials(control),
    body: { fingerprintSha256: fingerprint },
  });
  if (trusted.status !== 200) throw new Error(`trust failed: ${trusted.status} ${trusted.text}`);
  return fingerprint;
}

export interface Impostor {
  port: number;
  fingerprintSha256: string;
  /** Application bytes received after the handshake, over all connections. */
  readonly receivedBytes: number;
  /** TCP connections accepted. */
  readonly connections: number;
  close(): Promise<void>;
}

/**
 * An HTTPS server on 127.0.0.1:`port` with a fresh certificate valid for
 * 127.0.0.1 and localhost (so only the pin tells it apart), answering 200 to
 * anything, recording every application byte.
 */
export async function startImpostor(port: number): Promise<Impostor> {
  const cert = await createCertificate({ altNames: ['localhost', '127.0.0.1'] });
  let receivedBytes = 0;
  let connections = 0;
  const sockets = new Set<net.Socket>();
  const server = https.createServer({ cert: cert.cert, key: cert.key }, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"version":"impostor","instanceId":"impostor"}');
  });
  server.on('connection', (socket: net.Socket) => {
    connections++;
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  server.on('secureConnection', (socket: TLSSocket) => {
    socket.on('data', (data: Buffer) => {
      receivedBytes += data.length;
    });
  });
  server.on('tlsClientError', () => {});
  server.listen(port, '127.0.0.1');
  await once(server, 'listening');
  return {
    port,
    fingerprintSha256: cert.fingerprintSha256,
    get receivedBytes() {
      return receivedBytes;
    },
    get connections() {
      return connections;
    },
    async close() {
      const closed = once(server, 'close');
      server.close();
      for (const socket of sockets) socket.destroy();
      await closed;
    },
  };
}

/** The suite's one condition wait (test/helpers/wait.ts), here for the files that import it from here. */
export { eventually };
