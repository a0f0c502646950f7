/**
 * The relay peer over the in-memory frame pipe: the protocol of both ends of
 * every link (handshake, limits and capabilities both ways, versions,
 * keepalive, stream 0, close codes, stream routing, reconciliation), with no
 * socket in the way.
 */
import { Writable } from 'node:stream';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { AppError } from '../../src/errors.js';
import { createLogger } from '../../src/logger.js';
import { decodeEnvelope, decodeFrame, encodeBatch, encodeEnvelope } from '../../src/relay/codec.js';
import type { Envelope, EnvelopeCase } from '../../src/relay/envelope.js';
import {
  createFramePipe,
  type FrameReceiver,
  type FrameTransport,
  type TransportClosed,
} from '../../src/relay/frame-transport.js';
import { CAPABILITY, CLOSE_CODE, DEFAULT_CAPABILITIES } from '../../src/relay/protocol.js';
import {
  LONE_FRAME_BYTES,
  type NegotiatedSession,
  type PeerClosed,
  RelayPeer,
  type RelayPeerOptions,
  type StreamContext,
  type StreamHandler,
} from '../../src/relay/relay-peer.js';
import { eventually } from '../helpers/wait.js';

const peers: RelayPeer[] = [];
afterEach(() => {
  vi.useRealTimers();
  for (const peer of peers.splice(0)) peer.close(CLOSE_CODE.NORMAL, 'test over');
});

/**
 * Lets what was sent arrive, and the answers to it: a peer writes what it
 * produced in one event-loop turn at the turn's end, and the in-memory pipe
 * delivers as microtasks, so a few turns carry a frame and its replies.
 */
async function delivered(): Promise<void> {
  for (let turn = 0; turn < 5; turn++) await new Promise<void>((resolve) => setImmediate(resolve));
}

/** A stream handler that records what it gets and keeps streams until told otherwise. */
class RecordingHandler implements StreamHandler {
  readonly received: Envelope[] = [];
  readonly streams = new Set<number>();
  readonly resets: Array<[number, string]> = [];
  closedWith: AppError | null = null;
  constructor(
    readonly context: StreamContext,
    readonly opens: readonly EnvelopeCase[] = [],
  ) {}
  has(id: number): boolean {
    return this.streams.has(id);
  }
  receive(envelope: Envelope): void {
    this.received.push(envelope);
    if (this.opens.includes(envelope.payload.case)) this.streams.add(envelope.streamId);
  }
  streamIds(): Iterable<number> {
    return this.streams;
  }
  reset(id: number, error: AppError): void {
    this.streams.delete(id);
    this.resets.push([id, error.code]);
    this.context.send({ streamId: id, payload: { case: 'cancel', value: {} } });
  }
  close(error: AppError): void {
    this.closedWith = error;
  }
}

function logSink() {
  const lines: Array<Record<string, unknown>> = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      for (const line of String(chunk).split('\n').filter(Boolean)) lines.push(JSON.parse(line));
      cb();
    },
  });
  return { lines, logger: createLogger('debug', stream) };
}

type Side = {
  peer: RelayPeer;
  handlers: RecordingHandler[];
  closed: Promise<PeerClosed>;
  logs: Array<Record<string, unknown>>;
};

function side(
  transport: FrameTransport,
  role: 'initiator' | 'acceptor',
  options: Partial<RelayPeerOptions> & { opens?: EnvelopeCase[] } = {},
): Side {
  const handlers: RecordingHandler[] = [];
  const { lines, logger } = logSink();
  let resolveClosed!: (event: PeerClosed) => void;
  const closed = new Promise<PeerClosed>((resolve) => {
    resolveClosed = resolve;
  });
  const { opens, ...rest } = options;
  const peer = new RelayPeer({
    transport,
    role,
    logger,
    keepalive: { intervalMs: 0 },
    streams: (context) => {
      const handler = new RecordingHandler(context, opens ?? []);
      handlers.push(handler);
      return [handler];
    },
    onClosed: (event) => resolveClosed(event),
    ...rest,
  });
  peers.push(peer);
  return { peer, handlers, closed, logs: lines };
}

