/**
 * Who is in the cluster and who holds which agent, kept in NATS key-value
 * buckets (`P2PSTREAM_NATS_URL`), so every replica knows where an agent is.
 *
 * - `p2pstream_replicas`: one key per replica, put every `heartbeatMs`
 *   (default 2 s) with its start time and agent count; the bucket's TTL drops
 *   a dead replica's key. A replica counts as alive while its last heartbeat
 *   (the entry's server timestamp) is younger than `replicaTtlMs` (10 s): KV
 *   expiry sends watchers nothing, so each replica judges age itself.
 * - `p2pstream_agents`: one key per agent and replica holding it
 *   (`<agentId>.<replicaId>`; an agent may keep connections to two) → its
 *   session. Valid while that replica is alive, so presence costs one
 *   heartbeat per replica, not per agent; the holder deletes its key when the
 *   session ends and refreshes its keys well within the bucket's TTL (15 min).
 *   A draining replica (stopping) is chosen only when no other holds the agent.
 *
 * Both buckets are watched: each replica has the whole picture in memory,
 * kept small, as most of it is other replicas' agents: per agent its id (a
 * flat string of its own) and, per replica holding it, the replica's id (one
 * shared string per replica) and the session's start (a number).
 * While NATS is unreachable (`busConnected` false) the picture is stale: the
 * server stops taking agents (see Hub.pause) and says so in system info.
 */
import { type KV, Kvm, type KvWatchEntry } from '@nats-io/kv';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import type { Logger } from '../logger.js';

export const REPLICAS_BUCKET = 'p2pstream_replicas';
export const AGENTS_BUCKET = 'p2pstream_agents';
export const DEFAULT_HEARTBEAT_MS = 2000;
export const DEFAULT_REPLICA_TTL_MS = 10_000;
export const DEFAULT_AGENT_ENTRY_TTL_MS = 15 * 60_000;
export const DEFAULT_AGENT_REFRESH_MS = 5 * 60_000;

export interface ClusterPresenceOptions {
  /** `nats://host:port` (comma-separated for several servers). */
  url: string;
  replicaId: string;
  version: string;
  /** When this replica started (ms since the epoch). */
  startedAt: number;
  /** Agents this replica holds right now. */
  agentsConnected: () => number;
  logger: Logger;
  /** Called when the link to NATS goes down (false) or comes back (true). */
  onBusState?: (connected: boolean) => void;
  heartbeatMs?: number;
  replicaTtlMs?: number;
  agentEntryTtlMs?: number;
  agentRefreshMs?: number;
  now?: () => number;
}

/** A replica as the control plane's views show it. */
export interface ReplicaView {
  id: string;
  version: string;
  startedAt: string;
  uptimeSeconds: number;
  agentsConnected: number;
  lastHeartbeatAt: string;
  /** This process. */
  self: boolean;
}

/** Where an agent is held. */
export interface AgentHolder {
  replicaId: string;
  connectedAt: string;
}

/** An agent's key's value: the session a replica holds it with. */
interface AgentClaimValue {
  replicaId: string;
  sessionId: string;
  connectedAt: string;
}

/** One replica holding an agent, as the picture keeps it. */
class Claim {
  constructor(
    readonly replicaId: string,
    readonly connectedAtMs: number,
  ) {}

  toHolder(): AgentHolder {
    return { replicaId: this.replicaId, connectedAt: new Date(this.connectedAtMs).toISOString() };
  }
}

/**
 * A flat copy of `text`: a key sliced from a NATS subject would otherwise
 * keep the whole subject alive for as long as the picture keeps the key.
 */
function flatCopy(text: string): string {
  const holder: Record<string, true> = { [text]: true };
  for (const key in holder) return key;
  return text;
}

interface Heartbeat {
  id: string;
  version: string;
  startedAt: number;
  agentsConnected: number;
  /** Stopping: finishing its streams, taking no new calls. */
  draining?: boolean;
}

interface HeldAgent {
  sessionId: string;
  connectedAt: string;
  revision: number | null;
  putAt: number;
}

/** An agent's key: one per replica holding it (`<agentId>.<replicaId>`). */
function agentKey(agentId: string, replicaId: string): string {
  return `${agentId}.${replicaId}`;
}

