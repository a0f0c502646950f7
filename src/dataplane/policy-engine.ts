/**
 * The traffic-policy stages of the pipeline (docs/pipeline.md "The policy
 * stages"): WAF, rate limits and shapers, built from the compiled rule set the
 * policy service hands over ({@link PolicyEngine.setPolicies}) and installed in
 * their pipeline slots — an empty kind installs nothing, so it costs nothing.
 *
 * - WAF: rules in order; `log` records and goes on, `allow` skips the later
 *   WAF rules, `block` answers `status` (with the rule's template), and
 *   `challenge` answers the proof-of-work page unless the client holds a valid
 *   pass cookie for the rule (challenge.ts). An `auto` rule is skipped until
 *   its listener's request rate or error ratio has stayed past a threshold
 *   for `forSeconds`, and switches off after `coolDownSeconds` below them;
 *   each switch is logged and kept for the policy page.
 * - Rate limits: every matching rule counts the request under its key; the
 *   first that refuses answers `status` (429) with `Retry-After`; answers
 *   carry `RateLimit-Policy` and `RateLimit` for the matching rules.
 * - Shapers: the first matching shaper throttles the response body and the
 *   request body of its key by backpressure.
 *
 * Counters survive a configuration change for the rules whose limits did not
 * change; key state is bounded (rate-limiter.ts).
 */

import {
  blankKeys,
  type CompiledExpression,
  type PolicyRequestFacts,
  withBlanks,
} from '../domain/policy-expression.js';
import type {
  CompiledPolicies,
  PolicyTestRequest,
  PolicyTestStage,
  WafAutoState,
} from '../domain/policy-service.js';
import type { Logger } from '../logger.js';
import type { MetricsRegistry } from '../metrics/metrics-registry.js';
import type { RateLimitRuleRecord, ShaperRecord, WafRuleRecord } from '../storage/schema.js';
import { fullBucket, reserveBytes, shapedSink, shapedUpload } from './byte-shaper.js';
import {
  CHALLENGE_PATH,
  ChallengeSigner,
  challengePage,
  cookieValue,
  PASS_COOKIE_PREFIX,
  safeReturnPath,
  solverScript,
} from './challenge.js';
import { CONTINUE, type PipelineRequest, type Stage, type StageAnswer, type StageSlot } from './pipeline.js';
import {
  consume,
  DEFAULT_MAX_RATE_LIMIT_KEYS,
  KeyStore,
  type LimitSpec,
  type LimitVerdict,
} from './rate-limiter.js';

export interface PolicyEngineOptions {
  /** Installs a stage in its slot (the data plane's `setStage`). */
  install(slot: StageSlot, stage: Stage | null): void;
  logger: Logger;
  metrics?: MetricsRegistry;
  now?: () => number;
  /** Rate-limit keys kept at most (default 100 000). */
  maxRateLimitKeys?: number;
  /** Shaper keys kept at most (default 100 000). */
  maxShaperKeys?: number;
  challengeDifficulty?: number;
  /** How often auto-mode rules are evaluated (default 1000 ms). */
  autoTickMs?: number;
  /** The name of a listener (the `listener` variable of a tested request). */
  listenerName?: (id: string) => string | null;
}

const FACTS = 'policy.facts';
const FACTS_BLANK = 'policy.facts.blank';
const SWITCH_HISTORY = 20;

interface AutoListenerState {
  active: boolean;
  aboveSince: number | null;
  belowSince: number | null;
}

interface AutoRuleState {
  listeners: Map<string, AutoListenerState>;
  switches: WafAutoState['switches'];
}

/** Requests and errors of one listener, per second over the last minute. */
class ListenerCounter {
  readonly requests = new Float64Array(60);
  readonly errors = new Float64Array(60);
  readonly seconds = new Float64Array(60);

  add(now: number, error: boolean): void {
    const second = Math.floor(now / 1000);
    const i = second % 60;
    if (this.seconds[i] !== second) {
      this.seconds[i] = second;
      this.requests[i] = 0;
      this.errors[i] = 0;
    }
    this.requests[i]!++;
    if (error) this.errors[i]!++;
  }

