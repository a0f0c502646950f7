/**
 * Backends (docs/pipeline.md "Backend targets"): named pools of members a route
 * targets with `{type: "backend", backendId}`, stored in the `backends`
 * collection and applied live to the data plane through a {@link
 * BackendRuntime}.
 *
 * Members are `{type: "upstream", url, weight}` or
 * `{type: "agent", agentId?, agentLabels?, upstreamUrl, weight}`, each with
 * `draining` (default false: an admin sets it to let a member's requests in
 * flight finish while it takes no new ones); each gets an `id` (kept when a
 * client sends it back on update). An agent member names
 * one agent (`agentId`) or a label selector (`agentLabels`: any connected
 * agent carrying all of them; both given: that agent, if it carries them);
 * its requests travel through a tunnel of the relay protocol to the agent,
 * which makes them to `upstreamUrl` in its own network.
 *
 * Errors: VALIDATION_FAILED (bad field, naming it), AGENT_NOT_FOUND (an
 * `agentId` that names no agent, `details.field`), CONFLICT (name taken; a
 * backend routes still use cannot be deleted, `details.usedBy` lists them),
 * NOT_FOUND.
 */
import { AppError } from '../errors.js';
import type {
  BackendAlgorithm,
  BackendHealthCheckRecord,
  BackendMemberRecord,
  BackendRecord,
} from '../storage/schema.js';
import type { Store } from '../storage/store.js';
import { parseLabels } from './agent-service.js';
import { isId, newId } from './ids.js';
import { requireUpstreamUrl } from './proxy-config-service.js';
import {
  invalid,
  optionalBoolean,
  rejectUnknownFields,
  requireInteger,
  requireName,
  requireObject,
} from './validate.js';

export const ALGORITHMS: readonly BackendAlgorithm[] = [
  'round_robin',
  'weighted_round_robin',
  'least_active',
  'consistent_hash',
];
export const MAX_MEMBERS = 256;
export const MAX_WEIGHT = 1000;
export const DEFAULT_PASSIVE = { failures: 3, ejectSeconds: 30 } as const;

export type MemberState = 'healthy' | 'unhealthy' | 'draining' | 'unknown';

export interface MemberHealth {
  id: string;
  state: MemberState;
  lastCheckAt: string | null;
  lastError: string | null;
  activeRequests: number;
}

/**
 * An undici-shaped dispatcher (`dispatch(options, handler)`): how the data
 * plane sends a request through an agent's tunnel exactly as it sends one to
 * its own upstream pool.
 */
export interface TunnelDispatcher {
  dispatch(options: unknown, handler: unknown): boolean;
}

/** A connected agent that can carry tunnel streams (it announced the `tunnel` capability). */
export interface TunnelAgent {
  readonly agentId: string;
  readonly labels: Readonly<Record<string, string>>;
  /** Tunnel streams open through it now (the least busy matching agent is picked). */
  activeTunnels(): number;
  readonly dispatcher: TunnelDispatcher;
  /** Its active checks of the members it serves (it announced `health`); null = it runs none. */
  readonly health: AgentHealthChecks | null;
}

/** A check an agent runs in its network: GET `url` every `intervalMs`, healthy on `expectStatus`. */
export interface AgentHealthCheck {
  readonly id: string;
  readonly url: string;
  readonly intervalMs: number;
  readonly timeoutMs: number;
  readonly expectStatus: number;
}

/** One run of an agent's check: `error` says why not ok. */
export interface AgentHealthResult {
  readonly id: string;
  readonly ok: boolean;
  readonly error?: string | undefined;
}

/** The checks one connected agent runs (one object per connection). */
export interface AgentHealthChecks {
  /** Replaces the agent's checks (an unchanged set sends nothing); every result goes to `onResult`. */
  watch(checks: readonly AgentHealthCheck[], onResult: (result: AgentHealthResult) => void): void;
}

/** Where the balancer finds the agents agent members may use (the hub, in the server). */
export interface AgentDirectory {
  /** Agents connected to this replica that carry tunnels, with their current labels. */
  tunnelAgents(): readonly TunnelAgent[];
}

