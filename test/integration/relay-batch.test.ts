/**
 * Batching over a real WebSocket on TLS, as between the hub and an agent:
 * the envelopes one side produces in one turn reach the network socket in one
 * write, as one batch message when both sides announce `batch`, as separate
 * messages of one corked write when one side does not (an older peer).
 */
import { once } from 'node:events';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { beforeAll, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { createLogger } from '../../src/logger.js';
import type { Envelope, EnvelopeCase } from '../../src/relay/envelope.js';
import { CAPABILITY, CLOSE_CODE, DEFAULT_CAPABILITIES } from '../../src/relay/protocol.js';
import { RelayPeer, type StreamContext, type StreamHandler } from '../../src/relay/relay-peer.js';
import { createWebSocketFrameTransport } from '../../src/relay/websocket-frame-transport.js';
import { createCertificate, type GeneratedCertificate } from '../../src/tls/certificates.js';
import { useCleanups } from '../helpers/cleanup.js';
import { eventually } from '../helpers/wait.js';

const cleanups = useCleanups();
let certificate: GeneratedCertificate;

beforeAll(async () => {
  certificate = await createCertificate({ altNames: ['127.0.0.1'] });
});

class Recorder implements StreamHandler {
  readonly received: Envelope[] = [];
  constructor(
    readonly context: StreamContext,
    readonly opens: readonly EnvelopeCase[],
  ) {}
  has(): boolean {
    return false;
  }
  receive(envelope: Envelope): void {
    this.received.push(envelope);
  }
  streamIds(): Iterable<number> {
    return [];
  }
  reset(): void {}
  close(): void {}
}

/** Counts the writes that reach a socket's handle (what `cork` groups into one). */
function countWrites(socket: Duplex): { readonly writes: number; reset(): void } {
  let writes = 0;
  const target = socket as Duplex & {
    _write: Duplex['_write'];
    _writev?: NonNullable<Duplex['_writev']>;
  };
  const write = target._write.bind(target);
  target._write = (chunk, encoding, callback) => {
    writes++;
    write(chunk, encoding, callback);
  };
  const writev = target._writev?.bind(target);
  if (writev) {
    target._writev = (chunks, callback) => {
      writes++;
      writev(chunks, callback);
    };
  }
  return {
    get writes() {
      return writes;
    },
    reset() {
      writes = 0;
    },
  };
}

/** A hub-like acceptor and an agent-like initiator over wss on loopback. */
async function link(agentCapabilities: readonly string[]) {
  const server = https.createServer({ cert: certificate.cert, key: certificate.key });
  const wss = new WebSocketServer({ server });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const { port } = server.address() as AddressInfo;
  const accepted = once(wss, 'connection') as Promise<[WebSocket]>;
  const client = new WebSocket(`wss://127.0.0.1:${port}`, { ca: certificate.cert });
  await once(client, 'open');
  const [serverSocket] = await accepted;
  const messages = { atControl: 0 };
  serverSocket.on('message', () => messages.atControl++);
  const logger = createLogger('silent');
  let control!: Recorder;
  let agent!: Recorder;
  const controlPeer = new RelayPeer({
    transport: createWebSocketFrameTransport(serverSocket),
    role: 'acceptor',
    logger,
    keepalive: { intervalMs: 0 },
    streams: (context) => {
      control = new Recorder(context, ['requestHead']);
      return [control];
    },
  });
  const agentPeer = new RelayPeer({
    transport: createWebSocketFrameTransport(client),
    role: 'initiator',
    logger,
    capabilities: agentCapabilities,
    keepalive: { intervalMs: 0 },
    streams: (context) => {
      agent = new Recorder(context, []);
      return [agent];
    },
  });
  cleanups.push(async () => {
    agentPeer.close(CLOSE_CODE.NORMAL, 'test over');
    controlPeer.close(CLOSE_CODE.NORMAL, 'test over');
    await Promise.all([agentPeer.done, controlPeer.done]);
  });
  const [session] = await Promise.all([agentPeer.whenReady, controlPeer.whenReady]);
  const raw = (client as unknown as { _socket: Duplex })._socket;
  return { session, control: () => control, agent: () => agent, writes: countWrites(raw), messages };
}

/** What the agent side sends in one turn: `n` request heads. */
function burst(agent: Recorder, n: number): number[] {
  const ids: number[] = [];
  for (let i = 0; i < n; i++) {
    const id = agent.context.nextStreamId();
    ids.push(id);
    agent.context.send({
      streamId: id,
      payload: { case: 'requestHead', value: { method: 'GET', url: `https://target.test/${i}` } },
    });
  }
  return ids;
}

describe('relay batching over a WebSocket', () => {
  it('sends the envelopes of one turn in one socket write and one message when both sides batch', async () => {
    const { session, control, agent, writes, messages } = await link(DEFAULT_CAPABILITIES);
    expect(session.capabilities.has(CAPABILITY.BATCH)).toBe(true);
    await eventually(() => messages.atControl === 1); // the hello
    writes.reset();
    messages.atControl = 0;
    const ids = burst(agent(), 25);
    await eventually(() => control().received.length === 25);
    expect(control().received.map((e) => e.streamId)).toEqual(ids);
    expect(writes.writes).toBe(1);
    expect(messages.atControl).toBe(1);
  });

  it('still sends them in one socket write, as separate messages, to a peer without batch', async () => {
    const older = DEFAULT_CAPABILITIES.filter((c) => c !== CAPABILITY.BATCH);
    const { session, control, agent, writes, messages } = await link(older);
    expect(session.capabilities.has(CAPABILITY.BATCH)).toBe(false);
    await eventually(() => messages.atControl === 1);
    writes.reset();
    messages.atControl = 0;
    const ids = burst(agent(), 25);
    await eventually(() => control().received.length === 25);
    expect(control().received.map((e) => e.streamId)).toEqual(ids);
    expect(writes.writes).toBe(1);
    expect(messages.atControl).toBe(25);
  });
});