export class ClusterPresence {
  readonly replicaId: string;
  readonly #options: ClusterPresenceOptions;
  readonly #logger: Logger;
  readonly #now: () => number;
  readonly #heartbeatMs: number;
  readonly #replicaTtlMs: number;
  readonly #replicas = new Map<string, { beat: Heartbeat; at: number }>();
  /** Agent id → the replica holding it, or the replicas (an agent may keep connections to two). */
  readonly #agents = new Map<string, Claim | Claim[]>();
  /** Each replica id once, shared by every claim of that replica. */
  readonly #replicaIds = new Map<string, string>();
  /** Agents this replica holds, as it announced them. */
  readonly #held = new Map<string, HeldAgent>();
  #nc: NatsConnection | null = null;
  #replicasKv: KV | null = null;
  #agentsKv: KV | null = null;
  #watchers: Array<{ stop(): void }> = [];
  #timer: ReturnType<typeof setInterval> | null = null;
  #connected = false;
  #closed = false;
  #opening: Promise<void> | null = null;
  #draining = false;

  private constructor(options: ClusterPresenceOptions) {
    this.#options = options;
    this.replicaId = options.replicaId;
    this.#logger = options.logger;
    this.#now = options.now ?? Date.now;
    this.#heartbeatMs = options.heartbeatMs ?? DEFAULT_HEARTBEAT_MS;
    this.#replicaTtlMs = options.replicaTtlMs ?? DEFAULT_REPLICA_TTL_MS;
  }

  /**
   * Connects to NATS (retrying for ever in the background when it is not
   * reachable yet: the server starts anyway, with `busConnected` false).
   */
  static start(options: ClusterPresenceOptions): ClusterPresence {
    const presence = new ClusterPresence(options);
    presence.#opening = presence.#connect();
    presence.#timer = setInterval(() => presence.#tick(), presence.#heartbeatMs);
    presence.#timer.unref();
    return presence;
  }

  /** Resolves once the first connection is up and the picture loaded (for tests and start-up logs). */
  async ready(): Promise<void> {
    await this.#opening;
  }

  /** True while the link to NATS is up and the buckets are watched. */
  get busConnected(): boolean {
    return this.#connected;
  }

  /** The live connection, for the relay link between replicas; null while down. */
  get connection(): NatsConnection | null {
    return this.#connected ? this.#nc : null;
  }

