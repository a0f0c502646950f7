/**
 * The hub: the WebSocket endpoint agents connect to (`GET
 * /api/v1/agent/connect`, docs/security.md "API tokens and agent credentials")
 * and the registry of their live sessions.
 *
 * - Authentication happens before the upgrade: `X-P2PStream-Agent-Id` and
 *   `Authorization: Bearer p2pag_…` of an enabled agent, else 401
 *   UNAUTHENTICATED (an API token never works here). Failures are counted
 *   per client IP; past the limit the IP gets 429 RATE_LIMITED for a while.
 * - A new authenticated session for an agent replaces the old one; disable,
 *   rotate and delete drop the agent's sessions at once.
 * - `transportFor(agentId)` gives the AgentTransport the environment proxy
 *   uses; the streams of a session that ends fail with AGENT_OFFLINE.
 * - As the data plane's AgentDirectory, `tunnelAgents()` lists the agents
 *   connected here that announced `tunnel`, with their current labels and
 *   their tunnel dispatcher (docs/protocol.md, "Tunnel streams") and, when
 *   they announced `health`, their health checks ("Health streams").
 */
import type { ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import websocket from '@fastify/websocket';
import type { FastifyInstance, FastifyPluginAsync, FastifyRequest } from 'fastify';
import type { WebSocket } from 'ws';
import type { AgentCredential, AgentRevocationReason, AgentService } from '../domain/agent-service.js';
import type { AgentDirectory, TunnelAgent } from '../domain/backend-service.js';
import { isId } from '../domain/ids.js';
import { LoginThrottle, type LoginThrottleOptions } from '../domain/login-throttle.js';
import { AppError } from '../errors.js';
import { agentConnectSchema } from '../http/schemas/agent-connect.js';
import type { Logger } from '../logger.js';
import { DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_STREAMS } from '../relay/envelope.js';
import {
  AGENT_CONNECT_PATH,
  AGENT_ELSEWHERE_HEADER,
  AGENT_ID_HEADER,
  END_REASON,
  type VersionRange,
} from '../relay/protocol.js';
import type { Transport } from '../relay/transport.js';
import { DEFAULT_CLOSE_GRACE_MS } from '../relay/websocket-frame-transport.js';
import { AgentSession, CLOSE_GOING_AWAY, CLOSE_POLICY } from './agent-session.js';
import type { AgentStreamBridge } from './agent-stream-bridge.js';
import { AgentTransport } from './agent-transport.js';

export { AGENT_CONNECT_PATH, AGENT_ID_HEADER };
/** Failed agent authentications per client IP: 20 within a minute block that IP for a minute. */
export const DEFAULT_AGENT_AUTH_THROTTLE = {
  maxFailures: 20,
  windowMs: 60_000,
  blockMs: 60_000,
  maxKeys: 10_000,
} as const;

export interface HubOptions {
  agents: AgentService;
  logger: Logger;
  /** Protocol versions accepted; default this build's window (SUPPORTED_VERSIONS). */
  protocolVersions?: VersionRange;
  /** Largest frame accepted from an agent (ws maxPayload and codec limit); default 1 MiB. */
  maxFrameBytes?: number;
  /** Concurrent streams per agent; default {@link DEFAULT_MAX_STREAMS}. */
  maxStreamsPerAgent?: number;
  /** Default 15 s. */
  keepaliveIntervalMs?: number;
  /** Default 2. */
  keepaliveMaxMissed?: number;
  /** Default 10 s. */
  helloTimeoutMs?: number;
  /** Default 1 s. */
  closeGraceMs?: number;
  /** Unread bytes towards an agent before it is cut as not reading; default 16 MiB. */
  maxSendBufferBytes?: number;
  /** Stream reconciliation interval; default 60 s, 0 = off. */
  reconcileIntervalMs?: number;
  /** Tunnel streams per agent; default 1024 (DEFAULT_MAX_TUNNEL_STREAMS). */
  maxTunnelStreamsPerAgent?: number;
  /**
   * Response bytes a tunnel stream may have in flight towards the hub; default
   * 256 KiB. The hub holds at most this much per tunnel stream for a client
   * that does not read, plus 64× it per agent for the 8× windows the first
   * streams get (see TunnelClient).
   */
  tunnelWindowBytes?: number;
  /** Default {@link DEFAULT_AGENT_AUTH_THROTTLE}. */
  authThrottle?: LoginThrottleOptions;
  /**
   * This control-plane replica's id (several replicas, docs/cluster.md): sent
   * in the welcome, and an upgrade whose `X-P2PStream-Agent-Elsewhere` names
   * it is refused with 409 CONFLICT (the agent already has a connection here).
   */
  replicaId?: string;
  /** Told when an agent's session becomes the active one here (cluster presence). */
  onAgentConnected?: (agentId: string, sessionId: string, connectedAt: string) => void;
  /** Told when the active session of an agent here ends. */
  onAgentDisconnected?: (agentId: string, sessionId: string) => void;
}

/** A live session's counters (for tests and diagnostics). */
export interface AgentSessionStats {
  sessionId: string | null;
  /** Bytes queued on the WebSocket towards the agent. */
  bufferedAmount: number;
  /** Streams open through this agent. */
  activeStreams: number;
  /** Response bytes received from the agent and not yet read by their consumers. */
  bufferedBytes: number;
}

function headerValue(request: FastifyRequest, name: string): string {
  const value = request.headers[name];
  return (Array.isArray(value) ? value[0] : value)?.trim() ?? '';
}

/** The replica ids of `X-P2PStream-Agent-Elsewhere` (comma-separated). */
function elsewhere(request: FastifyRequest): string[] {
  return headerValue(request, AGENT_ELSEWHERE_HEADER)
    .split(',')
    .map((id) => id.trim())
    .filter(Boolean);
}

function bearerValue(request: FastifyRequest): string {
  const match = /^Bearer\s+(\S+)\s*$/i.exec(headerValue(request, 'authorization'));
  return match?.[1] ?? '';
}

export class Hub implements AgentDirectory {
  readonly #agents: AgentService;
  readonly #logger: Logger;
  readonly #options: HubOptions;
  readonly #maxFrameBytes: number;
  readonly #maxStreams: number;
  readonly #throttle: LoginThrottle;
  readonly #sessions = new Set<AgentSession>();
  readonly #active = new Map<string, AgentSession>();
  readonly #credentials = new WeakMap<FastifyRequest, AgentCredential>();
  /** Sockets of live agent connections, and the bytes of those already closed. */
  readonly #sockets = new Set<Socket>();
  readonly #closedBytes = { in: 0, out: 0 };
  readonly #unsubscribe: () => void;
  #closing: Promise<void> | null = null;
  #paused: string | null = null;
  #draining = false;
  #forwarder: ((agentId: string) => Transport | null) | null = null;

  constructor(options: HubOptions) {
    this.#agents = options.agents;
    this.#logger = options.logger;
    this.#options = options;
    this.#maxFrameBytes = options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    this.#maxStreams = options.maxStreamsPerAgent ?? DEFAULT_MAX_STREAMS;
    this.#throttle = new LoginThrottle({ ...DEFAULT_AGENT_AUTH_THROTTLE, ...options.authThrottle });
    this.#unsubscribe = this.#agents.onRevoked((agentId, reason: AgentRevocationReason) =>
      this.disconnect(agentId, reason),
    );
  }

  /** The fastify plugin serving `GET /api/v1/agent/connect` (register it at the root, unauthenticated). */
  readonly plugin: FastifyPluginAsync = async (app: FastifyInstance) => {
    await app.register(websocket, {
      options: { maxPayload: this.#maxFrameBytes, perMessageDeflate: false },
      // Socket errors (a frame over maxPayload, a broken frame) are closed by ws
      // itself with the matching status and logged by the session; a peer that
      // does not finish the close handshake is cut after the grace period.
      errorHandler: (_error, socket) => {
        if (socket.readyState === socket.CLOSED) return;
        setTimeout(() => socket.terminate(), this.#options.closeGraceMs ?? DEFAULT_CLOSE_GRACE_MS).unref();
      },
      // Replaces the plugin's default (a bare ws close): sessions end with 1001 and their streams fail first.
      preClose: async () => {
        await this.close();
        await new Promise<void>((resolve) => app.websocketServer.close(() => resolve()));
      },
    });
    app.get(
      AGENT_CONNECT_PATH,
      {
        websocket: true,
        schema: agentConnectSchema,
        onRequest: async (request) => this.#authenticate(request),
      },
      (socket, request) => this.#accept(socket, request),
    );
  };

  /** True while the agent has a live session (presence is the agent service's record). */
  isConnected(agentId: string): boolean {
    return this.#agents.isConnected(agentId);
  }
  /** True while calls can reach the agent: connected here, or held by another live replica. */
  isReachable(agentId: string): boolean {
    return this.isConnected(agentId) || (this.#forwarder?.(agentId) ?? null) !== null;
  }

  /** Agents with a live session. */
  connectedCount(): number {
    return this.#agents.connectedCount();
  }

  /**
   * The Transport through this agent. It follows reconnects; calls fail at
   * once with AGENT_OFFLINE while the agent is not connected, AGENT_NOT_FOUND
   * when it was deleted.
   */
  transportFor(agentId: string): Transport {
    return new AgentTransport({
      agentId,
      current: () => {
        // Stopping: new calls go through another replica holding the agent when there is one.
        const forwarded = this.#draining ? this.#forwarder?.(agentId) : null;
        return forwarded ?? this.#active.get(agentId)?.client ?? this.#forwarder?.(agentId) ?? null;
      },
      exists: () => this.#agents.exists(agentId),
    });
  }

  /** Drops every session of the agent at once (close status 1008); `reason` is recorded as the end reason. */
  disconnect(agentId: string, reason: string): void {
    for (const session of [...this.#sessions]) {
      if (session.agentId === agentId) session.close(CLOSE_POLICY, `agent ${reason}`, reason);
    }
  }

  /**
   * Drops every session whose credential is no longer current (the agent was
   * disabled, rotated or deleted by another replica sharing the database);
   * the end reason says which. Returns how many were dropped.
   */
  revalidate(): number {
    let dropped = 0;
    for (const session of [...this.#sessions]) {
      if (this.#agents.isCredentialCurrent(session.credential)) continue;
      const reason = this.#agents.revocationReason(session.credential);
      session.close(CLOSE_POLICY, `agent ${reason}`, reason);
      dropped += 1;
    }
    return dropped;
  }

  /**
   * Stops taking agents (upgrades answer 503 REPLICA_UNAVAILABLE with
   * `reason`) and closes the current sessions (status 1001) so their agents
   * move to another replica. For a replica that lost the cluster bus.
   */
  pause(reason: string): void {
    if (this.#paused !== null) return;
    this.#paused = reason;
    for (const session of [...this.#sessions]) session.close(CLOSE_GOING_AWAY, reason.slice(0, 100), 'moved');
  }

  /**
   * The first step of a graceful stop: takes no new agents (503
   * REPLICA_UNAVAILABLE), tells every agent to move (a drain envelope: it
   * opens a connection to another replica), sends new calls through another
   * replica holding the agent where there is one, and waits, at most
   * `graceMs`, until no stream is open through any agent session (calls of
   * this replica's own, and calls other replicas forward here). Sessions stay
   * up meanwhile; {@link close} ends them (end reason `drained`).
   */
  async drain(graceMs: number): Promise<void> {
    this.#paused ??= 'this control-plane replica is stopping; connect to another one';
    this.#draining = true;
    for (const session of this.#sessions) session.drain(graceMs, 'this control-plane replica is stopping');
    const deadline = Date.now() + graceMs;
    while (Date.now() < deadline) {
      let open = 0;
      for (const session of this.#sessions) open += session.streamStats().activeStreams;
      if (open === 0) return;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  /** Takes agents again after {@link pause}. */
  resume(): void {
    this.#paused = null;
  }

  /** True unless paused. */
  get acceptingAgents(): boolean {
    return this.#paused === null && this.#closing === null;
  }

  /**
   * Where calls go for an agent not connected here: `forward(agentId)` gives
   * a Transport through the replica holding it, or null (AGENT_OFFLINE).
   */
  setForwarder(forward: ((agentId: string) => Transport | null) | null): void {
    this.#forwarder = forward;
  }

  /** Raw streams to the agent's live session here (for calls another replica forwards), or null. */
  bridgeFor(agentId: string): AgentStreamBridge | null {
    return this.#active.get(agentId)?.bridge ?? null;
  }

  /** Agents connected here that carry tunnels, with their current labels (the data plane's AgentDirectory). */
  tunnelAgents(): readonly TunnelAgent[] {
    const out: TunnelAgent[] = [];
    for (const session of this.#active.values()) {
      const dispatcher = session.tunnel;
      if (dispatcher === null) continue;
      const labels = this.#agents.labelsOf(session.agentId);
      if (labels === null) continue;
      out.push({
        agentId: session.agentId,
        labels,
        activeTunnels: () => dispatcher.activeStreams,
        dispatcher: dispatcher as unknown as TunnelAgent['dispatcher'],
        health: session.health,
      });
    }
    return out;
  }

  /** The tunnel counters of the agent's live session (streams, response bytes held), or null. */
  tunnelStats(agentId: string): ReturnType<AgentSession['tunnelStats']> | null {
    return this.#active.get(agentId)?.tunnelStats() ?? null;
  }

  /** Counters of the agent's live session, or null. */
  sessionStats(agentId: string): AgentSessionStats | null {
    const session = this.#active.get(agentId);
    if (!session) return null;
    const client = session.streamStats();
    return {
      sessionId: session.record?.id ?? null,
      bufferedAmount: session.bufferedAmount,
      activeStreams: client.activeStreams,
      bufferedBytes: client.bufferedBytes,
    };
  }

  /** Streams open through agents, and bytes read from and written to agent connections (for metrics). */
  traffic(): { activeStreams: number; bytesIn: number; bytesOut: number } {
    let activeStreams = 0;
    for (const session of this.#active.values()) activeStreams += session.streamStats().activeStreams;
    let bytesIn = this.#closedBytes.in;
    let bytesOut = this.#closedBytes.out;
    for (const socket of this.#sockets) {
      bytesIn += socket.bytesRead;
      bytesOut += socket.bytesWritten;
    }
    return { activeStreams, bytesIn, bytesOut };
  }

  /** Refuses new agents, closes every session (status 1001) and waits until their sockets are closed. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#unsubscribe();
      const sessions = [...this.#sessions];
      for (const session of sessions) {
        const endReason = session.drained ? END_REASON.DRAINED : END_REASON.SHUTDOWN;
        session.close(CLOSE_GOING_AWAY, 'the control plane is shutting down', endReason);
      }
      await Promise.all(sessions.map((s) => s.closed));
    })();
    return this.#closing;
  }

  async #authenticate(request: FastifyRequest): Promise<void> {
    const remoteAddress = request.ip;
    if (this.#paused !== null) throw new AppError('REPLICA_UNAVAILABLE', this.#paused);
    if (this.#throttle.isBlocked(remoteAddress)) {
      throw new AppError('RATE_LIMITED', 'too many failed agent authentications; try again later');
    }
    const agentId = headerValue(request, AGENT_ID_HEADER);
    const result = this.#agents.authenticate(agentId, bearerValue(request));
    if (!result.ok) {
      this.#throttle.recordFailure(remoteAddress);
      this.#logger.warn(
        { agentId: isId(agentId) ? agentId : null, remoteAddress, reason: result.reason },
        'agent authentication failed',
      );
      throw new AppError('UNAUTHENTICATED', 'agent authentication failed');
    }
    if (!request.ws) {
      throw new AppError('VALIDATION_FAILED', 'this endpoint only accepts a WebSocket upgrade');
    }
    const replicaId = this.#options.replicaId;
    if (replicaId && elsewhere(request).includes(replicaId)) {
      // A second connection of an agent that reached, through a load balancer, the replica its
      // first one is on: refused rather than replacing that one, so the agent tries again.
      throw new AppError('CONFLICT', 'this agent already has a connection to this control-plane replica', {
        details: { replicaId },
      });
    }
    this.#credentials.set(request, result.credential);
  }

  #accept(socket: WebSocket, request: FastifyRequest): void {
    const credential = this.#credentials.get(request);
    if (!credential || this.#closing) {
      socket.close(CLOSE_GOING_AWAY, 'the control plane is shutting down');
      return;
    }
    releaseUpgradeRequest(socket, request);
    this.#countBytes(request.raw.socket);
    const session = new AgentSession({
      socket,
      credential,
      remoteAddress: request.ip,
      agents: this.#agents,
      logger: this.#logger,
      versions: this.#options.protocolVersions,
      maxFrameBytes: this.#maxFrameBytes,
      maxStreams: this.#maxStreams,
      maxTunnelStreams: this.#options.maxTunnelStreamsPerAgent,
      tunnelWindowBytes: this.#options.tunnelWindowBytes,
      ...pick(this.#options, [
        'keepaliveIntervalMs',
        'keepaliveMaxMissed',
        'helloTimeoutMs',
        'closeGraceMs',
        'maxSendBufferBytes',
        'reconcileIntervalMs',
        'replicaId',
      ]),
      onReady: (ready) => this.#onReady(ready),
      onClosed: (closed) => this.#onClosed(closed),
    });
    this.#sessions.add(session);
  }

  #countBytes(socket: Socket): void {
    this.#sockets.add(socket);
    socket.once('close', () => {
      this.#sockets.delete(socket);
      this.#closedBytes.in += socket.bytesRead;
      this.#closedBytes.out += socket.bytesWritten;
    });
  }

  #onReady(session: AgentSession): boolean {
    if (this.#closing || !this.#agents.isCredentialCurrent(session.credential)) return false;
    if (this.#paused !== null) return false;
    const previous = this.#active.get(session.agentId);
    this.#active.set(session.agentId, session);
    if (previous && previous !== session) {
      previous.close(CLOSE_POLICY, 'replaced by a newer connection of this agent', 'replaced');
    }
    const record = session.record;
    if (record) this.#options.onAgentConnected?.(session.agentId, record.id, record.startedAt);
    return true;
  }

  #onClosed(session: AgentSession): void {
    this.#sessions.delete(session);
    if (this.#active.get(session.agentId) === session) {
      this.#active.delete(session.agentId);
      const record = session.record;
      if (record) this.#options.onAgentDisconnected?.(session.agentId, record.id);
    }
  }
}

/**
 * Lets the HTTP objects of the upgrade go once the connection is a
 * WebSocket: the TLS socket still points at the upgrade's ServerResponse, and
 * the plugin's error listener holds the request and reply, for as long as the
 * agent stays connected (about 2 KB per agent). The session installs its own
 * error listener; ws closes the connection itself on a bad frame.
 */
function releaseUpgradeRequest(socket: WebSocket, request: FastifyRequest): void {
  socket.removeAllListeners('error');
  const raw = request.raw.socket as Socket & { _httpMessage?: ServerResponse | null };
  raw._httpMessage?.detachSocket(raw);
}

function pick<T extends object, K extends keyof T>(source: T, keys: K[]): Partial<Pick<T, K>> {
  const out: Partial<Pick<T, K>> = {};
  for (const key of keys) if (source[key] !== undefined) out[key] = source[key];
  return out;
}
