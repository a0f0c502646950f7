/**
 * One end of a relay connection, the same on both sides of every link (the
 * hub and the agent over a WebSocket, the two halves of the direct transport
 * over an in-memory pipe): the protocol lives here once, above a byte-level
 * frame transport, and the owners only adapt sockets and keep their books.
 *
 * - Handshake: the initiator (the agent) sends hello with the range of
 *   versions it speaks, its limits and capabilities; the acceptor (the
 *   control plane) admits it (authentication bookkeeping is the owner's),
 *   picks the highest common version and answers welcome with its own range,
 *   limits and capabilities. Each side then honours the other's limits
 *   (frame size, concurrent streams, default window) and uses a feature that
 *   adds envelopes only when both announced its capability. Ranges that do
 *   not meet: an error on stream 0 naming both, and a close (1002).
 * - Keepalive: pings on stream 0 (the acceptor pings, the initiator watches
 *   for silence by default); any frame counts as heard.
 * - Stream 0: ping/pong, connection errors (the peer is closing: so do we),
 *   stream reconciliation, drain. Anything else there is a protocol violation.
 * - Streams: envelopes on other ids go to the stream handlers (the relay
 *   client, the executor, later kinds); a new stream opens at the handler that
 *   declared its opening envelope. Ids opened by the acceptor are even, by
 *   the initiator odd.
 * - Reconciliation (capability `reconcile`): every `reconcileIntervalMs` each
 *   side sends its live stream ids; a local stream missing from two lists in
 *   a row is closed on both ends and counted as leaked.
 * - Batching: once the handshake is done, the envelopes a side produces in
 *   one turn of its event loop leave together at the end of it, in one
 *   socket write (docs/protocol.md, "Batching"): with capability `batch` on
 *   both sides as one batch frame (or a few, each within the other side's
 *   frame limit), else as separate frames handed to the transport at once
 *   ({@link FrameTransport.sendMany}: the WebSocket corks its socket around
 *   them). A turn that queues {@link FLUSH_BYTES} sends at once. Handlers
 *   may ask to run at the end of the turn, just before its envelopes leave
 *   ({@link StreamContext.atTurnEnd}): the small reads of one turn then go
 *   as one body chunk rather than one each.
 * - Drain (capability `drain`): a side going away says so first
 *   ({@link RelayPeer.drain}); the other side opens no new stream on the
 *   connection and its owner connects elsewhere ({@link RelayPeerOptions.onDrain})
 *   while the open streams finish.
 * - Violations (a frame that does not decode, over the limit, out of place)
 *   answer an error envelope on stream 0 and close with the code of
 *   {@link closeCodeFor}. Whatever ends the connection, every stream handler
 *   is closed once, with AGENT_OFFLINE unless the owner says otherwise.
 */
import { AppError, type ErrorCode, toAppError } from '../errors.js';
import type { Logger } from '../logger.js';
import {
  BATCH_FRAME_OVERHEAD,
  batchEntryBytes,
  decodeEnvelope,
  decodeFrame,
  encodeBatch,
  encodeEnvelope,
} from './codec.js';
import {
  DEFAULT_MAX_FRAME_BYTES,
  DEFAULT_MAX_STREAMS,
  DEFAULT_MAX_TUNNEL_STREAMS,
  DEFAULT_TUNNEL_WINDOW_BYTES,
  DEFAULT_WINDOW_BYTES,
  type Envelope,
  type EnvelopeCase,
  errorEnvelope,
  type Hello,
  type Limits,
  type Welcome,
} from './envelope.js';
import type { FrameTransport, TransportClosed } from './frame-transport.js';
import { DEFAULT_KEEPALIVE_INTERVAL_MS, DEFAULT_KEEPALIVE_MAX_MISSED, Keepalive } from './keepalive.js';
import {
  announcedRange,
  CAPABILITY,
  CLOSE_CODE,
  chooseVersion,
  closeCodeFor,
  DEFAULT_CAPABILITIES,
  END_REASON,
  SUPPORTED_VERSIONS,
  type VersionRange,
  versionMismatch,
} from './protocol.js';

/** The other side has this long to say hello (acceptor) or welcome (initiator). */
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;
/** How often live stream ids are exchanged (when both sides can): 60 s. */
export const DEFAULT_RECONCILE_INTERVAL_MS = 60_000;
/**
 * A peer that leaves this much unread on its connection (16 request bodies of
 * the largest size) is not reading: the connection is cut, so memory stays
 * bounded on this side.
 */
export const DEFAULT_MAX_SEND_BUFFER_BYTES = 16 * 1024 * 1024;
/**
 * Bytes a side lets queue towards its peer before its handlers hold back
 * bulk data (body chunks): 4 MiB; they resume once it is down to half. The
 * queue passes it by one frame at most, since small envelopes (heads, ends,
 * errors, pongs) are never held back.
 */
export const DEFAULT_MAX_QUEUED_BYTES = 4 * 1024 * 1024;

/** Queued envelopes of one turn past which they are sent at once rather than at the turn's end: 256 KiB. */
export const FLUSH_BYTES = 256 * 1024;

