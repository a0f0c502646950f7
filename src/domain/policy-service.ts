/**
 * Traffic policies (docs/pipeline.md "The policy stages"): WAF rules, rate
 * limits and shapers, validated, persisted in the store's `policies`
 * collection, compiled (CEL, see policy-expression.ts) and handed whole to the
 * data plane through a {@link PolicyRuntime} after every change. A refused
 * change leaves both the stored and the running rule set as they were:
 * everything is validated and compiled before the store is written, and the
 * runtime gets the new set only once it is saved.
 *
 * Rules apply in ascending `priority`, then creation order. Template
 * references are checked inside the store mutation (a template cannot be
 * deleted while a rule uses it).
 *
 * Errors: VALIDATION_FAILED with `details.field` (expression errors also
 * carry `position`, `line`, `column`), CONFLICT (a name taken within the
 * same kind), NOT_FOUND.
 */
import { AppError } from '../errors.js';
import type {
  Database,
  RateLimitRuleRecord,
  ShaperRecord,
  WafAutoRecord,
  WafRuleRecord,
} from '../storage/schema.js';
import type { Store } from '../storage/store.js';
import { newId } from './ids.js';
import { type CompiledExpression, compileExpression } from './policy-expression.js';
import { RATE_LIMIT_ALGORITHMS, WAF_ACTIONS } from './policy-types.js';
import { requireTemplateRef, type TemplateService, type TemplateUsage } from './template-service.js';
import { invalid, optionalBoolean, rejectUnknownFields, requireName, requireObject } from './validate.js';

export const MIN_POLICY_PRIORITY = -1_000_000;
export const MAX_POLICY_PRIORITY = 1_000_000;
/** At most this many rules of each kind. */
export const MAX_RULES_PER_KIND = 1000;
export const MAX_KEY_PARTS = 6;
export const DEFAULT_PASS_TTL_SECONDS = 3600;
export { RATE_LIMIT_ALGORITHMS, WAF_ACTIONS } from './policy-types.js';
/** Largest shaping rate: 10 GiB/s; smallest: 1 KiB/s. */
export const MAX_SHAPER_RATE = 10 * 1024 ** 3;
export const MIN_SHAPER_RATE = 1024;

/** A rule with its compiled expression, as the data plane runs it. */
export interface Compiled<R> {
  readonly record: Readonly<R>;
  readonly match: CompiledExpression;
}

/** The enabled rules of every kind, compiled and in application order. */
export interface CompiledPolicies {
  readonly waf: readonly Compiled<WafRuleRecord>[];
  readonly rateLimits: readonly Compiled<RateLimitRuleRecord>[];
  readonly shapers: readonly Compiled<ShaperRecord>[];
}

/** A request described to `POST /policies/test`. */
export interface PolicyTestRequest {
  method: string;
  host: string;
  path: string;
  headers: Record<string, string>;
  ip: string;
  listenerId: string | null;
}

/** What one stage would do with a described request. */
export interface PolicyTestStage {
  stage: string;
  rule: string | null;
  action: string;
  detail: string;
}

/** An auto-mode WAF rule's switches, as the data plane saw them. */
export interface WafAutoState {
  /** Listeners (ids) the rule is switched on for right now. */
  activeListeners: string[];
  /** The most recent switches, newest last. */
  switches: { at: string; listenerId: string; active: boolean; reason: string }[];
}

/** What the policies drive: the data plane's policy stages. */
export interface PolicyRuntime {
  /** Replaces the running rule set at once. */
  setPolicies(policies: CompiledPolicies): void;
  /** What each stage would do with `request`, without sending anything or counting it. */
  explain(request: PolicyTestRequest, policies: CompiledPolicies): PolicyTestStage[];
  /** Auto-mode state of a WAF rule, or null when it has none. */
  wafAutoState(ruleId: string): WafAutoState | null;
}

export type WafRule = WafRuleRecord & { state: WafAutoState | null };
export type RateLimitRule = RateLimitRuleRecord;
export type Shaper = ShaperRecord;

export interface PolicyServiceOptions {
  store: Store;
  runtime?: PolicyRuntime;
  templates?: Pick<TemplateService, 'registerUsage'>;
  now?: () => number;
}

type Kind = 'waf' | 'rateLimits' | 'shapers';

