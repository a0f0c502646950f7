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
 *
 * Active checks of agent members are the agents' (capability `health`): every
 * matching agent that runs checks is told to GET the member's `upstreamUrl` +
 * `healthCheck.path` in its network (the set is pushed on every
 * configuration change and every {@link AGENT_CHECK_SYNC_MS}, so a
 * reconnected or relabelled agent gets its checks too) and reports each
 * result. The thresholds apply per agent: an agent whose checks say
 * `unhealthy` is skipped for that member, and the member is usable while at
 * least one matching agent is not (an agent that runs no checks, an older
 * build, is usable as before). In `/health` the member reads `healthy` when
 * one of its agents checks healthy, `unhealthy` when all of them check
 * unhealthy (`lastError` names the agent), its latest check time, and
 * transitions are logged per agent (`agentId`).
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
  type AgentHealthChecks,
  type AgentHealthResult,
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

/** How often the checks agents run are pushed again (reconnected or relabelled agents): 1 s. */
export const AGENT_CHECK_SYNC_MS = 1000;

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
interface CheckState {
  /** The checked (or passively learned) state; `draining` is the record's, never stored here. */
  state: Exclude<MemberState, 'draining'>;
  lastCheckAt: string | null;
  lastError: string | null;
  /** Consecutive good (> 0) or failed (< 0) checks. */
  checkStreak: number;
}

/** What one agent's checks of an agent member say; kept for the agent's connection (`source`) only. */
interface AgentCheckState extends CheckState {
  readonly source: AgentHealthChecks;
}

interface MemberRuntime extends CheckState {
  active: number;
  consecutiveFailures: number;
  ejectedUntil: number;
  /** Agent members: each checking agent's view, by agent id. */
  agentChecks: Map<string, AgentCheckState>;
}