function pair(
  acceptor: Partial<RelayPeerOptions> & { opens?: EnvelopeCase[] } = {},
  initiator: Partial<RelayPeerOptions> & { opens?: EnvelopeCase[] } = {},
) {
  const [a, b] = createFramePipe();
  return { control: side(a, 'acceptor', acceptor), agent: side(b, 'initiator', initiator) };
}

/** A transport driven by hand: frames in with `deliver`, frames out in `sent`. */
function manualTransport() {
  const sent: Envelope[] = [];
  let receiver: FrameReceiver | null = null;
  let closed: TransportClosed | null = null;
  let buffered = 0;
  const belowWaiters: Array<{ bytes: number; callback: () => void }> = [];
  const transport: FrameTransport = {
    start: (r) => {
      receiver = r;
    },
    send: (frame) => {
      if (closed) return;
      const decoded = decodeFrame(frame);
      if (Array.isArray(decoded)) for (const inner of decoded) sent.push(decodeEnvelope(inner));
      else sent.push(decoded);
    },
    close: (code, reason) => {
      closed ??= { code, reason };
    },
    get bufferedAmount() {
      return buffered;
    },
    onceBelow: (bytes, callback) => {
      if (buffered <= bytes) callback();
      else belowWaiters.push({ bytes, callback });
    },
    done: Promise.resolve(),
  };
  return {
    transport,
    sent,
    closedWith: () => closed,
    setBuffered: (bytes: number) => {
      buffered = bytes;
      for (const waiter of belowWaiters.filter((w) => buffered <= w.bytes)) {
        belowWaiters.splice(belowWaiters.indexOf(waiter), 1);
        waiter.callback();
      }
    },
    deliver: (envelope: Envelope) => receiver?.frame(encodeEnvelope(envelope)),
    deliverBytes: (bytes: Uint8Array) => receiver?.frame(bytes),
  };
}

/** Lets the current turn of the event loop end (the peers send what it queued). */
const endOfTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

/** Wraps a transport and records each call that hands it frames: one entry per write. */
function counted(inner: FrameTransport) {
  const writes: Uint8Array[][] = [];
  const transport: FrameTransport = {
    start: (receiver) => inner.start(receiver),
    send: (frame) => {
      writes.push([frame]);
      inner.send(frame);
    },
    sendMany: (frames) => {
      writes.push([...frames]);
      inner.sendMany!(frames);
    },
    close: (code, reason) => inner.close(code, reason),
    get bufferedAmount() {
      return inner.bufferedAmount;
    },
    onceBelow: (bytes, callback) => inner.onceBelow(bytes, callback),
    done: inner.done,
  };
  return { transport, writes };
}

const hello = (value: Partial<Extract<Envelope['payload'], { case: 'hello' }>['value']> = {}): Envelope => ({
  streamId: 0,
  payload: { case: 'hello', value: { protocolVersion: 1, ...value } },
});

