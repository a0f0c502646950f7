/**
 * One agent connection on the hub: the hello/welcome handshake, keepalive,
 * frame decoding with the size limit, and the stream client (the relay's
 * client-side multiplexer) that carries the AgentTransport's streams.
 *
 * Protocol violations close only this connection, with the WebSocket status
 * of STYLE.md: 1002 for a malformed or unexpected frame, 1009 for a frame
 * over the limit, 1008 for policy (revoked credentials, replaced), 1001 when
 * the hub shuts down. Whatever ends the session, its in-flight streams fail
 * at once with AGENT_OFFLINE.
 */
import type { WebSocket } from 'ws';
import type { AgentConnection, AgentCredential, AgentService } from '../domain/agent-service.js';
import { AppError, type ErrorCode, toAppError } from '../errors.js';
import type { Logger } from '../logger.js';
import { decodeEnvelope, encodeEnvelope } from '../relay/codec.js';
import {
  checkProtocolVersion,
  DEFAULT_WINDOW_BYTES,
  type Envelope,
  errorEnvelope,
  type Hello,
  PROTOCOL_VERSION,
  RELAY_CAPABILITIES,
} from '../relay/envelope.js';
import type { Transport } from '../relay/transport.js';
import { VERSION } from '../version.js';
import { Keepalive } from './keepalive.js';

/** WebSocket close statuses used by the hub and the agent (RFC 6455 §7.4.1). */
export const CLOSE_NORMAL = 1000;
export const CLOSE_GOING_AWAY = 1001;
export const CLOSE_PROTOCOL_ERROR = 1002;
export const CLOSE_POLICY = 1008;
export const CLOSE_TOO_LARGE = 1009;

/** The agent has this long after the upgrade to say hello. */
export const DEFAULT_HELLO_TIMEOUT_MS = 10_000;
/** A closing peer has this long to answer the close frame before the socket is cut. */
export const DEFAULT_CLOSE_GRACE_MS = 1000;
/**
 * An agent that leaves this much unread on its connection (16 request bodies
 * of the largest size) is not reading: its connection is cut and its streams
 * fail with AGENT_OFFLINE, so the hub's memory stays bounded.
 */
export const DEFAULT_MAX_SEND_BUFFER_BYTES = 16 * 1024 * 1024;

/**
 * What a session needs from the relay's client-side stream multiplexer:
 * the Transport calls, plus feeding it the agent's stream envelopes and
 * failing every open stream when the connection ends.
 */
export interface StreamClient extends Transport {
  receive(envelope: Envelope): void;
  failAll(code: ErrorCode, message: string): void;
  /** Open streams and response bytes buffered for their consumers. */
  stats?(): { activeStreams: number; bufferedBytes: number };
}

/** Builds the stream client of one session. */
export type StreamClientFactory = (options: {
  send: (envelope: Envelope) => void;
  /** Concurrent streams allowed (the smaller of the hub's and the agent's limits). */
  maxStreams: number;
  /** Largest frame the agent accepts. */
  maxFrameBytes: number;
  logger: Logger;
}) => StreamClient;

export interface AgentSessionOptions {
  socket: WebSocket;
  credential: AgentCredential;
  remoteAddress: string | null;
  agents: AgentService;
  logger: Logger;
  createClient: StreamClientFactory;
  maxFrameBytes: number;
  maxStreams: number;
  keepaliveIntervalMs?: number;
  keepaliveMaxMissed?: number;
  helloTimeoutMs?: number;
  closeGraceMs?: number;
  /** Bytes queued towards the agent past which it counts as not reading; default {@link DEFAULT_MAX_SEND_BUFFER_BYTES}. */
  maxSendBufferBytes?: number;
  /** Called once the session is recorded; false refuses it (the hub is closing or it was revoked). */
  onReady(session: AgentSession): boolean;
  /** Called once when the session ends, whatever the cause. */
  onClosed(session: AgentSession): void;
}

type State = 'handshake' | 'starting' | 'ready' | 'closed';

export class AgentSession {
  readonly agentId: string;
  readonly credential: AgentCredential;
  readonly remoteAddress: string | null;
  readonly #socket: WebSocket;
  readonly #options: AgentSessionOptions;
  readonly #keepalive: Keepalive;
  #logger: Logger;
  #state: State = 'handshake';
  #record: AgentConnection | null = null;
  #client: StreamClient | null = null;
  #helloTimer: ReturnType<typeof setTimeout> | null = null;
  #graceTimer: ReturnType<typeof setTimeout> | null = null;
  #endReason = 'closed';
  readonly #done: Promise<void>;
  #resolveDone!: () => void;

