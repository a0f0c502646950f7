/**
 * The agent bounds what it has queued to send. A control plane that opens
 * 256 streams with 16 MiB windows each (4 GiB of credit) and then stops
 * reading its socket must not make the agent's send queue grow past
 * DEFAULT_MAX_QUEUED_BYTES plus one frame: the agent stops sending body
 * chunks and pauses its targets instead.
 */
import { once } from 'node:events';
import https from 'node:https';
import type net from 'node:net';
import { describe, expect, it } from 'vitest';
import type WebSocket from 'ws';
import { WebSocketServer } from 'ws';
import { DEFAULT_MAX_QUEUED_BYTES, type RunningAgent, startAgent } from '../../agent/agent.js';
import { createAgentExecutor } from '../../agent/main.js';
import { decodeEnvelope, encodeEnvelope } from '../../src/relay/codec.js';
import {
  DEFAULT_MAX_FRAME_BYTES,
  DEFAULT_MAX_STREAMS,
  type Envelope,
  PROTOCOL_VERSION,
} from '../../src/relay/envelope.js';
import { MAX_WINDOW_BYTES } from '../../src/relay/envelope-executor.js';
import { createCertificate } from '../../src/tls/certificates.js';
import { useCleanups } from '../helpers/cleanup.js';
import { eventually } from '../integration/environment-helpers.js';

const cleanups = useCleanups();

/** An HTTPS target answering every request with an endless body, written under backpressure. */
async function endlessTarget() {
  const cert = await createCertificate({ altNames: ['localhost', '127.0.0.1'] });
  const chunk = Buffer.alloc(64 * 1024, 0x61);
  let written = 0;
  const sockets = new Set<net.Socket>();
  const server = https.createServer({ cert: cert.cert, key: cert.key }, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    const pump = () => {
      while (!res.destroyed) {
        written += chunk.length;
        if (!res.write(chunk)) {
          res.once('drain', pump);
          return;
        }
      }
    };
    pump();
  });
  server.on('connection', (socket: net.Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  cleanups.push(async () => {
    const closed = once(server, 'close');
    server.close();
    for (const socket of sockets) socket.destroy();
    await closed;
  });
  const { port } = server.address() as net.AddressInfo;
  return {
    url: `https://127.0.0.1:${port}/endless`,
    cert,
    get written() {
      return written;
    },
  };
}

/**
 * A control plane that welcomes the agent, opens `streams` requests with
 * `windowBytes` windows towards `target`, then never reads its socket again.
 */
async function greedyControlPlane(
  target: Awaited<ReturnType<typeof endlessTarget>>,
  streams: number,
  windowBytes: number,
) {
  const cert = await createCertificate({ altNames: ['localhost', '127.0.0.1'] });
  const sockets = new Set<net.Socket>();
  const server = https.createServer({ cert: cert.cert, key: cert.key });
  server.on('connection', (socket: net.Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  const wss = new WebSocketServer({ server, maxPayload: DEFAULT_MAX_FRAME_BYTES });
  let opened = false;
  wss.on('connection', (ws: WebSocket, req) => {
    const send = (envelope: Envelope) => ws.send(encodeEnvelope(envelope), { binary: true });
    ws.once('message', (data) => {
      const hello = decodeEnvelope(data as Buffer, { maxFrameBytes: DEFAULT_MAX_FRAME_BYTES });
      if (hello.payload.case !== 'hello') return ws.terminate();
      send({
        streamId: 0,
        payload: { case: 'welcome', value: { protocolVersion: PROTOCOL_VERSION, serverVersion: 'greedy' } },
      });
      for (let id = 1; id <= streams; id++) {
        send({
          streamId: id,
          payload: {
            case: 'requestHead',
            value: {
              method: 'GET',
              url: target.url,
              headers: [],
              timeoutMs: 60_000,
              hasBody: false,
              trust: {
                fingerprintSha256: target.cert.fingerprintSha256,
                expectedHostname: '127.0.0.1',
                certificateDer: target.cert.der,
              },
              initialWindowBytes: windowBytes,
            },
          },
        });
      }
      opened = true;
      // From here on nothing is read: the agent's frames pile up in TCP buffers, then in its queue.
      req.socket.pause();
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  cleanups.push(async () => {
    for (const client of wss.clients) client.terminate();
    wss.close();
    const closed = once(server, 'close');
    server.close();
    for (const socket of sockets) socket.destroy();
    await closed;
  });
  const { port } = server.address() as net.AddressInfo;
  return {
    url: `https://127.0.0.1:${port}`,
    fingerprint: cert.fingerprintSha256,
    get opened() {
      return opened;
    },
  };
}

describe('the agent send queue', () => {
  it('stays within its bound when 256 streams with 16 MiB windows stop being read', async () => {
    const streams = DEFAULT_MAX_STREAMS;
    expect(streams).toBe(256);
    const target = await endlessTarget();
    const control = await greedyControlPlane(target, streams, MAX_WINDOW_BYTES);
    const agent: RunningAgent = startAgent({
      managementUrl: control.url,
      agentId: '6f1c1f7e-8a39-4c3e-9d7e-0c4f4f0e7a11',
      agentToken: `p2pag_${'a'.repeat(43)}`,
      fingerprint: control.fingerprint,
      createExecutor: createAgentExecutor,
      idleTimeoutMs: 120_000,
    });
    cleanups.push(() => agent.kill());
    await eventually(() => control.opened && agent.stats() !== null, 10_000);

    // One frame over the bound at most: a body chunk with its envelope overhead.
    const bound = DEFAULT_MAX_QUEUED_BYTES + DEFAULT_MAX_FRAME_BYTES;
    let peakQueued = 0;
    let last = -1;
    let steadySince = Date.now();
    // Sample until the target has been held still for a while (every stream paused), or the bound breaks.
    await eventually(() => {
      const stats = agent.stats();
      if (stats !== null) peakQueued = Math.max(peakQueued, stats.bufferedAmount);
      if (peakQueued > bound) return true;
      if (target.written !== last) {
        last = target.written;
        steadySince = Date.now();
        return false;
      }
      return Date.now() - steadySince > 1500 && (stats?.activeStreams ?? 0) === streams;
    }, 60_000);
    expect(peakQueued).toBeGreaterThan(0);
    expect(peakQueued).toBeLessThanOrEqual(bound);
    const stats = agent.stats();
    expect(stats?.activeStreams).toBe(streams);
    // Held back from targets: at most one upstream read per stream.
    expect(stats?.peakBufferedBytes ?? 0).toBeLessThanOrEqual(streams * 64 * 1024);
  }, 90_000);
});