describe('relay peer handshake', () => {
  it('negotiates the version, the limits both ways and the shared capabilities', async () => {
    const { control, agent } = pair(
      {
        software: 'cp-1',
        limits: { maxFrameBytes: 512 * 1024, maxStreams: 8, initialWindowBytes: 128 * 1024 },
        capabilities: ['discover', 'request', 'reconcile', 'only-control'],
      },
      {
        software: 'agent-1',
        limits: { maxFrameBytes: 64 * 1024 + 2048, maxStreams: 4 },
        capabilities: ['discover', 'request', 'reconcile', 'only-agent'],
      },
    );
    const [cp, ag] = await Promise.all([control.peer.whenReady, agent.peer.whenReady]);
    for (const session of [cp, ag]) {
      expect(session.version).toBe(1);
      expect([...session.capabilities].sort()).toEqual(['discover', 'reconcile', 'request']);
      expect(session.maxStreams).toBe(4);
      expect(session.initialWindowBytes).toBe(128 * 1024);
    }
    // Each side may send at most what the other accepts.
    expect(cp.sendFrameBytes).toBe(64 * 1024 + 2048);
    expect(ag.sendFrameBytes).toBe(64 * 1024 + 2048);
    expect(cp.remote.software).toBe('agent-1');
    expect(ag.remote.software).toBe('cp-1');
    expect(cp.remote.limits.maxStreams).toBe(4);
    expect(ag.remote.limits.maxFrameBytes).toBe(512 * 1024);
    // The welcome carries the acceptor's clock (agent check measures skew with it); a hello does not.
    expect(Math.abs(ag.remote.timeMs - Date.now())).toBeLessThan(60_000);
    expect(cp.remote.timeMs).toBe(0);
  });

  it('picks the highest version both sides speak', async () => {
    const { control, agent } = pair({ versions: { min: 1, max: 3 } }, { versions: { min: 2, max: 5 } });
    const [cp, ag] = await Promise.all([control.peer.whenReady, agent.peer.whenReady]);
    expect(cp.version).toBe(3);
    expect(ag.version).toBe(3);
    expect(ag.remote.versions).toEqual({ min: 1, max: 3 });
    expect(cp.remote.versions).toEqual({ min: 2, max: 5 });
  });

  it('refuses ranges that do not meet with a close naming both, logged on both sides', async () => {
    const { control, agent } = pair({ versions: { min: 2, max: 3 } }, { versions: { min: 1, max: 1 } });
    const [cpClosed, agentClosed] = await Promise.all([control.closed, agent.closed]);
    expect(cpClosed).toMatchObject({ code: 1002, endReason: 'version', wasReady: false });
    expect(cpClosed.reason).toContain('the agent speaks v1–v1, the control plane v2–v3');
    expect(agentClosed.code).toBe(1002);
    expect(agentClosed.reason).toContain('the agent speaks v1–v1, the control plane v2–v3');
    expect(agent.handlers).toEqual([]);
    const refusal = agent.logs.find((l) => String(l.msg).includes('refused the session'));
    expect(refusal?.msg).toContain('v1–v1');
    expect(refusal?.level).toBe(50);
    await expect(agent.peer.whenReady).rejects.toBeInstanceOf(AppError);
  });

  it('treats a hello without a range as the single version it names (older agents)', async () => {
    const manual = manualTransport();
    const control = side(manual.transport, 'acceptor', { versions: { min: 1, max: 2 } });
    manual.deliver(hello({ protocolVersion: 1 }));
    const session = await control.peer.whenReady;
    expect(session.version).toBe(1);
    const welcome = manual.sent[0]!;
    expect(welcome.payload).toMatchObject({
      case: 'welcome',
      value: { protocolVersion: 1, minProtocolVersion: 1, maxProtocolVersion: 2 },
    });
  });

  it('waits for the admission and closes with its verdict', async () => {
    const { control, agent } = pair({
      admit: async () => ({ ok: false, code: CLOSE_CODE.POLICY, reason: 'revoked', endReason: 'revoked' }),
    });
    expect(await control.closed).toMatchObject({ code: 1008, endReason: 'revoked' });
    expect((await agent.closed).code).toBe(1008);
    expect(control.handlers).toEqual([]);
  });

  it('closes with 1002 when no hello (or no welcome) comes in time', async () => {
    const silent = manualTransport();
    const control = side(silent.transport, 'acceptor', { handshakeTimeoutMs: 30 });
    expect(await control.closed).toMatchObject({ code: 1002, endReason: 'protocol-error' });
    expect(silent.sent[0]?.payload).toMatchObject({ case: 'error', value: { code: 'PROTOCOL_ERROR' } });
    const mute = manualTransport();
    const agent = side(mute.transport, 'initiator', { handshakeTimeoutMs: 30 });
    expect(mute.sent[0]?.payload.case).toBe('hello');
    expect((await agent.closed).reason).toBe('no welcome received in time');
  });

  it('refuses anything but hello before the handshake', async () => {
    const manual = manualTransport();
    const control = side(manual.transport, 'acceptor');
    manual.deliver({ streamId: 0, payload: { case: 'ping', value: { nonce: 1 } } });
    expect(await control.closed).toMatchObject({ code: 1002, endReason: 'protocol-error' });
  });
});