/** The state of `agent`'s checks of `runtime`'s member, if it runs them on its current connection. */
function agentCheck(runtime: MemberRuntime, agent: TunnelAgent): AgentCheckState | null {
  const state = runtime.agentChecks.get(agent.agentId);
  return state !== undefined && state.source === agent.health ? state : null;
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
      agentChecks: new Map(),
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

  /**
   * Usable now; an agent member also needs a matching agent whose checks (if
   * `checked` and it runs them) do not say unhealthy. `agents` is refreshed
   * as a side effect.
   */
  usable(now: number, directory: AgentDirectory | undefined, checked: boolean): boolean {
    const r = this.runtime;
    if (this.origin === '' || this.draining || r.state === 'unhealthy' || now < r.ejectedUntil) return false;
    if (this.record.type === 'upstream') return true;
    const agents = matchingAgents(this.record, directory);
    this.agents = checked ? agents.filter((agent) => agentCheck(r, agent)?.state !== 'unhealthy') : agents;
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
    // Without checks, what agents checked before says nothing any more.
    if (record.healthCheck === null) for (const m of this.members) m.runtime.agentChecks.clear();
  }

  pick(source: HashSource, now: number, directory: AgentDirectory | undefined): Member | null {
    const checked = this.record.healthCheck !== null;
    const usable = this.members.filter((m) => m.usable(now, directory, checked));
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
  #syncTimer: NodeJS.Timeout | null = null;
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
    if (this.#checking) {
      this.#scheduleChecks();
      this.#syncAgentChecks();
    }
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
    const checked = pool.record.healthCheck !== null;
    return pool.members.map((m) => {
      const r = m.runtime;
      let view: Pick<CheckState, 'state' | 'lastCheckAt' | 'lastError'> = r;
      if (m.record.type === 'agent') {
        const agents = matchingAgents(m.record, this.#agents);
        // No matching agent connected: it cannot serve, whatever it last did.
        if (agents.length === 0)
          view = { state: 'unhealthy', lastCheckAt: r.lastCheckAt, lastError: NO_AGENT };
        else if (checked) view = agentView(r, agents);
      }
      return {
        id: m.record.id,
        // Draining shows first; an ejected member reads unhealthy until its ejection ends.
        state: m.draining ? 'draining' : now < r.ejectedUntil ? 'unhealthy' : view.state,
        lastCheckAt: view.lastCheckAt,
        lastError: view.lastError,
        activeRequests: r.active,
      };
    });
  }

  /** Starts the active health checks of backends that have them; `stopChecks` ends them. */
  startChecks(): void {
    this.#checking = true;
    this.#scheduleChecks();
    this.#syncAgentChecks();
    if (this.#agents !== undefined && this.#syncTimer === null) {
      this.#syncTimer = setInterval(() => this.#syncAgentChecks(), AGENT_CHECK_SYNC_MS);
      this.#syncTimer.unref();
    }
  }

  stopChecks(): void {
    this.#checking = false;
    for (const timer of this.#checkTimers.values()) clearInterval(timer);
    this.#checkTimers.clear();
    if (this.#syncTimer !== null) clearInterval(this.#syncTimer);
    this.#syncTimer = null;
    // The agents stop checking too.
    this.#syncAgentChecks();
  }

  /**
   * Tells every connected agent that runs checks which agent members to
   * check (those it matches, of backends with a `healthCheck`; none once
   * checks stopped), and forgets the views of agents no longer matching.
   */
  #syncAgentChecks(): void {
    const directory = this.#agents;
    if (directory === undefined) return;
    const agents = directory.tunnelAgents();
    for (const agent of agents) {
      const health = agent.health;
      if (health === null) continue;
      const checks = [];
      if (this.#checking) {
        for (const pool of this.#pools.values()) {
          const check = pool.record.healthCheck;
          if (check === null) continue;
          for (const m of pool.members) {
            if (m.record.type !== 'agent' || m.origin === '' || !agentMatches(m.record, agent)) continue;
            checks.push({
              id: `${pool.record.id}/${m.record.id}`,
              url: m.origin + m.basePath + check.path,
              intervalMs: check.intervalSeconds * 1000,
              timeoutMs: check.timeoutMs,
              expectStatus: check.expectStatus,
            });
          }
        }
      }
      health.watch(checks, (result) => this.#agentResult(agent.agentId, health, result));
    }
    for (const pool of this.#pools.values()) {
      for (const m of pool.members) {
        const views = m.runtime.agentChecks;
        if (m.record.type !== 'agent' || views.size === 0) continue;
        const record = m.record;
        for (const [agentId, view] of views) {
          const live = agents.find((a) => a.agentId === agentId);
          if (live === undefined || live.health !== view.source || !agentMatches(record, live))
            views.delete(agentId);
        }
      }
    }
  }

  /** A result of `agentId`'s check (`backendId/memberId`): the thresholds apply to that agent's view. */
  #agentResult(agentId: string, source: AgentHealthChecks, result: AgentHealthResult): void {
    const slash = result.id.indexOf('/');
    const pool = this.#pools.get(result.id.slice(0, slash));
    const check = pool?.record.healthCheck;
    if (pool === undefined || check == null || slash < 0) return;
    const member = pool.members.find((m) => m.record.id === result.id.slice(slash + 1));
    if (member === undefined || member.record.type !== 'agent') return;
    const views = member.runtime.agentChecks;
    let view = views.get(agentId);
    if (view === undefined || view.source !== source) {
      view = { source, state: 'unknown', lastCheckAt: null, lastError: null, checkStreak: 0 };
      views.set(agentId, view);
    }
    const error = result.ok ? null : result.error || 'check failed';
    const to = this.#applyCheck(view, check, error);
    if (to !== null) this.#logTransition(pool, member, view, to, error, agentId);
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
    const to = this.#applyCheck(r, check, error);
    if (to === 'healthy') {
      r.consecutiveFailures = 0;
      r.ejectedUntil = 0;
    }
    if (to !== null) this.#logTransition(pool, member, r, to, error, null);
  }

  /** One check result (`error` null: good) against the thresholds; the state it moved to, or null. */
  #applyCheck(
    s: CheckState,
    check: NonNullable<BackendRecord['healthCheck']>,
    error: string | null,
  ): 'healthy' | 'unhealthy' | null {
    s.lastCheckAt = new Date(this.#now()).toISOString();
    const ok = error === null;
    if (!ok) s.lastError = error;
    if (ok) s.checkStreak = s.checkStreak > 0 ? s.checkStreak + 1 : 1;
    else s.checkStreak = s.checkStreak < 0 ? s.checkStreak - 1 : -1;
    if (ok && s.state !== 'healthy' && s.checkStreak >= check.healthyThreshold) return 'healthy';
    if (!ok && s.state !== 'unhealthy' && -s.checkStreak >= check.unhealthyThreshold) return 'unhealthy';
    return null;
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

  /** Moves `s` (a member's state, or one agent's view of it) to `state` and logs it. */
  #logTransition(
    pool: Pool,
    member: Member,
    s: CheckState,
    state: 'healthy' | 'unhealthy',
    error: string | null,
    agentId: string | null,
  ): void {
    const from = s.state;
    s.state = state;
    const log = {
      backendId: pool.record.id,
      memberId: member.record.id,
      ...(agentId === null ? {} : { agentId }),
      from,
      to: state,
      error,
    };
    if (state === 'unhealthy') this.#logger?.warn(log, 'backend member unhealthy');
    else this.#logger?.info(log, 'backend member healthy');
  }
}

/**
 * An agent member's state from its matching agents' checks: healthy when one
 * of them checks healthy, unhealthy when every one checks unhealthy, else
 * what the member learned itself (unknown until it served, or an agent runs
 * no checks); the latest check time, and the latest failure with its agent.
 */
function agentView(
  r: MemberRuntime,
  agents: readonly TunnelAgent[],
): Pick<CheckState, 'state' | 'lastCheckAt' | 'lastError'> {
  let healthy = false;
  let allUnhealthy = true;
  let lastCheckAt: string | null = null;
  let lastError: string | null = null;
  let lastErrorAt = '';
  for (const agent of agents) {
    const view = agentCheck(r, agent);
    if (view?.state === 'healthy') healthy = true;
    if (view?.state !== 'unhealthy') allUnhealthy = false;
    if (view?.lastCheckAt == null) continue;
    if (lastCheckAt === null || view.lastCheckAt > lastCheckAt) lastCheckAt = view.lastCheckAt;
    if (view.lastError !== null && view.lastCheckAt >= lastErrorAt) {
      lastError = `agent ${agent.agentId}: ${view.lastError}`;
      lastErrorAt = view.lastCheckAt;
    }
  }
  const state = healthy ? 'healthy' : allUnhealthy ? 'unhealthy' : r.state;
  return { state, lastCheckAt, lastError };
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