  /** Requests and errors in the last full second before `now`. */
  lastSecond(now: number): { requests: number; errors: number } {
    const second = Math.floor(now / 1000) - 1;
    const i = ((second % 60) + 60) % 60;
    if (this.seconds[i] !== second) return { requests: 0, errors: 0 };
    return { requests: this.requests[i]!, errors: this.errors[i]! };
  }
}

/** One rule's limit and the header item names. */
interface LimitRule {
  readonly rule: RateLimitRuleRecord;
  readonly spec: LimitSpec;
  readonly prefix: string;
  readonly policyItem: string;
  readonly itemName: string;
}

function limitSpec(rule: RateLimitRuleRecord): LimitSpec {
  if (rule.algorithm === 'token_bucket') {
    const rate = rule.ratePerSecond ?? 1;
    const burst = rule.burst ?? 1;
    return {
      algorithm: 'token_bucket',
      limit: burst,
      windowMs: (burst / rate) * 1000,
      ratePerMs: rate / 1000,
    };
  }
  return {
    algorithm: rule.algorithm,
    limit: rule.limit ?? 1,
    windowMs: (rule.windowSeconds ?? 1) * 1000,
    ratePerMs: 0,
  };
}

/** A structured-field string (RFC 8941) for a header item name. */
function sfString(value: string): string {
  return `"${value.replace(/[^\u0020-\u007e]/g, '?').replace(/["\\]/g, '\\$&')}"`;
}

/** Header and query keys read as '' when absent (the union over the rule set). */
interface Blanks {
  readonly headers: readonly string[];
  readonly query: readonly string[];
}

/**
 * The policy facts of a request, built once per request and shared by the
 * stages: as received (`raw`), or with blanks for absent keys (`blank`, for
 * expressions that read the maps only by key).
 */
function factsOf(request: PipelineRequest, blanks: Blanks, blank: boolean): PolicyRequestFacts {
  const note = blank ? FACTS_BLANK : FACTS;
  let facts = request.notes.get(note) as PolicyRequestFacts | undefined;
  if (facts === undefined) {
    let query: Record<string, string> | null = null;
    const raw = request.query;
    const queryKeys = blank ? blanks.query : [];
    facts = {
      method: request.method,
      host: request.host ?? '',
      path: request.path,
      ip: request.clientIp ?? '',
      listener: request.listener.name,
      get query() {
        query ??= queryKeys.length === 0 ? parseQuery(raw) : blankKeys(parseQuery(raw), queryKeys);
        return query;
      },
      headers:
        blank && blanks.headers.length > 0 ? blankKeys(request.headers, blanks.headers) : request.headers,
    };
    request.notes.set(note, facts);
  }
  return facts;
}

function blanksOf(policies: CompiledPolicies): Blanks {
  const headers = new Set<string>();
  const query = new Set<string>();
  for (const list of [policies.waf, policies.rateLimits, policies.shapers] as const) {
    for (const { match } of list) {
      for (const k of match.blanks?.headers ?? []) headers.add(k);
      for (const k of match.blanks?.query ?? []) query.add(k);
    }
  }
  return { headers: [...headers], query: [...query] };
}

/** Whether `match` matches the request (against the facts it reads). */
function matchesRequest(match: CompiledExpression, request: PipelineRequest, blanks: Blanks): boolean {
  if (match.always) return true;
  return match.matches(factsOf(request, blanks, match.blanks !== null));
}

function parseQuery(raw: string): Record<string, string> {
  const out: Record<string, string> = {};
  if (raw === '') return out;
  for (const [k, v] of new URLSearchParams(raw)) if (!(k in out)) out[k] = v;
  return out;
}

function keyOf(parts: readonly string[], request: PipelineRequest): string {
  let key = '';
  for (const part of parts) {
    let value: string;
    switch (part) {
      case 'ip':
        value = request.clientIp ?? '';
        break;
      case 'host':
        value = request.host ?? '';
        break;
      case 'path':
        value = request.path;
        break;
      case 'route':
        value = request.route?.id ?? '';
        break;
      default: {
        const header = request.headers[part.slice(7)];
        value = header === undefined ? '' : Array.isArray(header) ? header.join(',') : header;
      }
    }
    key += `\u0000${value}`;
  }
  return key;
}