describe('relay peer connection', () => {
  async function ready(options: Partial<RelayPeerOptions> = {}) {
    const manual = manualTransport();
    const control = side(manual.transport, 'acceptor', { opens: ['discoverRequest'], ...options });
    manual.deliver(hello({ capabilities: ['reconcile'] }));
    const session: NegotiatedSession = await control.peer.whenReady;
    manual.sent.length = 0;
    return { ...manual, control, session };
  }

  it('answers a ping with a pong carrying the same nonce (at the end of the turn)', async () => {
    const { deliver, sent } = await ready();
    deliver({ streamId: 0, payload: { case: 'ping', value: { nonce: 42 } } });
    expect(sent).toEqual([]);
    await endOfTurn();
    expect(sent).toEqual([{ streamId: 0, payload: { case: 'pong', value: { nonce: 42 } } }]);
  });

  it('closes with 1002 on a malformed frame, 1009 on one over the limit, and streams fail AGENT_OFFLINE', async () => {
    const a = await ready();
    a.deliverBytes(Uint8Array.from([0x0a, 0xff]));
    expect(await a.control.closed).toMatchObject({ code: 1002, endReason: 'protocol-error' });
    expect(a.control.handlers[0]?.closedWith?.code).toBe('AGENT_OFFLINE');
    expect(a.sent.at(-1)?.payload).toMatchObject({ case: 'error', value: { code: 'PROTOCOL_ERROR' } });
    const b = await ready({ limits: { maxFrameBytes: 2048 } });
    b.deliverBytes(
      encodeEnvelope({ streamId: 3, payload: { case: 'bodyChunk', value: { data: new Uint8Array(4096) } } }),
    );
    expect(await b.control.closed).toMatchObject({ code: 1009, endReason: 'frame-too-large' });
  });

  it('refuses an envelope that does not belong on stream 0', async () => {
    const { deliver, control } = await ready();
    deliver({ streamId: 0, payload: { case: 'bodyChunk', value: { data: new Uint8Array(1) } } });
    expect(await control.closed).toMatchObject({ code: 1002 });
  });

  it('closes normally when the peer reports a connection error', async () => {
    const { deliver, control } = await ready();
    deliver({ streamId: 0, payload: { case: 'error', value: { code: 'INTERNAL', message: 'boom' } } });
    expect(await control.closed).toMatchObject({ code: 1000, endReason: 'peer-error' });
  });

  it('routes an opening envelope to the handler that opens its kind, and drops envelopes of unknown streams', async () => {
    const { deliver, control } = await ready();
    deliver({ streamId: 7, payload: { case: 'windowUpdate', value: { bytes: 1 } } });
    deliver({ streamId: 7, payload: { case: 'discoverRequest', value: { url: 'https://x' } } });
    deliver({ streamId: 7, payload: { case: 'cancel', value: {} } });
    const handler = control.handlers[0]!;
    expect(handler.received.map((e) => e.payload.case)).toEqual(['discoverRequest', 'cancel']);
    expect(control.peer.isClosed).toBe(false);
  });

  it('hands out even stream ids on the accepting side and odd ones on the initiating side', async () => {
    const { control, agent } = pair();
    await Promise.all([control.peer.whenReady, agent.peer.whenReady]);
    const c = control.handlers[0]!.context;
    const a = agent.handlers[0]!.context;
    expect([c.nextStreamId(), c.nextStreamId(), c.nextStreamId()]).toEqual([2, 4, 6]);
    expect([a.nextStreamId(), a.nextStreamId()]).toEqual([1, 3]);
  });

  it('cuts a peer that leaves too much unread (1006, not-reading)', async () => {
    const { setBuffered, deliver, control, closedWith } = await ready({ maxSendBufferBytes: 1000 });
    setBuffered(5000);
    deliver({ streamId: 0, payload: { case: 'ping', value: { nonce: 1 } } });
    expect(await control.closed).toMatchObject({ code: 1006, endReason: 'not-reading' });
    expect(closedWith()?.code).toBe(1006);
  });

  it('cuts the connection when nothing is heard for the keepalive, and pings only on the accepting side', async () => {
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval', 'setTimeout', 'clearTimeout'] });
    const { control, agent } = pair(
      { keepalive: { intervalMs: 20, maxMissed: 2 } },
      { keepalive: { intervalMs: 20, maxMissed: 2 } },
    );
    await Promise.all([control.peer.whenReady, agent.peer.whenReady]);
    // Both alive: the acceptor's pings keep both sides hearing something, for many intervals.
    await vi.advanceTimersByTimeAsync(200);
    expect(control.peer.isClosed).toBe(false);
    expect(agent.peer.isClosed).toBe(false);
    vi.useRealTimers();
    const silent = manualTransport();
    const lonely = side(silent.transport, 'acceptor', { keepalive: { intervalMs: 20, maxMissed: 2 } });
    silent.deliver(hello());
    await lonely.peer.whenReady;
    expect(await lonely.closed).toMatchObject({ code: 1006, endReason: 'timeout' });
    expect(silent.sent.filter((e) => e.payload.case === 'ping').length).toBeGreaterThanOrEqual(1);
  });
});

