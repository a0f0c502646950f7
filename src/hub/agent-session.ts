/**
 * One agent connection on the hub: the accepting relay peer over the
 * agent's WebSocket, with the hub's bookkeeping around it (the session
 * record, last seen, the registry of live sessions). The protocol itself
 * (handshake, limits, keepalive, stream-0 errors, close codes,
 * reconciliation) is the relay peer's; the streams are the RelayClient's.
 *
 * Whatever ends the session, its in-flight streams fail at once with
 * AGENT_OFFLINE, and the end reason is recorded in the agent's connections.
 *
 * A hello announcing `check` (`p2pstream agent check`) is a check-only
 * connection: authenticated like any other, welcomed, then closed (1000)
 * without a session record, so the agent's live session is neither replaced
 * nor touched, and a version refusal is not recorded on the agent.
 */
import type { WebSocket } from 'ws';
import type { AgentConnection, AgentCredential, AgentService } from '../domain/agent-service.js';
import { toAppError } from '../errors.js';
import type { Logger } from '../logger.js';
import { DEFAULT_MAX_TUNNEL_STREAMS, DEFAULT_TUNNEL_WINDOW_BYTES, type Limits } from '../relay/envelope.js';
import { HealthWatchClient } from '../relay/health-watch-client.js';
import type { VersionRange } from '../relay/protocol.js';
import {
  CAPABILITY,
  CLOSE_CODE,
  DEFAULT_CAPABILITIES,
  END_REASON,
  SUPPORTED_VERSIONS,
} from '../relay/protocol.js';
import { RelayClient } from '../relay/relay-client.js';
import { type AdmitResult, type PeerStats, RelayPeer, type RemoteHello } from '../relay/relay-peer.js';
import type { Transport } from '../relay/transport.js';
import { TunnelClient, type TunnelClientStats } from '../relay/tunnel-client.js';
import { createWebSocketFrameTransport } from '../relay/websocket-frame-transport.js';
import { VERSION } from '../version.js';
import { AgentStreamBridge } from './agent-stream-bridge.js';

/** The close statuses of the hub (the relay's table). */
export const CLOSE_NORMAL = CLOSE_CODE.NORMAL;
export const CLOSE_GOING_AWAY = CLOSE_CODE.GOING_AWAY;
export const CLOSE_PROTOCOL_ERROR = CLOSE_CODE.PROTOCOL_ERROR;
export const CLOSE_POLICY = CLOSE_CODE.POLICY;
export const CLOSE_TOO_LARGE = CLOSE_CODE.TOO_LARGE;

export interface AgentSessionOptions {
  socket: WebSocket;
  credential: AgentCredential;
  remoteAddress: string | null;
  agents: AgentService;
  logger: Logger;
  maxFrameBytes: number;
  maxStreams: number;
  versions?: VersionRange | undefined;
  keepaliveIntervalMs?: number | undefined;
  keepaliveMaxMissed?: number | undefined;
  helloTimeoutMs?: number | undefined;
  closeGraceMs?: number | undefined;
  reconcileIntervalMs?: number | undefined;
  /** Bytes queued towards the agent past which it counts as not reading; default 16 MiB. */
  maxSendBufferBytes?: number | undefined;
  /** Tunnel streams accepted at once (announced `max_tunnel_streams`); default 1024. */
  maxTunnelStreams?: number | undefined;
  /** Response window per tunnel stream (announced `tunnel_window_bytes`); default 256 KiB. */
  tunnelWindowBytes?: number | undefined;
  /** This control-plane replica's id, announced in the welcome (absent for a single process). */
  replicaId?: string | undefined;
  /** Called once the session is recorded; false refuses it (the hub is closing or it was revoked). */
  onReady(session: AgentSession): boolean;
  /** Called once when the session ends, whatever the cause. */
  onClosed(session: AgentSession): void;
}

export class AgentSession {
  readonly agentId: string;
  readonly credential: AgentCredential;
  readonly remoteAddress: string | null;
  readonly #options: AgentSessionOptions;
  readonly #peer: RelayPeer;
  #logger: Logger;
  #record: AgentConnection | null = null;
  #client: RelayClient | null = null;
  #bridge: AgentStreamBridge | null = null;
  #tunnel: TunnelClient | null = null;
  #health: HealthWatchClient | null = null;
  #check = false;
  #drained = false;

