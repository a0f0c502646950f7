/**
 * The agent registry (docs/security.md "API tokens and agent credentials"):
 * agents, their `p2pag_` credentials (shown once on create and rotate, stored
 * as a SHA-256 hash) and their sessions. Live presence (which agent is
 * connected right now) is kept in memory and reported by the hub through
 * `sessionStarted`/`sessionEnded`; the recent sessions are persisted in
 * `connections`.
 *
 * Errors: VALIDATION_FAILED, CONFLICT (name taken), AGENT_NOT_FOUND,
 * UNAUTHENTICATED (a session whose credential was revoked meanwhile).
 */
import { AppError } from '../errors.js';
import type { Logger } from '../logger.js';
import type { AgentConnectionRecord, AgentRecord } from '../storage/schema.js';
import type { Store } from '../storage/store.js';
import type { AgentPresence } from './cluster-types.js';
import { constantTimeEqual, hashSecret, isId, newId, newSecret } from './ids.js';
import { RecordIndex } from './record-index.js';
import {
  invalid,
  optionalBoolean,
  rejectUnknownFields,
  requireBoolean,
  requireName,
  requireObject,
} from './validate.js';

export const AGENT_TOKEN_PREFIX = 'p2pag_';
const AGENT_TOKEN_SHAPE = /^p2pag_[A-Za-z0-9_-]{43}$/;
/** Label keys under this prefix are reserved for p2pstream itself. */
export const RESERVED_LABEL_PREFIX = 'p2pstream.io/';
export const MAX_LABELS = 64;
export const MAX_LABEL_KEY_LENGTH = 128;
export const MAX_LABEL_VALUE_LENGTH = 256;
/** How many recent sessions an agent keeps in `connections` (oldest dropped first). */
export const DEFAULT_MAX_AGENT_CONNECTIONS = 20;
/** A live agent's `lastSeenAt` is persisted at most this often (it is always current in answers). */
export const LAST_SEEN_WRITE_INTERVAL_MS = 60_000;

/** One session of an agent, as shown in `connections` (newest last). */
export interface AgentConnection {
  id: string;
  startedAt: string;
  endedAt: string | null;
  remoteAddress: string | null;
  version: string | null;
  endReason: string | null;
  /** Streams closed as leaked by stream reconciliation during the session (both sides). */
  leakedStreams: number;
}

/** An inclusive range of relay protocol versions. */
export interface ProtocolRange {
  min: number;
  max: number;
}

/** The relay protocol as last negotiated with the agent, or why its last handshake was refused. */
export interface AgentProtocol {
  /** The version in use, or null when the last handshake was refused. */
  version: number | null;
  agentVersions: ProtocolRange;
  controlPlaneVersions: ProtocolRange;
  /** E.g. "the agent speaks v1–v1, the control plane v2–v3"; null once a session started. */
  refusal: string | null;
  at: string;
}

/** The public view of an agent (never the token or its hash). */
export interface Agent {
  id: string;
  name: string;
  enabled: boolean;
  labels: Record<string, string>;
  status: 'connected' | 'offline';
  /** Start of the live session, or null when offline. */
  connectedAt: string | null;
  /** The control-plane replica holding the live session (null when offline, or without replicas). */
  replicaId: string | null;
  lastSeenAt: string | null;
  remoteAddress: string | null;
  version: string | null;
  /** The relay protocol of the last handshake (null before the first). */
  protocol: AgentProtocol | null;
  /** Streams closed as leaked over the recent sessions (see `connections`). */
  leakedStreams: number;
  connections: AgentConnection[];
  createdAt: string;
  updatedAt: string;
}

/** Why a live agent must be dropped at once. */
export type AgentRevocationReason = 'disabled' | 'rotated' | 'deleted';

/** What an authenticated upgrade proved: the agent and its token generation at that moment. */
export interface AgentCredential {
  agentId: string;
  generation: number;
}