  /** Alive replicas (this one always included), oldest first. */
  replicas(): ReplicaView[] {
    const now = this.#now();
    const views: ReplicaView[] = [];
    for (const [id, { beat, at }] of this.#replicas) {
      if (id === this.replicaId || now - at > this.#replicaTtlMs) continue;
      views.push(this.#view(beat, at, false));
    }
    views.push(this.#view(this.#ownBeat(), now, true));
    return views.sort((a, b) => a.startedAt.localeCompare(b.startedAt) || a.id.localeCompare(b.id));
  }

  /**
   * This replica is stopping: its heartbeat says so at once, and the others
   * stop sending it new calls for agents another replica also holds.
   */
  async drain(): Promise<void> {
    this.#draining = true;
    if (this.#connected) await this.#beat().catch(() => {});
  }

  /** True when the replica's last heartbeat is recent (this one: always). */
  isAlive(replicaId: string): boolean {
    if (replicaId === this.replicaId) return true;
    const seen = this.#replicas.get(replicaId);
    return seen !== undefined && this.#now() - seen.at <= this.#replicaTtlMs;
  }

  /**
   * A live replica holding the agent, null when none: this one when it does
   * (unless it is draining and another holds the agent too), else one that is
   * not draining (a draining one as a last resort).
   */
  holderOf(agentId: string, exclude?: ReadonlySet<string>): AgentHolder | null {
    const held = this.#held.get(agentId);
    const own = held ? { replicaId: this.replicaId, connectedAt: held.connectedAt } : null;
    if (own && !this.#draining) return own;
    const claims = this.#agents.get(agentId);
    if (claims === undefined) return own;
    let fallback: Claim | null = null;
    for (const claim of Array.isArray(claims) ? claims : [claims]) {
      const replicaId = claim.replicaId;
      if (replicaId === this.replicaId || !this.isAlive(replicaId)) continue;
      if (exclude?.has(replicaId)) continue;
      if (!this.#replicas.get(replicaId)?.beat.draining) return claim.toHolder();
      fallback ??= claim;
    }
    return own ?? fallback?.toHolder() ?? null;
  }

  /** Announces that this replica now holds the agent. */
  agentConnected(agentId: string, sessionId: string, connectedAt: string): void {
    const held: HeldAgent = { sessionId, connectedAt, revision: null, putAt: this.#now() };
    this.#held.set(agentId, held);
    this.#putAgent(agentId, held);
  }

  /** Withdraws the announcement, unless another replica has claimed the agent meanwhile. */
  agentDisconnected(agentId: string, sessionId: string): void {
    const held = this.#held.get(agentId);
    if (!held || held.sessionId !== sessionId) return;
    this.#held.delete(agentId);
    const kv = this.#agentsKv;
    if (!kv || !this.#connected) return;
    const options = held.revision === null ? {} : { previousSeq: held.revision };
    kv.delete(agentKey(agentId, this.replicaId), options).catch(() => {
      // A newer session of the agent here wrote the key since, or the bus is down: nothing to undo.
    });
  }

  /** Stops heartbeats, withdraws this replica and its agents, and closes the connection. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#timer) clearInterval(this.#timer);
    const nc = this.#nc;
    if (nc && this.#connected) {
      await Promise.allSettled([
        this.#replicasKv?.delete(this.replicaId),
        ...[...this.#held.keys()].map((agentId) => this.#agentsKv?.delete(agentKey(agentId, this.replicaId))),
      ]);
    }
    for (const watcher of this.#watchers) watcher.stop();
    this.#watchers = [];
    this.#connected = false;
    await nc?.close().catch(() => {});
    await this.#opening?.catch(() => {});
  }

  #ownBeat(): Heartbeat {
    return {
      id: this.replicaId,
      version: this.#options.version,
      startedAt: this.#options.startedAt,
      agentsConnected: this.#options.agentsConnected(),
      ...(this.#draining ? { draining: true } : {}),
    };
  }

  #view(beat: Heartbeat, at: number, self: boolean): ReplicaView {
    return {
      id: beat.id,
      version: beat.version,
      startedAt: new Date(beat.startedAt).toISOString(),
      uptimeSeconds: Math.max(0, Math.floor((this.#now() - beat.startedAt) / 1000)),
      agentsConnected: beat.agentsConnected,
      lastHeartbeatAt: new Date(at).toISOString(),
      self,
    };
  }

  async #connect(): Promise<void> {
    const nc = await connect({
      servers: this.#options.url.split(',').map((s) => s.trim()),
      name: `p2pstream-${this.replicaId}`,
      waitOnFirstConnect: true,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 500,
      pingInterval: 5000,
      maxPingOut: 2,
    });
    if (this.#closed) {
      await nc.close();
      return;
    }
    this.#nc = nc;
    this.#watchStatus(nc);
    await this.#openBuckets();
  }

  async #openBuckets(): Promise<void> {
    const nc = this.#nc;
    if (!nc || this.#closed) return;
    const kvm = new Kvm(nc);
    // Each replica's key outlives a few missed heartbeats; agents' keys are refreshed well within their TTL.
    this.#replicasKv = await kvm.create(REPLICAS_BUCKET, { history: 1, ttl: this.#replicaTtlMs * 3 });
    this.#agentsKv = await kvm.create(AGENTS_BUCKET, {
      history: 1,
      ttl: this.#options.agentEntryTtlMs ?? DEFAULT_AGENT_ENTRY_TTL_MS,
    });
    for (const watcher of this.#watchers) watcher.stop();
    this.#replicas.clear();
    this.#agents.clear();
    const replicasWatch = await this.#replicasKv.watch();
    const agentsWatch = await this.#agentsKv.watch();
    this.#watchers = [replicasWatch, agentsWatch];
    void this.#consume(replicasWatch, (entry) => this.#onReplicaEntry(entry));
    void this.#consume(agentsWatch, (entry) => this.#onAgentEntry(entry));
    await this.#beat();
    // Announce again what this replica holds: the keys may have expired while the bus was away.
    for (const [agentId, held] of this.#held) this.#putAgent(agentId, held);
    this.#setConnected(true);
  }

  async #consume(watch: AsyncIterable<KvWatchEntry>, apply: (entry: KvWatchEntry) => void): Promise<void> {
    try {
      for await (const entry of watch) apply(entry);
    } catch (err) {
      if (!this.#closed) this.#logger.warn({ err }, 'cluster watch ended');
    }
  }

  #onReplicaEntry(entry: KvWatchEntry): void {
    if (entry.operation !== 'PUT') {
      this.#replicas.delete(entry.key);
      return;
    }
    try {
      const beat = entry.json<Heartbeat>();
      this.#replicas.set(entry.key, { beat, at: Math.min(entry.created.getTime(), this.#now()) });
    } catch {
      // A value that is not ours: ignored.
    }
  }

  #onAgentEntry(entry: KvWatchEntry): void {
    const dot = entry.key.lastIndexOf('.');
    if (dot <= 0) return;
    const agentId = entry.key.slice(0, dot);
    const replicaId = entry.key.slice(dot + 1);
    if (entry.operation !== 'PUT') {
      this.#unclaim(agentId, replicaId);
      return;
    }
    let value: AgentClaimValue;
    try {
      value = entry.json<AgentClaimValue>();
    } catch {
      return; // A value that is not ours: ignored.
    }
    const connectedAtMs = Date.parse(value.connectedAt);
    if (value.replicaId !== replicaId || Number.isNaN(connectedAtMs)) return;
    this.#claim(agentId, new Claim(this.#replicaId(replicaId), connectedAtMs));
    const held = this.#held.get(agentId);
    if (held && replicaId === this.replicaId && value.sessionId === held.sessionId)
      held.revision = entry.revision;
  }

  #claim(agentId: string, claim: Claim): void {
    const claims = this.#agents.get(agentId);
    if (claims === undefined) {
      this.#agents.set(flatCopy(agentId), claim);
      return;
    }
    const list = Array.isArray(claims) ? claims : [claims];
    const at = list.findIndex((c) => c.replicaId === claim.replicaId);
    if (at >= 0) list[at] = claim;
    else list.push(claim);
    this.#agents.set(agentId, list.length === 1 ? list[0]! : list);
  }

  #unclaim(agentId: string, replicaId: string): void {
    const claims = this.#agents.get(agentId);
    if (claims === undefined) return;
    const rest = (Array.isArray(claims) ? claims : [claims]).filter((c) => c.replicaId !== replicaId);
    if (rest.length === 0) this.#agents.delete(agentId);
    else this.#agents.set(agentId, rest.length === 1 ? rest[0]! : rest);
  }

  /** The one copy of a replica id (those of gone replicas are dropped with their last claim). */
  #replicaId(replicaId: string): string {
    let id = this.#replicaIds.get(replicaId);
    if (id === undefined) {
      if (this.#replicaIds.size >= 64) this.#pruneReplicaIds();
      id = flatCopy(replicaId);
      this.#replicaIds.set(id, id);
    }
    return id;
  }

  #pruneReplicaIds(): void {
    const used = new Set<string>();
    for (const claims of this.#agents.values()) {
      for (const claim of Array.isArray(claims) ? claims : [claims]) used.add(claim.replicaId);
    }
    for (const id of this.#replicaIds.keys()) if (!used.has(id)) this.#replicaIds.delete(id);
  }

  #putAgent(agentId: string, held: HeldAgent): void {
    const kv = this.#agentsKv;
    if (!kv || !this.#connected) return;
    held.putAt = this.#now();
    const holder: AgentClaimValue = {
      replicaId: this.replicaId,
      sessionId: held.sessionId,
      connectedAt: held.connectedAt,
    };
    kv.put(agentKey(agentId, this.replicaId), JSON.stringify(holder)).then(
      (revision) => {
        if (this.#held.get(agentId) === held) held.revision = revision;
      },
      (err: unknown) => this.#logger.debug({ err, agentId }, 'agent presence not announced'),
    );
  }

  async #beat(): Promise<void> {
    const kv = this.#replicasKv;
    if (!kv) return;
    await kv.put(this.replicaId, JSON.stringify(this.#ownBeat()));
  }

  #tick(): void {
    if (!this.#connected || this.#closed) return;
    this.#beat().catch((err: unknown) => this.#logger.debug({ err }, 'cluster heartbeat failed'));
    const refreshMs = this.#options.agentRefreshMs ?? DEFAULT_AGENT_REFRESH_MS;
    const now = this.#now();
    // Spread the refresh: at most a slice of the held agents per tick.
    const budget = Math.max(50, Math.ceil((this.#held.size * this.#heartbeatMs) / refreshMs) * 2);
    let spent = 0;
    for (const [agentId, held] of this.#held) {
      if (spent >= budget) break;
      if (now - held.putAt < refreshMs) continue;
      this.#putAgent(agentId, held);
      spent += 1;
    }
  }

  #watchStatus(nc: NatsConnection): void {
    void (async () => {
      for await (const status of nc.status()) {
        if (this.#closed) return;
        if (status.type === 'disconnect') {
          this.#setConnected(false);
        } else if (status.type === 'reconnect') {
          this.#openBuckets().catch((err: unknown) => {
            this.#logger.warn({ err }, 'cluster buckets could not be reopened after a reconnect');
          });
        }
      }
    })().catch(() => {});
  }

  #setConnected(connected: boolean): void {
    if (this.#connected === connected) return;
    this.#connected = connected;
    this.#logger[connected ? 'info' : 'warn'](
      { replicaId: this.replicaId },
      connected ? 'cluster bus connected' : 'cluster bus lost: this replica takes no agents until it is back',
    );
    this.#options.onBusState?.(connected);
  }
}