const COMMON_FIELDS = ['name', 'priority', 'expression', 'enabled'];
const WAF_FIELDS = [...COMMON_FIELDS, 'action', 'status', 'templateId', 'mode', 'auto', 'passTtlSeconds'];
const RATE_LIMIT_FIELDS = [
  ...COMMON_FIELDS,
  'key',
  'algorithm',
  'limit',
  'windowSeconds',
  'ratePerSecond',
  'burst',
  'status',
  'templateId',
];
const SHAPER_FIELDS = [
  ...COMMON_FIELDS,
  'key',
  'downloadBytesPerSecond',
  'uploadBytesPerSecond',
  'burstBytes',
  'exemptBytes',
];
const READ_ONLY_FIELDS = ['id', 'state', 'createdAt', 'updatedAt'];

const IDLE_RUNTIME: PolicyRuntime = {
  setPolicies: () => {},
  explain: () => [],
  wafAutoState: () => null,
};

/** The template references held by policy rules (for the template service's `usedBy`). */
export function policyTemplateUsage(db: Readonly<Database>): TemplateUsage[] {
  const usages: TemplateUsage[] = [];
  for (const rule of db.policies.waf) {
    if (rule.templateId)
      usages.push({ templateId: rule.templateId, type: 'waf_rule', id: rule.id, name: rule.name });
  }
  for (const rule of db.policies.rateLimits) {
    if (rule.templateId)
      usages.push({ templateId: rule.templateId, type: 'rate_limit_rule', id: rule.id, name: rule.name });
  }
  return usages;
}

export class PolicyService {
  readonly #store: Store;
  readonly #runtime: PolicyRuntime;
  readonly #now: () => number;
  #compiled: CompiledPolicies = { waf: [], rateLimits: [], shapers: [] };
  #serial: Promise<unknown> = Promise.resolve();

  constructor(options: PolicyServiceOptions) {
    this.#store = options.store;
    this.#runtime = options.runtime ?? IDLE_RUNTIME;
    this.#now = options.now ?? Date.now;
    options.templates?.registerUsage(policyTemplateUsage);
  }

  /**
   * Compiles the stored rules and hands them to the runtime (at start, and
   * when another replica changed them). A stored rule that no longer
   * compiles (hand-edited file) is left out.
   */
  apply(): void {
    this.#compiled = compileAll(this.#store.read());
    this.#runtime.setPolicies(this.#compiled);
  }

  /** The running rule set. */
  compiled(): CompiledPolicies {
    return this.#compiled;
  }

  listWaf(): WafRule[] {
    return sorted(this.#store.read().policies.waf).map((r) => this.#toWaf(r));
  }

  getWaf(id: string): WafRule {
    return this.#toWaf(find(this.#store.read().policies.waf, id));
  }

  createWaf(body: unknown): Promise<WafRule> {
    return this.#create('waf', body, (input, at) => {
      rejectUnknownFields(input, [...WAF_FIELDS, ...READ_ONLY_FIELDS]);
      if (input.action === undefined) throw invalid('action', 'is required');
      return wafRecord(input, null, at);
    }).then((r) => this.#toWaf(r as WafRuleRecord));
  }