/** True when `agent` may serve an agent member: its id (if given) and every label (if given) match. */
export function agentMatches(
  member: { agentId: string | null; agentLabels: Readonly<Record<string, string>> | null },
  agent: { agentId: string; labels: Readonly<Record<string, string>> },
): boolean {
  if (member.agentId !== null && member.agentId !== agent.agentId) return false;
  if (member.agentLabels !== null) {
    for (const key of Object.keys(member.agentLabels))
      if (!Object.hasOwn(agent.labels, key) || agent.labels[key] !== member.agentLabels[key]) return false;
  }
  return true;
}

/** What the configuration drives: the data plane's balancer. */
export interface BackendRuntime {
  setBackends(records: readonly BackendRecord[]): void;
  health(backendId: string): MemberHealth[] | null;
}

/** A member as the API shows it: `draining` always present. */
export type BackendMember = BackendMemberRecord & { draining: boolean };

/** A backend as the API shows it. */
export type Backend = Omit<BackendRecord, 'members'> & { members: BackendMember[] };

const FIELDS = ['name', 'algorithm', 'hashKey', 'members', 'healthCheck', 'passive'] as const;
const READ_ONLY_FIELDS = ['id', 'createdAt', 'updatedAt'];

export interface BackendServiceOptions {
  store: Store;
  runtime?: BackendRuntime;
  now?: () => number;
}

export class BackendService {
  readonly #store: Store;
  readonly #runtime: BackendRuntime | undefined;
  readonly #now: () => number;

  constructor(options: BackendServiceOptions) {
    this.#store = options.store;
    this.#runtime = options.runtime;
    this.#now = options.now ?? Date.now;
  }

  /** Hands the stored backends to the runtime (at start). */
  apply(): void {
    this.#runtime?.setBackends(this.#store.read().backends ?? []);
  }

  list(): Backend[] {
    return (this.#store.read().backends ?? []).map(clone);
  }

  get(id: string): Backend {
    return clone(this.#find(id));
  }

  health(id: string): { members: MemberHealth[] } {
    const record = this.#find(id);
    const live = this.#runtime?.health(id) ?? null;
    return {
      members:
        live ??
        record.members.map((m) => ({
          id: m.id,
          state: 'unknown',
          lastCheckAt: null,
          lastError: null,
          activeRequests: 0,
        })),
    };
  }

  async create(body: unknown): Promise<Backend> {
    const input = requireObject(body);
    rejectUnknownFields(input, [...FIELDS, ...READ_ONLY_FIELDS]);
    const at = new Date(this.#now()).toISOString();
    const record: BackendRecord = {
      id: newId(),
      name: requireName(input.name),
      algorithm: input.algorithm === undefined ? 'round_robin' : requireAlgorithm(input.algorithm),
      hashKey: input.hashKey === undefined ? 'ip' : requireHashKey(input.hashKey),
      members: requireMembers(input.members, [], this.#agentExists),
      healthCheck: input.healthCheck === undefined ? null : requireHealthCheck(input.healthCheck),
      passive: input.passive === undefined ? { ...DEFAULT_PASSIVE } : requirePassive(input.passive),
      createdAt: at,
      updatedAt: at,
    };
    await this.#store.update((db) => {
      db.backends ??= [];
      assertNameFree(db.backends, record);
      db.backends.push(record);
    });
    this.apply();
    return clone(record);
  }

  /** Changes any field; `members`, `healthCheck` and `passive` are replaced whole. */
  async update(id: string, body: unknown): Promise<Backend> {
    const input = requireObject(body);
    rejectUnknownFields(input, [...FIELDS, ...READ_ONLY_FIELDS]);
    const current = this.#find(id);
    const next: BackendRecord = {
      ...current,
      name: input.name === undefined ? current.name : requireName(input.name),
      algorithm: input.algorithm === undefined ? current.algorithm : requireAlgorithm(input.algorithm),
      hashKey: input.hashKey === undefined ? current.hashKey : requireHashKey(input.hashKey),
      members:
        input.members === undefined
          ? current.members
          : requireMembers(input.members, current.members, this.#agentExists),
      healthCheck:
        input.healthCheck === undefined ? current.healthCheck : requireHealthCheck(input.healthCheck),
      passive: input.passive === undefined ? current.passive : requirePassive(input.passive),
      updatedAt: new Date(this.#now()).toISOString(),
    };
    await this.#store.update((db) => {
      const index = (db.backends ?? []).findIndex((b) => b.id === id);
      if (index < 0) throw new AppError('NOT_FOUND', 'no such backend');
      assertNameFree(db.backends, next);
      db.backends[index] = next;
    });
    this.apply();
    return clone(next);
  }

  /** Deletes a backend no route targets; CONFLICT with `details.usedBy` otherwise. */
  async remove(id: string): Promise<void> {
    this.#find(id);
    await this.#store.update((db) => {
      const usedBy = db.proxy.routes
        .filter((r) => r.target.type === 'backend' && r.target.backendId === id)
        .map((r) => ({ type: 'route', id: r.id }));
      if (usedBy.length > 0)
        throw new AppError('CONFLICT', 'routes still target this backend', { details: { usedBy } });
      db.backends = (db.backends ?? []).filter((b) => b.id !== id);
    });
    this.apply();
  }

