/**
 * Agent tunnels under load: one agent flooded does not hold back another
 * agent's requests, and the hub's memory stays under its stated bound with
 * 1,000 concurrent slow downloads through one agent (a counter of the
 * response bytes the hub holds, not RSS).
 *
 * The slow downloads are HTTP/2 streams whose client grants no window until
 * told to: each one stalls at the hub at once, whatever the kernel's socket
 * buffers would otherwise absorb (several MB per loopback connection).
 */

import type { ServerResponse } from 'node:http';
import http2 from 'node:http2';
import { performance } from 'node:perf_hooks';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { createCertificate } from '../../src/tls/certificates.js';
import { startTunnelAgent } from '../helpers/agent.js';
import { useCleanups } from '../helpers/cleanup.js';
import { freePort } from '../helpers/processes.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import {
  configureProxy,
  eventually,
  proxyClient,
  startProxyTest,
  startUpstream,
  type Upstream,
} from './proxy-helpers.js';

const cleanups = useCleanups();

/** An agent allowed to reach `app` only, closed after the test. */
const agentFor = (s: TestServer, token: string, app: Upstream) =>
  startTunnelAgent(s, token, { allowedTargets: [`127.0.0.1:${app.port}`] }, cleanups);

async function routeThrough(s: TestServer, token: string, agentId: string, app: Upstream): Promise<number> {
  const backend = await s.request('POST', '/api/v1/proxy/backends', {
    token,
    body: {
      name: `b-${Math.random().toString(36).slice(2)}`,
      members: [{ type: 'agent', agentId, upstreamUrl: app.url }],
    },
  });
  expect(backend.status).toBe(201);
  return (await configureProxy(s, token, { type: 'backend', backendId: backend.json.backend.id })).port;
}

/**
 * Streams `bytes` of zeros (or, with `until`, until it says stop) in 64 KiB
 * writes, honouring backpressure; counts what it wrote.
 */
function streamZeros(
  res: ServerResponse,
  bytes: number,
  written: { bytes: number },
  until?: () => boolean,
): void {
  const piece = Buffer.alloc(64 * 1024);
  let left = bytes;
  res.writeHead(200, until ? {} : { 'content-length': String(bytes) });
  const next = () => {
    while (until ? !until() : left > 0) {
      const chunk = until || left >= piece.length ? piece : piece.subarray(0, left);
      left -= chunk.length;
      written.bytes += chunk.length;
      if (!res.write(chunk)) {
        res.once('drain', next);
        return;
      }
    }
    res.end();
  };
  next();
}

