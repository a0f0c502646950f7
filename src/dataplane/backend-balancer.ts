/**
 * Backends (docs/pipeline.md "Backend targets"): picks the member of a backend
 * that serves a request and keeps each member's health.
 *
 * Algorithms, among the members that are usable (healthy or not yet checked,
 * and not ejected):
 * - `round_robin`: each in turn;
 * - `weighted_round_robin`: smooth weighted round robin (a member of weight 3
 *   serves three requests of every `sum of weights`, spread out);
 * - `least_active`: fewest requests in flight per unit of weight;
 * - `consistent_hash`: weighted rendezvous hashing of the key (client ip, a
 *   header or the path) — a member leaving moves only the keys it had.
 *
 * Health: a member's requests that fail to reach it (refused, reset, timed
 * out) count as consecutive failures; `passive.failures` of them eject it for
 * `passive.ejectSeconds`. Active checks (run by {@link BackendBalancer.startChecks})
 * move a member to `unhealthy` after `unhealthyThreshold` failed checks and
 * back after `healthyThreshold` good ones. Transitions are logged.
 *
 * Agent members: a member naming an agent (`agentId`) or a label selector
 * (`agentLabels`) is usable while at least one matching agent is connected
 * and carries tunnels (the {@link AgentDirectory}); each request goes to the
 * matching agent with the fewest tunnels open (ties in turn; under
 * `consistent_hash`, rendezvous over the matching agents, so a key keeps its
 * agent). The lease then names the agent and its tunnel dispatcher. With no
 * matching agent connected the member reads `unhealthy` ("no connected agent
 * matches") and is skipped; a backend with nothing usable answers 503.
 * Active checks are the control plane's for upstream members only.
 *
 * Active checks go through the data plane's own upstream dispatcher, so an
 * https member is verified exactly as the requests it serves are (the same
 * trusted CAs, never `NODE_TLS_REJECT_UNAUTHORIZED`), on the same pooled
 * connections.
 *
 * Draining: a member with `draining: true` gets no new requests; those in
 * flight finish (its `activeRequests` counts them down) and it reads
 * `draining` in `/health` whatever its checks say, which go on meanwhile so
 * the state is known when it comes back.
 */
import { createHash } from 'node:crypto';
import { type Dispatcher, getGlobalDispatcher } from 'undici';
import {
  type AgentDirectory,
  agentMatches,
  type MemberHealth,
  type MemberState,
  type TunnelAgent,
  type TunnelDispatcher,
} from '../domain/backend-service.js';
import type { Logger } from '../logger.js';
import type { BackendMemberRecord, BackendRecord } from '../storage/schema.js';

/** A member chosen for one request; `release` once when the request is over. */
export interface MemberLease {
  readonly backendId: string;
  readonly memberId: string;
  /** `scheme://host:port` of an upstream member. */
  readonly origin: string;
  /** Prepended to the request path; '' for none. */
  readonly basePath: string;
  /** An agent member's: the agent carrying the request; null for an upstream member. */
  readonly agentId: string | null;
  /** An agent member's: that agent's tunnel; null = the data plane's own upstream pool. */
  readonly dispatcher: TunnelDispatcher | null;
  /** `ok` false: the member could not be reached (counts towards passive ejection). */
  release(ok: boolean): void;
}

/** The `lastError` of an agent member while no matching agent is connected. */
export const NO_AGENT = 'no connected agent matches';

/** What a consistent hash needs of a request. */
export interface HashSource {
  readonly clientIp: string;
  readonly path: string;
  header(name: string): string | undefined;
}

/**
 * What a member has lived through: kept across configuration changes while
 * the member keeps its id and target, and shared with the leases of its
 * requests in flight (so they count down the live `active`).
 */
interface MemberRuntime {
  /** The checked (or passively learned) state; `draining` is the record's, never stored here. */
  state: Exclude<MemberState, 'draining'>;
  lastCheckAt: string | null;
  lastError: string | null;
  active: number;
  consecutiveFailures: number;
  ejectedUntil: number;
  checkStreak: number;
}

class Member {
  readonly record: BackendMemberRecord;
  readonly origin: string;
  readonly basePath: string;
  readonly weight: number;
  readonly draining: boolean;
  readonly runtime: MemberRuntime;
  currentWeight = 0;
  /** Agent members: the matching agents found by the last pick (reused for the lease). */
  agents: TunnelAgent[] = [];
  #nextAgent = 0;

