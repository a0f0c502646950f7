/**
 * The agent daemon's core: keeps one verified WebSocket to the control
 * plane's hub, says hello, answers pings, and hands every stream envelope to
 * the relay's envelope executor (discovery and pinned requests, under the
 * trust metadata each request carries and the optional allowed targets).
 *
 * Reconnects with exponential backoff and jitter (1 s → 30 s, reset after a
 * connection that stayed up `stableAfterMs`). A 401 is logged as a
 * credentials problem and retried slowly (`unauthorizedRetryMs`); a control
 * plane whose certificate does not verify is logged and retried, never
 * accepted. `close()` cancels the in-flight streams and says goodbye.
 */
import { EventEmitter } from 'node:events';
import type { IncomingMessage } from 'node:http';
import { isIP, type Socket } from 'node:net';
import type { ConnectionOptions } from 'node:tls';
import WebSocket from 'ws';
import { AppError, type ErrorCode, toAppError } from '../src/errors.js';
import { createLogger, type Logger } from '../src/logger.js';
import { decodeEnvelope, encodeEnvelope } from '../src/relay/codec.js';
import {
  checkProtocolVersion,
  DEFAULT_MAX_FRAME_BYTES,
  DEFAULT_MAX_STREAMS,
  type Envelope,
  errorEnvelope,
  PROTOCOL_VERSION,
  RELAY_CAPABILITIES,
} from '../src/relay/envelope.js';
import { connectVerified } from '../src/relay/pinned-tls.js';
import { VERSION } from '../src/version.js';
import { Backoff, type BackoffOptions } from './backoff.js';
import { controlPlaneError, controlPlaneTlsOptions } from './control-plane-tls.js';

export const AGENT_CONNECT_PATH = '/api/v1/agent/connect';
/** A connection that stayed up this long resets the backoff. */
export const DEFAULT_STABLE_AFTER_MS = 10_000;
/** After a 401, wait about this long before trying the same credentials again. */
export const DEFAULT_UNAUTHORIZED_RETRY_MS = 60_000;
/** Bounds the TCP connect, TLS handshake and HTTP upgrade, and the wait for the welcome. */
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;
/** The hub pings every 15 s; this long without any frame means the connection is dead. */
export const DEFAULT_IDLE_TIMEOUT_MS = 45_000;
/**
 * Bytes the agent lets queue towards the control plane (written to the
 * WebSocket, not yet taken by the kernel) before it stops sending body
 * chunks: 4 MiB. The queue can pass it by one frame at most (a body chunk, or
 * the small envelopes that are never held back: heads, ends, errors, pongs);
 * sending resumes once it is down to half.
 */
export const DEFAULT_MAX_QUEUED_BYTES = 4 * 1024 * 1024;

/** What the agent needs from the relay's envelope executor (EnvelopeExecutor). */
export interface EnvelopeHandler {
  receive(envelope: Envelope): void;
  /** Cancels every in-flight stream. */
  close(): void;
  /** The send queue has room again (see `isCongested` of the factory). */
  resume?(): void;
  /** Memory and stream counters. */
  stats?(): AgentExecutorStats;
}

/** The executor's counters, as the agent reports them. */
export interface AgentExecutorStats {
  activeStreams: number;
  /** Response bytes sent and not yet acknowledged by a window update. */
  inFlightBytes: number;
  /** Response bytes read from targets and not yet sent. */
  bufferedBytes: number;
  /** The largest `inFlightBytes` seen on this connection. */
  peakInFlightBytes?: number;
  /** The largest `bufferedBytes` seen on this connection. */
  peakBufferedBytes?: number;
}

export type EnvelopeHandlerFactory = (options: {
  send: (envelope: Envelope) => void;
  allowedTargets?: string[];
  maxStreams: number;
  logger: Logger;
  /** True while the send queue is full: send no body chunk until `resume()`. */
  isCongested: () => boolean;
}) => EnvelopeHandler;