  constructor(options: AgentSessionOptions) {
    this.agentId = options.credential.agentId;
    this.credential = options.credential;
    this.remoteAddress = options.remoteAddress;
    this.#options = options;
    this.#logger = options.logger.child({ agentId: this.agentId });
    const limits: Limits = {
      maxFrameBytes: options.maxFrameBytes,
      maxStreams: options.maxStreams,
      ...(options.maxTunnelStreams ? { maxTunnelStreams: options.maxTunnelStreams } : {}),
      ...(options.tunnelWindowBytes ? { tunnelWindowBytes: options.tunnelWindowBytes } : {}),
    };
    this.#peer = new RelayPeer({
      transport: createWebSocketFrameTransport(options.socket, { closeGraceMs: options.closeGraceMs }),
      role: 'acceptor',
      logger: this.#logger,
      software: VERSION,
      versions: options.versions,
      capabilities: [...DEFAULT_CAPABILITIES, CAPABILITY.CHECK],
      limits,
      handshakeTimeoutMs: options.helloTimeoutMs,
      keepalive: { intervalMs: options.keepaliveIntervalMs, maxMissed: options.keepaliveMaxMissed },
      reconcileIntervalMs: options.reconcileIntervalMs,
      maxSendBufferBytes: options.maxSendBufferBytes,
      replicaId: options.replicaId,
      admit: (hello, version) => this.#admit(hello, version),
      streams: (context) => {
        this.#client = new RelayClient({
          send: context.send,
          nextStreamId: context.nextStreamId,
          maxStreams: context.session.maxStreams,
          maxFrameBytes: context.session.sendFrameBytes,
          windowBytes: context.session.initialWindowBytes,
          // Request streams get 8x windows while those stay within 64 windows per agent (docs/protocol.md).
          largeWindowBytes: 8 * context.session.initialWindowBytes,
          largeWindowBudgetBytes: 64 * context.session.initialWindowBytes,
          pinOnce: context.session.capabilities.has(CAPABILITY.PIN_ONCE),
          logger: this.#logger,
        });
        this.#bridge = new AgentStreamBridge(context);
        if (!context.session.capabilities.has(CAPABILITY.TUNNEL)) return [this.#client, this.#bridge];
        const remote = context.session.remote.limits;
        this.#tunnel = new TunnelClient({
          send: context.send,
          nextStreamId: context.nextStreamId,
          isCongested: context.isCongested,
          maxStreams: Math.min(
            options.maxTunnelStreams || DEFAULT_MAX_TUNNEL_STREAMS,
            remote.maxTunnelStreams,
          ),
          windowBytes: options.tunnelWindowBytes || DEFAULT_TUNNEL_WINDOW_BYTES,
          sendWindowBytes: remote.tunnelWindowBytes,
          maxChunkBytes: context.session.sendFrameBytes - 1024,
          logger: this.#logger,
        });
        if (!context.session.capabilities.has(CAPABILITY.HEALTH))
          return [this.#client, this.#bridge, this.#tunnel];
        // The agent checks the backend members it serves and reports here.
        this.#health = new HealthWatchClient({
          send: context.send,
          nextStreamId: context.nextStreamId,
          logger: this.#logger,
        });
        return [this.#client, this.#bridge, this.#tunnel, this.#health];
      },
      onReady: () => {
        if (this.#check) {
          this.#logger.info({ remoteAddress: this.remoteAddress }, 'agent check connection answered');
          this.#peer.close(CLOSE_CODE.NORMAL, 'check done', END_REASON.CLOSED);
          return;
        }
        this.#logger.info(
          { remoteAddress: this.remoteAddress, version: this.#record?.version ?? null },
          'agent connected',
        );
      },
      onPong: () => {
        if (this.#record) options.agents.sessionSeen(this.agentId, this.#record.id);
      },
      onLeak: (stats) => {
        if (this.#record) {
          options.agents.sessionLeaks(
            this.agentId,
            this.#record.id,
            stats.leakedStreams + stats.remoteLeakedStreams,
          );
        }
      },
      onClosed: (event) => {
        const remote = this.#peer.remote;
        if (
          event.endReason === END_REASON.VERSION &&
          remote &&
          !remote.capabilities.includes(CAPABILITY.CHECK)
        ) {
          options.agents.handshakeRefused(this.agentId, {
            remoteAddress: this.remoteAddress,
            version: remote.software || null,
            agentVersions: remote.versions,
            controlPlaneVersions: options.versions ?? SUPPORTED_VERSIONS,
            refusal: event.reason,
          });
        }
        if (this.#record) {
          void options.agents
            .sessionEnded(this.agentId, this.#record.id, event.endReason)
            .catch((err: unknown) => {
              this.#logger.warn({ err }, 'could not record the end of the agent session');
            });
        }
        options.onClosed(this);
      },
    });
  }

  /** True once the handshake is done and streams can be opened. */
  get ready(): boolean {
    return this.#peer.ready;
  }

  /** The stream client while ready, else null. */
  get client(): Transport | null {
    return this.#peer.ready ? this.#client : null;
  }

  /** Raw streams to the agent (calls forwarded by another replica) while ready, else null. */
  get bridge(): AgentStreamBridge | null {
    return this.#peer.ready ? this.#bridge : null;
  }

  /** The tunnel dispatcher while ready, when the agent announced `tunnel`; else null. */
  get tunnel(): TunnelClient | null {
    return this.#peer.ready ? this.#tunnel : null;
  }

  /** The agent's health checks while ready, when it announced `health` (and `tunnel`); else null. */
  get health(): HealthWatchClient | null {
    return this.#peer.ready ? this.#health : null;
  }

  /** Tunnel streams open and response bytes held for paused clients (zeros without tunnels). */
  tunnelStats(): TunnelClientStats {
    return (
      this.#tunnel?.stats() ?? {
        activeStreams: 0,
        bufferedBytes: 0,
        peakBufferedBytes: 0,
        windowBytes: 0,
        largeWindowBytes: 0,
        largeWindowBudgetBytes: 0,
        largeWindowsInUse: 0,
      }
    );
  }

  /** The session record (id, start) once started. */
  get record(): AgentConnection | null {
    return this.#record;
  }

  /** Bytes queued on the WebSocket towards the agent. */
  get bufferedAmount(): number {
    return this.#peer.stats().bufferedAmount;
  }

  /** Resolves when the socket is closed. */
  get closed(): Promise<void> {
    return this.#peer.done;
  }

  /** Streams open through this session and response bytes buffered for their consumers. */
  streamStats(): { activeStreams: number; bufferedBytes: number } {
    const stats = this.#client?.stats() ?? { activeStreams: 0, bufferedBytes: 0 };
    // Streams another replica forwards through this session count too, and tunnels.
    const tunnels = this.#tunnel?.stats() ?? { activeStreams: 0, bufferedBytes: 0 };
    return {
      activeStreams: stats.activeStreams + (this.#bridge?.activeStreams ?? 0) + tunnels.activeStreams,
      bufferedBytes: stats.bufferedBytes + tunnels.bufferedBytes,
    };
  }

  /** The relay peer's counters (streams, leaks, send queue). */
  peerStats(): PeerStats {
    return this.#peer.stats();
  }

  /**
   * Tells the agent this replica is stopping (a drain envelope, when the
   * agent announced the capability): it connects elsewhere and the hub sends
   * new calls another way; the open streams may run `graceMs` more. True when
   * the envelope was sent.
   */
  drain(graceMs: number, reason: string): boolean {
    this.#drained = true;
    return this.#peer.drain(graceMs, reason);
  }

  /** True once {@link drain} was called. */
  get drained(): boolean {
    return this.#drained;
  }

  /**
   * Ends the session: streams fail with AGENT_OFFLINE at once, a close frame
   * is sent, and the socket is cut if the agent does not answer within the
   * grace period. `endReason` is recorded in the agent's `connections`.
   */
  close(code: number, reason: string, endReason: string): void {
    if (!this.#peer.isClosed) this.#logger.info({ code, reason: endReason }, 'closing agent connection');
    this.#peer.close(code, reason, endReason);
  }

  async #admit(hello: RemoteHello, protocolVersion: number): Promise<AdmitResult> {
    if (hello.capabilities.includes(CAPABILITY.CHECK)) {
      // Check-only: nothing is recorded and the live session stays; the welcome is all it gets.
      this.#check = true;
      if (this.#options.agents.isCredentialCurrent(this.credential)) return { ok: true };
      return { ok: false, code: CLOSE_POLICY, reason: 'agent credentials revoked', endReason: 'revoked' };
    }
    const version = hello.software || null;
    try {
      this.#record = await this.#options.agents.sessionStarted(this.credential, {
        remoteAddress: this.remoteAddress,
        version,
        protocol: {
          version: protocolVersion,
          agentVersions: hello.versions,
          controlPlaneVersions: this.#options.versions ?? SUPPORTED_VERSIONS,
        },
      });
    } catch (err) {
      const error = toAppError(err);
      this.#logger.warn({ code: error.code }, 'agent session refused');
      return { ok: false, code: CLOSE_POLICY, reason: 'agent credentials revoked', endReason: 'revoked' };
    }
    // One child logger per live session (not a child of a child: each level is kept alive).
    this.#logger = this.#options.logger.child({ agentId: this.agentId, sessionId: this.#record.id });
    this.#peer.setLogger(this.#logger);
    const ended = this.#peer.closedEvent;
    if (ended !== null) {
      // Closed (revoked, hub closing, socket gone) while the session was being recorded.
      void this.#options.agents.sessionEnded(this.agentId, this.#record.id, ended.endReason).catch(() => {});
      return { ok: true };
    }
    if (!this.#options.onReady(this)) {
      return {
        ok: false,
        code: CLOSE_GOING_AWAY,
        reason: 'the control plane is shutting down',
        endReason: 'refused',
      };
    }
    return { ok: true };
  }
}