export class PolicyEngine {
  readonly #install: PolicyEngineOptions['install'];
  readonly #logger: Logger;
  readonly #now: () => number;
  readonly #limits: KeyStore;
  readonly #buckets: KeyStore;
  readonly #signer: ChallengeSigner;
  readonly #autoTickMs: number;
  readonly #listenerName: (id: string) => string | null;
  readonly #auto = new Map<string, AutoRuleState>();
  readonly #listenerCounters = new Map<string, ListenerCounter>();
  #policies: CompiledPolicies = { waf: [], rateLimits: [], shapers: [] };
  #limitRules: LimitRule[] = [];
  #blanks: Blanks = { headers: [], query: [] };
  #timer: NodeJS.Timeout | null = null;
  readonly #decisions: ((stage: string, action: string) => void) | null;

  constructor(options: PolicyEngineOptions) {
    this.#install = options.install;
    this.#logger = options.logger;
    this.#now = options.now ?? Date.now;
    this.#limits = new KeyStore(options.maxRateLimitKeys ?? DEFAULT_MAX_RATE_LIMIT_KEYS);
    this.#buckets = new KeyStore(options.maxShaperKeys ?? DEFAULT_MAX_RATE_LIMIT_KEYS);
    this.#signer = new ChallengeSigner({ difficulty: options.challengeDifficulty });
    this.#autoTickMs = options.autoTickMs ?? 1000;
    this.#listenerName = options.listenerName ?? (() => null);
    const metrics = options.metrics;
    if (metrics) {
      const counter = metrics.counter({
        name: 'p2pstream_policy_decisions_total',
        help: 'Decisions of the traffic-policy stages, by stage and action.',
        labelNames: ['stage', 'action'],
      });
      this.#decisions = (stage, action) => counter.inc({ stage, action });
      const keys = metrics.gauge({
        name: 'p2pstream_policy_keys',
        help: 'Keys held by policies.',
        labelNames: ['kind'],
      });
      const self = this;
      metrics.gauge({
        name: 'p2pstream_waf_auto_active',
        help: 'Auto-mode WAF rules switched on (per rule and listener).',
        collect() {
          let active = 0;
          for (const state of self.#auto.values())
            for (const l of state.listeners.values()) if (l.active) active++;
          this.set(active);
          keys.set({ kind: 'rate_limit' }, self.#limits.size);
          keys.set({ kind: 'shaper' }, self.#buckets.size);
        },
      });
    } else this.#decisions = null;
  }

  /** The rate-limit key store (its size is bounded by `maxRateLimitKeys`). */
  get rateLimitKeys(): KeyStore {
    return this.#limits;
  }

  /** Replaces the running rule set and reinstalls the stages. */
  setPolicies(policies: CompiledPolicies): void {
    const previous = new Map(this.#limitRules.map((l) => [l.rule.id, l]));
    this.#policies = policies;
    this.#blanks = blanksOf(policies);
    this.#limitRules = policies.rateLimits.map(({ record }) => {
      const spec = limitSpec(record);
      const old = previous.get(record.id);
      previous.delete(record.id);
      const prefix = `${record.id}\u0001`;
      if (old && JSON.stringify(old.spec) !== JSON.stringify(spec)) this.#limits.dropPrefix(prefix);
      const itemName = sfString(record.name);
      const windowSeconds = Math.max(1, Math.round(spec.windowMs / 1000));
      return {
        rule: record,
        spec,
        prefix,
        itemName,
        policyItem: `${itemName};q=${spec.limit};w=${windowSeconds}`,
      };
    });
    for (const gone of previous.values()) this.#limits.dropPrefix(gone.prefix);
    for (const id of [...this.#auto.keys()])
      if (!policies.waf.some((w) => w.record.id === id && w.record.mode === 'auto')) this.#auto.delete(id);
    for (const { record } of policies.waf)
      if (record.mode === 'auto' && !this.#auto.has(record.id))
        this.#auto.set(record.id, { listeners: new Map(), switches: [] });
    this.#install('waf', policies.waf.length === 0 ? null : this.#wafStage());
    this.#install('rate_limit', policies.rateLimits.length === 0 ? null : this.#rateLimitStage());
    this.#install('shaper', policies.shapers.length === 0 ? null : this.#shaperStage());
    this.#scheduleAuto();
  }

  wafAutoState(ruleId: string): WafAutoState | null {
    const state = this.#auto.get(ruleId);
    if (!state) return null;
    return {
      activeListeners: [...state.listeners].filter(([, l]) => l.active).map(([id]) => id),
      switches: state.switches.map((s) => ({ ...s })),
    };
  }

  /** Stops the auto-mode timer. */
  close(): void {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
  }

  // --- WAF -------------------------------------------------------------------

  #wafStage(): Stage {
    const rules = this.#policies.waf;
    const hasChallenge = rules.some((r) => r.record.action === 'challenge');
    const hasAuto = rules.some((r) => r.record.mode === 'auto');
    const stage: Stage = {
      slot: 'waf',
      decide: (request) => {
        if (hasChallenge && request.path === CHALLENGE_PATH) return this.#verifyChallenge(request);
        const blanks = this.#blanks;
        for (const { record, match } of rules) {
          if (record.mode === 'auto' && !this.#autoActive(record.id, request.listener.id)) continue;
          if (!matchesRequest(match, request, blanks)) continue;
          switch (record.action) {
            case 'log':
              this.#decide(request, 'waf', record.name, 'log');
              continue;
            case 'allow':
              this.#decide(request, 'waf', record.name, 'allow');
              return CONTINUE;
            case 'block':
              this.#decide(request, 'waf', record.name, 'block');
              return this.#blockAnswer(record);
            case 'challenge': {
              const ip = request.clientIp ?? '';
              const cookie = cookieValue(request.headers.cookie, PASS_COOKIE_PREFIX + record.id);
              if (cookie !== null && this.#signer.verifyPass(cookie, record.id, ip, this.#now())) {
                this.#decide(request, 'waf', record.name, 'pass');
                continue;
              }
              this.#decide(request, 'waf', record.name, 'challenge');
              return this.#challengeAnswer(record, request);
            }
          }
        }
        return CONTINUE;
      },
    };
    if (hasAuto) {
      stage.complete = (done) => {
        const id = done.request.listener.id;
        let counter = this.#listenerCounters.get(id);
        if (!counter) {
          counter = new ListenerCounter();
          this.#listenerCounters.set(id, counter);
        }
        counter.add(this.#now(), done.status === null || done.status >= 500);
      };
    }
    return stage;
  }

  #blockAnswer(record: WafRuleRecord): StageAnswer {
    if (record.templateId !== null)
      return {
        status: record.status,
        template: { id: record.templateId, values: { ruleName: record.name } },
      };
    return {
      status: record.status,
      headers: ['content-type', 'text/plain; charset=utf-8', 'cache-control', 'no-store'],
      body: 'blocked\n',
    };
  }

  #challengeAnswer(record: WafRuleRecord, request: PipelineRequest): StageAnswer {
    const token = this.#signer.challenge(record.id, request.clientIp ?? '', this.#now());
    const back = safeReturnPath(request.path + (request.query === '' ? '' : `?${request.query}`));
    if (record.templateId !== null) {
      return {
        status: record.status,
        template: {
          id: record.templateId,
          values: { ruleName: record.name },
          append: solverScript(token, this.#signer.difficulty, back),
        },
      };
    }
    return {
      status: record.status,
      headers: ['content-type', 'text/html; charset=utf-8', 'cache-control', 'no-store'],
      body: challengePage(token, this.#signer.difficulty, back),
    };
  }

  #verifyChallenge(request: PipelineRequest): StageAnswer {
    const params = new URLSearchParams(request.query);
    const ip = request.clientIp ?? '';
    const ruleId = this.#signer.verifySolution(params.get('c') ?? '', params.get('s') ?? '', ip, this.#now());
    const rule = ruleId === null ? undefined : this.#policies.waf.find((w) => w.record.id === ruleId)?.record;
    if (!rule) {
      request.recordDecision('waf', 'challenge', 'challenge_failed');
      return {
        status: 403,
        headers: ['content-type', 'text/plain; charset=utf-8', 'cache-control', 'no-store'],
        body: 'challenge failed\n',
      };
    }
    this.#decide(request, 'waf', rule.name, 'challenge_solved');
    const pass = this.#signer.pass(rule.id, ip, rule.passTtlSeconds, this.#now());
    const cookie = `${PASS_COOKIE_PREFIX}${rule.id}=${pass}; Path=/; Max-Age=${rule.passTtlSeconds}; HttpOnly; SameSite=Lax${request.listener.secure ? '; Secure' : ''}`;
    return {
      status: 303,
      headers: [
        'location',
        safeReturnPath(params.get('r')),
        'set-cookie',
        cookie,
        'cache-control',
        'no-store',
      ],
      body: null,
    };
  }

  #autoActive(ruleId: string, listenerId: string): boolean {
    return this.#auto.get(ruleId)?.listeners.get(listenerId)?.active === true;
  }

  #scheduleAuto(): void {
    const needed = this.#auto.size > 0;
    if (needed && this.#timer === null) {
      this.#timer = setInterval(() => this.tickAuto(), this.#autoTickMs);
      this.#timer.unref();
    } else if (!needed && this.#timer !== null) this.close();
  }

  /** Evaluates auto-mode thresholds (run by a timer; exposed for tests). */
  tickAuto(): void {
    const now = this.#now();
    for (const { record } of this.#policies.waf) {
      const state = this.#auto.get(record.id);
      const auto = record.auto;
      if (!state || !auto) continue;
      for (const [listenerId, counter] of this.#listenerCounters) {
        const { requests, errors } = counter.lastSecond(now);
        const rateHot = auto.requestsPerSecond !== null && requests >= auto.requestsPerSecond;
        const errorHot = auto.errorRatio !== null && requests > 0 && errors / requests >= auto.errorRatio;
        const hot = rateHot || errorHot;
        let l = state.listeners.get(listenerId);
        if (!l) {
          if (!hot) continue;
          l = { active: false, aboveSince: null, belowSince: null };
          state.listeners.set(listenerId, l);
        }
        if (hot) {
          l.belowSince = null;
          l.aboveSince ??= now;
          if (!l.active && now - l.aboveSince >= auto.forSeconds * 1000) {
            const reason = rateHot
              ? `${requests} requests/s ≥ ${auto.requestsPerSecond}`
              : `error ratio ${(errors / requests).toFixed(3)} ≥ ${auto.errorRatio}`;
            this.#switch(record, state, listenerId, l, true, reason, now);
          }
        } else {
          l.aboveSince = null;
          if (l.active) {
            l.belowSince ??= now;
            if (now - l.belowSince >= auto.coolDownSeconds * 1000)
              this.#switch(record, state, listenerId, l, false, `calm for ${auto.coolDownSeconds} s`, now);
          } else state.listeners.delete(listenerId);
        }
      }
    }
  }

  #switch(
    record: WafRuleRecord,
    state: AutoRuleState,
    listenerId: string,
    l: AutoListenerState,
    active: boolean,
    reason: string,
    now: number,
  ): void {
    l.active = active;
    l.aboveSince = null;
    l.belowSince = null;
    state.switches.push({ at: new Date(now).toISOString(), listenerId, active, reason });
    if (state.switches.length > SWITCH_HISTORY) state.switches.shift();
    this.#logger.warn(
      { ruleId: record.id, listenerId, active, reason },
      `WAF rule "${record.name}" switched ${active ? 'on' : 'off'} (${reason})`,
    );
  }

  // --- rate limits -----------------------------------------------------------

  #rateLimitStage(): Stage {
    const limits = this.#limitRules;
    const rules = this.#policies.rateLimits;
    return {
      slot: 'rate_limit',
      decide: (request) => {
        const blanks = this.#blanks;
        const now = this.#now();
        let policy = '';
        let state = '';
        for (let i = 0; i < rules.length; i++) {
          if (!matchesRequest(rules[i]!.match, request, blanks)) continue;
          const limit = limits[i]!;
          const verdict = consume(
            this.#limits,
            limit.prefix + keyOf(limit.rule.key, request),
            limit.spec,
            now,
          );
          policy = policy === '' ? limit.policyItem : `${policy}, ${limit.policyItem}`;
          const item = `${limit.itemName};r=${verdict.remaining};t=${verdict.resetSeconds}`;
          state = state === '' ? item : `${state}, ${item}`;
          if (!verdict.allowed) {
            this.#decide(request, 'rate_limit', limit.rule.name, 'limit');
            return this.#refusal(limit.rule, verdict, policy, state);
          }
        }
        if (policy !== '') {
          request.addResponseHeader('ratelimit-policy', policy);
          request.addResponseHeader('ratelimit', state);
        }
        return CONTINUE;
      },
    };
  }

  #refusal(rule: RateLimitRuleRecord, verdict: LimitVerdict, policy: string, state: string): StageAnswer {
    const headers = [
      'retry-after',
      String(verdict.retryAfterSeconds),
      'ratelimit-policy',
      policy,
      'ratelimit',
      state,
    ];
    if (rule.templateId !== null)
      return {
        status: rule.status,
        headers,
        template: {
          id: rule.templateId,
          values: { ruleName: rule.name, retryAfter: verdict.retryAfterSeconds },
        },
      };
    headers.push('content-type', 'text/plain; charset=utf-8', 'cache-control', 'no-store');
    return { status: rule.status, headers, body: 'rate limited\n' };
  }