export interface StartAgentOptions {
  /** `https://` base URL of the control plane. */
  managementUrl: string;
  agentId: string;
  agentToken: string;
  /** PEM CA bundle the control plane's certificate must chain to (hostname checked). */
  ca?: string | null;
  /** Pinned SHA-256 fingerprint of the control plane's certificate. */
  fingerprint?: string | null;
  /** `host:port` patterns; any other target is refused. Null/absent = no restriction. */
  allowedTargets?: string[] | null;
  /** Default: silent. */
  logger?: Logger;
  /** Runs the stream envelopes (the relay's EnvelopeExecutor). */
  createExecutor: EnvelopeHandlerFactory;
  /** Default 1 s → 30 s. */
  backoff?: BackoffOptions;
  /** Default {@link DEFAULT_STABLE_AFTER_MS}. */
  stableAfterMs?: number;
  /** Default {@link DEFAULT_UNAUTHORIZED_RETRY_MS}. */
  unauthorizedRetryMs?: number;
  /** Default {@link DEFAULT_HANDSHAKE_TIMEOUT_MS}. */
  handshakeTimeoutMs?: number;
  /** Default {@link DEFAULT_IDLE_TIMEOUT_MS}. */
  idleTimeoutMs?: number;
  /** Largest frame accepted from the control plane; default 1 MiB. */
  maxFrameBytes?: number;
  /** Concurrent streams announced in hello; default {@link DEFAULT_MAX_STREAMS}. */
  maxStreams?: number;
  /** Send-queue bound; default {@link DEFAULT_MAX_QUEUED_BYTES}. */
  maxQueuedBytes?: number;
}

export type AgentState = 'connecting' | 'connected' | 'waiting' | 'closed';

/** What happened to the agent's connection (for logs, tests and the demo). */
export type AgentEvent =
  | { type: 'connected' }
  | { type: 'disconnected'; code: number; reason: string }
  | { type: 'refused'; status: number }
  | { type: 'failed'; code: ErrorCode; message: string }
  | { type: 'retrying'; delayMs: number };

export interface RunningAgent {
  readonly state: AgentState;
  /** Subscribes to events; returns the unsubscribe function. */
  onEvent(listener: (event: AgentEvent) => void): () => void;
  /** Graceful stop: cancels in-flight streams, closes the connection (1001), stops reconnecting. */
  close(): Promise<void>;
  /**
   * Drops the connection without a close frame and stops, as a crashed
   * process would (tests use it to check the hub's side).
   */
  kill(): Promise<void>;
  /** The live connection's counters: executor memory and the socket's send queue; null when not connected. */
  stats(): (AgentExecutorStats & { bufferedAmount: number }) | null;
}

interface Outcome {
  delayMs: number;
}

class Agent implements RunningAgent {
  readonly #options: StartAgentOptions;
  readonly #logger: Logger;
  readonly #backoff: Backoff;
  readonly #events = new EventEmitter();
  readonly #connectUrl: string;
  #state: AgentState = 'connecting';
  #stopped = false;
  #socket: WebSocket | null = null;
  #executor: EnvelopeHandler | null = null;
  #wake: (() => void) | null = null;
  #loop: Promise<void> = Promise.resolve();
  readonly #verification: 'ca-file' | 'fingerprint';

  constructor(options: StartAgentOptions) {
    this.#options = options;
    this.#logger = options.logger ?? createLogger('silent');
    this.#backoff = new Backoff(options.backoff);
    this.#connectUrl = `${options.managementUrl.replace(/\/+$/, '')}${AGENT_CONNECT_PATH}`;
    this.#verification = options.ca ? 'ca-file' : 'fingerprint';
  }

  get state(): AgentState {
    return this.#state;
  }

  start(): void {
    this.#loop = this.#run();
  }

  onEvent(listener: (event: AgentEvent) => void): () => void {
    this.#events.on('event', listener);
    return () => this.#events.off('event', listener);
  }

