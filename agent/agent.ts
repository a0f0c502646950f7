/**
 * The agent daemon's core: its reconnect loop and the WebSocket adapter of
 * the initiating relay peer. It keeps one verified WebSocket to the control
 * plane's hub; the relay peer (src/relay/relay-peer.ts) runs the protocol on
 * it (hello, limits, keepalive, stream 0, close codes, reconciliation) and
 * hands every stream to the relay's envelope executor (discovery and pinned
 * requests, under the trust metadata each request carries and the optional
 * allowed targets) or, for tunnel streams (public requests of backends'
 * agent members), to the tunnel executor, under the same allowed targets.
 *
 * Reconnects with exponential backoff and jitter (1 s → 30 s, reset after a
 * connection that stayed up `stableAfterMs`). A 401 is logged as a
 * credentials problem and retried slowly (`unauthorizedRetryMs`); a control
 * plane whose certificate does not verify is logged and retried, never
 * accepted. `close()` cancels the in-flight streams and says goodbye.
 */
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { IncomingMessage } from 'node:http';
import WebSocket from 'ws';
import type { AppError, ErrorCode } from '../src/errors.js';
import { createLogger, type Logger } from '../src/logger.js';
import {
  DEFAULT_MAX_FRAME_BYTES,
  DEFAULT_MAX_STREAMS,
  DEFAULT_MAX_TUNNEL_STREAMS,
  DEFAULT_TUNNEL_WINDOW_BYTES,
  type Envelope,
} from '../src/relay/envelope.js';
import { HealthCheckExecutor } from '../src/relay/health-check-executor.js';
import {
  AGENT_CONNECT_PATH,
  CAPABILITY,
  CLOSE_CODE,
  END_REASON,
  type VersionRange,
} from '../src/relay/protocol.js';
import {
  DEFAULT_HANDSHAKE_TIMEOUT_MS,
  DEFAULT_MAX_QUEUED_BYTES,
  RelayPeer,
  type StreamContext,
  type StreamHandler,
} from '../src/relay/relay-peer.js';
import { TunnelExecutor, type TunnelExecutorStats } from '../src/relay/tunnel-executor.js';
import { createWebSocketFrameTransport } from '../src/relay/websocket-frame-transport.js';
import { VERSION } from '../src/version.js';
import { Backoff, type BackoffOptions } from './backoff.js';
import { createControlPlaneSocket } from './control-plane-socket.js';
import { controlPlaneError, controlPlaneTlsOptions } from './control-plane-tls.js';

export { AGENT_CONNECT_PATH };
/** A connection that stayed up this long resets the backoff. */
export const DEFAULT_STABLE_AFTER_MS = 10_000;
/** After a 401, wait about this long before trying the same credentials again. */
export const DEFAULT_UNAUTHORIZED_RETRY_MS = 60_000;
/** Bounds the TCP connect, TLS handshake and HTTP upgrade, and the wait for the welcome (the peer's). */
export { DEFAULT_HANDSHAKE_TIMEOUT_MS };
/** The hub pings every 15 s; this long without any frame means the connection is dead. */
export const DEFAULT_IDLE_TIMEOUT_MS = 45_000;
/** Bytes the agent lets queue towards the control plane before it holds back body chunks: 4 MiB. */
export { DEFAULT_MAX_QUEUED_BYTES };

/** What the agent runs for the streams the control plane opens (the relay's EnvelopeExecutor). */
export interface EnvelopeHandler extends StreamHandler {
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
  /** Streams this agent runs at once (its own limit). */
  maxStreams: number;
  /** Largest body chunk the control plane accepts in one frame. */
  maxChunkBytes: number;
  /** Window of a request that names none (the control plane's announcement). */
  defaultWindowBytes: number;
  logger: Logger;
  /** True while the send queue is full: send no body chunk until `resume()`. */
  isCongested: () => boolean;
  /** The negotiated connection. */
  context: StreamContext;
}) => EnvelopeHandler;