/**
 * An envelope this large (a body chunk) leaves as its own frame, beside the
 * batches, in the same write: copying it into a batch would cost more than
 * the frame it saves. 16 KiB.
 */
export const LONE_FRAME_BYTES = 16 * 1024;

const MAX_STREAM_ID = 0xffff_ffff;

/** Which side of the handshake this peer is. */
export type PeerRole = 'initiator' | 'acceptor';

/** Limits with every field filled in. */
export type PeerLimits = Required<Limits>;

/** What the other side announced in its hello or welcome. */
export interface RemoteHello {
  versions: VersionRange;
  /** Its software version (`agentVersion` / `serverVersion`), at most 64 characters. */
  software: string;
  capabilities: readonly string[];
  limits: PeerLimits;
  /** The accepting control-plane replica (welcome only); '' when it named none. */
  replicaId: string;
  /** The acceptor's clock when it sent the welcome (ms since the epoch; welcome only); 0 when not sent. */
  timeMs: number;
}

/** The outcome of the handshake. */
export interface NegotiatedSession {
  /** The version in use. */
  version: number;
  /** Both sides' ranges. */
  local: VersionRange;
  remote: RemoteHello;
  /** Capabilities both sides announced. */
  capabilities: ReadonlySet<string>;
  /** Largest frame this side may send (the other side's limit). */
  sendFrameBytes: number;
  /** Streams this side may open at once (the smaller of both limits). */
  maxStreams: number;
  /** The default response window (the acceptor's announcement, else the protocol default). */
  initialWindowBytes: number;
}

/** What a stream handler gets from its peer. */
export interface StreamContext {
  readonly session: NegotiatedSession;
  /** Sends one envelope; throws AGENT_OFFLINE once the connection is closed. */
  send(envelope: Envelope): void;
  /** A fresh stream id for a stream this side opens (parity of its role, not in use by any handler). */
  nextStreamId(): number;
  /**
   * True while the send queue is over its bound: send no bulk data (body
   * chunks) until the handler's `resume()` is called.
   */
  isCongested(): boolean;
  /** True once either side announced a drain: open no new stream on this connection. */
  isDraining(): boolean;
  /**
   * Runs `callback` once at the end of this turn of the event loop, before
   * the envelopes queued in it leave (what it sends leaves with them);
   * ignored once the connection is closed.
   */
  atTurnEnd(callback: () => void): void;
  readonly logger: Logger;
}

/**
 * One kind of stream (or several) on one side: the relay client opening
 * discover/request streams, the executor accepting them, later kinds alike.
 */
export interface StreamHandler {
  /** Envelope kinds that open a stream of this handler's (incoming); [] for a handler that only opens. */
  readonly opens: readonly EnvelopeCase[];
  /** Whether the stream is one of this handler's. */
  has(streamId: number): boolean;
  /** An envelope of one of its streams, or one opening a new stream. Throws only on a protocol violation. */
  receive(envelope: Envelope): void;
  /** Ids of its live streams. */
  streamIds(): Iterable<number>;
  /** Closes a stream the other side no longer knows, telling the other side what its kind needs. */
  reset(streamId: number, error: AppError): void;
  /** The connection ended: every stream fails with `error`; nothing is sent. */
  close(error: AppError): void;
  /** The send queue has room again after {@link StreamContext.isCongested} said it had none. */
  resume?(): void;
}

/** Builds the stream handlers of one connection once the handshake is done. */
export type StreamHandlerFactory = (context: StreamContext) => StreamHandler[];

/** The acceptor's verdict on a hello. */
export type AdmitResult = { ok: true } | { ok: false; code: number; reason: string; endReason: string };

/** How a peer ended. */
export interface PeerClosed {
  code: number;
  reason: string;
  /** Recorded reason: one of {@link END_REASON} or the owner's own. */
  endReason: string;
  /** The protocol or transport error behind it, if any. */
  error?: AppError;
  /** Whether the handshake had completed. */
  wasReady: boolean;
}

/** Counters of one connection. */
export interface PeerStats {
  /** Live streams over all handlers. */
  activeStreams: number;
  /** Streams this side closed as leaked. */
  leakedStreams: number;
  /** Streams the other side reports having closed as leaked. */
  remoteLeakedStreams: number;
  /** Bytes queued on the transport. */
  bufferedAmount: number;
}