describe('agent tunnels under load', () => {
  it('a flooded agent does not hold back the requests of another agent', async () => {
    const { server: s, token, client } = await startProxyTest(cleanups);
    const written = { bytes: 0 };
    let stop = false;
    // The flood lasts until the test ends it, so the quiet agent's requests all overlap it.
    const bulk = await startUpstream((_req, res) => streamZeros(res, 0, written, () => stop), cleanups);
    const small = await startUpstream((_req, res) => res.end('pong'), cleanups);
    const flooded = await agentFor(s, token, bulk);
    const quiet = await agentFor(s, token, small);
    const floodPort = await routeThrough(s, token, flooded.id, bulk);
    const quietPort = await routeThrough(s, token, quiet.id, small);

    const timeSmall = async (): Promise<number> => {
      const t0 = performance.now();
      const res = await request(`http://127.0.0.1:${quietPort}/ping`, { dispatcher: client.dispatcher });
      expect(await res.body.text()).toBe('pong');
      return performance.now() - t0;
    };
    const baseline: number[] = [];
    for (let i = 0; i < 20; i++) baseline.push(await timeSmall());

    // One client floods the other agent with 32 concurrent endless downloads, read as fast as it can.
    const flood = proxyClient(cleanups);
    const floodBytes = { bytes: 0 };
    const floods = Array.from({ length: 32 }, async () => {
      const res = await request(`http://127.0.0.1:${floodPort}/bulk`, { dispatcher: flood.dispatcher });
      for await (const chunk of res.body) floodBytes.bytes += (chunk as Buffer).length;
      return res.statusCode;
    });
    await eventually(() => s.server.hub.tunnelStats(flooded.id)?.activeStreams === 32, 30_000);
    await eventually(() => floodBytes.bytes > 32 * 1024 * 1024, 60_000);

    const during: number[] = [];
    const floodBefore = floodBytes.bytes;
    for (let i = 0; i < 20; i++) during.push(await timeSmall());
    const floodDuring = floodBytes.bytes - floodBefore;
    // Both made progress at once: every quiet request was answered, and the flood kept flowing.
    expect(during).toHaveLength(20);
    expect(floodDuring).toBeGreaterThan(0);
    expect(s.server.hub.tunnelStats(flooded.id)?.activeStreams).toBe(32);

    stop = true;
    expect(await Promise.all(floods)).toEqual(Array(32).fill(200));
    await flood.close();
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
    // The factor is measured and reported here; wall-clock bounds belong to the bench.
    console.info(
      `tunnel fairness: quiet-agent p50 ${median(baseline).toFixed(1)} ms alone, ` +
        `${median(during).toFixed(1)} ms during the flood (x${(median(during) / median(baseline)).toFixed(2)}); ` +
        `the flood moved ${(floodDuring / 1048576).toFixed(1)} MiB meanwhile`,
    );
  }, 180_000);

  it('1,000 concurrent slow downloads through one agent: the hub holds at most one window per tunnel and the large windows’ budget', async () => {
    const windowBytes = 16 * 1024;
    const s = await startTestServer({ config: { tunnels: { windowBytes } } }, cleanups);
    const token = await s.createToken(await s.setupAdmin());
    const size = 256 * 1024;
    const written = { bytes: 0 };
    let started = 0;
    const app = await startUpstream((_req, res) => {
      started += 1;
      streamZeros(res, size, written);
    }, cleanups);
    // A thousand connections arrive at once: room for all of them in the accept queue.
    await new Promise<void>((resolve) => app.server.close(() => resolve()));
    await new Promise<void>((resolve) =>
      app.server.listen({ port: app.port, host: '127.0.0.1', backlog: 4096 }, () => resolve()),
    );
    const { id, agent } = await agentFor(s, token, app);
    const backend = await s.request('POST', '/api/v1/proxy/backends', {
      token,
      body: { name: 'downloads', members: [{ type: 'agent', agentId: id, upstreamUrl: app.url }] },
    });
    const ca = await createCertificate({ commonName: 'tunnel test CA', altNames: ['test-ca'], isCa: true });
    const leaf = await createCertificate({ altNames: ['downloads.test'], issuer: ca });
    const cert = await s.request('POST', '/api/v1/tls/certificates', {
      token,
      body: { name: 'downloads', source: 'upload', certificatePem: leaf.cert, privateKeyPem: leaf.key },
    });
    expect(cert.status).toBe(201);
    const port = await freePort();
    const listener = await s.request('POST', '/api/v1/proxy/listeners', {
      token,
      body: {
        name: 'downloads',
        bindAddress: '127.0.0.1',
        port,
        protocol: 'https',
        defaultCertificateId: cert.json.certificate.id,
      },
    });
    expect(listener.status).toBe(201);
    const route = await s.request('POST', '/api/v1/proxy/routes', {
      token,
      body: {
        listenerId: listener.json.listener.id,
        host: null,
        pathPrefix: '/',
        target: { type: 'backend', backendId: backend.json.backend.id },
      },
    });
    expect(route.status).toBe(201);

    const count = 1000;
    const sessions: http2.ClientHttp2Session[] = [];
    const perSession = 100;
    const received = new Array<number>(count).fill(0);
    const statuses = new Array<number>(count).fill(0);
    for (let k = 0; k < count / perSession; k++) {
      // No stream window until the test grants one: each download stalls at the hub once it starts.
      const session = http2.connect(`https://127.0.0.1:${port}`, {
        ca: ca.cert,
        servername: 'downloads.test',
        settings: { initialWindowSize: 0 },
      });
      session.on('error', () => {});
      cleanups.push(() => void session.destroy());
      sessions.push(session);
      for (let j = 0; j < perSession; j++) {
        const i = k * perSession + j;
        const stream = session.request({ ':path': `/file/${i}`, ':authority': 'downloads.test' });
        stream.on('response', (headers) => {
          statuses[i] = Number(headers[':status']);
        });
        stream.on('data', (chunk: Buffer) => {
          received[i] = (received[i] ?? 0) + chunk.length;
        });
        stream.on('error', () => {});
      }
      // A hundred at a time, so a loaded machine meets no connect storm (each download still stays open).
      await eventually(() => started >= (k + 1) * perSession, { timeoutMs: 60_000, intervalMs: 50 });
    }
    await eventually(() => started === count, { timeoutMs: 60_000, intervalMs: 100 });
    await eventually(() => s.server.hub.tunnelStats(id)?.activeStreams === count, { timeoutMs: 60_000 });
    // The flow settles once every tunnel holds its window at the hub and the agent paused the app.
    let last = -1;
    await eventually(
      () => {
        const settled = written.bytes === last;
        last = written.bytes;
        return settled;
      },
      { timeoutMs: 60_000, intervalMs: 1000 },
    );
    const stalled = s.server.hub.tunnelStats(id)!;
    // One window per tunnel, plus the large windows the first tunnels got while the budget had room.
    const bound = count * windowBytes + stalled.largeWindowBudgetBytes;
    expect(stalled.largeWindowBudgetBytes).toBe(64 * windowBytes);
    expect(stalled.bufferedBytes).toBeLessThanOrEqual(bound);
    expect(stalled.peakBufferedBytes).toBeLessThanOrEqual(bound);
    // The stall is real: every tunnel is open and the hub does hold response bytes for the stalled clients.
    expect(stalled.activeStreams).toBe(count);
    expect(stalled.bufferedBytes).toBeGreaterThan(0);
    const agentStats = agent.agent.stats();
    console.info(
      `tunnel memory: ${count} stalled downloads, window ${windowBytes} B; the hub holds ${stalled.bufferedBytes} B ` +
        `(peak ${stalled.peakBufferedBytes} B, bound ${bound} B); the app produced ${written.bytes} B of ${count * size}; ` +
        `agent: ${agentStats?.tunnels.inFlightBytes} B in flight, ${agentStats?.tunnels.bufferedBytes} B read ahead`,
    );

    // The clients read now: every download completes, and the bound held throughout.
    for (const session of sessions) session.settings({ initialWindowSize: 65535 });
    await eventually(() => received.every((n) => n === size), { timeoutMs: 180_000, intervalMs: 250 });
    expect(statuses.every((status) => status === 200)).toBe(true);
    expect(s.server.hub.tunnelStats(id)?.peakBufferedBytes).toBeLessThanOrEqual(bound);
    await eventually(() => s.server.hub.tunnelStats(id)?.activeStreams === 0, { timeoutMs: 30_000 });
  }, 400_000);
});