describe('relay peer reconciliation', () => {
  it('closes a stream the other side forgot on both ends and counts it as leaked', async () => {
    const leaks: number[] = [];
    const { control, agent } = pair(
      { opens: [], reconcileIntervalMs: 0, onLeak: (stats) => leaks.push(stats.leakedStreams) },
      { opens: ['requestHead'], reconcileIntervalMs: 0 },
    );
    await Promise.all([control.peer.whenReady, agent.peer.whenReady]);
    const client = control.handlers[0]!;
    const executor = agent.handlers[0]!;
    // Two streams open on both ends.
    for (const id of [client.context.nextStreamId(), client.context.nextStreamId()]) {
      client.streams.add(id);
      client.context.send({
        streamId: id,
        payload: { case: 'requestHead', value: { method: 'GET', url: 'https://x' } },
      });
    }
    await delivered();
    expect([...executor.streams]).toEqual([2, 4]);
    // The agent forgets stream 4 (a bug on its side).
    executor.streams.delete(4);
    const round = async () => {
      agent.peer.reconcileNow();
      control.peer.reconcileNow();
      await delivered();
    };
    await round();
    // One missing list may be a race with an opening in flight: nothing closed yet.
    expect(client.resets).toEqual([]);
    await round();
    expect(client.resets).toEqual([[4, 'PROTOCOL_ERROR']]);
    expect([...client.streams]).toEqual([2]);
    expect(control.peer.stats()).toMatchObject({ leakedStreams: 1, activeStreams: 1 });
    expect(leaks).toEqual([1]);
    // The other side was told (a cancel, dropped there: it no longer has the stream), and learns the count.
    await delivered();
    expect(agent.logs.some((l) => l.streamId === 4 && l.kind === 'cancel')).toBe(true);
    await round();
    expect(agent.peer.stats().remoteLeakedStreams).toBe(1);
    expect(executor.resets).toEqual([]);
  });

  it('sends no stream list to a peer that did not announce reconcile', async () => {
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval', 'setTimeout', 'clearTimeout'] });
    const manual = manualTransport();
    const control = side(manual.transport, 'acceptor', { reconcileIntervalMs: 10 });
    manual.deliver(hello({ capabilities: ['discover'] }));
    await control.peer.whenReady;
    control.peer.reconcileNow();
    // Neither asked nor on its own, over several intervals.
    await vi.advanceTimersByTimeAsync(40);
    expect(manual.sent.filter((e) => e.payload.case === 'streamSet')).toEqual([]);
  });

  it('exchanges stream lists on its own every interval', async () => {
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval', 'setTimeout', 'clearTimeout'] });
    const manual = manualTransport();
    const control = side(manual.transport, 'acceptor', { reconcileIntervalMs: 10 });
    manual.deliver(hello({ capabilities: ['reconcile'] }));
    await control.peer.whenReady;
    const lists = () => manual.sent.filter((e) => e.payload.case === 'streamSet').length;
    expect(lists()).toBe(0);
    await vi.advanceTimersByTimeAsync(10);
    expect(lists()).toBe(1);
    await vi.advanceTimersByTimeAsync(20);
    expect(lists()).toBe(3);
  });
});