/** Options of {@link RelayPeer}; `transport`, `role` and `streams` are required. */
export interface RelayPeerOptions {
  transport: FrameTransport;
  role: PeerRole;
  /** Builds this side's stream handlers (client, executor, …). */
  streams: StreamHandlerFactory;
  logger: Logger;
  /** Versions spoken; default {@link SUPPORTED_VERSIONS}. */
  versions?: VersionRange | undefined;
  /** This side's software version, announced in hello/welcome. */
  software?: string | undefined;
  /** Announced capabilities; default {@link DEFAULT_CAPABILITIES}. */
  capabilities?: readonly string[] | undefined;
  /** What this side accepts; defaults 1 MiB frames, 256 streams, 256 KiB window. */
  limits?: Limits | undefined;
  /** Default {@link DEFAULT_HANDSHAKE_TIMEOUT_MS}. */
  handshakeTimeoutMs?: number | undefined;
  /** Keepalive; `intervalMs` 0 turns it off. `ping` defaults to true for the acceptor, false for the initiator. */
  keepalive?: { intervalMs?: number | undefined; maxMissed?: number | undefined; ping?: boolean } | undefined;
  /** Default {@link DEFAULT_RECONCILE_INTERVAL_MS}; 0 turns reconciliation off on this side. */
  reconcileIntervalMs?: number | undefined;
  /** Unread bytes towards the peer before it counts as not reading; default {@link DEFAULT_MAX_SEND_BUFFER_BYTES}. */
  maxSendBufferBytes?: number | undefined;
  /** Queued bytes past which handlers hold back body chunks; default {@link DEFAULT_MAX_QUEUED_BYTES}. */
  maxQueuedBytes?: number | undefined;
  /** Acceptor: the control-plane replica id announced in the welcome (empty for a single process). */
  replicaId?: string | undefined;
  /** The other side announced a drain: it is going away once the open streams are done (or `graceMs` passed). */
  onDrain?: ((drain: { graceMs: number; reason: string }) => void) | undefined;
  /** The code streams fail with when the connection ends; default AGENT_OFFLINE. */
  offlineCode?: ErrorCode | undefined;
  /** Acceptor: vets the hello (the owner's bookkeeping) before the welcome; `version` is the one chosen. */
  admit?: ((hello: RemoteHello, version: number) => AdmitResult | Promise<AdmitResult>) | undefined;
  /** The handshake is done and streams may open. */
  onReady?: ((session: NegotiatedSession) => void) | undefined;
  /** The peer answered a ping. */
  onPong?: (() => void) | undefined;
  /** The other side reported an error on stream 0 (it is closing the connection). */
  onRemoteError?: ((error: AppError) => void) | undefined;
  /** Streams were closed as leaked (by reconciliation, on either side). */
  onLeak?: ((stats: PeerStats) => void) | undefined;
  /** Once, when the connection ended, whatever the cause. */
  onClosed?: ((event: PeerClosed) => void) | undefined;
}

type State = 'handshake' | 'admitting' | 'ready' | 'closed';

/** One end of a relay connection; see the module comment. Starts at construction. */
export class RelayPeer {
  readonly role: PeerRole;
  readonly #options: RelayPeerOptions;
  readonly #transport: FrameTransport;
  readonly #versions: VersionRange;
  readonly #limits: PeerLimits;
  readonly #capabilities: readonly string[];
  readonly #keepalive: Keepalive | null;
  readonly #maxSendBuffer: number;
  readonly #maxQueued: number;
  #congested = false;
  // Encoded envelopes of this turn, sent together at its end (see #flush).
  #outbox: Uint8Array[] = [];
  #outboxBytes = 0;
  #flushScheduled = false;
  #batch = false;
  // Handlers' end-of-turn callbacks (StreamContext.atTurnEnd), run before the flush.
  #turnEnd: (() => void)[] = [];
  readonly #flushAtTurnEnd = (): void => {
    this.#runTurnEnd();
    this.#flushScheduled = false;
    this.#flush();
    // A callback that asked again (its stream still has bytes) runs at the end of the next turn.
    if (this.#turnEnd.length > 0) this.#scheduleFlush();
  };
  #logger: Logger;
  #state: State = 'handshake';
  #session: NegotiatedSession | null = null;
  #remote: RemoteHello | null = null;
  #handlers: StreamHandler[] = [];
  #openers = new Map<EnvelopeCase, StreamHandler>();
  #handshakeTimer: ReturnType<typeof setTimeout> | null = null;
  #reconcileTimer: ReturnType<typeof setInterval> | null = null;
  #suspects = new Map<number, number>();
  #nextId: number;
  #leaked = 0;
  #remoteLeaked = 0;
  #drainSent = false;
  #drainReceived = false;
  #closedEvent: PeerClosed | null = null;
  readonly #ready: Promise<NegotiatedSession>;
  #resolveReady!: (session: NegotiatedSession) => void;
  #rejectReady!: (err: AppError) => void;