  constructor(record: BackendMemberRecord, runtime: MemberRuntime | undefined) {
    this.record = record;
    this.weight = Math.max(1, record.weight);
    this.draining = record.draining === true;
    this.runtime = runtime ?? {
      state: 'unknown',
      lastCheckAt: null,
      lastError: null,
      active: 0,
      consecutiveFailures: 0,
      ejectedUntil: 0,
      checkStreak: 0,
    };
    const raw = record.type === 'upstream' ? record.url : record.upstreamUrl;
    if (URL.canParse(raw)) {
      const url = new URL(raw);
      this.origin = url.origin;
      this.basePath = url.pathname === '/' ? '' : url.pathname.replace(/\/+$/, '');
    } else {
      this.origin = '';
      this.basePath = '';
    }
  }

  get active(): number {
    return this.runtime.active;
  }

  /** Usable now; an agent member also needs a matching agent (`agents` is refreshed as a side effect). */
  usable(now: number, directory: AgentDirectory | undefined): boolean {
    const r = this.runtime;
    if (this.origin === '' || this.draining || r.state === 'unhealthy' || now < r.ejectedUntil) return false;
    if (this.record.type === 'upstream') return true;
    this.agents = matchingAgents(this.record, directory);
    return this.agents.length > 0;
  }

  /** One of `agents`: the least busy (ties in turn), or by rendezvous of `key` under consistent hashing. */
  pickAgent(key: string | null): TunnelAgent {
    const agents = this.agents;
    if (key !== null) {
      const scored = rendezvous(
        agents.map((agent) => ({ record: { id: agent.agentId }, weight: 1, agent })),
        key,
      );
      return (scored as { agent: TunnelAgent }).agent;
    }
    const start = this.#nextAgent++ % agents.length;
    let best = agents[start] as TunnelAgent;
    let bestActive = best.activeTunnels();
    for (let i = 1; i < agents.length; i++) {
      const agent = agents[(start + i) % agents.length] as TunnelAgent;
      const active = agent.activeTunnels();
      if (active < bestActive) {
        best = agent;
        bestActive = active;
      }
    }
    return best;
  }
}

function matchingAgents(
  record: Extract<BackendMemberRecord, { type: 'agent' }>,
  directory: AgentDirectory | undefined,
): TunnelAgent[] {
  if (directory === undefined) return [];
  return directory.tunnelAgents().filter((agent) => agentMatches(record, agent));
}

class Pool {
  readonly record: BackendRecord;
  readonly members: Member[];
  #next = 0;

  constructor(record: BackendRecord, previous: Pool | undefined) {
    this.record = record;
    this.members = record.members.map((m) => {
      const old = previous?.members.find((o) => o.record.id === m.id && sameTarget(o.record, m));
      return new Member(m, old?.runtime);
    });
  }

  pick(source: HashSource, now: number, directory: AgentDirectory | undefined): Member | null {
    const usable = this.members.filter((m) => m.usable(now, directory));
    if (usable.length === 0) return null;
    switch (this.record.algorithm) {
      case 'round_robin': {
        const member = usable[this.#next % usable.length]!;
        this.#next = (this.#next + 1) % 1_000_000_007;
        return member;
      }
      case 'weighted_round_robin': {
        let total = 0;
        let best: Member | null = null;
        for (const m of usable) {
          m.currentWeight += m.weight;
          total += m.weight;
          if (best === null || m.currentWeight > best.currentWeight) best = m;
        }
        best!.currentWeight -= total;
        return best;
      }
      case 'least_active': {
        let best: Member | null = null;
        for (const m of usable) {
          if (best === null || m.active / m.weight < best.active / best.weight) best = m;
        }
        return best;
      }
      case 'consistent_hash':
        return rendezvous(usable, hashKeyOf(this.record.hashKey, source));
    }
  }
}

function sameTarget(a: BackendMemberRecord, b: BackendMemberRecord): boolean {
  if (a.type === 'upstream' && b.type === 'upstream') return a.url === b.url;
  if (a.type === 'agent' && b.type === 'agent')
    return (
      a.upstreamUrl === b.upstreamUrl &&
      a.agentId === b.agentId &&
      JSON.stringify(a.agentLabels) === JSON.stringify(b.agentLabels)
    );
  return false;
}

/** The request's value of a backend's `hashKey`. */
export function hashKeyOf(hashKey: string, source: HashSource): string {
  if (hashKey === 'path') return source.path;
  if (hashKey.startsWith('header:')) return source.header(hashKey.slice(7).toLowerCase()) ?? '';
  return source.clientIp;
}

/**
 * Weighted rendezvous hashing: every member scores the key, the highest wins.
 * Removing a member only moves the keys it won; the others keep their winner.
 */
export function rendezvous<T extends { readonly record: { id: string }; readonly weight: number }>(
  members: readonly T[],
  key: string,
): T | null {
  let best: T | null = null;
  let bestScore = Number.NEGATIVE_INFINITY;
  for (const m of members) {
    const digest = createHash('sha256').update(m.record.id).update('\0').update(key).digest();
    // 52 bits of the digest → (0, 1); score = -weight / ln(u) grows with weight.
    const u = (Number(digest.readBigUInt64BE(0) >> 12n) + 1) / 2 ** 52;
    const score = -m.weight / Math.log(u);
    if (score > bestScore) {
      bestScore = score;
      best = m;
    }
  }
  return best;
}

export interface BackendBalancerOptions {
  logger?: Logger;
  now?: () => number;
  /** The connected agents agent members use; absent = none (agent members are never usable). */
  agents?: AgentDirectory;
  /**
   * What active checks send their requests through: the data plane's
   * upstream dispatcher, so they verify TLS as proxied requests do. Absent:
   * undici's global dispatcher (tests of the balancer alone).
   */
  dispatcher?: Dispatcher;
}

/** Every backend's pool of members, swapped whole when the configuration changes. */
export class BackendBalancer {
  #pools = new Map<string, Pool>();
  readonly #logger: Logger | undefined;
  readonly #now: () => number;
  readonly #agents: AgentDirectory | undefined;
  readonly #dispatcher: Dispatcher | undefined;
  #checkTimers = new Map<string, NodeJS.Timeout>();
  #checking = false;