  updateWaf(id: string, body: unknown): Promise<WafRule> {
    return this.#update('waf', id, body, (input, current, at) => {
      rejectUnknownFields(input, [...WAF_FIELDS, ...READ_ONLY_FIELDS]);
      return wafRecord(input, current as WafRuleRecord, at);
    }).then((r) => this.#toWaf(r as WafRuleRecord));
  }

  removeWaf(id: string): Promise<void> {
    return this.#remove('waf', id);
  }

  listRateLimits(): RateLimitRule[] {
    return sorted(this.#store.read().policies.rateLimits).map((r) => ({ ...r, key: [...r.key] }));
  }

  getRateLimit(id: string): RateLimitRule {
    const r = find(this.#store.read().policies.rateLimits, id);
    return { ...r, key: [...r.key] };
  }

  createRateLimit(body: unknown): Promise<RateLimitRule> {
    return this.#create('rateLimits', body, (input, at) => {
      rejectUnknownFields(input, [...RATE_LIMIT_FIELDS, ...READ_ONLY_FIELDS]);
      if (input.algorithm === undefined) throw invalid('algorithm', 'is required');
      return rateLimitRecord(input, null, at);
    }) as Promise<RateLimitRule>;
  }

  updateRateLimit(id: string, body: unknown): Promise<RateLimitRule> {
    return this.#update('rateLimits', id, body, (input, current, at) => {
      rejectUnknownFields(input, [...RATE_LIMIT_FIELDS, ...READ_ONLY_FIELDS]);
      return rateLimitRecord(input, current as RateLimitRuleRecord, at);
    }) as Promise<RateLimitRule>;
  }

  removeRateLimit(id: string): Promise<void> {
    return this.#remove('rateLimits', id);
  }

  listShapers(): Shaper[] {
    return sorted(this.#store.read().policies.shapers).map((r) => ({ ...r, key: [...r.key] }));
  }

  getShaper(id: string): Shaper {
    const r = find(this.#store.read().policies.shapers, id);
    return { ...r, key: [...r.key] };
  }

  createShaper(body: unknown): Promise<Shaper> {
    return this.#create('shapers', body, (input, at) => {
      rejectUnknownFields(input, [...SHAPER_FIELDS, ...READ_ONLY_FIELDS]);
      return shaperRecord(input, null, at);
    }) as Promise<Shaper>;
  }

  updateShaper(id: string, body: unknown): Promise<Shaper> {
    return this.#update('shapers', id, body, (input, current, at) => {
      rejectUnknownFields(input, [...SHAPER_FIELDS, ...READ_ONLY_FIELDS]);
      return shaperRecord(input, current as ShaperRecord, at);
    }) as Promise<Shaper>;
  }

  removeShaper(id: string): Promise<void> {
    return this.#remove('shapers', id);
  }

  /** Checks an expression without saving anything (the console validates as the admin types). */
  validateExpression(body: unknown): {
    valid: boolean;
    error: { message: string; position: number; line: number; column: number } | null;
  } {
    const input = requireObject(body);
    rejectUnknownFields(input, ['expression']);
    try {
      compileExpression(input.expression ?? '', 'expression');
      return { valid: true, error: null };
    } catch (err) {
      if (!(err instanceof AppError)) throw err;
      const d = (err.details ?? {}) as { position?: number; line?: number; column?: number };
      return {
        valid: false,
        error: { message: err.message, position: d.position ?? 0, line: d.line ?? 1, column: d.column ?? 1 },
      };
    }
  }

  /** What each stage would do with a described request (`POST /policies/test`). */
  test(body: unknown): { stages: PolicyTestStage[] } {
    const input = requireObject(body);
    rejectUnknownFields(input, ['method', 'host', 'path', 'headers', 'ip', 'listenerId']);
    const method =
      typeof input.method === 'string' && /^[A-Za-z]{1,16}$/.test(input.method) ? input.method : null;
    if (method === null) throw invalid('method', 'must be an HTTP method such as GET');
    if (typeof input.host !== 'string' || input.host.length > 253)
      throw invalid('host', 'must be a host name');
    if (typeof input.path !== 'string' || !input.path.startsWith('/') || input.path.length > 8192)
      throw invalid('path', 'must start with /');
    const headers: Record<string, string> = {};
    if (input.headers !== undefined) {
      const raw = requireObject(input.headers, 'headers');
      for (const [name, value] of Object.entries(raw)) {
        if (typeof value !== 'string') throw invalid(`headers.${name}`, 'must be a string');
        headers[name.toLowerCase()] = value;
      }
    }
    const ip = input.ip === undefined ? '127.0.0.1' : input.ip;
    if (typeof ip !== 'string' || ip.length > 64) throw invalid('ip', 'must be an address');
    const listenerId = input.listenerId === undefined || input.listenerId === null ? null : input.listenerId;
    if (listenerId !== null && typeof listenerId !== 'string')
      throw invalid('listenerId', 'must be a string');
    return {
      stages: this.#runtime.explain(
        {
          method: method.toUpperCase(),
          host: input.host.toLowerCase(),
          path: input.path,
          headers,
          ip,
          listenerId,
        },
        this.#compiled,
      ),
    };
  }

  #toWaf(record: Readonly<WafRuleRecord>): WafRule {
    return {
      ...record,
      auto: record.auto === null ? null : { ...record.auto },
      state: record.mode === 'auto' ? this.#runtime.wafAutoState(record.id) : null,
    };
  }

  #create(
    kind: Kind,
    body: unknown,
    build: (input: Record<string, unknown>, at: string) => PolicyRecord,
  ): Promise<PolicyRecord> {
    const input = requireObject(body);
    const record = build(input, new Date(this.#now()).toISOString());
    return this.#exclusive(async () => {
      await this.#store.update((db) => {
        const list = db.policies[kind] as PolicyRecord[];
        if (list.length >= MAX_RULES_PER_KIND)
          throw invalid('name', `at most ${MAX_RULES_PER_KIND} rules of a kind`);
        assertUnique(list, record);
        checkTemplate(db, record);
        list.push(record);
      });
      this.apply();
      return record;
    });
  }

  #update(
    kind: Kind,
    id: string,
    body: unknown,
    build: (input: Record<string, unknown>, current: PolicyRecord, at: string) => PolicyRecord,
  ): Promise<PolicyRecord> {
    const input = requireObject(body);
    return this.#exclusive(async () => {
      const current = find(this.#store.read().policies[kind] as PolicyRecord[], id);
      const next = build(input, current, new Date(this.#now()).toISOString());
      await this.#store.update((db) => {
        const list = db.policies[kind] as PolicyRecord[];
        const index = list.findIndex((r) => r.id === id);
        if (index < 0) throw new AppError('NOT_FOUND', 'no such rule');
        assertUnique(list, next);
        checkTemplate(db, next);
        list[index] = next;
      });
      this.apply();
      return next;
    });
  }

  #remove(kind: Kind, id: string): Promise<void> {
    return this.#exclusive(async () => {
      find(this.#store.read().policies[kind] as PolicyRecord[], id);
      await this.#store.update((db) => {
        (db.policies[kind] as PolicyRecord[]) = (db.policies[kind] as PolicyRecord[]).filter(
          (r) => r.id !== id,
        );
      });
      this.apply();
    });
  }

  #exclusive<T>(task: () => Promise<T>): Promise<T> {
    const run = this.#serial.then(task, task);
    this.#serial = run.catch(() => {});
    return run;
  }
}