describe('relay peer drain', () => {
  it('announces the replica in the welcome and tells a peer that can drain to move', async () => {
    const drains: Array<{ graceMs: number; reason: string }> = [];
    const { control, agent } = pair(
      { replicaId: 'replica-a' },
      { onDrain: (drain) => drains.push(drain), opens: ['discoverRequest'] },
    );
    const [, session] = await Promise.all([control.peer.whenReady, agent.peer.whenReady]);
    expect(session.remote.replicaId).toBe('replica-a');
    expect(session.capabilities.has('drain')).toBe(true);
    expect(agent.handlers[0]!.context.isDraining()).toBe(false);
    expect(control.peer.drain(5000, 'the replica is stopping')).toBe(true);
    // Said once, however often the owner asks.
    expect(control.peer.drain(5000, 'again')).toBe(true);
    await delivered();
    expect(drains).toEqual([{ graceMs: 5000, reason: 'the replica is stopping' }]);
    expect(agent.peer.draining && agent.peer.drainReceived).toBe(true);
    expect(agent.handlers[0]!.context.isDraining()).toBe(true);
    expect(control.peer.draining).toBe(true);
    expect(control.peer.drainReceived).toBe(false);
    // Streams still flow on a draining connection, and the connection stays up until its owner closes it.
    const id = control.handlers[0]!.context.nextStreamId();
    control.handlers[0]!.context.send({
      streamId: id,
      payload: { case: 'discoverRequest', value: { url: 'https://x:1' } },
    });
    await delivered();
    expect(agent.handlers[0]!.received.map((e) => e.payload.case)).toEqual(['discoverRequest']);
    expect(agent.peer.isClosed).toBe(false);
    control.peer.close(CLOSE_CODE.GOING_AWAY, 'stopping', 'drained');
    expect(await agent.closed).toMatchObject({ code: 1001 });
  });

  it('sends no drain to a peer that did not announce it, and names no replica unless told', async () => {
    const manual = manualTransport();
    const control = side(manual.transport, 'acceptor');
    manual.deliver(hello({ capabilities: ['discover', 'request', 'reconcile'] }));
    await control.peer.whenReady;
    expect(manual.sent[0]!.payload).toMatchObject({ case: 'welcome', value: { replicaId: '' } });
    expect(control.peer.drain(1000, 'stopping')).toBe(false);
    expect(control.peer.draining).toBe(false);
    expect(manual.sent.map((e) => e.payload.case)).toEqual(['welcome']);
  });

  it('treats a drain from a peer that did not announce the capability as a violation', async () => {
    const manual = manualTransport();
    const control = side(manual.transport, 'acceptor');
    manual.deliver(hello({ capabilities: ['discover'] }));
    await control.peer.whenReady;
    manual.deliver({ streamId: 0, payload: { case: 'drain', value: { graceMs: 1 } } });
    expect(await control.closed).toMatchObject({ code: 1002, endReason: 'protocol-error' });
  });
});