export interface StartAgentOptions {
  /** `https://` base URL of the control plane. */
  managementUrl: string;
  /**
   * Several replicas of the control plane (default [managementUrl]): the
   * agent keeps two connections, to two different ones. One URL behind a load
   * balancer works too: once a welcome names a replica, a second connection
   * is opened until it lands on another replica (docs/cluster.md).
   */
  managementUrls?: string[];
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
  /** Concurrent tunnel streams announced in hello; default {@link DEFAULT_MAX_TUNNEL_STREAMS}. */
  maxTunnelStreams?: number;
  /** Request body bytes per tunnel stream the control plane may send ahead (hello's `tunnel_window_bytes`); default 256 KiB. */
  tunnelWindowBytes?: number;
  /** Send-queue bound; default {@link DEFAULT_MAX_QUEUED_BYTES}. */
  maxQueuedBytes?: number;
  /** Protocol versions spoken; default this build's window. */
  protocolVersions?: VersionRange;
  /** Bytes left unread by the control plane before the connection is cut; default 16 MiB. */
  maxSendBufferBytes?: number;
  /** Stream reconciliation interval; default 60 s, 0 = off. */
  reconcileIntervalMs?: number;
  /** Capabilities announced in hello; default this build's (DEFAULT_CAPABILITIES). Fewer = an older build. */
  capabilities?: readonly string[];
}

export type AgentState = 'connecting' | 'connected' | 'waiting' | 'closed';

/** What happened to the agent's connection (for logs, tests and the demo). */
export type AgentEvent =
  /** `replicaId`: the control-plane replica that accepted it ('' for a single process). */
  | { type: 'connected'; replicaId: string; url: string }
  /** The replica is stopping: this connection takes no new calls and ends within `graceMs`. */
  | { type: 'draining'; replicaId: string; graceMs: number }
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
  stats(): AgentStats | null;
  /** Its connections now (two to a control plane of several replicas, plus any being drained). */
  connections(): AgentConnectionInfo[];
}

/** Counters of the agent's live connection. */
export type AgentStats = AgentExecutorStats & {
  bufferedAmount: number;
  tunnels: TunnelExecutorStats;
  /** Health checks the control plane has this agent run now. */
  healthChecks: number;
};

/** One of the agent's connections. */
export interface AgentConnectionInfo {
  /** The URL of its current (or last) attempt. */
  url: string;
  state: AgentState;
  /** The replica it is connected to ('' for a single process), null while not connected. */
  replicaId: string | null;
  /** Its replica announced a drain: it ends once its streams are done, and is not made again. */
  draining: boolean;
}

interface Outcome {
  delayMs: number;
  /** The attempt ended before a session was up. */
  failed?: boolean;
}

/** How a connection of several is placed (the agent's connection pool, {@link startAgent}). */
interface ConnectionHooks {
  /** False while this connection should not try (one URL: another is reaching an unknown replica). */
  mayAttempt(connection: Agent): boolean;
  /** The URL of the next attempt (`failed`: the last attempt did not get a session). */
  pickUrl(connection: Agent, failed: boolean): string;
  /** An attempt to `url` was refused outright (nothing listens there). */
  onRefused(connection: Agent, url: string): void;
  /** Replica ids the agent's other connections are on (sent so that one is not reached twice). */
  elsewhere(connection: Agent): string[];
  /** The connection is up, on `replicaId` ('' for a single process). */
  onConnected(connection: Agent, replicaId: string): void;
  /** Its replica announced a drain: this connection will not reconnect. */
  onDrain(connection: Agent, graceMs: number): void;
}

/** One connection's reconnect loop. */
class Agent {
  readonly #options: StartAgentOptions;
  readonly #logger: Logger;
  readonly #backoff: Backoff;
  readonly #events = new EventEmitter();
  readonly #hooks: ConnectionHooks | null;
  #url: string;
  #state: AgentState = 'connecting';
  #stopped = false;
  /** Drained by its replica: ends with the current connection, no reconnect. */
  #retiring = false;
  #replicaId: string | null = null;
  #socket: WebSocket | null = null;
  #peer: RelayPeer | null = null;
  #executor: EnvelopeHandler | null = null;
  #tunnels: TunnelExecutor | null = null;
  #health: HealthCheckExecutor | null = null;
  #wake: (() => void) | null = null;
  #loop: Promise<void> = Promise.resolve();
  readonly #verification: 'ca-file' | 'fingerprint';