  constructor(options: RelayPeerOptions) {
    this.role = options.role;
    this.#options = options;
    this.#transport = options.transport;
    this.#logger = options.logger;
    this.#versions = options.versions ?? SUPPORTED_VERSIONS;
    this.#limits = {
      maxFrameBytes: options.limits?.maxFrameBytes || DEFAULT_MAX_FRAME_BYTES,
      maxStreams: options.limits?.maxStreams || DEFAULT_MAX_STREAMS,
      initialWindowBytes: options.limits?.initialWindowBytes || DEFAULT_WINDOW_BYTES,
      maxTunnelStreams: options.limits?.maxTunnelStreams || DEFAULT_MAX_TUNNEL_STREAMS,
      tunnelWindowBytes: options.limits?.tunnelWindowBytes || DEFAULT_TUNNEL_WINDOW_BYTES,
    };
    this.#capabilities = options.capabilities ?? DEFAULT_CAPABILITIES;
    this.#maxSendBuffer = options.maxSendBufferBytes ?? DEFAULT_MAX_SEND_BUFFER_BYTES;
    this.#maxQueued = options.maxQueuedBytes ?? DEFAULT_MAX_QUEUED_BYTES;
    this.#nextId = options.role === 'acceptor' ? 2 : 1;
    this.#ready = new Promise((resolve, reject) => {
      this.#resolveReady = resolve;
      this.#rejectReady = reject;
    });
    // Nobody has to wait for readiness; a failed handshake is reported through onClosed too.
    this.#ready.catch(() => {});
    const keepalive = options.keepalive ?? {};
    const intervalMs = keepalive.intervalMs ?? DEFAULT_KEEPALIVE_INTERVAL_MS;
    this.#keepalive =
      intervalMs > 0
        ? new Keepalive({
            intervalMs,
            maxMissed: keepalive.maxMissed ?? DEFAULT_KEEPALIVE_MAX_MISSED,
            ping: keepalive.ping ?? options.role === 'acceptor',
            sendPing: (nonce) => this.#send({ streamId: 0, payload: { case: 'ping', value: { nonce } } }),
            onDead: () => {
              this.#logger.warn(
                'nothing heard from the relay peer within the keepalive; cutting the connection',
              );
              this.close(CLOSE_CODE.CUT, 'keepalive timeout', END_REASON.TIMEOUT);
            },
          })
        : null;
    this.#handshakeTimer = setTimeout(
      () =>
        this.#violation(
          new AppError(
            'PROTOCOL_ERROR',
            options.role === 'acceptor' ? 'no hello received in time' : 'no welcome received in time',
          ),
        ),
      options.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS,
    );
    this.#handshakeTimer.unref?.();
    this.#transport.start({
      frame: (data) => this.#onFrame(data),
      invalid: (error) => this.#violation(error),
      closed: (event) => this.#onTransportClosed(event),
    });
    if (options.role === 'initiator' && this.#state === 'handshake') this.#sendHello();
  }

  /** True once the handshake is done (until the connection ends). */
  get ready(): boolean {
    return this.#state === 'ready';
  }

  /** True once the connection ended. */
  get isClosed(): boolean {
    return this.#state === 'closed';
  }

  /** The negotiated session once ready (kept after the close), else null. */
  get session(): NegotiatedSession | null {
    return this.#session;
  }

  /** What the other side announced in its hello or welcome (null before it came). */
  get remote(): RemoteHello | null {
    return this.#remote;
  }

  /** Resolves at the end of the handshake; rejects with the reason when the connection ends before. */
  get whenReady(): Promise<NegotiatedSession> {
    return this.#ready;
  }

  /** How the connection ended, or null while it lasts. */
  get closedEvent(): PeerClosed | null {
    return this.#closedEvent;
  }

  /** Resolves once the transport's connection is gone. */
  get done(): Promise<void> {
    return this.#transport.done;
  }

  /** This side's stream handlers (empty before the handshake). */
  get handlers(): readonly StreamHandler[] {
    return this.#handlers;
  }

  stats(): PeerStats {
    let activeStreams = 0;
    for (const handler of this.#handlers) for (const _ of handler.streamIds()) activeStreams += 1;
    return {
      activeStreams,
      leakedStreams: this.#leaked,
      remoteLeakedStreams: this.#remoteLeaked,
      bufferedAmount: this.#transport.bufferedAmount + this.#outboxBytes,
    };
  }

  /** Replaces the logger (e.g. with one naming the session once it is known). */
  setLogger(logger: Logger): void {
    this.#logger = logger;
  }

  /**
   * Ends the connection: every stream fails at once (AGENT_OFFLINE by
   * default), then the transport closes with `code` (1006 cuts it).
   * `endReason` is what `onClosed` reports. Idempotent.
   */
  close(code: number, reason: string, endReason: string = END_REASON.CLOSED, error?: AppError): void {
    if (this.#state === 'closed') return;
    // What this turn queued (an error envelope, say) goes out before the close; a cut drops it.
    if (code === CLOSE_CODE.CUT) this.#dropOutbox();
    else {
      this.#runTurnEnd();
      this.#flush();
    }
    if ((this.#state as State) === 'closed') return;
    this.#finish({ code, reason, endReason, ...(error ? { error } : {}), wasReady: this.#state === 'ready' });
    this.#transport.close(code, reason);
  }

  /** True once either side announced a drain (no new stream opens on this connection). */
  get draining(): boolean {
    return this.#drainSent || this.#drainReceived;
  }

  /** True once the other side announced a drain. */
  get drainReceived(): boolean {
    return this.#drainReceived;
  }

  /**
   * Tells the other side this one is going away (a replica stopping): it
   * opens no new stream here and connects elsewhere, while the open streams
   * may run `graceMs` more; the owner closes (1001) after that. False, and
   * nothing sent, when the other side did not announce `drain` (an older
   * peer): the owner's close is all it gets.
   */
  drain(graceMs: number, reason: string): boolean {
    if (this.#state !== 'ready' || !this.#session?.capabilities.has(CAPABILITY.DRAIN)) return false;
    if (!this.#drainSent) {
      this.#drainSent = true;
      this.#send({
        streamId: 0,
        payload: { case: 'drain', value: { graceMs: Math.max(0, Math.round(graceMs)), reason } },
      });
    }
    return true;
  }

  /**
   * Runs one reconciliation round now: sends this side's live stream ids
   * (reconciliation must have been negotiated). Exposed for tests; the peer
   * runs it every `reconcileIntervalMs`.
   */
  reconcileNow(): void {
    if (this.#state !== 'ready' || !this.#session?.capabilities.has(CAPABILITY.RECONCILE)) return;
    const streamIds: number[] = [];
    for (const handler of this.#handlers) for (const id of handler.streamIds()) streamIds.push(id);
    this.#send({
      streamId: 0,
      payload: { case: 'streamSet', value: { streamIds, leakedTotal: this.#leaked } },
    });
  }

  #sendHello(): void {
    this.#send({
      streamId: 0,
      payload: {
        case: 'hello',
        value: {
          protocolVersion: this.#versions.max,
          minProtocolVersion: this.#versions.min,
          agentVersion: this.#options.software ?? '',
          capabilities: [...this.#capabilities],
          limits: { ...this.#limits },
        },
      },
    });
  }

  #onFrame(data: Uint8Array): void {
    if (this.#state === 'closed') return;
    this.#keepalive?.heard();
    let decoded: Envelope | Uint8Array[];
    try {
      decoded = decodeFrame(data, { maxFrameBytes: this.#limits.maxFrameBytes });
    } catch (err) {
      this.#violation(toAppError(err, 'PROTOCOL_ERROR'));
      return;
    }
    if (!Array.isArray(decoded)) {
      this.#onEnvelope(decoded);
      return;
    }
    if (this.#state !== 'ready' || !this.#batch) {
      this.#violation(
        new AppError('PROTOCOL_ERROR', 'a batch frame from a peer that did not negotiate batch'),
      );
      return;
    }
    for (const inner of decoded) {
      let envelope: Envelope;
      try {
        envelope = decodeEnvelope(inner, { maxFrameBytes: this.#limits.maxFrameBytes });
      } catch (err) {
        this.#violation(toAppError(err, 'PROTOCOL_ERROR'));
        return;
      }
      this.#onEnvelope(envelope);
      if ((this.#state as State) === 'closed') return;
    }
  }

  #onEnvelope(envelope: Envelope): void {
    if (this.#state !== 'ready') {
      this.#onHandshakeEnvelope(envelope);
      return;
    }
    if (envelope.streamId === 0) {
      this.#onConnectionEnvelope(envelope);
      return;
    }
    try {
      this.#dispatch(envelope);
    } catch (err) {
      this.#violation(toAppError(err, 'PROTOCOL_ERROR'));
    }
  }

  #onHandshakeEnvelope(envelope: Envelope): void {
    const { payload } = envelope;
    if (envelope.streamId === 0 && payload.case === 'error' && this.role === 'initiator') {
      // The acceptor refuses (versions, …) and closes; say why in our log.
      const error = new AppError('PROTOCOL_ERROR', payload.value.message || payload.value.code);
      this.#logger.error(
        { code: payload.value.code },
        `the control plane refused the session: ${error.message}`,
      );
      this.#options.onRemoteError?.(error);
      return;
    }
    if (this.#state === 'handshake' && envelope.streamId === 0) {
      if (this.role === 'acceptor' && payload.case === 'hello') {
        void this.#onHello(payload.value);
        return;
      }
      if (this.role === 'initiator' && payload.case === 'welcome') {
        this.#onWelcome(payload.value);
        return;
      }
    }
    this.#violation(new AppError('PROTOCOL_ERROR', `unexpected ${payload.case} before the handshake ended`));
  }

  async #onHello(hello: Hello): Promise<void> {
    this.#clearHandshakeTimer();
    const remote = remoteHello(hello.protocolVersion, hello.minProtocolVersion, hello.agentVersion, hello);
    this.#remote = remote;
    const version = chooseVersion(this.#versions, remote.versions);
    if (version === null) {
      this.#refuseVersions(versionMismatch(remote.versions, this.#versions));
      return;
    }
    this.#state = 'admitting';
    let verdict: AdmitResult = { ok: true };
    if (this.#options.admit) {
      try {
        verdict = await this.#options.admit(remote, version);
      } catch (err) {
        const error = toAppError(err);
        verdict = { ok: false, code: CLOSE_CODE.POLICY, reason: error.message, endReason: 'refused' };
      }
    }
    if ((this.#state as State) === 'closed') return;
    if (!verdict.ok) {
      this.close(verdict.code, verdict.reason, verdict.endReason);
      return;
    }
    const session = this.#negotiate(version, remote);
    this.#send({
      streamId: 0,
      payload: {
        case: 'welcome',
        value: {
          protocolVersion: version,
          minProtocolVersion: this.#versions.min,
          maxProtocolVersion: this.#versions.max,
          serverVersion: this.#options.software ?? '',
          ...(this.#options.replicaId ? { replicaId: this.#options.replicaId } : {}),
          serverTimeMs: Date.now(),
          capabilities: [...this.#capabilities],
          limits: { ...this.#limits },
        },
      },
    });
    this.#becomeReady(session);
  }

  #onWelcome(welcome: Welcome): void {
    this.#clearHandshakeTimer();
    const version = welcome.protocolVersion;
    const remote = remoteHello(
      welcome.maxProtocolVersion || version,
      welcome.minProtocolVersion,
      welcome.serverVersion,
      welcome,
    );
    this.#remote = remote;
    if (!(version >= this.#versions.min && version <= this.#versions.max)) {
      this.#refuseVersions(versionMismatch(this.#versions, remote.versions));
      return;
    }
    this.#becomeReady(this.#negotiate(version, remote));
  }

  /** Versions that do not meet: the error names both ranges; the close carries it too. */
  #refuseVersions(error: AppError): void {
    this.#logger.error(
      { code: error.code, ...error.details },
      this.role === 'initiator' ? `refusing the control plane: ${error.message}` : error.message,
    );
    this.#trySend(errorEnvelope(0, error));
    this.close(CLOSE_CODE.PROTOCOL_ERROR, error.message, END_REASON.VERSION, error);
  }

  #negotiate(version: number, remote: RemoteHello): NegotiatedSession {
    const shared = new Set(this.#capabilities.filter((c) => remote.capabilities.includes(c)));
    const acceptorWindow =
      this.role === 'acceptor' ? this.#limits.initialWindowBytes : remote.limits.initialWindowBytes;
    return {
      version,
      local: { ...this.#versions },
      remote,
      capabilities: shared,
      sendFrameBytes: Math.min(remote.limits.maxFrameBytes, this.#limits.maxFrameBytes),
      maxStreams: Math.min(remote.limits.maxStreams, this.#limits.maxStreams),
      initialWindowBytes: acceptorWindow,
    };
  }

  #becomeReady(session: NegotiatedSession): void {
    this.#session = session;
    this.#batch = session.capabilities.has(CAPABILITY.BATCH);
    const context: StreamContext = {
      session,
      send: (envelope) => {
        if (this.#state === 'closed')
          throw new AppError(this.#offlineCode(), 'the relay connection is closed');
        this.#send(envelope);
      },
      nextStreamId: () => this.#allocateStreamId(),
      isCongested: () => this.#isCongested(),
      isDraining: () => this.#drainSent || this.#drainReceived,
      atTurnEnd: (callback) => {
        if (this.#state === 'closed') return;
        this.#turnEnd.push(callback);
        this.#scheduleFlush();
      },
      logger: this.#logger,
    };
    this.#handlers = this.#options.streams(context);
    for (const handler of this.#handlers) for (const kind of handler.opens) this.#openers.set(kind, handler);
    this.#state = 'ready';
    this.#keepalive?.start();
    const interval = this.#options.reconcileIntervalMs ?? DEFAULT_RECONCILE_INTERVAL_MS;
    if (interval > 0 && session.capabilities.has(CAPABILITY.RECONCILE)) {
      this.#reconcileTimer = setInterval(() => this.reconcileNow(), interval);
      this.#reconcileTimer.unref?.();
    }
    this.#resolveReady(session);
    this.#options.onReady?.(session);
  }

  #onConnectionEnvelope(envelope: Envelope): void {
    const { payload } = envelope;
    switch (payload.case) {
      case 'ping':
        this.#send({ streamId: 0, payload: { case: 'pong', value: { nonce: payload.value.nonce ?? 0 } } });
        return;
      case 'pong':
        this.#options.onPong?.();
        return;
      case 'error': {
        const error = new AppError('PROTOCOL_ERROR', payload.value.message || payload.value.code);
        this.#logger.warn(
          { code: payload.value.code, message: payload.value.message },
          'the relay peer reported a connection error',
        );
        this.#options.onRemoteError?.(error);
        this.close(CLOSE_CODE.NORMAL, 'connection error reported by the peer', END_REASON.PEER_ERROR);
        return;
      }
      case 'streamSet':
        if (!this.#session?.capabilities.has(CAPABILITY.RECONCILE)) break;
        this.#reconcile(payload.value.streamIds, payload.value.leakedTotal ?? 0);
        return;
      case 'drain':
        if (!this.#session?.capabilities.has(CAPABILITY.DRAIN)) break;
        if (this.#drainReceived) return;
        this.#drainReceived = true;
        this.#options.onDrain?.({ graceMs: payload.value.graceMs ?? 0, reason: payload.value.reason ?? '' });
        return;
      default:
        break;
    }
    this.#violation(new AppError('PROTOCOL_ERROR', `unexpected ${payload.case} on stream 0`));
  }

  #dispatch(envelope: Envelope): void {
    const id = envelope.streamId;
    for (const handler of this.#handlers) {
      if (handler.has(id)) {
        handler.receive(envelope);
        return;
      }
    }
    const opener = this.#openers.get(envelope.payload.case);
    if (opener) {
      opener.receive(envelope);
      return;
    }
    // Late envelopes of a stream already closed here (after a cancel, say) are dropped.
    this.#logger.debug(
      { streamId: id, kind: envelope.payload.case },
      'envelope for an unknown stream dropped',
    );
  }

  /** A local stream missing from two lists in a row is leaked: closed here, and the other side told. */
  #reconcile(remoteIds: readonly number[], remoteLeaked: number): void {
    const known = new Set(remoteIds);
    const suspects = new Map<number, number>();
    let leakedNow = 0;
    for (const handler of this.#handlers) {
      for (const id of [...handler.streamIds()]) {
        if (known.has(id)) continue;
        const strikes = (this.#suspects.get(id) ?? 0) + 1;
        if (strikes < 2) {
          suspects.set(id, strikes);
          continue;
        }
        leakedNow += 1;
        this.#logger.warn({ streamId: id }, 'stream unknown to the relay peer; closing it as leaked');
        handler.reset(id, new AppError('PROTOCOL_ERROR', 'the relay peer no longer knows this stream'));
      }
    }
    this.#suspects = suspects;
    const remoteChanged = remoteLeaked !== this.#remoteLeaked;
    this.#remoteLeaked = remoteLeaked;
    this.#leaked += leakedNow;
    if (leakedNow > 0 || remoteChanged) this.#options.onLeak?.(this.stats());
  }

  #isCongested(): boolean {
    if (this.#congested || this.#transport.bufferedAmount + this.#outboxBytes < this.#maxQueued)
      return this.#congested;
    this.#congested = true;
    // The transport counts what it holds: hand it this turn's envelopes before waiting on it.
    this.#flush();
    if ((this.#state as State) === 'closed') return true;
    this.#transport.onceBelow(this.#maxQueued / 2, () => {
      this.#congested = false;
      if (this.#state !== 'ready') return;
      for (const handler of this.#handlers) handler.resume?.();
    });
    return true;
  }

  #allocateStreamId(): number {
    let id = this.#nextId;
    for (let tries = 0; tries < 1 << 20; tries++) {
      if (!this.#handlers.some((h) => h.has(id))) break;
      id = id + 2 > MAX_STREAM_ID ? (this.role === 'acceptor' ? 2 : 1) : id + 2;
    }
    this.#nextId = id + 2 > MAX_STREAM_ID ? (this.role === 'acceptor' ? 2 : 1) : id + 2;
    return id;
  }

  #send(envelope: Envelope): void {
    if (this.#state === 'closed') return;
    const frame = encodeEnvelope(envelope);
    if (this.#state !== 'ready') {
      // The handshake goes out at once (nothing else is sent before it ends).
      this.#transport.send(frame);
      this.#checkReading();
      return;
    }
    this.#outbox.push(frame);
    this.#outboxBytes += frame.byteLength;
    if (this.#outboxBytes >= FLUSH_BYTES) this.#flush();
    else this.#scheduleFlush();
  }

  #scheduleFlush(): void {
    if (this.#flushScheduled) return;
    this.#flushScheduled = true;
    setImmediate(this.#flushAtTurnEnd);
  }

  /** The handlers' end-of-turn callbacks, each once; one that throws is logged and the rest still run. */
  #runTurnEnd(): void {
    const callbacks = this.#turnEnd;
    if (callbacks.length === 0) return;
    this.#turnEnd = [];
    for (const callback of callbacks) {
      if (this.#state === 'closed') return;
      try {
        callback();
      } catch (err) {
        this.#logger.warn({ err }, 'a stream handler failed at the end of a turn');
      }
    }
  }

  /** Hands the queued envelopes to the transport together: batch frames when negotiated. */
  #flush(): void {
    const frames = this.#outbox;
    if (frames.length === 0) return;
    this.#outbox = [];
    this.#outboxBytes = 0;
    const transport = this.#transport;
    if (frames.length === 1) transport.send(frames[0] as Uint8Array);
    else {
      const out = this.#batch ? this.#packBatches(frames) : frames;
      if (out.length === 1) transport.send(out[0] as Uint8Array);
      else if (transport.sendMany) transport.sendMany(out);
      else for (const frame of out) transport.send(frame);
    }
    this.#checkReading();
  }

  /**
   * Consecutive frames packed into batch frames that fit the other side's
   * limit; a lone frame, and one of {@link LONE_FRAME_BYTES} or more, stays as it is.
   */
  #packBatches(frames: Uint8Array[]): Uint8Array[] {
    const limit = (this.#session?.sendFrameBytes ?? DEFAULT_MAX_FRAME_BYTES) - BATCH_FRAME_OVERHEAD;
    const out: Uint8Array[] = [];
    let group: Uint8Array[] = [];
    let groupBytes = 0;
    const close = () => {
      if (group.length === 1) out.push(group[0] as Uint8Array);
      else if (group.length > 1) out.push(encodeBatch(group));
      group = [];
      groupBytes = 0;
    };
    for (const frame of frames) {
      if (frame.byteLength >= LONE_FRAME_BYTES) {
        close();
        out.push(frame);
        continue;
      }
      const bytes = batchEntryBytes(frame);
      if (groupBytes + bytes > limit) close();
      group.push(frame);
      groupBytes += bytes;
    }
    close();
    return out;
  }

  #dropOutbox(): void {
    this.#outbox = [];
    this.#outboxBytes = 0;
    this.#turnEnd = [];
  }

  #checkReading(): void {
    if (this.#transport.bufferedAmount > this.#maxSendBuffer) {
      this.#logger.warn(
        { queuedBytes: this.#transport.bufferedAmount },
        'the relay peer is not reading its connection; cutting it',
      );
      this.close(CLOSE_CODE.CUT, 'not reading', END_REASON.NOT_READING);
    }
  }

  #trySend(envelope: Envelope): void {
    try {
      this.#send(envelope);
    } catch {
      // The connection is being closed anyway.
    }
  }

  #violation(error: AppError): void {
    if (this.#state === 'closed') return;
    this.#logger.warn(
      { code: error.code, err: error },
      'the relay peer broke the protocol; closing the connection',
    );
    this.#trySend(errorEnvelope(0, error));
    const endReason =
      error.code === 'PAYLOAD_TOO_LARGE' ? END_REASON.FRAME_TOO_LARGE : END_REASON.PROTOCOL_ERROR;
    this.close(closeCodeFor(error), error.message, endReason, error);
  }

  #onTransportClosed(event: TransportClosed): void {
    if (this.#state === 'closed') return;
    this.#dropOutbox();
    let endReason: string = END_REASON.CLOSED;
    if (event.error) {
      endReason =
        event.error.code === 'PAYLOAD_TOO_LARGE'
          ? END_REASON.FRAME_TOO_LARGE
          : event.error.code === 'PROTOCOL_ERROR'
            ? END_REASON.PROTOCOL_ERROR
            : END_REASON.CONNECTION_ERROR;
      this.#logger.warn({ err: event.error, code: event.code }, 'relay connection error');
    } else {
      this.#logger.info({ code: event.code, reason: event.reason }, 'relay connection closed by the peer');
    }
    this.#finish({
      code: event.code,
      reason: event.reason,
      endReason,
      ...(event.error ? { error: event.error } : {}),
      wasReady: this.#state === 'ready',
    });
  }

  #offlineCode(): ErrorCode {
    return this.#options.offlineCode ?? 'AGENT_OFFLINE';
  }

  #clearHandshakeTimer(): void {
    if (this.#handshakeTimer) clearTimeout(this.#handshakeTimer);
    this.#handshakeTimer = null;
  }

  // Runs once: stops timers, fails the streams, tells the owner.
  #finish(event: PeerClosed): void {
    if (this.#state === 'closed') return;
    this.#state = 'closed';
    this.#closedEvent = event;
    this.#turnEnd = [];
    this.#clearHandshakeTimer();
    this.#keepalive?.stop();
    if (this.#reconcileTimer) clearInterval(this.#reconcileTimer);
    this.#reconcileTimer = null;
    const offline = new AppError(this.#offlineCode(), 'the relay connection closed');
    for (const handler of this.#handlers) {
      try {
        handler.close(offline);
      } catch (err) {
        this.#logger.warn({ err }, 'a stream handler failed to close');
      }
    }
    this.#rejectReady(
      event.error ?? new AppError(this.#offlineCode(), `the relay connection closed (${event.reason})`),
    );
    this.#options.onClosed?.(event);
  }
}

function remoteHello(
  max: number,
  min: number | undefined,
  software: string | undefined,
  announcement: Hello | Welcome,
): RemoteHello {
  const limits = announcement.limits ?? {};
  return {
    versions: announcedRange(max, min),
    software: (software ?? '').slice(0, 64),
    capabilities: (announcement.capabilities ?? []).slice(0, 64).map((c) => String(c).slice(0, 64)),
    limits: {
      maxFrameBytes: limits.maxFrameBytes || DEFAULT_MAX_FRAME_BYTES,
      maxStreams: limits.maxStreams || DEFAULT_MAX_STREAMS,
      initialWindowBytes: limits.initialWindowBytes || DEFAULT_WINDOW_BYTES,
      maxTunnelStreams: limits.maxTunnelStreams || DEFAULT_MAX_TUNNEL_STREAMS,
      tunnelWindowBytes: limits.tunnelWindowBytes || DEFAULT_TUNNEL_WINDOW_BYTES,
    },
    replicaId: 'replicaId' in announcement ? (announcement.replicaId ?? '').slice(0, 64) : '',
    timeMs:
      'serverTimeMs' in announcement && Number.isFinite(announcement.serverTimeMs)
        ? Math.max(0, announcement.serverTimeMs ?? 0)
        : 0,
  };
}