describe('relay peer batching', () => {
  const withoutBatch = DEFAULT_CAPABILITIES.filter((c) => c !== CAPABILITY.BATCH);

  /** A pair over counted pipe ends; `control` opens request streams, `agent` discover streams. */
  async function countedPair(
    acceptor: Partial<RelayPeerOptions> = {},
    initiator: Partial<RelayPeerOptions> = {},
  ) {
    const [a, b] = createFramePipe();
    const up = counted(b);
    const down = counted(a);
    const control = side(down.transport, 'acceptor', { opens: ['requestHead'], ...acceptor });
    const agent = side(up.transport, 'initiator', { opens: ['discoverRequest'], ...initiator });
    const [session] = await Promise.all([control.peer.whenReady, agent.peer.whenReady]);
    await endOfTurn();
    up.writes.length = 0;
    down.writes.length = 0;
    return { control, agent, up: up.writes, down: down.writes, session };
  }

  /** Sends `n` opening envelopes in one turn from `from`; returns their ids. */
  function burst(from: Side, n: number, kind: 'requestHead' | 'discoverRequest'): number[] {
    const context = from.handlers[0]!.context;
    const ids: number[] = [];
    for (let i = 0; i < n; i++) {
      const id = context.nextStreamId();
      ids.push(id);
      context.send(
        kind === 'requestHead'
          ? {
              streamId: id,
              payload: { case: 'requestHead', value: { method: 'GET', url: `https://x/${i}` } },
            }
          : { streamId: id, payload: { case: 'discoverRequest', value: { url: `https://x:${i + 1}` } } },
      );
    }
    return ids;
  }

  it('sends a burst of one turn as one batch frame when both sides announce batch, delivered in order', async () => {
    const { control, agent, up, down, session } = await countedPair();
    expect(session.capabilities.has(CAPABILITY.BATCH)).toBe(true);
    const upIds = burst(agent, 20, 'requestHead');
    const downIds = burst(control, 20, 'discoverRequest');
    // Nothing leaves before the turn ends; then one write each way.
    expect(up.length + down.length).toBe(0);
    await endOfTurn();
    expect(up.length).toBe(1);
    expect(down.length).toBe(1);
    const upFrame = decodeFrame(up[0]![0]!);
    expect(Array.isArray(upFrame) && upFrame.length).toBe(20);
    await eventually(() => control.handlers[0]!.received.length === 20);
    expect(control.handlers[0]!.received.map((e) => e.streamId)).toEqual(upIds);
    await eventually(() => agent.handlers[0]!.received.length === 20);
    expect(agent.handlers[0]!.received.map((e) => e.streamId)).toEqual(downIds);
  });

  it('interoperates with a peer that does not announce batch: separate frames, still one write per turn', async () => {
    for (const [acceptor, initiator] of [
      [{}, { capabilities: withoutBatch }],
      [{ capabilities: withoutBatch }, {}],
    ] as const) {
      const { control, agent, up, down, session } = await countedPair(acceptor, initiator);
      expect(session.capabilities.has(CAPABILITY.BATCH)).toBe(false);
      const upIds = burst(agent, 12, 'requestHead');
      const downIds = burst(control, 12, 'discoverRequest');
      await endOfTurn();
      expect(up.length).toBe(1);
      expect(down.length).toBe(1);
      // Twelve plain envelopes, none of them a batch.
      for (const writes of [up, down]) {
        expect(writes[0]!.length).toBe(12);
        for (const frame of writes[0]!) expect(Array.isArray(decodeFrame(frame))).toBe(false);
      }
      await eventually(() => control.handlers[0]!.received.length === 12);
      expect(control.handlers[0]!.received.map((e) => e.streamId)).toEqual(upIds);
      await eventually(() => agent.handlers[0]!.received.length === 12);
      expect(agent.handlers[0]!.received.map((e) => e.streamId)).toEqual(downIds);
      expect(control.peer.isClosed || agent.peer.isClosed).toBe(false);
    }
  });

  it('keeps each batch frame within the frame limit of the other side', async () => {
    const { control, agent, up } = await countedPair({ limits: { maxFrameBytes: 4096 } });
    const context = agent.handlers[0]!.context;
    const [id] = burst(agent, 1, 'requestHead');
    await endOfTurn();
    up.length = 0;
    for (let i = 0; i < 10; i++) {
      context.send({
        streamId: id!,
        payload: { case: 'bodyChunk', value: { data: new Uint8Array(1000).fill(i) } },
      });
    }
    await endOfTurn();
    expect(up.length).toBe(1);
    const frames = up[0]!;
    expect(frames.length).toBeGreaterThan(1);
    for (const frame of frames) expect(frame.byteLength).toBeLessThanOrEqual(4096);
    await eventually(() => control.handlers[0]!.received.length === 11);
    const chunks = control.handlers[0]!.received.slice(1);
    expect(chunks.map((e) => (e.payload.case === 'bodyChunk' ? e.payload.value.data[0] : -1))).toEqual([
      0, 1, 2, 3, 4, 5, 6, 7, 8, 9,
    ]);
    expect(control.peer.isClosed).toBe(false);
  });

  it('sends an envelope of 16 KiB or more as its own frame beside the batches, in the same write and order', async () => {
    const { control, agent, up } = await countedPair();
    const context = agent.handlers[0]!.context;
    const [id] = burst(agent, 1, 'requestHead');
    await endOfTurn();
    up.length = 0;
    const chunk = (bytes: number, mark: number) =>
      context.send({
        streamId: id!,
        payload: { case: 'bodyChunk', value: { data: new Uint8Array(bytes).fill(mark) } },
      });
    chunk(100, 0);
    chunk(100, 1);
    chunk(LONE_FRAME_BYTES, 2);
    chunk(100, 3);
    chunk(64 * 1024, 4);
    await endOfTurn();
    expect(up.length).toBe(1);
    const frames = up[0]!.map((frame) => decodeFrame(frame));
    expect(frames.map((f) => (Array.isArray(f) ? `batch ${f.length}` : f.payload.case))).toEqual([
      'batch 2',
      'bodyChunk',
      'bodyChunk',
      'bodyChunk',
    ]);
    await eventually(() => control.handlers[0]!.received.length === 6);
    expect(
      control.handlers[0]!.received.slice(1).map((e) =>
        e.payload.case === 'bodyChunk' ? e.payload.value.data[0] : -1,
      ),
    ).toEqual([0, 1, 2, 3, 4]);
  });

  it('runs end-of-turn callbacks once, before the turn’s envelopes leave, and sends what they queue with them', async () => {
    const { control, agent, up } = await countedPair();
    const context = agent.handlers[0]!.context;
    const [id] = burst(agent, 1, 'requestHead');
    let runs = 0;
    const chunk = () => {
      runs += 1;
      context.send({ streamId: id!, payload: { case: 'bodyChunk', value: { data: new Uint8Array(10) } } });
    };
    context.atTurnEnd(chunk);
    context.atTurnEnd(() => context.atTurnEnd(chunk));
    expect(up.length).toBe(0);
    await endOfTurn();
    // The head and the first chunk in one write; the callback asked for during the flush runs a turn later.
    expect(runs).toBe(1);
    expect(up.length).toBe(1);
    const frame = decodeFrame(up[0]![0]!);
    expect(Array.isArray(frame) && frame.length).toBe(2);
    await eventually(() => runs === 2 && up.length === 2);
    await eventually(() => control.handlers[0]!.received.length === 3);
    expect(control.handlers[0]!.received.map((e) => e.payload.case)).toEqual([
      'requestHead',
      'bodyChunk',
      'bodyChunk',
    ]);
    agent.peer.close(CLOSE_CODE.NORMAL, 'done');
    context.atTurnEnd(chunk);
    await endOfTurn();
    expect(runs).toBe(2);
  });

  it('sends what a turn queued before closing, and refuses a batch from a peer that did not negotiate it', async () => {
    const { control, agent } = await countedPair();
    burst(agent, 3, 'requestHead');
    agent.peer.close(CLOSE_CODE.NORMAL, 'done');
    await eventually(() => control.handlers[0]!.received.length === 3);
    const manual = manualTransport();
    const lonely = side(manual.transport, 'acceptor');
    manual.deliver(hello({ capabilities: withoutBatch }));
    await lonely.peer.whenReady;
    const ping = encodeEnvelope({ streamId: 0, payload: { case: 'ping', value: { nonce: 1 } } });
    manual.deliverBytes(encodeBatch([ping, ping]));
    expect(await lonely.closed).toMatchObject({ code: 1002, endReason: 'protocol-error' });
  });

  it('refuses a batch nested in a batch', async () => {
    const manual = manualTransport();
    const control = side(manual.transport, 'acceptor');
    manual.deliver(hello({ capabilities: [CAPABILITY.BATCH] }));
    await control.peer.whenReady;
    const ping = encodeEnvelope({ streamId: 0, payload: { case: 'ping', value: { nonce: 7 } } });
    manual.deliverBytes(encodeBatch([ping, ping]));
    await endOfTurn();
    expect(manual.sent.filter((e) => e.payload.case === 'pong').length).toBe(2);
    manual.deliverBytes(encodeBatch([ping, encodeBatch([ping, ping])]));
    expect(await control.closed).toMatchObject({ code: 1002, endReason: 'protocol-error' });
  });
});
