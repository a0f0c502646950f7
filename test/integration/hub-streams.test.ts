/**
 * Relayed streams through the hub and a real in-process agent: concurrency,
 * flow control with a paused reader, an agent that dies mid-stream, the
 * negotiated stream bound, and the agent's own checks (pins, allowed targets).
 */
import { createHash } from 'node:crypto';
import type http from 'node:http';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { AppError } from '../../src/errors.js';
import type { RelayRequest, Transport } from '../../src/relay/transport.js';
import { createCertificate, type GeneratedCertificate } from '../../src/tls/certificates.js';
import {
  agentHeaders,
  type CreatedAgent,
  createTestAgent,
  type RawAgent,
  startTestAgent,
  type TestAgent,
  upgradeAgent,
} from '../helpers/agent.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { pinTo, startTlsTarget, type TlsTarget } from '../helpers/tls-target.js';
import { eventually } from '../helpers/wait.js';

const MiB = 1024 * 1024;
const BIG_BODY_BYTES = 50 * MiB;
const WINDOW_BYTES = 256 * 1024;
/** The window a stream gets while the agent's large windows stay within 64 windows (docs/protocol.md). */
const LARGE_WINDOW_BYTES = 8 * WINDOW_BYTES;

/** Deterministic content: chunk i is filled with byte i % 251. */
function bigChunk(index: number, size: number): Buffer {
  return Buffer.alloc(size, index % 251);
}

interface Held {
  res: http.ServerResponse;
  closed: boolean;
}