  constructor(options: BackendBalancerOptions = {}) {
    this.#logger = options.logger;
    this.#now = options.now ?? Date.now;
    this.#agents = options.agents;
    this.#dispatcher = options.dispatcher;
  }

  setBackends(records: readonly BackendRecord[]): void {
    const next = new Map<string, Pool>();
    for (const record of records) next.set(record.id, new Pool(record, this.#pools.get(record.id)));
    this.#pools = next;
    if (this.#checking) this.#scheduleChecks();
  }

  /** A usable member of the backend for this request, or null (none: the caller answers 503). */
  pick(backendId: string, source: HashSource): MemberLease | null {
    const pool = this.#pools.get(backendId);
    if (!pool) return null;
    const now = this.#now();
    const member = pool.pick(source, now, this.#agents);
    if (member === null) return null;
    let agent: TunnelAgent | null = null;
    if (member.record.type === 'agent') {
      const hashed = pool.record.algorithm === 'consistent_hash';
      agent = member.pickAgent(hashed ? hashKeyOf(pool.record.hashKey, source) : null);
      member.agents = [];
    }
    const runtime = member.runtime;
    runtime.active += 1;
    let released = false;
    return {
      backendId,
      memberId: member.record.id,
      origin: member.origin,
      basePath: member.basePath,
      agentId: agent?.agentId ?? null,
      dispatcher: agent?.dispatcher ?? null,
      release: (ok: boolean) => {
        if (released) return;
        released = true;
        // The runtime outlives configuration changes: a request that started before one counts down here.
        runtime.active -= 1;
        this.#passive(pool, member, ok);
      },
    };
  }

  /** Health of each member, or null for an unknown backend. */
  health(backendId: string): MemberHealth[] | null {
    const pool = this.#pools.get(backendId);
    if (!pool) return null;
    const now = this.#now();
    return pool.members.map((m) => {
      // An agent member with no matching agent connected cannot serve, whatever it last did.
      const noAgent = m.record.type === 'agent' && matchingAgents(m.record, this.#agents).length === 0;
      const r = m.runtime;
      return {
        id: m.record.id,
        // Draining shows first; an ejected member reads unhealthy until its ejection ends.
        state: m.draining ? 'draining' : now < r.ejectedUntil || noAgent ? 'unhealthy' : r.state,
        lastCheckAt: r.lastCheckAt,
        lastError: noAgent ? NO_AGENT : r.lastError,
        activeRequests: r.active,
      };
    });
  }

  /** Starts the active health checks of backends that have them; `stopChecks` ends them. */
  startChecks(): void {
    this.#checking = true;
    this.#scheduleChecks();
  }

  stopChecks(): void {
    this.#checking = false;
    for (const timer of this.#checkTimers.values()) clearInterval(timer);
    this.#checkTimers.clear();
  }

  #scheduleChecks(): void {
    for (const timer of this.#checkTimers.values()) clearInterval(timer);
    this.#checkTimers.clear();
    for (const pool of this.#pools.values()) {
      const check = pool.record.healthCheck;
      if (check === null) continue;
      const run = (): void => {
        for (const member of pool.members) {
          // Agent members are checked by their agents, inside their networks.
          if (member.origin === '' || member.record.type !== 'upstream') continue;
          void this.#checkOne(pool, member);
        }
      };
      const timer = setInterval(run, check.intervalSeconds * 1000);
      timer.unref();
      this.#checkTimers.set(pool.record.id, timer);
      run();
    }
  }

  async #checkOne(pool: Pool, member: Member): Promise<void> {
    const check = pool.record.healthCheck!;
    const error = await probe(
      this.#dispatcher,
      member.origin,
      member.basePath + check.path,
      check.timeoutMs,
      check.expectStatus,
    );
    // The pool may have been replaced while the check ran: only the live one counts.
    if (this.#pools.get(pool.record.id) !== pool) return;
    const r = member.runtime;
    r.lastCheckAt = new Date(this.#now()).toISOString();
    const ok = error === null;
    if (!ok) r.lastError = error;
    if (ok) r.checkStreak = r.checkStreak > 0 ? r.checkStreak + 1 : 1;
    else r.checkStreak = r.checkStreak < 0 ? r.checkStreak - 1 : -1;
    if (ok && r.state !== 'healthy' && r.checkStreak >= check.healthyThreshold) {
      this.#transition(pool, member, 'healthy', null);
      r.consecutiveFailures = 0;
      r.ejectedUntil = 0;
    } else if (!ok && r.state !== 'unhealthy' && -r.checkStreak >= check.unhealthyThreshold) {
      this.#transition(pool, member, 'unhealthy', error);
    }
  }

  #passive(pool: Pool, member: Member, ok: boolean): void {
    const r = member.runtime;
    if (ok) {
      r.consecutiveFailures = 0;
      if (r.state === 'unknown' && pool.record.healthCheck === null) r.state = 'healthy';
      return;
    }
    r.consecutiveFailures += 1;
    const { failures, ejectSeconds } = pool.record.passive;
    if (failures > 0 && r.consecutiveFailures >= failures) {
      r.consecutiveFailures = 0;
      r.ejectedUntil = this.#now() + ejectSeconds * 1000;
      r.lastError = `ejected for ${ejectSeconds}s after ${failures} consecutive failures`;
      this.#logger?.warn(
        { backendId: pool.record.id, memberId: member.record.id, ejectSeconds },
        'backend member ejected after consecutive failures',
      );
    }
  }

  #transition(pool: Pool, member: Member, state: 'healthy' | 'unhealthy', error: string | null): void {
    const from = member.runtime.state;
    member.runtime.state = state;
    const log = { backendId: pool.record.id, memberId: member.record.id, from, to: state, error };
    if (state === 'unhealthy') this.#logger?.warn(log, 'backend member unhealthy');
    else this.#logger?.info(log, 'backend member healthy');
  }
}

/**
 * One health check: GET `origin + path` through `dispatcher` (undici's
 * global one when absent), without following redirects. Null when the
 * answer has status `expect`, else what went wrong: `status N, expected M`,
 * `timed out`, or the socket / TLS error code (`ECONNREFUSED`,
 * `DEPTH_ZERO_SELF_SIGNED_CERT`…).
 */
export async function probe(
  dispatcher: Dispatcher | undefined,
  origin: string,
  path: string,
  timeoutMs: number,
  expect: number,
): Promise<string | null> {
  const signal = AbortSignal.timeout(timeoutMs);
  try {
    const res = await (dispatcher ?? getGlobalDispatcher()).request({
      origin,
      path,
      method: 'GET',
      signal,
      headersTimeout: timeoutMs,
      bodyTimeout: timeoutMs,
    });
    // The body is not needed: read a little of it away so the connection can serve again.
    await res.body.dump({ limit: 64 * 1024 }).catch(() => {});
    return res.statusCode === expect ? null : `status ${res.statusCode}, expected ${expect}`;
  } catch (err) {
    if (signal.aborted) return 'timed out';
    const e = err as { code?: unknown; message?: unknown; cause?: { code?: unknown } };
    const code = typeof e.code === 'string' && !e.code.startsWith('UND_ERR_') ? e.code : undefined;
    const cause = typeof e.cause?.code === 'string' ? e.cause.code : undefined;
    if ((e.code === 'UND_ERR_HEADERS_TIMEOUT' || e.code === 'UND_ERR_CONNECT_TIMEOUT') && !cause)
      return 'timed out';
    return code ?? cause ?? (typeof e.message === 'string' ? e.message : 'check failed');
  }
}