  constructor(options: StartAgentOptions, hooks: ConnectionHooks | null = null) {
    this.#options = options;
    this.#hooks = hooks;
    this.#url = options.managementUrl;
    this.#logger = options.logger ?? createLogger('silent');
    this.#backoff = new Backoff(options.backoff);
    this.#verification = options.ca ? 'ca-file' : 'fingerprint';
  }

  get state(): AgentState {
    return this.#state;
  }

  /** The URL of the current (or last) attempt. */
  get url(): string {
    return this.#url;
  }

  /** The replica the live connection is on ('' for a single process), null while not connected. */
  get replicaId(): string | null {
    return this.#replicaId;
  }

  /** True once its replica announced a drain (the connection ends, and is not made again). */
  get retiring(): boolean {
    return this.#retiring;
  }

  /** Resolves when the reconnect loop has ended (closed, or drained and disconnected). */
  get ended(): Promise<void> {
    return this.#loop;
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
    const peer = this.#peer;
    const socket = this.#socket;
    if (peer) {
      peer.close(CLOSE_CODE.GOING_AWAY, 'agent shutting down', END_REASON.SHUTDOWN);
      await peer.done;
    } else if (socket && socket.readyState !== WebSocket.CLOSED) {
      const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
      socket.terminate();
      await closed;
    }
    await this.#loop;
  }

  stats(): AgentStats | null {
    const executor = this.#executor;
    const peer = this.#peer;
    if (!executor || !peer || peer.isClosed) return null;
    const stats = executor.stats?.() ?? { activeStreams: 0, inFlightBytes: 0, bufferedBytes: 0 };
    const tunnels = this.#tunnels?.stats() ?? { activeStreams: 0, inFlightBytes: 0, bufferedBytes: 0 };
    return {
      ...stats,
      bufferedAmount: peer.stats().bufferedAmount,
      tunnels,
      healthChecks: this.#health?.activeChecks ?? 0,
    };
  }

  async kill(): Promise<void> {
    this.#stop();
    const socket = this.#socket;
    this.#peer?.close(CLOSE_CODE.CUT, 'agent killed', END_REASON.SHUTDOWN);
    if (socket && socket.readyState !== WebSocket.CLOSED) {
      const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
      socket.terminate();
      await closed;
    }
    await this.#loop;
  }

