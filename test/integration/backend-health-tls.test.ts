import { once } from 'node:events';
import { createServer, type Server } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { DataPlane } from '../../src/dataplane/data-plane.js';
import { createLogger } from '../../src/logger.js';
import type { BackendRecord, ListenerRecord, RouteRecord } from '../../src/storage/schema.js';
import { createCertificate, type GeneratedCertificate } from '../../src/tls/certificates.js';
import { eventually } from '../helpers/wait.js';
import { proxyClient } from './proxy-helpers.js';

const NOW = new Date().toISOString();
const planes: DataPlane[] = [];
let upstream: { server: Server; sockets: Set<Socket> } | undefined;
let client: ReturnType<typeof proxyClient> | undefined;

afterEach(async () => {
  await client?.close();
  for (const plane of planes.splice(0)) await plane.close();
  if (upstream) {
    const closed = new Promise<void>((resolve) => upstream!.server.close(() => resolve()));
    for (const socket of upstream.sockets) socket.destroy();
    await closed;
  }
  client = undefined;
  upstream = undefined;
});

/** An https member with a certificate of the test's own CA; `/health` answers 200. */
async function startHttpsMember(cert: GeneratedCertificate): Promise<number> {
  const sockets = new Set<Socket>();
  const server = createServer({ key: cert.key, cert: cert.cert }, (req, res) => {
    res.end(req.url === '/health' ? 'ok' : `member ${req.url}`);
  });
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  upstream = { server, sockets };
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return (server.address() as AddressInfo).port;
}

/** A data plane routing everything to a backend of one https member with active checks. */
async function startPlane(
  memberUrl: string,
  upstreamCa?: string,
): Promise<{ plane: DataPlane; port: number }> {
  const plane = new DataPlane({ logger: createLogger('silent'), upstreamCa });
  planes.push(plane);
  const backend: BackendRecord = {
    id: 'b1',
    name: 'secure',
    algorithm: 'round_robin',
    hashKey: 'ip',
    members: [{ id: 'm1', type: 'upstream', url: memberUrl, weight: 1 }],
    healthCheck: {
      path: '/health',
      intervalSeconds: 1,
      timeoutMs: 2000,
      healthyThreshold: 1,
      unhealthyThreshold: 1,
      expectStatus: 200,
    },
    passive: { failures: 3, ejectSeconds: 30 },
    createdAt: NOW,
    updatedAt: NOW,
  };
  plane.backends.setBackends([backend]);
  plane.backends.startChecks();
  const listener: ListenerRecord = {
    id: 'l1',
    name: 'public',
    bindAddress: '127.0.0.1',
    port: 0,
    enabled: true,
    createdAt: NOW,
    updatedAt: NOW,
  };
  const route: RouteRecord = {
    id: 'r1',
    listenerId: 'l1',
    host: null,
    pathPrefix: '/',
    priority: 0,
    target: { type: 'backend', backendId: 'b1' },
    createdAt: NOW,
    updatedAt: NOW,
  };
  await plane.start({ listeners: [listener], routes: [route] });
  return { plane, port: plane.boundPort('l1')! };
}

describe('backend health checks over https', () => {
  it('verify the member as proxied requests do: a private CA the data plane trusts passes, else the check fails', async () => {
    const ca = await createCertificate({ commonName: 'member CA', altNames: ['member-ca'], isCa: true });
    const leaf = await createCertificate({ altNames: ['localhost', '127.0.0.1'], issuer: ca });
    const memberPort = await startHttpsMember(leaf);
    client = proxyClient();

    const trusting = await startPlane(`https://localhost:${memberPort}`, ca.cert);
    await eventually(() => trusting.plane.backends.health('b1')![0]!.state === 'healthy');
    expect(trusting.plane.backends.health('b1')![0]).toMatchObject({ lastError: null });
    const served = await client.send(trusting.port, '/page');
    expect(served.status).toBe(200);
    expect(served.text).toBe('member /page');

    // The same member, from a data plane that does not know the CA: the check fails on the certificate.
    const untrusting = await startPlane(`https://localhost:${memberPort}`);
    await eventually(() => untrusting.plane.backends.health('b1')![0]!.state === 'unhealthy');
    const failed = untrusting.plane.backends.health('b1')![0]!;
    expect(failed.lastError).toMatch(/CERT|SIGNATURE|ISSUER/);
    expect(failed.lastCheckAt).not.toBeNull();
    expect((await client.send(untrusting.port, '/page')).status).toBe(503);
    expect(untrusting.plane.recorder.recent(1)[0]).toMatchObject({ error: 'no_healthy_member' });

    // A certificate for another name fails the check even with the CA trusted.
    const misnamed = await createCertificate({ altNames: ['elsewhere.test'], issuer: ca });
    upstream!.server.setSecureContext({ key: misnamed.key, cert: misnamed.cert });
    for (const socket of upstream!.sockets) socket.destroy();
    await eventually(() => trusting.plane.backends.health('b1')![0]!.state === 'unhealthy');
    expect(trusting.plane.backends.health('b1')![0]!.lastError).toMatch(/ALTNAME|CERT/);
  });
});
