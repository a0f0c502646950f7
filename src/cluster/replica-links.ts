/**
 * Calls through an agent held by another replica: X → NATS → Y → agent and
 * back, as the same envelopes.
 *
 * - On X (the replica the call reached), `transportFor(agentId)` gives a
 *   Transport when the presence says another live replica Y holds the agent.
 *   Its first call opens a *link* to Y for that agent: a request on
 *   `p2pstream.replica.<Y>.link`, then a relay peer (acceptor, with a
 *   RelayClient, as the hub has) over a {@link NatsFrameTransport}. The link
 *   is reused by later calls and closed after a minute without streams, when
 *   Y stops holding the agent, or when Y is gone.
 * - On Y, the link's relay peer (initiator, as an agent is) has a
 *   {@link ForwardingHandler}: each stream X opens becomes a bridged stream
 *   on the agent's connection, envelopes passing both ways with only the
 *   stream id changed. Windows are the caller's, so flow control is end to
 *   end; a cancel from X reaches the agent; the agent's session ending fails
 *   X's streams with AGENT_OFFLINE.
 *
 * Both ends keep the relay protocol's handshake, limits and keepalive.
 */
import { randomUUID } from 'node:crypto';
import type { Msg, NatsConnection, Subscription } from '@nats-io/transport-node';
import { AppError, isErrorCode } from '../errors.js';
import type { AgentStreamBridge, BridgedStream } from '../hub/agent-stream-bridge.js';
import type { Logger } from '../logger.js';
import { type Envelope, type EnvelopeCase, errorEnvelope } from '../relay/envelope.js';
import { CAPABILITY, CLOSE_CODE, DEFAULT_CAPABILITIES, END_REASON } from '../relay/protocol.js';
import { RelayClient } from '../relay/relay-client.js';
import { RelayPeer, type StreamContext, type StreamHandler } from '../relay/relay-peer.js';
import type {
  DiscoverOptions,
  DiscoverResult,
  RelayRequest,
  RelayResponse,
  Transport,
} from '../relay/transport.js';
import { VERSION } from '../version.js';
import { NatsFrameTransport } from './nats-frame-transport.js';

/** Subject a replica takes link requests on. */
export function linkRequestSubject(replicaId: string): string {
  return `p2pstream.replica.${replicaId}.link`;
}

/** A link without streams this long is closed (the next call opens a new one). */
export const DEFAULT_LINK_IDLE_MS = 60_000;
/** Keepalive of a link: a ping every second, cut after 2 missed (a killed replica is noticed in about 2 s). */
export const DEFAULT_LINK_KEEPALIVE_MS = 1000;
/** Frames on a link stay under NATS's default 1 MB message limit. */
export const LINK_MAX_FRAME_BYTES = 768 * 1024;
/** A replica that did not answer a link request is passed over this long (its heartbeat ages out meanwhile). */
const UNANSWERED_SKIP_MS = 15_000;
/** How long a link request waits for the holding replica's answer. */
export const LINK_REQUEST_TIMEOUT_MS = 5000;

export interface ReplicaLinksOptions {
  replicaId: string;
  /** The live NATS connection, or null while the bus is down. */
  connection(): NatsConnection | null;
  /** The live replica holding an agent (from the presence), or null; `exclude` skips replicas. */
  holderOf(agentId: string, exclude?: ReadonlySet<string>): { replicaId: string } | null;
  isAlive(replicaId: string): boolean;
  /** Raw streams to an agent connected to this replica, or null. */
  bridgeFor(agentId: string): AgentStreamBridge | null;
  logger: Logger;
  idleMs?: number;
  keepaliveMs?: number;
}

interface OutgoingLink {
  key: string;
  agentId: string;
  replicaId: string;
  transport: NatsFrameTransport | null;
  peer: RelayPeer | null;
  client: RelayClient | null;
  ready: Promise<RelayClient>;
  idleSince: number;
  closed: boolean;
}

interface IncomingLink {
  linkId: string;
  agentId: string;
  peer: RelayPeer;
  transport: NatsFrameTransport;
}

interface LinkRequest {
  linkId: string;
  agentId: string;
  from: string;
}

export class ReplicaLinks {
  readonly #options: ReplicaLinksOptions;
  readonly #logger: Logger;
  readonly #outgoing = new Map<string, OutgoingLink>();
  readonly #incoming = new Map<string, IncomingLink>();
  /** Replicas that did not answer a link request (gone from the bus before their heartbeat aged), and since when. */
  readonly #unanswered = new Map<string, number>();
  #subscription: Subscription | null = null;
  #subscribedOn: NatsConnection | null = null;
  #timer: ReturnType<typeof setInterval>;
  #closed = false;