type PolicyRecord = WafRuleRecord | RateLimitRuleRecord | ShaperRecord;

function find<R extends { id: string }>(list: readonly R[], id: string): R {
  const record = list.find((r) => r.id === id);
  if (!record) throw new AppError('NOT_FOUND', 'no such rule');
  return record;
}

function assertUnique(list: readonly PolicyRecord[], next: PolicyRecord): void {
  if (list.some((r) => r.id !== next.id && r.name === next.name))
    throw new AppError('CONFLICT', `a rule named "${next.name}" already exists`, {
      details: { field: 'name' },
    });
}

function checkTemplate(db: Readonly<Database>, record: PolicyRecord): void {
  if ('templateId' in record && record.templateId !== null)
    requireTemplateRef(db, record.templateId, 'templateId');
}

/** Ascending priority, then creation order (then id, for a stable order). */
function byOrder(a: { priority: number; createdAt: string; id: string }, b: typeof a): number {
  return (
    a.priority - b.priority ||
    (a.createdAt < b.createdAt ? -1 : a.createdAt > b.createdAt ? 1 : 0) ||
    (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)
  );
}

function sorted<R extends { priority: number; createdAt: string; id: string }>(list: readonly R[]): R[] {
  return [...list].sort(byOrder);
}

function compileList<R extends PolicyRecord>(list: readonly R[]): Compiled<R>[] {
  const out: Compiled<R>[] = [];
  for (const record of sorted(list)) {
    if (!record.enabled) continue;
    try {
      out.push({ record, match: compileExpression(record.expression) });
    } catch {
      // Only a hand-edited database gets here: the API refuses such a rule.
    }
  }
  return out;
}

/** Compiles the enabled rules of a database. */
export function compileAll(db: Readonly<Database>): CompiledPolicies {
  return {
    waf: compileList(db.policies.waf),
    rateLimits: compileList(db.policies.rateLimits),
    shapers: compileList(db.policies.shapers),
  };
}

// --- field validation ------------------------------------------------------

function number(value: unknown, field: string, min: number, max: number, integer = true): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || (integer && !Number.isInteger(value)))
    throw invalid(field, integer ? 'must be an integer' : 'must be a number');
  if (value < min || value > max) throw invalid(field, `must be between ${min} and ${max}`);
  return value;
}