/** The outcome of checking agent credentials; `reason` is for logs only, never for the caller. */
export type AgentAuthResult =
  | { ok: true; credential: AgentCredential }
  | { ok: false; reason: 'malformed' | 'unknown-agent' | 'wrong-token' | 'disabled' };

export interface AgentServiceOptions {
  store: Store;
  now?: () => number;
  /** Default {@link DEFAULT_MAX_AGENT_CONNECTIONS}. */
  maxConnections?: number;
  /**
   * The replica this service runs in, recorded on each session it starts, so
   * that at start-up it closes only the sessions it left open (replicas
   * sharing a database each hold their own agents). Default null.
   */
  replicaId?: string | null;
  /** Where agents held by other replicas are (cluster presence); without it only this process's count. */
  presence?: AgentPresence;
  /** Where a failing revocation listener is reported. */
  logger?: Logger;
}

interface LiveSession {
  sessionId: string;
  connectedAt: string;
  lastSeenAt: number;
  lastSeenWrittenAt: number;
}

/** True when the value has the shape of an agent token. */
export function looksLikeAgentToken(value: string): boolean {
  return AGENT_TOKEN_SHAPE.test(value);
}

/**
 * Checks a labels object: at most {@link MAX_LABELS} entries, keys 1–128
 * characters without whitespace or control characters and not under
 * `p2pstream.io/`, string values of at most 256 characters. VALIDATION_FAILED.
 */
export function parseLabels(value: unknown): Record<string, string> {
  if (value === undefined || value === null) return {};
  if (typeof value !== 'object' || Array.isArray(value)) {
    throw invalid('labels', 'must be an object of string values');
  }
  const entries = Object.entries(value as Record<string, unknown>);
  if (entries.length > MAX_LABELS) throw invalid('labels', `must have at most ${MAX_LABELS} entries`);
  const labels: Record<string, string> = {};
  for (const [key, raw] of entries) {
    if (key.length < 1 || key.length > MAX_LABEL_KEY_LENGTH) {
      throw invalid('labels', `keys must be 1 to ${MAX_LABEL_KEY_LENGTH} characters`);
    }
    // biome-ignore lint/suspicious/noControlCharactersInRegex: refusing them is the point
    if (/[\s\u0000-\u001f\u007f-\u009f]/.test(key)) {
      throw invalid('labels', 'keys must not contain whitespace or control characters');
    }
    if (key.toLowerCase().startsWith(RESERVED_LABEL_PREFIX)) {
      throw invalid('labels', `keys under ${RESERVED_LABEL_PREFIX} are reserved`);
    }
    if (typeof raw !== 'string') throw invalid('labels', `the value of "${key}" must be a string`);
    if (raw.length > MAX_LABEL_VALUE_LENGTH) {
      throw invalid('labels', `values must be at most ${MAX_LABEL_VALUE_LENGTH} characters`);
    }
    // biome-ignore lint/suspicious/noControlCharactersInRegex: refusing them is the point
    if (/[\u0000-\u001f\u007f-\u009f]/.test(raw)) {
      throw invalid('labels', 'values must not contain control characters');
    }
    Object.defineProperty(labels, key, { value: raw, enumerable: true, writable: true, configurable: true });
  }
  return labels;
}

/** The record of a new agent: its token stored as a hash, never connected yet. */
export function newAgentRecord(fields: {
  id: string;
  name: string;
  enabled: boolean;
  labels: Record<string, string>;
  token: string;
  /** ISO time of creation. */
  at: string;
}): AgentRecord {
  return {
    id: fields.id,
    name: fields.name,
    enabled: fields.enabled,
    labels: fields.labels,
    tokenHash: hashSecret(fields.token),
    tokenGeneration: 1,
    lastSeenAt: null,
    remoteAddress: null,
    version: null,
    connections: [],
    createdAt: fields.at,
    updatedAt: fields.at,
  };
}