  #stop(): void {
    this.#stopped = true;
    this.#wake?.();
  }

  #emit(event: AgentEvent): void {
    this.#events.emit('event', event);
  }

  async #run(): Promise<void> {
    let failed = false;
    while (!this.#stopped) {
      if (this.#hooks && !this.#hooks.mayAttempt(this)) {
        // Another connection of this agent is on its way to an unknown replica: wait for it.
        this.#state = 'waiting';
        await this.#sleep(Math.min(1000, this.#options.backoff?.initialMs ?? 1000));
        continue;
      }
      this.#state = 'connecting';
      if (this.#hooks) this.#url = this.#hooks.pickUrl(this, failed);
      let outcome: Outcome;
      try {
        outcome = await this.#connectOnce();
      } catch (err) {
        if (isConnectionRefused(err)) this.#hooks?.onRefused(this, this.#url);
        outcome = { delayMs: this.#failed(controlPlaneError(err, this.#verification)), failed: true };
      }
      this.#replicaId = null;
      failed = outcome.failed === true;
      if (this.#stopped || this.#retiring) break;
      this.#state = 'waiting';
      this.#emit({ type: 'retrying', delayMs: outcome.delayMs });
      await this.#sleep(outcome.delayMs);
    }
    this.#state = 'closed';
  }

  async #sleep(ms: number): Promise<void> {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.#wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
    this.#wake = null;
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
    const url = this.#url;
    const tlsOptions = await controlPlaneTlsOptions({
      managementUrl: url,
      ca: options.ca ?? null,
      fingerprint: options.fingerprint ?? null,
      timeoutMs: handshakeTimeoutMs,
    });
    if (this.#stopped) return { delayMs: 0 };
    const maxFrameBytes = options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    const maxStreams = options.maxStreams ?? DEFAULT_MAX_STREAMS;
    const elsewhere = this.#hooks?.elsewhere(this) ?? [];
    const socket = createControlPlaneSocket({
      managementUrl: url,
      elsewhere,
      agentId: options.agentId,
      agentToken: options.agentToken,
      tls: tlsOptions,
      handshakeTimeoutMs,
      maxFrameBytes,
    });
    this.#socket = socket;

    return new Promise<Outcome>((resolveOutcome) => {
      let settled: Outcome | null = null;
      let lastError: AppError | null = null;
      const settle = (outcome: Outcome) => {
        settled ??= outcome;
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
        } else if (status === 409) {
          // Reached, through a load balancer, a replica another connection of this agent is on.
          const delayMs = this.#backoff.next();
          this.#logger.info(
            { status, url, retryInMs: delayMs },
            'reached a replica this agent is already connected to; trying again for another one',
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

      socket.on('error', (err) => {
        if (isConnectionRefused(err)) this.#hooks?.onRefused(this, url);
        lastError = controlPlaneError(err, this.#verification);
      });

      const finished = (connectedAt: number | null, code: number, reason: string, refusal?: AppError) => {
        if (this.#socket === socket) this.#socket = null;
        const resolve = (outcome: Outcome) => resolveOutcome({ ...outcome, failed: connectedAt === null });
        if (connectedAt === null && refusal && !settled) {
          // Refused at the handshake (versions that do not meet): retrying soon cannot help.
          const base = options.unauthorizedRetryMs ?? DEFAULT_UNAUTHORIZED_RETRY_MS;
          const delayMs = Math.round(base * (0.8 + Math.random() * 0.4));
          this.#emit({ type: 'failed', code: refusal.code, message: refusal.message });
          return resolve({ delayMs });
        }
        if (connectedAt !== null) {
          if (Date.now() - connectedAt >= (options.stableAfterMs ?? DEFAULT_STABLE_AFTER_MS))
            this.#backoff.reset();
          this.#emit({ type: 'disconnected', code, reason });
          if (!this.#stopped) this.#logger.warn({ code, reason }, 'disconnected from the control plane');
        }
        if (settled) return resolve(settled);
        if (connectedAt === null && lastError) return resolve({ delayMs: this.#failed(lastError) });
        resolve({ delayMs: this.#backoff.next() });
      };

      // Before the upgrade completes, only the socket can end; after it, the peer runs the link.
      const beforeOpen = (code: number, reason: Buffer) => finished(null, code, reason.toString('utf8'));
      socket.once('close', beforeOpen);

      socket.once('open', () => {
        socket.off('close', beforeOpen);
        this.#openPeer(socket, maxFrameBytes, maxStreams, handshakeTimeoutMs, finished);
      });
    });
  }

  #openPeer(
    socket: WebSocket,
    maxFrameBytes: number,
    maxStreams: number,
    handshakeTimeoutMs: number,
    finished: (connectedAt: number | null, code: number, reason: string, refusal?: AppError) => void,
  ): void {
    const options = this.#options;
    let connectedAt: number | null = null;
    let refusal: AppError | undefined;
    const idleTimeoutMs = options.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
    const peerLimits = {
      maxFrameBytes,
      maxStreams,
      maxTunnelStreams: options.maxTunnelStreams ?? DEFAULT_MAX_TUNNEL_STREAMS,
      tunnelWindowBytes: options.tunnelWindowBytes ?? DEFAULT_TUNNEL_WINDOW_BYTES,
    };
    const peer = new RelayPeer({
      transport: createWebSocketFrameTransport(socket),
      role: 'initiator',
      logger: this.#logger,
      software: VERSION,
      versions: options.protocolVersions,
      capabilities: options.capabilities,
      limits: peerLimits,
      handshakeTimeoutMs,
      // The control plane pings; the agent listens, and a silence of idleTimeoutMs means a dead link.
      keepalive: { intervalMs: Math.max(1, Math.ceil(idleTimeoutMs / 3)), maxMissed: 3, ping: false },
      reconcileIntervalMs: options.reconcileIntervalMs,
      maxSendBufferBytes: options.maxSendBufferBytes,
      maxQueuedBytes: options.maxQueuedBytes ?? DEFAULT_MAX_QUEUED_BYTES,
      streams: (context) => {
        this.#executor = options.createExecutor({
          send: context.send,
          ...(options.allowedTargets ? { allowedTargets: options.allowedTargets } : {}),
          maxStreams,
          maxChunkBytes: context.session.sendFrameBytes - 1024,
          defaultWindowBytes: context.session.initialWindowBytes,
          logger: this.#logger,
          isCongested: context.isCongested,
          context,
        });
        if (!context.session.capabilities.has(CAPABILITY.TUNNEL)) return [this.#executor];
        // Tunnel streams (public requests of backends' agent members), under the same allowed targets.
        const tunnels = new TunnelExecutor({
          send: context.send,
          allowedTargets: options.allowedTargets ?? null,
          maxStreams: peerLimits.maxTunnelStreams,
          windowBytes: peerLimits.tunnelWindowBytes,
          defaultWindowBytes: context.session.remote.limits.tunnelWindowBytes,
          maxChunkBytes: context.session.sendFrameBytes - 1024,
          isCongested: context.isCongested,
          atTurnEnd: context.atTurnEnd,
          logger: this.#logger,
        });
        this.#tunnels = tunnels;
        if (!context.session.capabilities.has(CAPABILITY.HEALTH)) return [this.#executor, tunnels];
        // Health checks of the members this agent serves: probes made as its tunnel requests are.
        const health = new HealthCheckExecutor({
          send: context.send,
          probe: (url, timeoutMs, expectStatus) => tunnels.probe(url, timeoutMs, expectStatus),
          logger: this.#logger,
        });
        this.#health = health;
        return [this.#executor, tunnels, health];
      },
      onReady: (session) => {
        connectedAt = Date.now();
        this.#state = 'connected';
        const replicaId = session.remote.replicaId;
        this.#replicaId = replicaId;
        this.#logger.info(
          { url: this.#url, protocolVersion: session.version, ...(replicaId ? { replicaId } : {}) },
          'connected to the control plane',
        );
        this.#emit({ type: 'connected', replicaId, url: this.#url });
        this.#hooks?.onConnected(this, replicaId);
      },
      onDrain: ({ graceMs, reason }) => {
        // The replica is stopping: it sends new calls another way and closes once the open
        // streams are done; this connection is not made again (another one takes its place).
        this.#retiring = this.#hooks !== null;
        const replicaId = this.#replicaId ?? '';
        this.#logger.info(
          { url: this.#url, replicaId, graceMs, reason },
          'the control-plane replica is draining',
        );
        this.#emit({ type: 'draining', replicaId, graceMs });
        this.#hooks?.onDrain(this, graceMs);
      },
      onRemoteError: (error) => {
        if (connectedAt === null) refusal = error;
      },
      onClosed: (event) => {
        this.#executor = null;
        this.#tunnels = null;
        this.#health = null;
        // A welcome outside this agent's window is refused on this side.
        if (connectedAt === null && event.endReason === END_REASON.VERSION) refusal ??= event.error;
      },
    });
    this.#peer = peer;
    // Stopped while the upgrade was under way: say goodbye at once.
    if (this.#stopped) peer.close(CLOSE_CODE.GOING_AWAY, 'agent shutting down', END_REASON.SHUTDOWN);
    void peer.done.then(() => {
      if (this.#peer === peer) this.#peer = null;
      const event = peer.closedEvent;
      finished(connectedAt, event?.code ?? CLOSE_CODE.CUT, event?.reason ?? '', refusal);
    });
  }
}

/**
 * Starts the agent; it connects in the background and keeps reconnecting
 * until `close()`. Configuration errors are the caller's (see loadAgentConfig).
 */
export function startAgent(options: StartAgentOptions): RunningAgent {
  return new AgentConnections(options);
}

/**
 * Where an agent's first connection starts in its list of URLs (the second
 * takes the next one): a position drawn from the agent's id, so that agents
 * configured with the same list spread evenly over the replicas instead of
 * all landing on the first two, and an agent keeps its place across restarts.
 */
export function firstManagementUrl(urls: readonly string[], agentId: string): string {
  if (urls.length <= 1) return urls[0]!;
  const position = createHash('sha256').update(agentId).digest().readUInt32BE(0) % urls.length;
  return urls[position]!;
}

/**
 * How long a URL whose connection was refused outright (ECONNREFUSED: its
 * replica is down) is passed over while another URL can be tried. A refusal
 * costs no server anything, but going back to a dead replica costs the agent
 * a step of its backoff each time: after a replica is killed, that is what
 * kept agents away from the survivors longest.
 */
export const REFUSED_SKIP_MS = 30_000;

/** A TCP connect refused, possibly wrapped as the cause of an AppError. */
export function isConnectionRefused(err: unknown): boolean {
  for (let e = err, depth = 0; e && depth < 3; e = (e as { cause?: unknown }).cause, depth++)
    if ((e as NodeJS.ErrnoException).code === 'ECONNREFUSED') return true;
  return false;
}

/**
 * The URL a connection tries next, of several: one no other connection of the
 * agent uses (`taken`), not one being drained nor one refused lately
 * (`refused`, {@link REFUSED_SKIP_MS}); failing that, one not taken that was
 * not refused; failing that, the drained one's (it is back after its
 * restart); failing that, any. After a connection that was up (`failed`
 * false) it stays on its URL when that is allowed; after a failed attempt it
 * moves on to the next allowed URL, in the given order.
 */
export function pickManagementUrl(options: {
  urls: readonly string[];
  current: string;
  failed: boolean;
  taken: readonly string[];
  draining: readonly string[];
  refused?: readonly string[];
}): string {
  const { urls, current, failed } = options;
  if (urls.length === 1) return urls[0]!;
  const taken = new Set(options.taken);
  const draining = new Set(options.draining);
  const refused = new Set(options.refused ?? []);
  let candidates = urls.filter((u) => !taken.has(u) && !draining.has(u) && !refused.has(u));
  if (candidates.length === 0) candidates = urls.filter((u) => !taken.has(u) && !refused.has(u));
  if (candidates.length === 0) candidates = urls.filter((u) => !taken.has(u));
  if (candidates.length === 0) candidates = [...urls];
  const index = urls.indexOf(current);
  if (!failed && candidates.includes(current)) return current;
  return candidates.find((u) => urls.indexOf(u) > index) ?? candidates[0]!;
}

/** The URLs of `refusedAt` refused within {@link REFUSED_SKIP_MS} of `now` (older entries are dropped). */
export function recentlyRefused(refusedAt: Map<string, number>, now: number): string[] {
  const urls: string[] = [];
  for (const [url, at] of refusedAt) {
    if (now - at < REFUSED_SKIP_MS) urls.push(url);
    else refusedAt.delete(url);
  }
  return urls;
}

/** Connections an agent keeps to a control plane of several replicas (one per replica). */
export const MAX_CONNECTIONS = 2;
/** The longest a drained connection's replacement waits (jittered) before connecting. */
export const MAX_DRAIN_REPLACEMENT_DELAY_MS = 5000;

/**
 * The agent's connections (docs/cluster.md). One to a single control plane.
 * To replicas of one (several URLs, or one URL whose welcome names a
 * replica): two, to different replicas, each its own reconnect loop and
 * backoff, so that a replica stopping or restarting leaves the agent
 * reachable through the other. A connection tells the replica the other
 * connections are on (`X-P2PStream-Agent-Elsewhere`), which refuses it (409)
 * rather than replacing them: behind a load balancer the second connection
 * retries, with backoff, until it lands elsewhere. A replica that drains a
 * connection gets it replaced, after a jittered delay, by a new connection to
 * another replica, while the drained one finishes its streams. Connected
 * while any connection is.
 */
class AgentConnections implements RunningAgent {
  readonly #options: StartAgentOptions;
  readonly #urls: string[];
  readonly #events = new EventEmitter();
  readonly #connections = new Set<Agent>();
  readonly #timers = new Set<ReturnType<typeof setTimeout>>();
  /** A welcome named a replica: the control plane is several. */
  #replicated = false;
  /** When a connect to each URL was last refused outright ({@link REFUSED_SKIP_MS}). */
  readonly #refusedAt = new Map<string, number>();
  #stopped = false;

  constructor(options: StartAgentOptions) {
    this.#options = options;
    this.#urls = options.managementUrls?.length ? options.managementUrls : [options.managementUrl];
    this.#topUp();
  }

  get state(): AgentState {
    const states = [...this.#connections].map((a) => a.state);
    for (const state of ['connected', 'connecting', 'waiting'] as const)
      if (states.includes(state)) return state;
    return 'closed';
  }

  onEvent(listener: (event: AgentEvent) => void): () => void {
    this.#events.on('event', listener);
    return () => this.#events.off('event', listener);
  }

  async close(): Promise<void> {
    this.#stop();
    await Promise.all([...this.#connections].map((agent) => agent.close()));
  }

  async kill(): Promise<void> {
    this.#stop();
    await Promise.all([...this.#connections].map((agent) => agent.kill()));
  }

  stats(): AgentStats | null {
    for (const agent of this.#connections) {
      const stats = agent.stats();
      if (stats) return stats;
    }
    return null;
  }

  connections(): AgentConnectionInfo[] {
    return [...this.#connections].map((agent) => ({
      url: agent.url,
      state: agent.state,
      replicaId: agent.replicaId,
      draining: agent.retiring,
    }));
  }

  #stop(): void {
    this.#stopped = true;
    for (const timer of this.#timers) clearTimeout(timer);
    this.#timers.clear();
  }

  /** Connections wanted: two to a control plane of several replicas, else one. */
  get #target(): number {
    return this.#urls.length > 1 || this.#replicated ? MAX_CONNECTIONS : 1;
  }

  /** Opens connections until as many as wanted are not draining. */
  #topUp(): void {
    while (!this.#stopped && [...this.#connections].filter((a) => !a.retiring).length < this.#target) {
      const managementUrl = firstManagementUrl(this.#urls, this.#options.agentId);
      const agent = new Agent({ ...this.#options, managementUrl }, this.#hooks);
      this.#connections.add(agent);
      agent.onEvent((event) => this.#events.emit('event', event));
      agent.start();
      void agent.ended.then(() => this.#connections.delete(agent));
    }
  }

  readonly #hooks: ConnectionHooks = {
    mayAttempt: (agent) => {
      if (this.#urls.length > 1) return true;
      // Behind one URL, a connection cannot choose its replica, only name the replicas of the
      // others so that they refuse it: of the connections not on a replica, only the oldest tries,
      // so two never land on the same replica unknowingly (the second would replace the first).
      for (const other of this.#connections) {
        if (other === agent) return true;
        if (!other.retiring && !other.replicaId) return false;
      }
      return true;
    },
    pickUrl: (agent, failed) => {
      const others = [...this.#connections].filter((a) => a !== agent);
      return pickManagementUrl({
        urls: this.#urls,
        current: agent.url,
        failed,
        taken: others.filter((a) => !a.retiring).map((a) => a.url),
        draining: others.filter((a) => a.retiring).map((a) => a.url),
        refused: recentlyRefused(this.#refusedAt, Date.now()),
      });
    },
    onRefused: (_agent, url) => {
      if (this.#urls.length > 1) this.#refusedAt.set(url, Date.now());
    },
    elsewhere: (agent) => {
      const ids = new Set<string>();
      for (const other of this.#connections) if (other !== agent && other.replicaId) ids.add(other.replicaId);
      return [...ids];
    },
    onConnected: (agent, replicaId) => {
      this.#refusedAt.delete(agent.url);
      if (replicaId === '' || this.#replicated) return;
      this.#replicated = true;
      this.#topUp();
    },
    onDrain: (_agent, graceMs) => {
      // Jittered, so that the agents of a stopping replica do not all reconnect at once.
      const delayMs = Math.random() * Math.min(graceMs / 2, MAX_DRAIN_REPLACEMENT_DELAY_MS);
      const timer = setTimeout(() => {
        this.#timers.delete(timer);
        this.#topUp();
      }, delayMs);
      this.#timers.add(timer);
    },
  };
}