function common(
  input: Record<string, unknown>,
  current: PolicyRecord | null,
): { name: string; priority: number; expression: string; enabled: boolean } {
  const name =
    input.name === undefined
      ? current === null
        ? requireName(undefined)
        : current.name
      : requireName(input.name);
  const priority =
    input.priority === undefined
      ? (current?.priority ?? 0)
      : number(input.priority, 'priority', MIN_POLICY_PRIORITY, MAX_POLICY_PRIORITY);
  let expression = current?.expression ?? '';
  if (input.expression !== undefined && input.expression !== null) {
    compileExpression(input.expression, 'expression');
    expression = (input.expression as string).trim();
  } else if (input.expression === null) expression = '';
  const enabled =
    input.enabled === undefined
      ? (current?.enabled ?? true)
      : optionalBoolean(input.enabled, 'enabled', true);
  return { name, priority, expression, enabled };
}

function templateRef(value: unknown, current: string | null): string | null {
  if (value === undefined) return current;
  if (value === null || value === '') return null;
  if (typeof value !== 'string') throw invalid('templateId', 'no such template');
  return value;
}

function pick<T>(input: Record<string, unknown>, key: string, current: T): unknown {
  return input[key] === undefined ? current : input[key];
}

function wafRecord(input: Record<string, unknown>, current: WafRuleRecord | null, at: string): WafRuleRecord {
  const base = common(input, current);
  const action = pick(input, 'action', current?.action);
  if (typeof action !== 'string' || !(WAF_ACTIONS as readonly string[]).includes(action))
    throw invalid('action', `must be one of ${WAF_ACTIONS.join(', ')}`);
  const status = number(pick(input, 'status', current?.status ?? 403), 'status', 400, 599);
  const mode = pick(input, 'mode', current?.mode ?? 'always');
  if (mode !== 'always' && mode !== 'auto') throw invalid('mode', 'must be always or auto');
  let auto: WafAutoRecord | null = null;
  if (mode === 'auto') {
    const raw = pick(input, 'auto', current?.auto ?? undefined);
    if (raw === undefined || raw === null) throw invalid('auto', 'is required in auto mode');
    const a = requireObject(raw, 'auto');
    rejectUnknownFields(Object.fromEntries(Object.entries(a).map(([k, v]) => [`auto.${k}`, v])), [
      'auto.requestsPerSecond',
      'auto.errorRatio',
      'auto.forSeconds',
      'auto.coolDownSeconds',
    ]);
    const requestsPerSecond =
      a.requestsPerSecond === undefined || a.requestsPerSecond === null
        ? null
        : number(a.requestsPerSecond, 'auto.requestsPerSecond', 1, 10_000_000, false);
    const errorRatio =
      a.errorRatio === undefined || a.errorRatio === null
        ? null
        : number(a.errorRatio, 'auto.errorRatio', 0.001, 1, false);
    if (requestsPerSecond === null && errorRatio === null)
      throw invalid('auto.requestsPerSecond', 'give requestsPerSecond, errorRatio or both');
    auto = {
      requestsPerSecond,
      errorRatio,
      forSeconds: a.forSeconds === undefined ? 10 : number(a.forSeconds, 'auto.forSeconds', 1, 3600),
      coolDownSeconds:
        a.coolDownSeconds === undefined ? 60 : number(a.coolDownSeconds, 'auto.coolDownSeconds', 1, 86_400),
    };
  }
  return {
    id: current?.id ?? newId(),
    ...base,
    action: action as WafRuleRecord['action'],
    status,
    templateId: templateRef(input.templateId, current?.templateId ?? null),
    mode,
    auto,
    passTtlSeconds: number(
      pick(input, 'passTtlSeconds', current?.passTtlSeconds ?? DEFAULT_PASS_TTL_SECONDS),
      'passTtlSeconds',
      60,
      30 * 86_400,
    ),
    createdAt: current?.createdAt ?? at,
    updatedAt: at,
  };
}

