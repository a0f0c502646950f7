/**
 * Hostile clients of the hub, each contained to its own connection while
 * well-behaved agents keep relaying:
 * - on a full control plane: a flood of unauthenticated upgrades (from
 *   another loopback address, which ends up throttled) and slow clients
 *   (half-sent upgrade requests, silent TLS connections, TCP without TLS),
 *   while the API answers and a live relayed stream keeps flowing; the slow
 *   ones are cut by the header timeout, long answers are not;
 * - on a bare hub: an agent answering for stream ids it was never given, and
 *   an agent that never reads its connection.
 */
import type http from 'node:http';
import net from 'node:net';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AppError } from '../../src/errors.js';
import type { RelayRequest, Transport } from '../../src/relay/transport.js';
import { createCertificate, type GeneratedCertificate } from '../../src/tls/certificates.js';
import {
  agentHeaders,
  createTestAgent,
  type RawAgent,
  startTestAgent,
  upgradeAgent,
} from '../helpers/agent.js';
import { useCleanups } from '../helpers/cleanup.js';
import { type BareHub, startBareHub, startHubAgent } from '../helpers/hub.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { pinTo, startTlsTarget, type TlsTarget } from '../helpers/tls-target.js';
import { eventually, openSse } from '../integration/proxy-helpers.js';

/**
 * The control plane's header timeout under the flood (10 s by default): short,
 * yet long enough for the TLS handshakes of well-behaved clients on a
 * machine busy with hundreds of them.
 */
const HEADERS_TIMEOUT_MS = 2000;
/** The header timeout where nothing else loads the machine. */
const QUICK_HEADERS_TIMEOUT_MS = 200;

const cleanups = useCleanups();

let cert: GeneratedCertificate;
let target: TlsTarget;
beforeAll(async () => {
  cert = await createCertificate({ altNames: ['127.0.0.1'] });
  target = await startTlsTarget({
    cert: cert.cert,
    key: cert.key,
    handler: (req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      if (req.url !== '/drip') return void res.end('ok');
      drips.add(res);
      const timer = setInterval(() => {
        if (!res.writableEnded) res.write('drop');
      }, 20);
      res.on('close', () => {
        clearInterval(timer);
        drips.delete(res);
      });
    },
  });
});
afterAll(async () => {
  for (const res of drips) res.destroy();
  await target.close(2000);
});

/** Responses of the target that drip until ended. */
const drips = new Set<http.ServerResponse>();

interface SlowClient {
  kind: 'partial' | 'silent' | 'no-tls';
  socket: net.Socket;
  /** Resolves once connected (and, but for `no-tls`, past the TLS handshake, with its bytes sent). */
  ready: Promise<void>;
  /** What the server sent back. */
  received: string;
  /** Past the TLS handshake. */
  secured: boolean;
  closed: boolean;
}

/** A client of `server` from 127.0.0.3 that never finishes a request. */
function slowClient(server: TestServer, kind: SlowClient['kind']): SlowClient {
  const port = Number(new URL(server.url).port);
  const options = { host: '127.0.0.1', port, localAddress: '127.0.0.3' };
  let connected: () => void = () => {};
  const ready = new Promise<void>((resolve) => {
    connected = resolve;
  });
  const socket =
    kind === 'no-tls'
      ? net.connect(options, () => connected())
      : tls.connect({ ...options, ca: server.server.certificate, servername: 'localhost' }, () => {
          // The request line and one header of an upgrade, then nothing more.
          client.secured = true;
          if (kind === 'partial') socket.write('GET /api/v1/agent/connect HTTP/1.1\r\nHost: localhost\r\n');
          connected();
        });
  const client: SlowClient = { kind, socket, ready, received: '', secured: false, closed: false };
  socket.on('data', (data: Buffer) => {
    client.received += data.toString('latin1');
  });
  socket.on('error', () => {});
  socket.on('close', () => {
    client.closed = true;
    connected();
  });
  return client;
}

function relayRequest(extra: Partial<RelayRequest> = {}): RelayRequest {
  return {
    url: `${target.url}/`,
    method: 'GET',
    headers: [],
    timeoutMs: 5000,
    trust: pinTo(cert),
    ...extra,
  };
}

async function relayOk(transport: Transport): Promise<boolean> {
  const response = await transport.request(relayRequest());
  let body = '';
  for await (const chunk of response.body) body += Buffer.from(chunk).toString();
  return response.status === 200 && body === 'ok';
}

/** A real in-process agent on the hub, and its transport. */
async function goodAgent(bare: BareHub) {
  const { id } = await startHubAgent(bare, { name: `good-${Math.random().toString(36).slice(2)}` }, cleanups);
  await eventually(() => bare.hub.isConnected(id));
  return { id, transport: bare.hub.transportFor(id) };
}

async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (err) {
    return (err as AppError).code ?? String(err);
  }
  return 'no error';
}