  // --- shapers ---------------------------------------------------------------

  #shaperStage(): Stage {
    const shapers = this.#policies.shapers;
    const KEY = 'policy.shaper';
    type Choice = { shaper: ShaperRecord; key: string } | null;
    const select = (request: PipelineRequest): Choice => {
      let choice: Choice = null;
      const blanks = this.#blanks;
      for (const { record, match } of shapers) {
        if (!matchesRequest(match, request, blanks)) continue;
        this.#decide(request, 'shaper', record.name, 'shape');
        choice = { shaper: record, key: `${record.id}\u0001${keyOf(record.key, request)}` };
        break;
      }
      request.notes.set(KEY, choice);
      return choice;
    };
    const chosen = (request: PipelineRequest): Choice =>
      (request.notes.get(KEY) as Choice | undefined) ?? null;
    return {
      slot: 'shaper',
      decide: (request) => {
        select(request);
        return CONTINUE;
      },
      response: (request, head) => {
        // An answer from an earlier stage (a cache hit) is shaped too; refusals and errors are not.
        const decided = request.notes.has(KEY);
        const c = decided ? chosen(request) : head.status < 400 ? select(request) : null;
        if (c === null || c.shaper.downloadBytesPerSecond === null) return null;
        const rate = c.shaper.downloadBytesPerSecond;
        const reserve = this.#reserver(`d${c.key}`, rate, c.shaper.burstBytes);
        const exempt = c.shaper.exemptBytes;
        return (next) => shapedSink(next, reserve, exempt);
      },
      requestBody: (request) => {
        const c = chosen(request);
        if (c === null || c.shaper.uploadBytesPerSecond === null) return null;
        return shapedUpload(
          this.#reserver(`u${c.key}`, c.shaper.uploadBytesPerSecond, c.shaper.burstBytes),
          c.shaper.exemptBytes,
        );
      },
    };
  }

  #reserver(key: string, rate: number, burst: number): (bytes: number) => number {
    return (bytes) => {
      const now = this.#now();
      const state = this.#buckets.get(key, now, () => fullBucket(burst, now));
      return reserveBytes(state, bytes, rate, burst, now);
    };
  }

  #decide(
    request: PipelineRequest,
    stage: 'waf' | 'rate_limit' | 'shaper',
    rule: string,
    action: string,
  ): void {
    request.recordDecision(stage, rule, action);
    this.#decisions?.(stage, action);
  }

  // --- explain (POST /policies/test) ----------------------------------------

  /** What each stage would do with a described request; counts nothing. */
  explain(input: PolicyTestRequest, policies: CompiledPolicies): PolicyTestStage[] {
    const listenerName = input.listenerId === null ? '' : (this.#listenerName(input.listenerId) ?? '');
    const facts: PolicyRequestFacts = {
      method: input.method,
      host: input.host,
      path: input.path.split('?')[0] ?? input.path,
      ip: input.ip,
      listener: listenerName,
      query: parseQuery(input.path.includes('?') ? input.path.slice(input.path.indexOf('?') + 1) : ''),
      headers: input.headers,
    };
    const blank = withBlanks(facts, blanksOf(policies));
    const test = (match: CompiledExpression) => match.matches(match.blanks === null ? facts : blank);
    const stages: PolicyTestStage[] = [];
    let wafDecided = false;
    for (const { record, match } of policies.waf) {
      if (!test(match)) continue;
      const autoOff = record.mode === 'auto' && !this.#autoActive(record.id, input.listenerId ?? '');
      if (autoOff) {
        stages.push({
          stage: 'waf',
          rule: record.name,
          action: 'skip',
          detail: 'auto mode: not switched on',
        });
        continue;
      }
      const detail =
        record.action === 'block'
          ? `answers ${record.status}${record.templateId ? ' with its template' : ''}`
          : record.action === 'challenge'
            ? `proof-of-work page unless a pass cookie is held (valid ${record.passTtlSeconds} s)`
            : record.action === 'allow'
              ? 'later WAF rules are skipped'
              : 'recorded in the trace only';
      stages.push({ stage: 'waf', rule: record.name, action: record.action, detail });
      if (record.action !== 'log') {
        wafDecided = true;
        break;
      }
    }
    if (!wafDecided && !stages.some((s) => s.stage === 'waf'))
      stages.push({ stage: 'waf', rule: null, action: 'continue', detail: 'no WAF rule matches' });
    const blocked = stages.some(
      (s) => s.stage === 'waf' && (s.action === 'block' || s.action === 'challenge'),
    );
    if (blocked) return stages;
    const fake = {
      method: input.method,
      host: input.host,
      path: facts.path,
      query: '',
      headers: input.headers,
      clientIp: input.ip,
      route: null,
    } as unknown as PipelineRequest;
    let limited = false;
    for (const { record, match } of policies.rateLimits) {
      if (!test(match)) continue;
      const spec = limitSpec(record);
      const key = `${record.id}\u0001${keyOf(record.key, fake)}`;
      const verdict = consume(this.#limits, key, spec, this.#now(), true);
      stages.push({
        stage: 'rate_limit',
        rule: record.name,
        action: verdict.allowed ? 'count' : 'limit',
        detail: verdict.allowed
          ? `${verdict.remaining} left of ${spec.limit} (${record.algorithm})`
          : `answers ${record.status}, Retry-After ${verdict.retryAfterSeconds}`,
      });
      if (!verdict.allowed) {
        limited = true;
        break;
      }
    }
    if (!stages.some((s) => s.stage === 'rate_limit'))
      stages.push({ stage: 'rate_limit', rule: null, action: 'continue', detail: 'no rate limit matches' });
    if (limited) return stages;
    const shaper = policies.shapers.find((s) => test(s.match));
    stages.push(
      shaper
        ? {
            stage: 'shaper',
            rule: shaper.record.name,
            action: 'shape',
            detail: [
              shaper.record.downloadBytesPerSecond === null
                ? null
                : `down ${shaper.record.downloadBytesPerSecond} B/s`,
              shaper.record.uploadBytesPerSecond === null
                ? null
                : `up ${shaper.record.uploadBytesPerSecond} B/s`,
            ]
              .filter(Boolean)
              .join(', '),
          }
        : { stage: 'shaper', rule: null, action: 'continue', detail: 'no shaper matches' },
    );
    return stages;
  }
}