  async close(): Promise<void> {
    this.#stop();
    const socket = this.#socket;
    if (socket && socket.readyState !== WebSocket.CLOSED) {
      const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
      socket.close(1001, 'agent shutting down');
      const timer = setTimeout(() => socket.terminate(), 2000);
      await closed;
      clearTimeout(timer);
    }
    await this.#loop;
  }

  stats(): (AgentExecutorStats & { bufferedAmount: number }) | null {
    const executor = this.#executor;
    const socket = this.#socket;
    if (!executor || !socket) return null;
    const stats = executor.stats?.() ?? { activeStreams: 0, inFlightBytes: 0, bufferedBytes: 0 };
    return { ...stats, bufferedAmount: socket.bufferedAmount };
  }

  async kill(): Promise<void> {
    this.#stop();
    const socket = this.#socket;
    if (socket && socket.readyState !== WebSocket.CLOSED) {
      const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
      socket.terminate();
      await closed;
    }
    await this.#loop;
  }

  #stop(): void {
    this.#stopped = true;
    this.#executor?.close();
    this.#wake?.();
  }

  #emit(event: AgentEvent): void {
    this.#events.emit('event', event);
  }

  async #run(): Promise<void> {
    while (!this.#stopped) {
      this.#state = 'connecting';
      let outcome: Outcome;
      try {
        outcome = await this.#connectOnce();
      } catch (err) {
        outcome = { delayMs: this.#failed(controlPlaneError(err, this.#verification)) };
      }
      if (this.#stopped) break;
      this.#state = 'waiting';
      this.#emit({ type: 'retrying', delayMs: outcome.delayMs });
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, outcome.delayMs);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#wake = null;
    }
    this.#state = 'closed';
  }

  // Logs a failed attempt clearly and returns the delay before the next one.
  #failed(error: AppError): number {
    const delayMs = this.#backoff.next();
    this.#emit({ type: 'failed', code: error.code, message: error.message });
    if (error.code.startsWith('CERTIFICATE_')) {
      this.#logger.error(
        { code: error.code, ...error.details, retryInMs: delayMs },
        `refusing the control plane: ${error.message}`,
      );
    } else {
      this.#logger.warn(
        { code: error.code, err: error.cause ?? error, retryInMs: delayMs },
        `cannot reach the control plane: ${error.message}`,
      );
    }
    return delayMs;
  }

  async #connectOnce(): Promise<Outcome> {
    const options = this.#options;
    const handshakeTimeoutMs = options.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
    const tlsOptions = await controlPlaneTlsOptions({
      managementUrl: options.managementUrl,
      ca: options.ca ?? null,
      fingerprint: options.fingerprint ?? null,
      timeoutMs: handshakeTimeoutMs,
    });
    if (this.#stopped) return { delayMs: 0 };
    const maxFrameBytes = options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    const maxStreams = options.maxStreams ?? DEFAULT_MAX_STREAMS;
    const socket = new WebSocket(this.#connectUrl, {
      headers: {
        authorization: `Bearer ${options.agentToken}`,
        'x-p2pstream-agent-id': options.agentId,
        'user-agent': `p2pstream-agent/${VERSION}`,
      },
      ca: tlsOptions.ca,
      ...(tlsOptions.checkServerIdentity
        ? { checkServerIdentity: tlsOptions.checkServerIdentity as unknown as () => boolean }
        : {}),
      maxPayload: maxFrameBytes,
      handshakeTimeout: handshakeTimeoutMs,
      perMessageDeflate: false,
      followRedirects: false,
      // Verified whatever NODE_TLS_REJECT_UNAUTHORIZED says; the upgrade (and the token) is
      // written only on a socket that passed the handshake check.
      createConnection: ((
        connectOptions: ConnectionOptions & { path?: string },
        callback: (err: Error | null, socket?: Socket) => void,
      ) => {
        connectVerified(
          {
            ...connectOptions,
            // ws hands over its request options: `path` is the URL path here, not an IPC socket.
            path: undefined,
            servername:
              connectOptions.servername ??
              (isIP(connectOptions.host ?? '') === 0 ? (connectOptions.host ?? '') : ''),
            handshakeTimeoutMs,
          },
          callback,
        );
        // Nothing returned: the request waits for the callback, so for the verified socket.
        return undefined;
      }) as unknown as AgentSocketConnect,
      // A zero mask: frames go out without the per-byte masking pass (and the hub skips unmasking).
      // Masking guards plaintext intermediaries against cache poisoning; this link is always TLS.
      generateMask: zeroMask,
    });
    this.#socket = socket;

    return new Promise<Outcome>((resolve) => {
      let connectedAt: number | null = null;
      let settled: Outcome | null = null;
      let lastError: AppError | null = null;
      let idleTimer: ReturnType<typeof setTimeout> | null = null;
      let welcomeTimer: ReturnType<typeof setTimeout> | null = null;
      const settle = (outcome: Outcome) => {
        settled ??= outcome;
      };
      const idleTimeoutMs = options.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
      const touch = () => {
        if (idleTimer) clearTimeout(idleTimer);
        idleTimer = setTimeout(() => {
          this.#logger.warn({ idleTimeoutMs }, 'no word from the control plane; reconnecting');
          socket.terminate();
        }, idleTimeoutMs);
      };
      // Bytes handed to the socket and not yet written out: bounded by holding back body chunks.
      const maxQueuedBytes = options.maxQueuedBytes ?? DEFAULT_MAX_QUEUED_BYTES;
      let queuedBytes = 0;
      let congested = false;
      const isCongested = () => {
        if (!congested && queuedBytes >= maxQueuedBytes) congested = true;
        return congested;
      };
      const send = (envelope: Envelope) => {
        if (socket.readyState !== WebSocket.OPEN) return;
        const frame = encodeEnvelope(envelope);
        queuedBytes += frame.byteLength;
        socket.send(frame, { binary: true }, () => {
          queuedBytes -= frame.byteLength;
          if (congested && queuedBytes <= maxQueuedBytes / 2) {
            congested = false;
            this.#executor?.resume?.();
          }
        });
      };
      const violation = (error: AppError) => {
        this.#logger.warn({ code: error.code, err: error }, 'the control plane broke the relay protocol');
        try {
          send(errorEnvelope(0, error));
        } catch {
          // closing anyway
        }
        socket.close(error.code === 'PAYLOAD_TOO_LARGE' ? 1009 : 1002, error.message.slice(0, 120));
      };

      socket.on('unexpected-response', (request, response: IncomingMessage) => {
        const status = response.statusCode ?? 0;
        response.resume();
        this.#emit({ type: 'refused', status });
        if (status === 401) {
          const base = options.unauthorizedRetryMs ?? DEFAULT_UNAUTHORIZED_RETRY_MS;
          const delayMs = Math.round(base * (0.8 + Math.random() * 0.4));
          this.#logger.error(
            { status, agentId: options.agentId, retryInMs: delayMs },
            'the control plane refused the agent credentials (401): check AGENT_ID and AGENT_TOKEN (was the token rotated or the agent disabled or deleted?)',
          );
          settle({ delayMs });
        } else if (status === 429) {
          const delayMs = Math.max(this.#backoff.next(), options.backoff?.maxMs ?? 30_000);
          this.#logger.warn({ status, retryInMs: delayMs }, 'the control plane is rate limiting this agent');
          settle({ delayMs });
        } else {
          const delayMs = this.#backoff.next();
          this.#logger.warn(
            { status, retryInMs: delayMs },
            `the control plane refused the connection (${status})`,
          );
          settle({ delayMs });
        }
        request.destroy();
        socket.terminate();
      });

      socket.on('open', () => {
        touch();
        send({
          streamId: 0,
          payload: {
            case: 'hello',
            value: {
              protocolVersion: PROTOCOL_VERSION,
              agentVersion: VERSION,
              capabilities: [...RELAY_CAPABILITIES],
              limits: { maxFrameBytes, maxStreams },
            },
          },
        });
        welcomeTimer = setTimeout(() => {
          violation(new AppError('PROTOCOL_ERROR', 'no welcome received in time'));
        }, handshakeTimeoutMs);
      });

      socket.on('message', (data, isBinary) => {
        touch();
        if (!isBinary) {
          violation(new AppError('PROTOCOL_ERROR', 'relay frames must be binary'));
          return;
        }
        let envelope: Envelope;
        try {
          envelope = decodeEnvelope(data as Buffer, { maxFrameBytes });
        } catch (err) {
          violation(toAppError(err, 'PROTOCOL_ERROR'));
          return;
        }
        const { payload } = envelope;
        if (connectedAt === null) {
          if (envelope.streamId === 0 && payload.case === 'welcome') {
            const versionError = checkProtocolVersion(envelope);
            if (versionError) {
              violation(versionError);
              return;
            }
            if (welcomeTimer) clearTimeout(welcomeTimer);
            connectedAt = Date.now();
            this.#executor = options.createExecutor({
              send,
              ...(options.allowedTargets ? { allowedTargets: options.allowedTargets } : {}),
              maxStreams,
              logger: this.#logger,
              isCongested,
            });
            this.#state = 'connected';
            this.#logger.info({ url: options.managementUrl }, 'connected to the control plane');
            this.#emit({ type: 'connected' });
          } else if (envelope.streamId === 0 && payload.case === 'error') {
            this.#logger.warn(
              { code: payload.value.code },
              `the control plane refused the session: ${payload.value.message}`,
            );
          } else {
            violation(new AppError('PROTOCOL_ERROR', `unexpected ${payload.case} before the welcome`));
          }
          return;
        }
        if (envelope.streamId === 0) {
          if (payload.case === 'ping') {
            send({ streamId: 0, payload: { case: 'pong', value: { nonce: payload.value.nonce ?? 0 } } });
          } else if (payload.case === 'error') {
            this.#logger.warn(
              { code: payload.value.code },
              `the control plane reported a connection error: ${payload.value.message}`,
            );
          } else if (payload.case !== 'pong') {
            violation(new AppError('PROTOCOL_ERROR', `unexpected ${payload.case} on stream 0`));
          }
          return;
        }
        try {
          this.#executor?.receive(envelope);
        } catch (err) {
          violation(toAppError(err, 'PROTOCOL_ERROR'));
        }
      });

      socket.on('error', (err) => {
        lastError = controlPlaneError(err, this.#verification);
      });

      socket.on('close', (code, reasonBuffer) => {
        if (idleTimer) clearTimeout(idleTimer);
        if (welcomeTimer) clearTimeout(welcomeTimer);
        this.#executor?.close();
        this.#executor = null;
        if (this.#socket === socket) this.#socket = null;
        const reason = reasonBuffer.toString('utf8');
        if (connectedAt !== null) {
          if (Date.now() - connectedAt >= (options.stableAfterMs ?? DEFAULT_STABLE_AFTER_MS))
            this.#backoff.reset();
          this.#emit({ type: 'disconnected', code, reason });
          if (!this.#stopped) this.#logger.warn({ code, reason }, 'disconnected from the control plane');
        }
        if (settled) return resolve(settled);
        if (connectedAt === null && lastError) return resolve({ delayMs: this.#failed(lastError) });
        resolve({ delayMs: this.#backoff.next() });
      });
    });
  }
}

/**
 * Starts the agent; it connects in the background and keeps reconnecting
 * until `close()`. Configuration errors are the caller's (see loadAgentConfig).
 */
export function startAgent(options: StartAgentOptions): RunningAgent {
  const agent = new Agent(options);
  agent.start();
  return agent;
}

type AgentSocketConnect = NonNullable<WebSocket.ClientOptions['createConnection']>;

function zeroMask(mask: Buffer): void {
  mask.fill(0);
}