describe('hub abuse', () => {
  it('keeps the API answering and a live stream flowing through a flood of bad upgrades and slow connections, and cuts the slow ones', async () => {
    const server = await startTestServer({ config: { headersTimeoutMs: HEADERS_TIMEOUT_MS } });
    cleanups.push(() => server.close());
    const cookie = await server.setupAdmin();
    const token = await server.createToken(cookie, 'api');
    const hub = server.server.hub;
    const good = await createTestAgent(server, cookie, 'good');
    const agent = startTestAgent(server, good);
    cleanups.push(() => agent.close());
    await agent.connected();
    const transport = hub.transportFor(good.id);
    const victim = await createTestAgent(server, cookie, 'victim');

    // A live stream through the good agent: a chunk every 20 ms until the target is told to end it.
    const dripping = await transport.request(relayRequest({ url: `${target.url}/drip` }));
    let chunks = 0;
    const reading = (async () => {
      for await (const _chunk of dripping.body) chunks++;
    })().then(
      () => 'ended',
      (err: AppError) => err.code,
    );
    await eventually(() => chunks > 0);

    // Slow clients from 127.0.0.3: half an upgrade request then nothing, a TLS handshake then
    // nothing, a TCP connection that never starts TLS.
    const slow = [
      ...Array.from({ length: 100 }, () => slowClient(server, 'partial')),
      ...Array.from({ length: 50 }, () => slowClient(server, 'silent')),
      ...Array.from({ length: 50 }, () => slowClient(server, 'no-tls')),
    ];
    cleanups.push(() => {
      for (const client of slow) client.socket.destroy();
    });
    await Promise.all(slow.map((client) => client.ready));

    // 300 concurrent upgrades with a wrong token from 127.0.0.2, while the API and the agent serve.
    const chunksBefore = chunks;
    const statuses = new Map<number, number>();
    const flood = Array.from({ length: 300 }, () =>
      upgradeAgent(server, agentHeaders(victim.id, 'p2pag_wrong'), { localAddress: '127.0.0.2' }).then(
        (result) => {
          const status = result.ok ? 101 : result.status;
          statuses.set(status, (statuses.get(status) ?? 0) + 1);
          if (result.ok) void result.socket.close();
        },
      ),
    );
    const api = Array.from({ length: 20 }, (_, i) =>
      server
        .request('GET', i % 2 ? '/api/v1/auth/me' : '/api/v1/agents', { token })
        .then((res) => res.status),
    );
    const relayed = Array.from({ length: 20 }, () => relayOk(transport));
    await Promise.all(flood);
    expect(await Promise.all(api)).toEqual(Array(20).fill(200));
    expect(await Promise.all(relayed)).toEqual(Array(20).fill(true));
    expect(statuses.get(101)).toBeUndefined();
    expect((statuses.get(401) ?? 0) + (statuses.get(429) ?? 0)).toBe(300);
    expect(statuses.get(429)).toBeGreaterThan(0);
    await eventually(() => chunks > chunksBefore);

    // The slow ones are cut by the header timeout (a 408 once past TLS), the stream goes on.
    await eventually(() => slow.every((client) => client.closed), 5 * HEADERS_TIMEOUT_MS);
    for (const client of slow) expect(client.received).toMatch(/^(HTTP\/1\.1 408 [\s\S]*)?$/);
    const halfSent = slow.filter((c) => c.kind === 'partial' && c.secured);
    expect(halfSent.length).toBeGreaterThan(0);
    for (const client of halfSent) expect(client.received).toMatch(/^HTTP\/1\.1 408 /);
    for (const client of slow.filter((c) => c.kind === 'no-tls')) expect(client.received).toBe('');
    const chunksAfterCut = chunks;
    await eventually(() => chunks > chunksAfterCut);
    for (const res of drips) res.end();
    expect(await reading).toBe('ended');
    expect(dripping.status).toBe(200);
    await eventually(() => hub.sessionStats(good.id)?.activeStreams === 0);

    // The flooding address stays throttled even with the right token; another address is not affected.
    const blocked = await upgradeAgent(server, agentHeaders(victim.id, victim.token), {
      localAddress: '127.0.0.2',
    });
    expect(blocked.ok ? 101 : blocked.status).toBe(429);
    const fine = await upgradeAgent(server, agentHeaders(victim.id, victim.token), { answerPings: true });
    if (!fine.ok) throw new Error(`refused with ${fine.status}`);
    cleanups.push(() => fine.socket.close());
    await fine.socket.handshake();
    expect(hub.isConnected(good.id)).toBe(true);
    expect(hub.isConnected(victim.id)).toBe(true);
  });

  it('does not cut a client that sends its request in time, nor a long answer', async () => {
    const server = await startTestServer({ config: { headersTimeoutMs: QUICK_HEADERS_TIMEOUT_MS } });
    cleanups.push(() => server.close());
    const cookie = await server.setupAdmin();
    const token = await server.createToken(cookie, 'api');
    // An event stream outlives the header timeout many times over: it is past its head.
    const reader = await openSse(server, '/api/v1/traffic/stream', token);
    cleanups.push(async () => reader.close());
    expect(reader.status).toBe(200);
    // Time passing is what is under test here and below: no condition says "not cut yet".
    await new Promise((resolve) => setTimeout(resolve, 4 * QUICK_HEADERS_TIMEOUT_MS));
    let ended = false;
    void reader.ended.then(() => {
      ended = true;
    });
    await new Promise((resolve) => setImmediate(resolve));
    expect(ended).toBe(false);
    // Nor a keep-alive connection idle between two requests: the second one is answered on it.
    const socket = tls.connect({
      host: '127.0.0.1',
      port: Number(new URL(server.url).port),
      ca: server.server.certificate,
      servername: 'localhost',
    });
    cleanups.push(() => void socket.destroy());
    let received = '';
    socket.on('data', (data: Buffer) => {
      received += data.toString('latin1');
    });
    const ask = () =>
      socket.write(
        `GET /api/v1/auth/me HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${token}\r\n\r\n`,
      );
    const answers = () => received.match(/HTTP\/1\.1 200 /g)?.length ?? 0;
    await new Promise<void>((resolve) => socket.once('secureConnect', () => resolve()));
    ask();
    await eventually(() => answers() === 1);
    await new Promise((resolve) => setTimeout(resolve, 3 * QUICK_HEADERS_TIMEOUT_MS));
    ask();
    await eventually(() => answers() === 2);
    expect(socket.destroyed).toBe(false);
  });

  it('ignores envelopes for stream ids it never gave, and other streams go on', async () => {
    const bare = await startBareHub();
    cleanups.push(() => bare.close());
    const rogue = await bare.agents.create({ name: 'rogue' });
    const raw = await upgradeAgent(bare.target, agentHeaders(rogue.agent.id, rogue.token), {
      answerPings: true,
    });
    if (!raw.ok) throw new Error(`refused with ${raw.status}`);
    cleanups.push(() => raw.socket.close());
    await raw.socket.handshake();
    const good = await goodAgent(bare);

    for (const streamId of [7, 1000, 2 ** 31 - 1]) {
      raw.socket.send({ streamId, payload: { case: 'responseHead', value: { status: 200, headers: [] } } });
      raw.socket.send({ streamId, payload: { case: 'bodyChunk', value: { data: Buffer.alloc(1024, 1) } } });
      raw.socket.send({ streamId, payload: { case: 'windowUpdate', value: { bytes: 1 << 30 } } });
      raw.socket.send({ streamId, payload: { case: 'end', value: {} } });
    }
    expect(await relayOk(good.transport)).toBe(true);
    // Every rogue envelope has been handled once its ping is answered: the rogue is still on, holding nothing.
    await raw.socket.roundTrip();
    expect(bare.hub.isConnected(rogue.agent.id)).toBe(true);
    expect(bare.hub.sessionStats(rogue.agent.id)).toMatchObject({ activeStreams: 0, bufferedBytes: 0 });
  });

  it('cuts an agent that never reads, failing its streams with AGENT_OFFLINE, with hub memory bounded', async () => {
    const limit = 1024 * 1024;
    const bare = await startBareHub({ maxSendBufferBytes: limit });
    cleanups.push(() => bare.close());
    const stuck = await bare.agents.create({ name: 'stuck' });
    const raw: RawAgent = await upgradeAgent(bare.target, agentHeaders(stuck.agent.id, stuck.token)).then(
      (r) => {
        if (!r.ok) throw new Error(`refused with ${r.status}`);
        return r.socket;
      },
    );
    cleanups.push(() => raw.close());
    await raw.handshake();
    await eventually(() => bare.hub.isConnected(stuck.agent.id));
    // From now on the agent reads nothing: the kernel buffers fill, then the hub's queue.
    (raw.ws as unknown as { _socket: net.Socket })._socket.pause();
    const good = await goodAgent(bare);

    const transport = bare.hub.transportFor(stuck.agent.id);
    const body = Buffer.alloc(512 * 1024, 7);
    const codes = await Promise.all(
      Array.from({ length: 64 }, () =>
        codeOf(
          transport.request(
            relayRequest({ method: 'POST', body, headers: [['content-type', 'text/plain']] }),
          ),
        ),
      ),
    );
    expect(new Set(codes)).toEqual(new Set(['AGENT_OFFLINE']));
    expect(bare.hub.isConnected(stuck.agent.id)).toBe(false);
    expect(bare.agents.get(stuck.agent.id).connections[0]).toMatchObject({ endReason: 'not-reading' });
    expect(await relayOk(good.transport)).toBe(true);
  });
});