  readonly #agentExists = (agentId: string): boolean =>
    this.#store.read().agents.some((a) => a.id === agentId);

  #find(id: string): BackendRecord {
    const record = (this.#store.read().backends ?? []).find((b) => b.id === id);
    if (!record) throw new AppError('NOT_FOUND', 'no such backend');
    return record;
  }
}

/** A copy for callers, with the defaults of fields older records lack (`draining`). */
function clone(record: Readonly<BackendRecord>): Backend {
  const copy = structuredClone(record) as BackendRecord;
  return { ...copy, members: copy.members.map((m) => ({ ...m, draining: m.draining === true })) };
}

function assertNameFree(backends: readonly BackendRecord[], next: BackendRecord): void {
  if (backends.some((b) => b.id !== next.id && b.name === next.name))
    throw new AppError('CONFLICT', 'a backend with this name already exists', { details: { field: 'name' } });
}

function requireAlgorithm(value: unknown): BackendAlgorithm {
  if (typeof value !== 'string' || !ALGORITHMS.includes(value as BackendAlgorithm))
    throw invalid('algorithm', `must be one of ${ALGORITHMS.join(', ')}`);
  return value as BackendAlgorithm;
}

const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$/;

function requireHashKey(value: unknown): string {
  if (value === 'ip' || value === 'path') return value;
  if (typeof value === 'string' && value.startsWith('header:') && HEADER_NAME.test(value.slice(7)))
    return `header:${value.slice(7).toLowerCase()}`;
  throw invalid('hashKey', 'must be ip, path or header:NAME');
}

/**
 * Checks the members; an `agentId` must name an existing agent unless the
 * member already had it (an agent deleted since leaves its member unusable,
 * not the backend uneditable).
 */