export class AgentService {
  readonly #store: Store;
  readonly #now: () => number;
  readonly #maxConnections: number;
  readonly #replicaId: string | null;
  readonly #presence: AgentPresence | null;
  readonly #live = new Map<string, LiveSession>();
  readonly #logger: Logger | undefined;
  readonly #revocationListeners = new Set<(agentId: string, reason: AgentRevocationReason) => void>();
  /** Agents by id: every upgrade and every revalidation looks agents up, among thousands. */
  readonly #index = new RecordIndex<AgentRecord>();

  constructor(options: AgentServiceOptions) {
    this.#store = options.store;
    this.#logger = options.logger;
    this.#now = options.now ?? Date.now;
    this.#maxConnections = options.maxConnections ?? DEFAULT_MAX_AGENT_CONNECTIONS;
    this.#replicaId = options.replicaId ?? null;
    this.#presence = options.presence ?? null;
  }

  list(): Agent[] {
    return this.#store.read().agents.map((record) => this.#toAgent(record));
  }

  /** One agent; AGENT_NOT_FOUND. */
  get(id: string): Agent {
    return this.#toAgent(this.#find(id));
  }

  /** The agent's current labels (not a copy: do not change them), or null when there is no such agent. */
  labelsOf(id: string): Readonly<Record<string, string>> | null {
    return this.#byId(this.#store.read().agents, id)?.labels ?? null;
  }

  /** True when an agent with this id exists (for other services' references). */
  exists(id: string): boolean {
    return isId(id) && this.#byId(this.#store.read().agents, id) !== undefined;
  }

