import { once } from 'node:events';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { DataPlane } from '../../src/dataplane/data-plane.js';
import { createLogger } from '../../src/logger.js';
import type { ListenerRecord, RouteRecord } from '../../src/storage/schema.js';
import { createCertificate, type GeneratedCertificate } from '../../src/tls/certificates.js';
import { proxyClient } from './proxy-helpers.js';

const NOW = new Date().toISOString();
const planes: DataPlane[] = [];
let upstream: Server | undefined;
let client: ReturnType<typeof proxyClient> | undefined;

afterEach(async () => {
  await client?.close();
  for (const plane of planes.splice(0)) await plane.close();
  if (upstream) {
    upstream.closeAllConnections();
    await new Promise<void>((resolve) => upstream!.close(() => resolve()));
  }
  client = undefined;
  upstream = undefined;
});

async function startHttpsUpstream(cert: GeneratedCertificate): Promise<number> {
  upstream = createServer({ key: cert.key, cert: cert.cert }, (req, res) => res.end(`secure ${req.url}`));
  upstream.listen(0, '127.0.0.1');
  await once(upstream, 'listening');
  return (upstream.address() as AddressInfo).port;
}

/** A data plane with one listener on a free port routing everything to `url`. */
async function startPlane(url: string, upstreamCa?: string): Promise<{ plane: DataPlane; port: number }> {
  const plane = new DataPlane({ logger: createLogger('silent'), upstreamCa });
  planes.push(plane);
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
    target: { type: 'upstream', url },
    createdAt: NOW,
    updatedAt: NOW,
  };
  await plane.start({ listeners: [listener], routes: [route] });
  return { plane, port: plane.boundPort('l1')! };
}

describe('https upstreams', () => {
  it('verifies the upstream certificate: trusted CA passes, unknown issuer and wrong name answer 502', async () => {
    const ca = await createCertificate({ commonName: 'test CA', altNames: ['test-ca'], isCa: true });
    const leaf = await createCertificate({ altNames: ['localhost', '127.0.0.1'], issuer: ca });
    const upstreamPort = await startHttpsUpstream(leaf);
    client = proxyClient();

    const trusting = await startPlane(`https://localhost:${upstreamPort}`, ca.cert);
    const ok = await client.send(trusting.port, '/x');
    expect(ok.status).toBe(200);
    expect(ok.text).toBe('secure /x');

    const untrusting = await startPlane(`https://localhost:${upstreamPort}`);
    const refused = await client.send(untrusting.port, '/x');
    expect(refused.status).toBe(502);
    expect(untrusting.plane.recorder.recent(1)[0]).toMatchObject({ status: 502, error: 'upstream_tls' });

    const otherCa = await createCertificate({ commonName: 'other CA', altNames: ['other-ca'], isCa: true });
    const misnamed = await createCertificate({ altNames: ['elsewhere.test'], issuer: otherCa });
    upstream!.setSecureContext({ key: misnamed.key, cert: misnamed.cert });
    const wrongName = await startPlane(`https://localhost:${upstreamPort}`, otherCa.cert);
    expect((await client.send(wrongName.port, '/x')).status).toBe(502);
    expect(wrongName.plane.recorder.recent(1)[0]).toMatchObject({ error: 'upstream_tls' });
  });
});