function requireMembers(
  value: unknown,
  previous: readonly BackendMemberRecord[],
  agentExists: (agentId: string) => boolean,
): BackendMemberRecord[] {
  if (!Array.isArray(value)) throw invalid('members', 'must be an array');
  if (value.length > MAX_MEMBERS) throw invalid('members', `must have at most ${MAX_MEMBERS} members`);
  const seen = new Set<string>();
  return value.map((raw, i) => {
    const field = `members.${i}`;
    const input = requireObject(raw, field);
    const id =
      typeof input.id === 'string' && previous.some((p) => p.id === input.id) && !seen.has(input.id)
        ? input.id
        : newId();
    seen.add(id);
    const weight =
      input.weight === undefined ? 1 : requireInteger(input.weight, `${field}.weight`, 1, MAX_WEIGHT);
    const draining = optionalBoolean(input.draining, `${field}.draining`, false);
    if (input.type === 'upstream') {
      rejectMemberFields(input, field, ['id', 'type', 'url', 'weight', 'draining']);
      return {
        id,
        type: 'upstream',
        url: prefixed(field, () => requireUpstreamUrl(input.url)),
        weight,
        draining,
      };
    }
    if (input.type === 'agent') {
      rejectMemberFields(input, field, [
        'id',
        'type',
        'agentId',
        'agentLabels',
        'upstreamUrl',
        'weight',
        'draining',
      ]);
      const agentId = input.agentId === undefined || input.agentId === null ? null : input.agentId;
      if (agentId !== null && !isId(agentId)) throw invalid(`${field}.agentId`, 'must be an agent id');
      const agentLabels =
        input.agentLabels === undefined || input.agentLabels === null
          ? null
          : prefixed(`${field}.agentLabels`, () => parseLabels(input.agentLabels));
      if (agentId === null && agentLabels === null)
        throw invalid(`${field}.agentId`, 'an agent member needs agentId or agentLabels');
      const kept = previous.some((p) => p.id === id && p.type === 'agent' && p.agentId === agentId);
      if (agentId !== null && !kept && !agentExists(agentId))
        throw new AppError('AGENT_NOT_FOUND', `${field}.agentId: no such agent`, {
          details: { field: `${field}.agentId` },
        });
      return {
        id,
        type: 'agent',
        agentId,
        agentLabels,
        upstreamUrl: prefixed(`${field}.upstreamUrl`, () => requireUpstreamUrl(input.upstreamUrl)),
        weight,
        draining,
      };
    }
    throw invalid(`${field}.type`, 'must be upstream or agent');
  });
}

/** Runs a validator that names its own field `url`, renaming the field. */
function prefixed<T>(field: string, run: () => T): T {
  try {
    return run();
  } catch (err) {
    if (err instanceof AppError && err.code === 'VALIDATION_FAILED')
      throw invalid(
        /(Url|Labels)$/.test(field) ? field : `${field}.url`,
        err.message.replace(/^[\w.]+: /, ''),
      );
    throw err;
  }
}

function rejectMemberFields(input: Record<string, unknown>, field: string, allowed: readonly string[]): void {
  for (const key of Object.keys(input))
    if (!allowed.includes(key)) throw invalid(`${field}.${key}`, 'is not a known field');
}

function requireHealthCheck(value: unknown): BackendHealthCheckRecord | null {
  if (value === null) return null;
  const input = requireObject(value, 'healthCheck');
  rejectMemberFields(input, 'healthCheck', [
    'path',
    'intervalSeconds',
    'timeoutMs',
    'healthyThreshold',
    'unhealthyThreshold',
    'expectStatus',
  ]);
  const path = input.path === undefined ? '/' : input.path;
  if (typeof path !== 'string' || !path.startsWith('/') || path.length > 1024 || /\s/.test(path))
    throw invalid('healthCheck.path', 'must be a path starting with /');
  const int = (key: string, fallback: number, min: number, max: number): number =>
    input[key] === undefined ? fallback : requireInteger(input[key], `healthCheck.${key}`, min, max);
  return {
    path,
    intervalSeconds: int('intervalSeconds', 10, 1, 3600),
    timeoutMs: int('timeoutMs', 2000, 50, 60_000),
    healthyThreshold: int('healthyThreshold', 2, 1, 100),
    unhealthyThreshold: int('unhealthyThreshold', 3, 1, 100),
    expectStatus: int('expectStatus', 200, 100, 599),
  };
}

function requirePassive(value: unknown): { failures: number; ejectSeconds: number } {
  const input = requireObject(value, 'passive');
  rejectMemberFields(input, 'passive', ['failures', 'ejectSeconds']);
  return {
    failures:
      input.failures === undefined
        ? DEFAULT_PASSIVE.failures
        : requireInteger(input.failures, 'passive.failures', 0, 1000),
    ejectSeconds:
      input.ejectSeconds === undefined
        ? DEFAULT_PASSIVE.ejectSeconds
        : requireInteger(input.ejectSeconds, 'passive.ejectSeconds', 1, 86_400),
  };
}