  /** Creates an agent `{name, labels?, enabled?}`; the raw token is returned once and never stored. */
  async create(body: unknown): Promise<{ agent: Agent; token: string }> {
    const input = requireObject(body);
    rejectUnknownFields(input, ['name', 'labels', 'enabled']);
    const name = requireName(input.name);
    const labels = parseLabels(input.labels);
    const enabled = optionalBoolean(input.enabled, 'enabled', true);
    const token = newSecret(AGENT_TOKEN_PREFIX);
    const now = this.#isoNow();
    const record = newAgentRecord({ id: newId(), name, enabled, labels, token, at: now });
    await this.#store.update((db) => {
      assertNameFree(db.agents, name, null);
      db.agents.push(record);
    });
    return { agent: this.#toAgent(record), token };
  }

  /** Changes `name`, `enabled` and/or `labels` (replaced as a whole). Disabling drops a live agent. */
  async update(id: string, body: unknown): Promise<Agent> {
    const input = requireObject(body);
    rejectUnknownFields(input, ['name', 'enabled', 'labels']);
    const name = input.name === undefined ? undefined : requireName(input.name);
    const enabled = input.enabled === undefined ? undefined : requireBoolean(input.enabled, 'enabled');
    const labels = input.labels === undefined ? undefined : parseLabels(input.labels);
    this.#find(id);
    const now = this.#isoNow();
    let disabled = false;
    const record = await this.#store.update((db) => {
      const live = this.#byId(db.agents, id);
      if (!live) throw new AppError('AGENT_NOT_FOUND', 'no such agent');
      if (name !== undefined) assertNameFree(db.agents, name, id);
      if (name !== undefined) live.name = name;
      if (labels !== undefined) live.labels = labels;
      if (enabled !== undefined) {
        disabled = live.enabled && !enabled;
        live.enabled = enabled;
      }
      live.updatedAt = now;
      return live;
    });
    if (disabled) this.#revoke(id, 'disabled');
    return this.#toAgent(record);
  }

  /** Issues a new token; the old one stops working at once and a live agent is dropped. */
  async rotate(id: string): Promise<{ agent: Agent; token: string }> {
    this.#find(id);
    const token = newSecret(AGENT_TOKEN_PREFIX);
    const now = this.#isoNow();
    const record = await this.#store.update((db) => {
      const live = this.#byId(db.agents, id);
      if (!live) throw new AppError('AGENT_NOT_FOUND', 'no such agent');
      live.tokenHash = hashSecret(token);
      live.tokenGeneration += 1;
      live.updatedAt = now;
      return live;
    });
    this.#revoke(id, 'rotated');
    return { agent: this.#toAgent(record), token };
  }

  /** Deletes an agent; a live agent is dropped at once. */
  async remove(id: string): Promise<void> {
    this.#find(id);
    await this.#store.update((db) => {
      db.agents = db.agents.filter((a) => a.id !== id);
    });
    this.#live.delete(id);
    this.#revoke(id, 'deleted');
  }

  /**
   * Subscribes to revocations (disable, rotate, delete): the hub drops the
   * agent's live connection. Listeners run synchronously; returns an unsubscribe.
   */
  onRevoked(listener: (agentId: string, reason: AgentRevocationReason) => void): () => void {
    this.#revocationListeners.add(listener);
    return () => this.#revocationListeners.delete(listener);
  }

  /**
   * Checks an agent id and bearer token (constant-time hash comparison). Never
   * accepts anything but a well-formed `p2pag_` token of an enabled agent.
   */
  authenticate(agentId: string, bearer: string): AgentAuthResult {
    if (!isId(agentId) || !looksLikeAgentToken(bearer)) return { ok: false, reason: 'malformed' };
    const record = this.#byId(this.#store.read().agents, agentId);
    if (!record) return { ok: false, reason: 'unknown-agent' };
    if (!constantTimeEqual(hashSecret(bearer), record.tokenHash)) return { ok: false, reason: 'wrong-token' };
    if (!record.enabled) return { ok: false, reason: 'disabled' };
    return { ok: true, credential: { agentId, generation: record.tokenGeneration } };
  }

  /** True while the credential's agent exists, is enabled and has not been rotated since. */
  isCredentialCurrent(credential: AgentCredential): boolean {
    const record = this.#byId(this.#store.read().agents, credential.agentId);
    return record?.enabled === true && record.tokenGeneration === credential.generation;
  }

  /** Why a credential that is no longer current was revoked (for a session's end reason). */
  revocationReason(credential: AgentCredential): AgentRevocationReason {
    const record = this.#byId(this.#store.read().agents, credential.agentId);
    if (!record) return 'deleted';
    if (!record.enabled) return 'disabled';
    return 'rotated';
  }

  /**
   * Records the start of a session and marks the agent connected. Throws
   * UNAUTHENTICATED when the credential was revoked after the upgrade was
   * authenticated (a rotate racing a reconnect), so the old token never gets in.
   */
  async sessionStarted(
    credential: AgentCredential,
    info: {
      remoteAddress: string | null;
      version: string | null;
      /** The negotiated protocol: version and both ranges. */
      protocol?: { version: number; agentVersions: ProtocolRange; controlPlaneVersions: ProtocolRange };
    },
  ): Promise<AgentConnection> {
    if (!this.isCredentialCurrent(credential)) {
      throw new AppError('UNAUTHENTICATED', 'the agent credentials were revoked');
    }
    const nowMs = this.#now();
    const session: AgentConnectionRecord = {
      id: newId(),
      startedAt: new Date(nowMs).toISOString(),
      endedAt: null,
      remoteAddress: info.remoteAddress,
      version: info.version,
      endReason: null,
      ...(this.#replicaId === null ? {} : { replicaId: this.#replicaId }),
    };
    // The check and the change happen in one synchronous mutation, so no revocation slips in between.
    // Persisted soon rather than at once: a connect storm of thousands of agents then costs a few
    // writes of the document, not one each; a session lost in a crash is only missing history.
    this.#store.updateSoon(
      (db) => {
        const record = this.#byId(db.agents, credential.agentId);
        if (!record?.enabled || record.tokenGeneration !== credential.generation) {
          throw new AppError('UNAUTHENTICATED', 'the agent credentials were revoked');
        }
        record.connections.push(session);
        trimConnections(record, this.#maxConnections);
        record.lastSeenAt = session.startedAt;
        record.remoteAddress = info.remoteAddress;
        record.version = info.version;
        if (info.protocol) record.protocol = { ...info.protocol, refusal: null, at: session.startedAt };
        this.#live.set(credential.agentId, {
          sessionId: session.id,
          connectedAt: session.startedAt,
          lastSeenAt: nowMs,
          lastSeenWrittenAt: nowMs,
        });
      },
      { collection: 'agents', id: credential.agentId },
    );
    return toConnection(session);
  }

  /**
   * Records a handshake refused for protocol versions that do not meet (no
   * session starts): the agent's views show the refusal until a session does.
   */
  handshakeRefused(
    agentId: string,
    info: {
      remoteAddress: string | null;
      version: string | null;
      agentVersions: ProtocolRange;
      controlPlaneVersions: ProtocolRange;
      refusal: string;
    },
  ): void {
    const at = this.#isoNow();
    this.#store.updateSoon(
      (db) => {
        const record = this.#byId(db.agents, agentId);
        if (!record) return;
        record.remoteAddress = info.remoteAddress;
        record.version = info.version;
        record.lastSeenAt = at;
        record.protocol = {
          version: null,
          agentVersions: { ...info.agentVersions },
          controlPlaneVersions: { ...info.controlPlaneVersions },
          refusal: info.refusal.slice(0, 200),
          at,
        };
      },
      { collection: 'agents', id: agentId },
    );
  }

  /** Records how many streams of a session were closed as leaked so far (both sides). */
  sessionLeaks(agentId: string, sessionId: string, leakedStreams: number): void {
    this.#store.updateSoon(
      (db) => {
        const session = this.#byId(db.agents, agentId)?.connections.find((c) => c.id === sessionId);
        if (session) session.leakedStreams = leakedStreams;
      },
      { collection: 'agents', id: agentId },
    );
  }

  /** Notes that a live session was heard from (keepalive); persisted at most once a minute. */
  sessionSeen(agentId: string, sessionId: string): void {
    const live = this.#live.get(agentId);
    if (!live || live.sessionId !== sessionId) return;
    const now = this.#now();
    live.lastSeenAt = now;
    if (now - live.lastSeenWrittenAt < LAST_SEEN_WRITE_INTERVAL_MS) return;
    live.lastSeenWrittenAt = now;
    const at = new Date(now).toISOString();
    // Bookkeeping: persisted with the next write, never breaking a session.
    this.#store.updateSoon(
      (db) => {
        const record = this.#byId(db.agents, agentId);
        if (record) record.lastSeenAt = at;
      },
      { collection: 'agents', id: agentId },
    );
  }

  /** Records the end of a session; the agent goes offline unless a newer session replaced it. */
  async sessionEnded(agentId: string, sessionId: string, reason: string): Promise<void> {
    const live = this.#live.get(agentId);
    if (live?.sessionId === sessionId) this.#live.delete(agentId);
    const at = this.#isoNow();
    if (!this.#byId(this.#store.read().agents, agentId)) return;
    this.#store.updateSoon(
      (db) => {
        const record = this.#byId(db.agents, agentId);
        const session = record?.connections.find((c) => c.id === sessionId);
        if (!record || !session || session.endedAt !== null) return;
        session.endedAt = at;
        session.endReason = reason;
        record.lastSeenAt = at;
      },
      { collection: 'agents', id: agentId },
    );
  }

  /**
   * True while the agent has a live session. This registry is the one record
   * of agent presence: the hub, the relay's transport selection, the overview
   * and the agent views all read it.
   */
  isConnected(agentId: string): boolean {
    return this.#live.has(agentId);
  }

  /** Agents with a live session. */
  connectedCount(): number {
    return this.#live.size;
  }

  /**
   * Closes sessions left open by a crash (reason `restart`): those this
   * replica started, and untagged ones of older builds. Run once at start-up,
   * before the hub accepts agents. Returns how many were closed.
   */
  async closeOrphanSessions(): Promise<number> {
    const orphan = (agentId: string, c: AgentConnectionRecord) =>
      c.endedAt === null &&
      !this.#isLiveSession(agentId, c.id) &&
      (c.replicaId == null || c.replicaId === this.#replicaId);
    const open = this.#store.read().agents.some((a) => a.connections.some((c) => orphan(a.id, c)));
    if (!open) return 0;
    const at = this.#isoNow();
    return this.#store.update((db) => {
      let closed = 0;
      for (const record of db.agents) {
        for (const c of record.connections) {
          if (!orphan(record.id, c)) continue;
          c.endedAt = record.lastSeenAt ?? at;
          if (Date.parse(c.endedAt) < Date.parse(c.startedAt)) c.endedAt = c.startedAt;
          c.endReason = 'restart';
          closed += 1;
        }
      }
      return closed;
    });
  }

  #isLiveSession(agentId: string, sessionId: string): boolean {
    return this.#live.get(agentId)?.sessionId === sessionId;
  }

  #revoke(agentId: string, reason: AgentRevocationReason): void {
    for (const listener of this.#revocationListeners) {
      try {
        listener(agentId, reason);
      } catch (err) {
        // A failing listener must not undo the revocation, nor hide that a live agent may not have been cut.
        this.#logger?.error({ err, agentId, reason }, 'an agent revocation listener failed');
      }
    }
  }

  #toAgent(record: AgentRecord): Agent {
    const live = this.#live.get(record.id);
    const elsewhere = live ? null : (this.#presence?.holderOf(record.id) ?? null);
    return {
      id: record.id,
      name: record.name,
      enabled: record.enabled,
      labels: { ...record.labels },
      status: live || elsewhere ? 'connected' : 'offline',
      connectedAt: live?.connectedAt ?? elsewhere?.connectedAt ?? null,
      replicaId: live ? this.#replicaId : (elsewhere?.replicaId ?? null),
      lastSeenAt: live ? new Date(live.lastSeenAt).toISOString() : record.lastSeenAt,
      remoteAddress: record.remoteAddress,
      version: record.version,
      protocol: record.protocol
        ? {
            ...record.protocol,
            agentVersions: { ...record.protocol.agentVersions },
            controlPlaneVersions: { ...record.protocol.controlPlaneVersions },
          }
        : null,
      leakedStreams: record.connections.reduce((sum, c) => sum + (c.leakedStreams ?? 0), 0),
      connections: record.connections.map(toConnection),
      createdAt: record.createdAt,
      updatedAt: record.updatedAt,
    };
  }

  #find(id: string): AgentRecord {
    const record = isId(id) ? this.#byId(this.#store.read().agents, id) : undefined;
    if (!record) throw new AppError('AGENT_NOT_FOUND', 'no such agent');
    return record;
  }

  #byId(agents: readonly AgentRecord[], id: string): AgentRecord | undefined {
    return this.#index.get(agents, id);
  }

  #isoNow(): string {
    return new Date(this.#now()).toISOString();
  }
}

function trimConnections(record: AgentRecord, max: number): void {
  if (record.connections.length > max) record.connections.splice(0, record.connections.length - max);
}

function assertNameFree(agents: AgentRecord[], name: string, exceptId: string | null): void {
  if (agents.some((a) => a.name === name && a.id !== exceptId)) {
    throw new AppError('CONFLICT', `an agent named "${name}" already exists`, { details: { field: 'name' } });
  }
}

function toConnection(record: AgentConnectionRecord): AgentConnection {
  return { ...record, leakedStreams: record.leakedStreams ?? 0 };
}