describe('relayed streams through an agent', () => {
  let server: TestServer;
  let cookie: string;
  let cert: GeneratedCertificate;
  let target: TlsTarget;
  const held: Held[] = [];
  let bigWritten = 0;
  const agents: TestAgent[] = [];

  const handler: http.RequestListener = (req, res) => {
    const url = new URL(req.url ?? '/', 'https://x');
    if (url.pathname.startsWith('/item/')) {
      const n = url.pathname.slice('/item/'.length);
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write(`item-${n}:`);
      const entry: Held = { res, closed: false };
      res.on('close', () => {
        entry.closed = true;
      });
      held.push(entry);
      return;
    }
    if (url.pathname === '/slow-head') {
      const entry: Held = { res, closed: false };
      res.on('close', () => {
        entry.closed = true;
      });
      held.push(entry);
      return;
    }
    if (url.pathname === '/big') {
      res.writeHead(200, {
        'content-type': 'application/octet-stream',
        'content-length': String(BIG_BODY_BYTES),
      });
      const size = 64 * 1024;
      let index = 0;
      const pump = () => {
        while (index * size < BIG_BODY_BYTES) {
          const chunk = bigChunk(index, size);
          index += 1;
          bigWritten += chunk.length;
          if (!res.write(chunk)) {
            res.once('drain', pump);
            return;
          }
        }
        res.end();
      };
      pump();
      return;
    }
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('ok');
  };

  const trust = (): RelayRequest['trust'] => pinTo(cert);

  function get(transport: Transport, path: string, extra: Partial<RelayRequest> = {}) {
    return transport.request({
      url: `${target.url}${path}`,
      method: 'GET',
      headers: [],
      timeoutMs: 10_000,
      trust: trust(),
      ...extra,
    });
  }

  async function connectedAgent(options: Parameters<typeof startTestAgent>[2] = {}) {
    const credentials: CreatedAgent = await createTestAgent(server, cookie);
    const agent = startTestAgent(server, credentials, options);
    agents.push(agent);
    await agent.connected();
    return { agent, credentials, transport: server.server.hub.transportFor(credentials.id) };
  }

  async function codeOf(promise: Promise<unknown>): Promise<string> {
    try {
      await promise;
    } catch (err) {
      return (err as AppError).code;
    }
    return 'no error';
  }

  async function readAll(body: AsyncIterable<Uint8Array>): Promise<Buffer> {
    const parts: Uint8Array[] = [];
    for await (const chunk of body) parts.push(chunk);
    return Buffer.concat(parts);
  }

  function releaseHeld(): void {
    for (const entry of held.splice(0)) if (!entry.closed) entry.res.end('done');
  }

  beforeAll(async () => {
    server = await startTestServer();
    cookie = await server.setupAdmin();
    cert = await createCertificate({ altNames: ['127.0.0.1'] });
    target = await startTlsTarget({ cert: cert.cert, key: cert.key, handler });
  });
  afterEach(async () => {
    releaseHeld();
    await Promise.all(agents.splice(0).map((a) => a.close()));
  });
  afterAll(async () => {
    await server?.close();
    await target?.close();
  });

  it('carries 100 concurrent streams over one agent', async () => {
    const { credentials, transport } = await connectedAgent();
    const responses = await Promise.all(Array.from({ length: 100 }, (_, i) => get(transport, `/item/${i}`)));
    // Every stream is open at the same time: all heads are in, no body has ended.
    expect(server.server.hub.sessionStats(credentials.id)?.activeStreams).toBe(100);
    expect(held.filter((h) => !h.closed)).toHaveLength(100);
    releaseHeld();
    const bodies = await Promise.all(responses.map((r) => readAll(r.body)));
    expect(responses.every((r) => r.status === 200)).toBe(true);
    bodies.forEach((body, i) => {
      expect(body.toString()).toBe(`item-${i}:done`);
    });
    expect(server.server.hub.sessionStats(credentials.id)?.activeStreams).toBe(0);
  });

  it('keeps hub and agent memory bounded while a 50 MB body streams to a paused reader', async () => {
    const { agent, credentials, transport } = await connectedAgent();
    bigWritten = 0;
    const response = await get(transport, '/big', { timeoutMs: 60_000 });
    expect(response.status).toBe(200);
    // The reader pauses: nothing is consumed for a while.
    let peakHubBuffered = 0;
    let peakHubQueue = 0;
    let peakAgentQueue = 0;
    const sample = () => {
      const hubStats = server.server.hub.sessionStats(credentials.id);
      const agentStats = agent.agent.stats();
      peakHubBuffered = Math.max(peakHubBuffered, hubStats?.bufferedBytes ?? 0);
      peakHubQueue = Math.max(peakHubQueue, hubStats?.bufferedAmount ?? 0);
      peakAgentQueue = Math.max(peakAgentQueue, agentStats?.bufferedAmount ?? 0);
    };
    // Until the flow stalls: a whole window (a large one: the only stream) sent by the agent and waiting at the hub.
    await eventually(() => {
      sample();
      const stalled = LARGE_WINDOW_BYTES - 64 * 1024;
      return (
        (agent.agent.stats()?.inFlightBytes ?? 0) >= stalled &&
        (server.server.hub.sessionStats(credentials.id)?.bufferedBytes ?? 0) >= stalled
      );
    });
    const writtenWhilePaused = bigWritten;
    const pausedStats = agent.agent.stats()!;
    // One window waits at the hub, nothing more is sent by the agent, and the target is held back by TCP.
    expect(server.server.hub.sessionStats(credentials.id)!.bufferedBytes).toBeLessThanOrEqual(
      LARGE_WINDOW_BYTES,
    );
    expect(pausedStats.inFlightBytes).toBeLessThanOrEqual(LARGE_WINDOW_BYTES);
    expect(writtenWhilePaused).toBeLessThan(16 * MiB);

    // Now read it all, checking content and sampling memory on the way.
    const hash = createHash('sha256');
    let received = 0;
    let chunks = 0;
    for await (const chunk of response.body) {
      hash.update(chunk);
      received += chunk.byteLength;
      if (++chunks % 64 === 0) sample();
    }
    const expected = createHash('sha256');
    for (let i = 0; i * 64 * 1024 < BIG_BODY_BYTES; i++) expected.update(bigChunk(i, 64 * 1024));
    expect(received).toBe(BIG_BODY_BYTES);
    expect(hash.digest('hex')).toBe(expected.digest('hex'));

    const finalStats = agent.agent.stats()!;
    expect(peakHubBuffered).toBeLessThanOrEqual(LARGE_WINDOW_BYTES);
    expect(finalStats.peakInFlightBytes).toBeLessThanOrEqual(LARGE_WINDOW_BYTES);
    expect(finalStats.peakBufferedBytes).toBeLessThanOrEqual(MiB);
    expect(peakHubQueue).toBeLessThan(MiB);
    expect(peakAgentQueue).toBeLessThanOrEqual(LARGE_WINDOW_BYTES + 64 * 1024);
  });

  it('fails the in-flight streams of a killed agent at once with AGENT_OFFLINE', async () => {
    const { agent, credentials, transport } = await connectedAgent();
    const streaming = await Promise.all([0, 1, 2, 3, 4].map((i) => get(transport, `/item/${i}`)));
    const readers = streaming.map((r) =>
      readAll(r.body).then(
        () => 'completed',
        (err: AppError) => err.code,
      ),
    );
    const pendingHeads = [0, 1, 2].map(() => codeOf(get(transport, '/slow-head')));
    await eventually(() => agent.agent.stats()?.activeStreams === 8);
    await agent.agent.kill();
    // AGENT_OFFLINE (not a timeout code): every stream failed because the agent left.
    const outcomes = await Promise.all([...readers, ...pendingHeads]);
    expect(outcomes).toEqual(Array(8).fill('AGENT_OFFLINE'));
    expect(server.server.hub.isConnected(credentials.id)).toBe(false);
    expect(await codeOf(get(transport, '/item/late'))).toBe('AGENT_OFFLINE');
    const view = await server.request('GET', `/api/v1/agents/${credentials.id}`, { cookie });
    expect(view.json.agent.status).toBe('offline');
  });

  it('answers AGENT_OFFLINE before the agent connects and AGENT_NOT_FOUND once it is deleted', async () => {
    const credentials = await createTestAgent(server, cookie);
    const transport = server.server.hub.transportFor(credentials.id);
    expect(await codeOf(get(transport, '/'))).toBe('AGENT_OFFLINE');
    expect(await codeOf(transport.discover({ url: target.url, timeoutMs: 1000 }))).toBe('AGENT_OFFLINE');
    await server.request('DELETE', `/api/v1/agents/${credentials.id}`, { cookie });
    expect(await codeOf(get(transport, '/'))).toBe('AGENT_NOT_FOUND');
  });

  it('bounds concurrent streams per agent with a clear error', async () => {
    const { transport } = await connectedAgent({ maxStreams: 4 });
    const open = await Promise.all([0, 1, 2, 3].map((i) => get(transport, `/item/${i}`)));
    let error: AppError | null = null;
    try {
      await get(transport, '/item/extra');
    } catch (err) {
      error = err as AppError;
    }
    expect(error?.code).toBe('TOO_MANY_STREAMS');
    expect(error?.message).toMatch(/at most 4 concurrent/);
    releaseHeld();
    await Promise.all(open.map((r) => readAll(r.body)));
    const after = await get(transport, '/');
    expect(await readAll(after.body)).toEqual(Buffer.from('ok'));
  });

  it('discovers through the agent and relays a pinned request', async () => {
    const { transport } = await connectedAgent();
    const discovered = await transport.discover({ url: target.url, timeoutMs: 5000 });
    expect(discovered.certificate.fingerprintSha256).toBe(cert.fingerprintSha256);
    expect(discovered.hostnameMatches).toBe(true);
    const response = await get(transport, '/');
    expect(response.status).toBe(200);
    expect((await readAll(response.body)).toString()).toBe('ok');
  });

  it('lets the agent refuse a wrong pin before sending a byte, with the observed certificate', async () => {
    const { transport } = await connectedAgent();
    const other = await createCertificate({ altNames: ['127.0.0.1'] });
    const before = target.receivedBytes;
    let error: AppError | null = null;
    try {
      await get(transport, '/', { trust: pinTo(other) });
    } catch (err) {
      error = err as AppError;
    }
    expect(error?.code).toBe('CERTIFICATE_CHANGED');
    expect(error?.details?.observedCertificate).toMatchObject({ fingerprintSha256: cert.fingerprintSha256 });
    expect(target.receivedBytes).toBe(before);
  });

  it('lets the agent refuse targets outside AGENT_ALLOWED_TARGETS', async () => {
    const { transport } = await connectedAgent({ allowedTargets: ['127.0.0.1:1', '*.internal'] });
    const connections = target.connections;
    expect(await codeOf(get(transport, '/'))).toBe('TARGET_NOT_ALLOWED');
    expect(await codeOf(transport.discover({ url: target.url, timeoutMs: 1000 }))).toBe('TARGET_NOT_ALLOWED');
    expect(target.connections).toBe(connections);
  });

  it('cancels the upstream request when the caller gives up', async () => {
    const { credentials, transport } = await connectedAgent();
    const response = await get(transport, '/item/cancel');
    const entry = held.at(-1)!;
    response.cancel();
    await eventually(() => entry.closed);
    expect(server.server.hub.sessionStats(credentials.id)?.activeStreams).toBe(0);
  });

  it('cancels in-flight streams when the agent shuts down gracefully', async () => {
    const { agent, credentials, transport } = await connectedAgent();
    const response = await get(transport, '/item/shutdown');
    const entry = held.at(-1)!;
    const reading = readAll(response.body).then(
      () => 'completed',
      (err: AppError) => err.code,
    );
    await agent.close();
    expect(await reading).toBe('AGENT_OFFLINE');
    // The upstream request was aborted, not left running.
    await eventually(() => entry.closed);
    expect(server.server.hub.isConnected(credentials.id)).toBe(false);
  });

  it('keeps hub memory bounded when an agent floods past the window', async () => {
    const credentials = await createTestAgent(server, cookie);
    const result = await upgradeAgent(server, agentHeaders(credentials.id, credentials.token));
    if (!result.ok) throw new Error('refused');
    const raw: RawAgent = result.socket;
    try {
      await raw.handshake();
      const transport = server.server.hub.transportFor(credentials.id);
      const pending = get(transport, '/flood');
      // The raw agent answers the head, then sends two of the stream's (large) windows without waiting for updates.
      await eventually(() => raw.received.some((e) => e.payload.case === 'requestHead'));
      const head = raw.received.find((e) => e.payload.case === 'requestHead')!;
      expect(head.payload.case === 'requestHead' && head.payload.value.initialWindowBytes).toBe(
        LARGE_WINDOW_BYTES,
      );
      raw.send({ streamId: head.streamId, payload: { case: 'responseHead', value: { status: 200 } } });
      const response = await pending;
      const chunk = new Uint8Array(64 * 1024);
      for (let i = 0; i < (2 * LARGE_WINDOW_BYTES) / chunk.byteLength; i++) {
        raw.send({ streamId: head.streamId, payload: { case: 'bodyChunk', value: { data: chunk } } });
      }
      // Nobody reads meanwhile, so no window comes back: past one window the stream is failed and dropped.
      let peakBuffered = 0;
      await eventually(
        () => {
          const live = server.server.hub.sessionStats(credentials.id)!;
          peakBuffered = Math.max(peakBuffered, live.bufferedBytes);
          return live.activeStreams === 0;
        },
        { intervalMs: 1 },
      );
      expect(peakBuffered).toBeLessThanOrEqual(LARGE_WINDOW_BYTES);
      const outcome = await readAll(response.body).then(
        () => 'completed',
        (err: AppError) => err.code,
      );
      expect(outcome).toBe('PROTOCOL_ERROR');
      const stats = server.server.hub.sessionStats(credentials.id)!;
      expect(stats.bufferedBytes).toBeLessThanOrEqual(LARGE_WINDOW_BYTES);
      expect(stats.activeStreams).toBe(0);
      // The offending stream is cancelled towards the agent.
      await eventually(() =>
        raw.received.some((e) => e.payload.case === 'cancel' && e.streamId === head.streamId),
      );
    } finally {
      await raw.close();
    }
  });
});