  constructor(options: ReplicaLinksOptions) {
    this.#options = options;
    this.#logger = options.logger;
    this.#timer = setInterval(() => this.#sweep(), 1000);
    this.#timer.unref();
    this.#subscribe();
  }

  /** Links open in each direction (for tests and diagnostics). */
  stats(): { outgoing: number; incoming: number; forwardedStreams: number } {
    let forwardedStreams = 0;
    for (const link of this.#incoming.values()) forwardedStreams += link.peer.stats().activeStreams;
    return { outgoing: this.#outgoing.size, incoming: this.#incoming.size, forwardedStreams };
  }

  /**
   * A Transport through the replica holding the agent, or null when no other
   * live replica holds it. Calls fail with AGENT_OFFLINE when the link cannot
   * be opened (the holder lost the agent or is gone).
   */
  transportFor(agentId: string): Transport | null {
    if (this.#closed) return null;
    const holder = this.#options.holderOf(agentId, this.#skipped());
    if (!holder || holder.replicaId === this.#options.replicaId) return null;
    // Opening a link sends nothing to the agent: when the holder does not answer (it died a moment
    // ago), the call is safely tried through another replica holding the agent, if there is one.
    const client = async (): Promise<RelayClient> => {
      let replicaId = holder.replicaId;
      for (;;) {
        try {
          return await this.#link(agentId, replicaId);
        } catch (err) {
          if (!(err instanceof AppError) || err.details?.unanswered !== true) throw err;
          this.#unanswered.set(replicaId, Date.now());
          const next = this.#options.holderOf(agentId, this.#skipped());
          if (!next || next.replicaId === this.#options.replicaId || next.replicaId === replicaId) throw err;
          replicaId = next.replicaId;
        }
      }
    };
    return {
      async discover(options: DiscoverOptions): Promise<DiscoverResult> {
        return (await client()).discover(options);
      },
      async request(request: RelayRequest): Promise<RelayResponse> {
        return (await client()).request(request);
      },
    };
  }

  /** Replicas that failed to answer a link request within the last heartbeat lifetime. */
  #skipped(): ReadonlySet<string> {
    const now = Date.now();
    for (const [id, at] of this.#unanswered) if (now - at > UNANSWERED_SKIP_MS) this.#unanswered.delete(id);
    return new Set(this.#unanswered.keys());
  }

  /** Closes every link (streams fail with AGENT_OFFLINE) and stops taking new ones. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#timer);
    this.#subscription?.unsubscribe();
    for (const link of [...this.#outgoing.values()])
      this.#closeOutgoing(link, 'the control plane is shutting down');
    for (const link of [...this.#incoming.values()]) {
      link.peer.close(CLOSE_CODE.GOING_AWAY, 'the control plane is shutting down', END_REASON.SHUTDOWN);
    }
  }

  /** The bus came back or went: links over the old connection are gone. */
  busChanged(): void {
    for (const link of [...this.#outgoing.values()]) this.#closeOutgoing(link, 'the cluster bus was lost');
    for (const link of [...this.#incoming.values()]) link.transport.cut('the cluster bus was lost');
    this.#subscribe();
  }

  #subscribe(): void {
    if (this.#closed) return;
    const nc = this.#options.connection();
    if (nc === this.#subscribedOn) return;
    this.#subscription?.unsubscribe();
    this.#subscription = null;
    this.#subscribedOn = nc;
    if (!nc) return;
    this.#subscription = nc.subscribe(linkRequestSubject(this.#options.replicaId), {
      callback: (err, message) => {
        if (!err) this.#accept(nc, message);
      },
    });
  }

  // ---- the replica the call reached (X) -----------------------------------

  #link(agentId: string, replicaId: string): Promise<RelayClient> {
    const key = `${agentId}@${replicaId}`;
    const existing = this.#outgoing.get(key);
    if (existing && !existing.closed) return existing.ready;
    const nc = this.#options.connection();
    if (!nc) return Promise.reject(new AppError('AGENT_OFFLINE', 'the cluster bus is down'));
    const link: OutgoingLink = {
      key,
      agentId,
      replicaId,
      transport: null,
      peer: null,
      client: null,
      ready: Promise.resolve(null as unknown as RelayClient),
      idleSince: Date.now(),
      closed: false,
    };
    link.ready = this.#openOutgoing(nc, link);
    link.ready.catch(() => this.#closeOutgoing(link, 'the link could not be opened'));
    this.#outgoing.set(key, link);
    return link.ready;
  }

  async #openOutgoing(nc: NatsConnection, link: OutgoingLink): Promise<RelayClient> {
    const linkId = randomUUID().replaceAll('-', '');
    const transport = new NatsFrameTransport({ nc, linkId, side: 'a' });
    link.transport = transport;
    const logger = this.#logger.child({ agentId: link.agentId, replicaId: link.replicaId, linkId });
    const peer = new RelayPeer({
      transport,
      role: 'acceptor',
      logger,
      software: VERSION,
      limits: { maxFrameBytes: LINK_MAX_FRAME_BYTES },
      keepalive: { intervalMs: this.#options.keepaliveMs ?? DEFAULT_LINK_KEEPALIVE_MS, maxMissed: 2 },
      offlineCode: 'AGENT_OFFLINE',
      admit: () => ({ ok: true }),
      streams: (context) => {
        link.client = new RelayClient({
          send: context.send,
          nextStreamId: context.nextStreamId,
          maxStreams: context.session.maxStreams,
          maxFrameBytes: context.session.sendFrameBytes,
          windowBytes: context.session.initialWindowBytes,
          logger,
        });
        return [link.client];
      },
      onClosed: () => this.#closeOutgoing(link, 'the link ended'),
    });
    link.peer = peer;
    const request: LinkRequest = { linkId, agentId: link.agentId, from: this.#options.replicaId };
    let answer: { ok: boolean; code?: string; message?: string };
    try {
      const reply = await nc.request(linkRequestSubject(link.replicaId), JSON.stringify(request), {
        timeout: LINK_REQUEST_TIMEOUT_MS,
      });
      answer = reply.json();
    } catch (err) {
      throw new AppError('AGENT_OFFLINE', 'the replica holding the agent did not answer', {
        cause: err,
        details: { unanswered: true },
      });
    }
    if (!answer.ok) {
      const code = isErrorCode(answer.code) ? answer.code : 'AGENT_OFFLINE';
      throw new AppError(code, answer.message ?? 'the replica holding the agent refused the link');
    }
    try {
      await peer.whenReady;
    } catch (err) {
      throw new AppError('AGENT_OFFLINE', 'the link to the replica holding the agent failed', { cause: err });
    }
    if (!link.client) throw new AppError('AGENT_OFFLINE', 'the link to the replica holding the agent failed');
    return link.client;
  }

  #closeOutgoing(link: OutgoingLink, reason: string): void {
    if (this.#outgoing.get(link.key) === link) this.#outgoing.delete(link.key);
    if (link.closed) return;
    link.closed = true;
    if (link.peer && !link.peer.isClosed) link.peer.close(CLOSE_CODE.NORMAL, reason, END_REASON.SHUTDOWN);
    else link.transport?.close(CLOSE_CODE.NORMAL, reason);
  }

  #sweep(): void {
    const now = Date.now();
    const idleMs = this.#options.idleMs ?? DEFAULT_LINK_IDLE_MS;
    for (const link of [...this.#outgoing.values()]) {
      const holder = this.#options.holderOf(link.agentId);
      if (!this.#options.isAlive(link.replicaId)) {
        // The holder is gone: its streams cannot finish.
        link.transport?.cut('the replica holding the agent is gone');
        this.#closeOutgoing(link, 'the replica holding the agent is gone');
        continue;
      }
      const active = link.peer?.stats().activeStreams ?? 0;
      if (active > 0) {
        link.idleSince = now;
        continue;
      }
      if (holder?.replicaId !== link.replicaId || now - link.idleSince > idleMs) {
        this.#closeOutgoing(link, 'idle');
      }
    }
  }

  // ---- the replica holding the agent (Y) -----------------------------------

  #accept(nc: NatsConnection, message: Msg): void {
    let request: LinkRequest;
    try {
      request = message.json<LinkRequest>();
    } catch {
      return;
    }
    const refuse = (code: string, text: string) =>
      message.respond(JSON.stringify({ ok: false, code, message: text }));
    if (this.#closed) {
      refuse('AGENT_OFFLINE', 'the replica is shutting down');
      return;
    }
    if (typeof request.linkId !== 'string' || !/^[0-9a-f]{32}$/.test(request.linkId)) {
      refuse('PROTOCOL_ERROR', 'malformed link request');
      return;
    }
    if (!this.#options.bridgeFor(request.agentId)) {
      refuse('AGENT_OFFLINE', 'the agent is not connected to this replica');
      return;
    }
    const transport = new NatsFrameTransport({ nc, linkId: request.linkId, side: 'b' });
    const logger = this.#logger.child({
      agentId: request.agentId,
      fromReplica: request.from,
      linkId: request.linkId,
    });
    const link: IncomingLink = {
      linkId: request.linkId,
      agentId: request.agentId,
      transport,
      peer: null as unknown as RelayPeer,
    };
    // Answer first: the hello that the peer sends at once must find the other side subscribed (it is).
    message.respond(JSON.stringify({ ok: true }));
    link.peer = new RelayPeer({
      transport,
      role: 'initiator',
      logger,
      software: VERSION,
      // Heads pass unchanged to the agent's connection: a certificate named by fingerprint would not be kept there.
      capabilities: DEFAULT_CAPABILITIES.filter((c) => c !== CAPABILITY.PIN_ONCE),
      limits: { maxFrameBytes: LINK_MAX_FRAME_BYTES },
      keepalive: { intervalMs: this.#options.keepaliveMs ?? DEFAULT_LINK_KEEPALIVE_MS, maxMissed: 2 },
      offlineCode: 'AGENT_OFFLINE',
      streams: (context) => [new ForwardingHandler(context, () => this.#options.bridgeFor(request.agentId))],
      onClosed: () => this.#incoming.delete(request.linkId),
    });
    this.#incoming.set(request.linkId, link);
  }
}

/** Envelopes from the agent that end a stream. */
const TERMINAL_FROM_AGENT: ReadonlySet<EnvelopeCase> = new Set(['end', 'error', 'discoverResult']);
/** Envelopes from the caller that end a stream. */
const TERMINAL_FROM_CALLER: ReadonlySet<EnvelopeCase> = new Set(['cancel', 'error']);

/**
 * On the holding replica: every stream the calling replica opens becomes a
 * bridged stream on the agent's connection, envelopes passing unchanged but
 * for the stream id.
 */
export class ForwardingHandler implements StreamHandler {
  readonly opens: readonly EnvelopeCase[] = ['discoverRequest', 'requestHead'];
  readonly #context: StreamContext;
  readonly #bridge: () => AgentStreamBridge | null;
  readonly #streams = new Map<number, BridgedStream>();
  #closed = false;

  constructor(context: StreamContext, bridge: () => AgentStreamBridge | null) {
    this.#context = context;
    this.#bridge = bridge;
  }

  has(streamId: number): boolean {
    return this.#streams.has(streamId);
  }

  streamIds(): Iterable<number> {
    return this.#streams.keys();
  }

  receive(envelope: Envelope): void {
    if (this.#closed) return;
    const id = envelope.streamId;
    const stream = this.#streams.get(id);
    if (!stream) {
      this.#open(envelope);
      return;
    }
    try {
      stream.send(envelope.payload);
    } catch (err) {
      this.#fail(id, err);
      return;
    }
    if (TERMINAL_FROM_CALLER.has(envelope.payload.case)) this.#forget(id);
  }

  reset(streamId: number, error: AppError): void {
    const stream = this.#streams.get(streamId);
    if (!stream) return;
    this.#cancelAtAgent(stream);
    this.#forget(streamId);
    this.#reply(errorEnvelope(streamId, error));
  }

  close(_error: AppError): void {
    if (this.#closed) return;
    this.#closed = true;
    // The caller is gone: the agent stops at once.
    for (const stream of this.#streams.values()) {
      this.#cancelAtAgent(stream);
      stream.release();
    }
    this.#streams.clear();
  }

  #open(envelope: Envelope): void {
    const id = envelope.streamId;
    const bridge = this.#bridge();
    if (!bridge) {
      this.#reply(errorEnvelope(id, new AppError('AGENT_OFFLINE', 'the agent left this replica')));
      return;
    }
    const stream = bridge.open({
      envelope: (payload) => {
        if (!this.#streams.has(id)) return;
        this.#reply({ streamId: id, payload });
        if (TERMINAL_FROM_AGENT.has(payload.case)) this.#forget(id);
      },
      failed: (error) => {
        if (!this.#streams.has(id)) return;
        this.#forget(id);
        this.#reply(errorEnvelope(id, error));
      },
    });
    this.#streams.set(id, stream);
    try {
      stream.send(envelope.payload);
    } catch (err) {
      this.#fail(id, err);
    }
  }

  #fail(id: number, err: unknown): void {
    this.#forget(id);
    this.#reply(
      errorEnvelope(id, err instanceof AppError ? err : new AppError('AGENT_OFFLINE', 'the agent left')),
    );
  }

  #forget(id: number): void {
    const stream = this.#streams.get(id);
    if (!stream) return;
    stream.release();
    this.#streams.delete(id);
  }

  #cancelAtAgent(stream: BridgedStream): void {
    try {
      stream.send({ case: 'cancel', value: {} });
    } catch {
      // The agent's connection is gone already.
    }
  }

  #reply(envelope: Envelope): void {
    try {
      this.#context.send(envelope);
    } catch {
      // The link is closing; its streams end with it.
    }
  }
}