const HEADER_NAME = /^[a-z0-9!#$%&'*+.^_`|~-]{1,64}$/;

/** A key: 1–6 distinct parts among ip, host, path, route and header:NAME (default `["ip"]`). */
function requireKey(value: unknown, current: string[] | undefined): string[] {
  if (value === undefined) return current ?? ['ip'];
  if (!Array.isArray(value) || value.length === 0 || value.length > MAX_KEY_PARTS)
    throw invalid('key', `must list 1 to ${MAX_KEY_PARTS} of ip, host, path, route, header:NAME`);
  const parts: string[] = [];
  value.forEach((part, i) => {
    if (typeof part !== 'string') throw invalid(`key.${i}`, 'must be a string');
    let normal = part.trim();
    if (normal.toLowerCase().startsWith('header:')) {
      const name = normal.slice(7).trim().toLowerCase();
      if (!HEADER_NAME.test(name)) throw invalid(`key.${i}`, 'header:NAME needs a header name');
      normal = `header:${name}`;
    } else if (!['ip', 'host', 'path', 'route'].includes(normal))
      throw invalid(`key.${i}`, 'must be ip, host, path, route or header:NAME');
    if (parts.includes(normal)) throw invalid(`key.${i}`, `${normal} is listed twice`);
    parts.push(normal);
  });
  return parts;
}

function rateLimitRecord(
  input: Record<string, unknown>,
  current: RateLimitRuleRecord | null,
  at: string,
): RateLimitRuleRecord {
  const base = common(input, current);
  const algorithm = pick(input, 'algorithm', current?.algorithm);
  if (typeof algorithm !== 'string' || !(RATE_LIMIT_ALGORITHMS as readonly string[]).includes(algorithm))
    throw invalid('algorithm', `must be one of ${RATE_LIMIT_ALGORITHMS.join(', ')}`);
  let limit: number | null = null;
  let windowSeconds: number | null = null;
  let ratePerSecond: number | null = null;
  let burst: number | null = null;
  if (algorithm === 'token_bucket') {
    const rate = pick(input, 'ratePerSecond', current?.ratePerSecond ?? undefined);
    if (rate === undefined || rate === null) throw invalid('ratePerSecond', 'is required for token_bucket');
    ratePerSecond = number(rate, 'ratePerSecond', 0.001, 1_000_000_000, false);
    const b = pick(input, 'burst', current?.burst ?? undefined);
    burst =
      b === undefined || b === null
        ? Math.max(1, Math.ceil(ratePerSecond))
        : number(b, 'burst', 1, 1_000_000_000);
  } else {
    const l = pick(input, 'limit', current?.limit ?? undefined);
    if (l === undefined || l === null) throw invalid('limit', `is required for ${algorithm}`);
    limit = number(l, 'limit', 1, 1_000_000_000);
    const w = pick(input, 'windowSeconds', current?.windowSeconds ?? undefined);
    if (w === undefined || w === null) throw invalid('windowSeconds', `is required for ${algorithm}`);
    windowSeconds = number(w, 'windowSeconds', 1, 86_400);
  }
  return {
    id: current?.id ?? newId(),
    ...base,
    key: requireKey(input.key, current?.key),
    algorithm: algorithm as RateLimitRuleRecord['algorithm'],
    limit,
    windowSeconds,
    ratePerSecond,
    burst,
    status: number(pick(input, 'status', current?.status ?? 429), 'status', 400, 599),
    templateId: templateRef(input.templateId, current?.templateId ?? null),
    createdAt: current?.createdAt ?? at,
    updatedAt: at,
  };
}

function rate(value: unknown, field: string): number | null {
  if (value === undefined || value === null) return null;
  return number(value, field, MIN_SHAPER_RATE, MAX_SHAPER_RATE);
}

function shaperRecord(
  input: Record<string, unknown>,
  current: ShaperRecord | null,
  at: string,
): ShaperRecord {
  const base = common(input, current);
  const download = rate(
    pick(input, 'downloadBytesPerSecond', current?.downloadBytesPerSecond),
    'downloadBytesPerSecond',
  );
  const upload = rate(
    pick(input, 'uploadBytesPerSecond', current?.uploadBytesPerSecond),
    'uploadBytesPerSecond',
  );
  if (download === null && upload === null)
    throw invalid('downloadBytesPerSecond', 'give downloadBytesPerSecond, uploadBytesPerSecond or both');
  const burst = pick(input, 'burstBytes', current?.burstBytes ?? undefined);
  return {
    id: current?.id ?? newId(),
    ...base,
    key: requireKey(input.key, current?.key),
    downloadBytesPerSecond: download,
    uploadBytesPerSecond: upload,
    burstBytes:
      burst === undefined || burst === null
        ? Math.max(download ?? 0, upload ?? 0)
        : number(burst, 'burstBytes', 0, 1024 ** 3),
    exemptBytes: number(pick(input, 'exemptBytes', current?.exemptBytes ?? 0), 'exemptBytes', 0, 1024 ** 4),
    createdAt: current?.createdAt ?? at,
    updatedAt: at,
  };
}