  constructor(options: AgentSessionOptions) {
    this.agentId = options.credential.agentId;
    this.credential = options.credential;
    this.remoteAddress = options.remoteAddress;
    this.#socket = options.socket;
    this.#options = options;
    this.#logger = options.logger.child({ agentId: this.agentId });
    this.#done = new Promise((resolve) => {
      this.#resolveDone = resolve;
    });
    this.#keepalive = new Keepalive({
      ...(options.keepaliveIntervalMs !== undefined ? { intervalMs: options.keepaliveIntervalMs } : {}),
      ...(options.keepaliveMaxMissed !== undefined ? { maxMissed: options.keepaliveMaxMissed } : {}),
      sendPing: (nonce) => this.#send({ streamId: 0, payload: { case: 'ping', value: { nonce } } }),
      onDead: () => {
        this.#logger.warn('agent missed its keepalives; dropping the connection');
        this.#finish('timeout');
        this.#socket.terminate();
      },
    });
    this.#socket.on('message', (data, isBinary) => this.#onMessage(data, isBinary));
    // ws closes the connection itself on a frame it cannot accept (1009 over
    // maxPayload, 1002 for a broken frame); the session ends at that moment,
    // not when the close handshake is over.
    this.#socket.on('error', (err: Error & { code?: string }) => {
      if (this.#state === 'closed') return;
      this.#logger.warn({ err, code: err.code }, 'agent connection error');
      const reason =
        err.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH'
          ? 'frame-too-large'
          : err.code?.startsWith('WS_ERR_')
            ? 'protocol-error'
            : 'connection-error';
      this.#finish(reason);
      // ws has sent its close frame; a peer that never answers it is cut.
      this.#cutAfterGrace();
    });
    this.#socket.on('close', (code) => {
      if (this.#state !== 'closed') this.#logger.info({ code }, 'agent disconnected');
      this.#finish('closed');
      if (this.#graceTimer) clearTimeout(this.#graceTimer);
      this.#resolveDone();
    });
    this.#helloTimer = setTimeout(() => {
      this.#violation(new AppError('PROTOCOL_ERROR', 'no hello received in time'));
    }, options.helloTimeoutMs ?? DEFAULT_HELLO_TIMEOUT_MS);
    this.#helloTimer.unref?.();
  }

  /** True once the handshake is done and streams can be opened. */
  get ready(): boolean {
    return this.#state === 'ready';
  }

  /** The stream client while ready, else null. */
  get client(): StreamClient | null {
    return this.#state === 'ready' ? this.#client : null;
  }

  /** The session record (id, start) once started. */
  get record(): AgentConnection | null {
    return this.#record;
  }

  /** Bytes queued on the WebSocket towards the agent. */
  get bufferedAmount(): number {
    return this.#socket.bufferedAmount;
  }

  /** Resolves when the socket is closed. */
  get closed(): Promise<void> {
    return this.#done;
  }

  /**
   * Ends the session: streams fail with AGENT_OFFLINE at once, a close frame
   * is sent, and the socket is cut if the agent does not answer within the
   * grace period. `endReason` is recorded in the agent's `connections`.
   */
  close(code: number, reason: string, endReason: string): void {
    if (this.#state !== 'closed') this.#logger.info({ code, reason: endReason }, 'closing agent connection');
    this.#finish(endReason);
    const socket = this.#socket;
    if (socket.readyState === socket.CLOSED) return;
    if (socket.readyState === socket.OPEN || socket.readyState === socket.CONNECTING) {
      socket.close(code, reason.slice(0, 120));
    }
    this.#cutAfterGrace();
  }

  /** Cuts the socket if the agent has not finished the close handshake within the grace period. */
  #cutAfterGrace(): void {
    if (this.#graceTimer !== null || this.#socket.readyState === this.#socket.CLOSED) return;
    const socket = this.#socket;
    this.#graceTimer = setTimeout(
      () => socket.terminate(),
      this.#options.closeGraceMs ?? DEFAULT_CLOSE_GRACE_MS,
    );
    this.#graceTimer.unref?.();
  }

  #onMessage(data: unknown, isBinary: boolean): void {
    if (this.#state === 'closed') return;
    this.#keepalive.heard();
    if (!isBinary) {
      this.#violation(new AppError('PROTOCOL_ERROR', 'relay frames must be binary'));
      return;
    }
    let envelope: Envelope;
    try {
      envelope = decodeEnvelope(toBytes(data), { maxFrameBytes: this.#options.maxFrameBytes });
    } catch (err) {
      this.#violation(toAppError(err, 'PROTOCOL_ERROR'));
      return;
    }
    const { payload } = envelope;
    if (this.#state !== 'ready') {
      if (this.#state === 'handshake' && envelope.streamId === 0 && payload.case === 'hello') {
        void this.#onHello(envelope, payload.value);
      } else {
        this.#violation(
          new AppError('PROTOCOL_ERROR', `unexpected ${payload.case} before the handshake ended`),
        );
      }
      return;
    }
    if (envelope.streamId === 0) {
      switch (payload.case) {
        case 'ping':
          this.#send({ streamId: 0, payload: { case: 'pong', value: { nonce: payload.value.nonce ?? 0 } } });
          return;
        case 'pong':
          if (this.#record) this.#options.agents.sessionSeen(this.agentId, this.#record.id);
          return;
        case 'error':
          this.#logger.warn(
            { code: payload.value.code, message: payload.value.message },
            'agent reported a connection error',
          );
          this.close(CLOSE_NORMAL, 'connection error reported by the agent', 'agent-error');
          return;
        default:
          this.#violation(new AppError('PROTOCOL_ERROR', `unexpected ${payload.case} on stream 0`));
          return;
      }
    }
    try {
      this.#client!.receive(envelope);
    } catch (err) {
      this.#violation(toAppError(err, 'PROTOCOL_ERROR'));
    }
  }

  async #onHello(envelope: Envelope, hello: Hello): Promise<void> {
    if (this.#helloTimer) clearTimeout(this.#helloTimer);
    this.#helloTimer = null;
    const versionError = checkProtocolVersion(envelope);
    if (versionError) {
      this.#violation(versionError);
      return;
    }
    this.#state = 'starting';
    const version = (hello.agentVersion ?? '').slice(0, 64) || null;
    try {
      this.#record = await this.#options.agents.sessionStarted(this.credential, {
        remoteAddress: this.remoteAddress,
        version,
      });
    } catch (err) {
      const error = toAppError(err);
      this.#logger.warn({ code: error.code }, 'agent session refused');
      this.close(CLOSE_POLICY, 'agent credentials revoked', 'revoked');
      return;
    }
    // Closed (revoked, hub closing, socket gone) while the session was being recorded.
    if ((this.#state as State) === 'closed') {
      void this.#options.agents.sessionEnded(this.agentId, this.#record.id, this.#endReason).catch(() => {});
      return;
    }
    // One child logger per live session (not a child of a child: each level is kept alive).
    this.#logger = this.#options.logger.child({ agentId: this.agentId, sessionId: this.#record.id });
    const limits = hello.limits ?? {};
    const maxStreams = Math.min(this.#options.maxStreams, limits.maxStreams || this.#options.maxStreams);
    const maxFrameBytes = Math.min(
      this.#options.maxFrameBytes,
      limits.maxFrameBytes || this.#options.maxFrameBytes,
    );
    this.#client = this.#options.createClient({
      send: (e) => this.#send(e),
      maxStreams,
      maxFrameBytes,
      logger: this.#logger,
    });
    if (!this.#options.onReady(this)) {
      this.close(CLOSE_GOING_AWAY, 'the control plane is shutting down', 'refused');
      return;
    }
    this.#state = 'ready';
    this.#send({
      streamId: 0,
      payload: {
        case: 'welcome',
        value: {
          protocolVersion: PROTOCOL_VERSION,
          serverVersion: VERSION,
          capabilities: [...RELAY_CAPABILITIES],
          limits: {
            maxFrameBytes: this.#options.maxFrameBytes,
            maxStreams: this.#options.maxStreams,
            initialWindowBytes: DEFAULT_WINDOW_BYTES,
          },
        },
      },
    });
    this.#keepalive.start();
    this.#logger.info({ remoteAddress: this.remoteAddress, version }, 'agent connected');
  }

  #send(envelope: Envelope): void {
    if (this.#socket.readyState !== this.#socket.OPEN) return;
    this.#socket.send(encodeEnvelope(envelope), { binary: true });
    const queued = this.#socket.bufferedAmount;
    if (queued > (this.#options.maxSendBufferBytes ?? DEFAULT_MAX_SEND_BUFFER_BYTES)) {
      this.#logger.warn({ queuedBytes: queued }, 'agent is not reading its connection; cutting it');
      this.#finish('not-reading');
      this.#socket.terminate();
    }
  }

  #violation(error: AppError): void {
    if (this.#state === 'closed') return;
    this.#logger.warn(
      { code: error.code, err: error },
      'agent broke the relay protocol; closing its connection',
    );
    try {
      this.#send(errorEnvelope(0, error));
    } catch {
      // The connection is being closed anyway.
    }
    const tooLarge = error.code === 'PAYLOAD_TOO_LARGE';
    this.close(tooLarge ? CLOSE_TOO_LARGE : CLOSE_PROTOCOL_ERROR, error.message, 'protocol-error');
  }

  // Runs once: stops timers, fails the streams, records the end, tells the hub.
  #finish(endReason: string): void {
    if (this.#state === 'closed') return;
    this.#state = 'closed';
    this.#endReason = endReason;
    if (this.#helloTimer) clearTimeout(this.#helloTimer);
    this.#helloTimer = null;
    this.#keepalive.stop();
    this.#client?.failAll('AGENT_OFFLINE', 'the agent disconnected');
    if (this.#record) {
      void this.#options.agents
        .sessionEnded(this.agentId, this.#record.id, endReason)
        .catch((err: unknown) => {
          this.#logger.warn({ err }, 'could not record the end of the agent session');
        });
    }
    this.#options.onClosed(this);
  }
}

function toBytes(data: unknown): Uint8Array {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (Array.isArray(data)) return Buffer.concat(data as Buffer[]);
  throw new AppError('PROTOCOL_ERROR', 'relay frame is not binary');
}
