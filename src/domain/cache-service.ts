/**
 * Response cache configuration (docs/pipeline.md "The cache stage"): settings
 * and rules, stored in the store's `cache` record and applied live to the data
 * plane's cache through a {@link CacheRuntime}; purge and statistics go to the
 * runtime.
 *
 * Settings (`PUT` changes the fields given): `enabled`; `memoryMiB` 1–65536
 * (hot bodies and the index); `diskMiB` 0–16777216 (0 = memory only), no
 * more than the cache's file system can still hold; `hotObjectKiB` 1–65536
 * and at most `memoryMiB`; `maxEntries` 1–10,000,000; `cleanupSeconds`
 * 5–86400.
 *
 * Rules: `name` (unique), `priority` (ascending, default 0), `expression` (CEL
 * over the request, docs/pipeline.md "The policy stages", compiled when saved;
 * '' matches all), `ttl: {mode: "origin" | "fixed", seconds}` (0–31536000;
 * fixed needs ≥ 1; origin uses `seconds` only when the origin gives no
 * freshness), `queryMode: "include" | "ignore" | "allowlist"` with
 * `queryAllowlist` (names), `varyHeaders` (request header names added to the
 * key; not Cookie, Authorization or forwarding headers), `maxObjectBytes` (1
 * B–4 GiB, default 100 MiB, and no more than the disk can hold), `enabled`.
 *
 * Errors: VALIDATION_FAILED (with `details.field`), CONFLICT (name taken),
 * NOT_FOUND.
 */
import { AppError } from '../errors.js';
import { type CacheRuleRecord, type CacheSettingsRecord, DEFAULT_CACHE_SETTINGS } from '../storage/schema.js';
import type { Store } from '../storage/store.js';
import type { CachePurgeFilter, CacheStats, CompiledCacheRule } from './cache-types.js';
import { newId } from './ids.js';
import { type CompiledExpression, compileExpression } from './policy-expression.js';
import {
  invalid,
  optionalBoolean,
  rejectUnknownFields,
  requireBoolean,
  requireInteger,
  requireName,
  requireObject,
} from './validate.js';

export const MAX_TTL_SECONDS = 31_536_000;
export const DEFAULT_MAX_OBJECT_BYTES = 100 * 1024 * 1024;
export const MAX_OBJECT_BYTES = 4 * 1024 * 1024 * 1024;
export const MAX_EXPRESSION_CHARS = 4096;
export const MIN_PRIORITY = -1_000_000;
export const MAX_PRIORITY = 1_000_000;
const MIB = 1024 * 1024;

/** Request headers a rule may not add to the key: secrets, or rebuilt by the proxy. */
const FORBIDDEN_VARY_HEADERS = new Set([
  'cookie',
  'authorization',
  'proxy-authorization',
  'set-cookie',
  'forwarded',
  'x-forwarded-for',
  'x-forwarded-host',
  'x-forwarded-proto',
  'x-forwarded-port',
  'x-real-ip',
  'host',
]);

/** What the data plane's cache offers the configuration. */
export interface CacheRuntime {
  /** Applies settings and the enabled rules, compiled and in order. */
  configure(settings: Readonly<CacheSettingsRecord>, rules: readonly CompiledCacheRule[]): void;
  purge(filter: CachePurgeFilter): number;
  stats(): CacheStats;
  /** Bytes the cache's file system can still take, or null when unknown. */
  diskFreeBytes(): Promise<number | null>;
}

export interface CacheServiceOptions {
  store: Store;
  runtime?: CacheRuntime;
  now?: () => number;
}

export type CacheSettings = CacheSettingsRecord;
export type CacheRule = CacheRuleRecord;

const SETTINGS_FIELDS = ['enabled', 'memoryMiB', 'diskMiB', 'hotObjectKiB', 'maxEntries', 'cleanupSeconds'];
const RULE_FIELDS = [
  'name',
  'priority',
  'expression',
  'ttl',
  'queryMode',
  'queryAllowlist',
  'varyHeaders',
  'maxObjectBytes',
  'enabled',
];
const READ_ONLY_FIELDS = ['id', 'createdAt', 'updatedAt'];
const QUERY_MODES = ['include', 'ignore', 'allowlist'] as const;

const EMPTY_STATS: CacheStats = {
  entries: 0,
  memoryBytes: 0,
  diskBytes: 0,
  hits: 0,
  misses: 0,
  hitRatio: 0,
  stale: 0,
  revalidated: 0,
  expired: 0,
  bypasses: 0,
  evictions: 0,
};

export class CacheService {
  readonly #store: Store;
  readonly #runtime: CacheRuntime | null;
  readonly #now: () => number;
  #serial: Promise<unknown> = Promise.resolve();

  constructor(options: CacheServiceOptions) {
    this.#store = options.store;
    this.#runtime = options.runtime ?? null;
    this.#now = options.now ?? Date.now;
  }

  settings(): CacheSettings {
    return normalizeSettings(this.#store.read().cache?.settings);
  }

  /** Changes the settings given (others keep their value) and applies them at once. */
  async updateSettings(body: unknown): Promise<CacheSettings> {
    const input = requireObject(body);
    rejectUnknownFields(input, SETTINGS_FIELDS);
    return this.#exclusive(async () => {
      const current = this.settings();
      const next: CacheSettingsRecord = {
        enabled: optionalBoolean(input.enabled, 'enabled', current.enabled),
        memoryMiB:
          input.memoryMiB === undefined
            ? current.memoryMiB
            : requireInteger(input.memoryMiB, 'memoryMiB', 1, 65_536),
        diskMiB:
          input.diskMiB === undefined
            ? current.diskMiB
            : requireInteger(input.diskMiB, 'diskMiB', 0, 16_777_216),
        hotObjectKiB:
          input.hotObjectKiB === undefined
            ? current.hotObjectKiB
            : requireInteger(input.hotObjectKiB, 'hotObjectKiB', 1, 65_536),
        maxEntries:
          input.maxEntries === undefined
            ? current.maxEntries
            : requireInteger(input.maxEntries, 'maxEntries', 1, 10_000_000),
        cleanupSeconds:
          input.cleanupSeconds === undefined
            ? current.cleanupSeconds
            : requireInteger(input.cleanupSeconds, 'cleanupSeconds', 5, 86_400),
      };
      if (next.hotObjectKiB > next.memoryMiB * 1024)
        throw invalid(
          input.hotObjectKiB === undefined ? 'memoryMiB' : 'hotObjectKiB',
          'hot objects must fit in the memory tier (hotObjectKiB ≤ memoryMiB × 1024)',
        );
      if (next.diskMiB > current.diskMiB) {
        // Growing the disk tier: the file system must be able to hold it (what the cache holds now counts as free).
        const available = await this.#diskAvailableBytes();
        if (available !== null && next.diskMiB * MIB > available)
          throw invalid(
            'diskMiB',
            `is more than the disk can hold (${Math.floor(available / MIB)} MiB available for the cache)`,
          );
      }
      await this.#store.update((db) => {
        db.cache = { settings: next, rules: db.cache?.rules ?? [] };
      });
      this.#apply();
      return { ...next };
    });
  }

  listRules(): CacheRule[] {
    return sortRules(this.#rules()).map((r) => ({ ...r }));
  }

  getRule(id: string): CacheRule {
    return { ...this.#findRule(id) };
  }

  async createRule(body: unknown): Promise<CacheRule> {
    const input = requireObject(body);
    rejectUnknownFields(input, [...RULE_FIELDS, ...READ_ONLY_FIELDS]);
    const at = new Date(this.#now()).toISOString();
    const expression = input.expression === undefined ? '' : requireExpression(input.expression);
    compile(expression);
    const record: CacheRuleRecord = {
      id: newId(),
      name: requireName(input.name),
      priority:
        input.priority === undefined
          ? 0
          : requireInteger(input.priority, 'priority', MIN_PRIORITY, MAX_PRIORITY),
      expression,
      ttl: input.ttl === undefined ? { mode: 'origin', seconds: 0 } : requireTtl(input.ttl),
      queryMode: input.queryMode === undefined ? 'include' : requireQueryMode(input.queryMode),
      queryAllowlist:
        input.queryAllowlist === undefined ? [] : requireNames(input.queryAllowlist, 'queryAllowlist'),
      varyHeaders: input.varyHeaders === undefined ? [] : requireVaryHeaders(input.varyHeaders),
      maxObjectBytes:
        input.maxObjectBytes === undefined
          ? DEFAULT_MAX_OBJECT_BYTES
          : requireMaxObjectBytes(input.maxObjectBytes),
      enabled: optionalBoolean(input.enabled, 'enabled', true),
      createdAt: at,
      updatedAt: at,
    };
    return this.#exclusive(async () => {
      if (input.maxObjectBytes !== undefined) await this.#assertObjectFits(record.maxObjectBytes);
      await this.#store.update((db) => {
        const cache = ensureCache(db);
        assertNameFree(cache.rules, record);
        cache.rules.push(record);
      });
      this.#apply();
      return { ...record };
    });
  }

  async updateRule(id: string, body: unknown): Promise<CacheRule> {
    const input = requireObject(body);
    rejectUnknownFields(input, [...RULE_FIELDS, ...READ_ONLY_FIELDS]);
    const changes: Partial<CacheRuleRecord> = {};
    if (input.name !== undefined) changes.name = requireName(input.name);
    if (input.priority !== undefined)
      changes.priority = requireInteger(input.priority, 'priority', MIN_PRIORITY, MAX_PRIORITY);
    if (input.expression !== undefined) {
      changes.expression = requireExpression(input.expression);
      compile(changes.expression);
    }
    if (input.ttl !== undefined) changes.ttl = requireTtl(input.ttl);
    if (input.queryMode !== undefined) changes.queryMode = requireQueryMode(input.queryMode);
    if (input.queryAllowlist !== undefined)
      changes.queryAllowlist = requireNames(input.queryAllowlist, 'queryAllowlist');
    if (input.varyHeaders !== undefined) changes.varyHeaders = requireVaryHeaders(input.varyHeaders);
    if (input.maxObjectBytes !== undefined)
      changes.maxObjectBytes = requireMaxObjectBytes(input.maxObjectBytes);
    if (input.enabled !== undefined) changes.enabled = requireBoolean(input.enabled, 'enabled');
    return this.#exclusive(async () => {
      this.#findRule(id);
      if (changes.maxObjectBytes !== undefined) await this.#assertObjectFits(changes.maxObjectBytes);
      const updated = await this.#store.update((db) => {
        const cache = ensureCache(db);
        const index = cache.rules.findIndex((r) => r.id === id);
        const current = cache.rules[index];
        if (!current) throw new AppError('NOT_FOUND', 'no such cache rule');
        const next: CacheRuleRecord = {
          ...current,
          ...changes,
          updatedAt: new Date(this.#now()).toISOString(),
        };
        assertNameFree(cache.rules, next);
        cache.rules[index] = next;
        return next;
      });
      this.#apply();
      return { ...updated };
    });
  }

  /** Deletes a rule and purges what it stored. */
  async removeRule(id: string): Promise<void> {
    return this.#exclusive(async () => {
      this.#findRule(id);
      await this.#store.update((db) => {
        const cache = ensureCache(db);
        cache.rules = cache.rules.filter((r) => r.id !== id);
      });
      this.#apply();
      this.#runtime?.purge({ ruleId: id });
    });
  }

  /**
   * `{all: true}` or any of `{host, pathPrefix, ruleId}` (entries matching
   * every one given) → `{purged}`.
   */
  purge(body: unknown): { purged: number } {
    const input = requireObject(body);
    rejectUnknownFields(input, ['all', 'host', 'pathPrefix', 'ruleId']);
    const filter: CachePurgeFilter = {};
    if (input.all !== undefined) {
      if (input.all !== true) throw invalid('all', 'must be true (or left out)');
      if (input.host !== undefined || input.pathPrefix !== undefined || input.ruleId !== undefined)
        throw invalid('all', 'purges everything: give it alone');
      filter.all = true;
    }
    if (input.host !== undefined) {
      if (
        typeof input.host !== 'string' ||
        input.host.trim() === '' ||
        input.host.length > 253 ||
        /[\s/]/.test(input.host.trim())
      )
        throw invalid('host', 'must be a host name');
      filter.host = input.host.trim().toLowerCase().replace(/\.$/, '');
    }
    if (input.pathPrefix !== undefined) {
      if (
        typeof input.pathPrefix !== 'string' ||
        !input.pathPrefix.startsWith('/') ||
        input.pathPrefix.length > 2048
      )
        throw invalid('pathPrefix', 'must start with /');
      filter.pathPrefix = input.pathPrefix;
    }
    if (input.ruleId !== undefined) {
      if (typeof input.ruleId !== 'string' || input.ruleId === '')
        throw invalid('ruleId', 'must be a rule id');
      filter.ruleId = input.ruleId;
    }
    if (Object.keys(filter).length === 0)
      throw invalid('all', 'say what to purge: {all: true}, or host, pathPrefix and/or ruleId');
    return { purged: this.#runtime?.purge(filter) ?? 0 };
  }

  stats(): CacheStats {
    return this.#runtime?.stats() ?? { ...EMPTY_STATS };
  }

  /** Applies the stored configuration to the runtime (at start, and after each change). */
  apply(): void {
    this.#apply();
  }

  #apply(): void {
    if (!this.#runtime) return;
    const rules: CompiledCacheRule[] = [];
    for (const record of sortRules(this.#rules())) {
      if (!record.enabled) continue;
      try {
        rules.push({ record, expression: compile(record.expression) });
      } catch {
        // A stored expression that no longer compiles (hand-edited database): the rule is skipped.
      }
    }
    this.#runtime.configure(this.settings(), rules);
  }

  #rules(): readonly CacheRuleRecord[] {
    return this.#store.read().cache?.rules ?? [];
  }

  #findRule(id: string): Readonly<CacheRuleRecord> {
    const rule = this.#rules().find((r) => r.id === id);
    if (!rule) throw new AppError('NOT_FOUND', 'no such cache rule');
    return rule;
  }

  async #diskAvailableBytes(): Promise<number | null> {
    if (!this.#runtime) return null;
    const free = await this.#runtime.diskFreeBytes();
    if (free === null) return null;
    return free + this.#runtime.stats().diskBytes;
  }

  async #assertObjectFits(bytes: number): Promise<void> {
    const settings = this.settings();
    const tier = settings.diskMiB > 0 ? settings.diskMiB * MIB : settings.hotObjectKiB * 1024;
    if (bytes > tier)
      throw invalid(
        'maxObjectBytes',
        `is more than the cache can hold (${settings.diskMiB > 0 ? `diskMiB ${settings.diskMiB}` : `hotObjectKiB ${settings.hotObjectKiB}`})`,
      );
    const available = await this.#diskAvailableBytes();
    if (settings.diskMiB > 0 && available !== null && bytes > available)
      throw invalid(
        'maxObjectBytes',
        `is more than the disk can hold (${Math.floor(available / MIB)} MiB available)`,
      );
  }

  #exclusive<T>(task: () => Promise<T>): Promise<T> {
    const run = this.#serial.then(task, task);
    this.#serial = run.catch(() => {});
    return run;
  }
}

/** A rule's CEL expression, compiled; VALIDATION_FAILED on `expression` with its position. */
function compile(expression: string): CompiledExpression {
  return compileExpression(expression, 'expression');
}

function ensureCache(db: { cache?: { settings: CacheSettingsRecord; rules: CacheRuleRecord[] } }) {
  db.cache ??= { settings: { ...DEFAULT_CACHE_SETTINGS }, rules: [] };
  db.cache.rules ??= [];
  return db.cache;
}

/** Settings with defaults for anything missing or odd (a hand-edited database). */
function normalizeSettings(stored: Partial<CacheSettingsRecord> | undefined): CacheSettingsRecord {
  const d = DEFAULT_CACHE_SETTINGS;
  const int = (value: unknown, fallback: number, min: number, max: number) =>
    typeof value === 'number' && Number.isInteger(value) && value >= min && value <= max ? value : fallback;
  return {
    enabled: typeof stored?.enabled === 'boolean' ? stored.enabled : d.enabled,
    memoryMiB: int(stored?.memoryMiB, d.memoryMiB, 1, 65_536),
    diskMiB: int(stored?.diskMiB, d.diskMiB, 0, 16_777_216),
    hotObjectKiB: int(stored?.hotObjectKiB, d.hotObjectKiB, 1, 65_536),
    maxEntries: int(stored?.maxEntries, d.maxEntries, 1, 10_000_000),
    cleanupSeconds: int(stored?.cleanupSeconds, d.cleanupSeconds, 5, 86_400),
  };
}

/** Ascending priority, then creation order. */
function sortRules(rules: readonly CacheRuleRecord[]): CacheRuleRecord[] {
  return [...rules].sort(
    (a, b) =>
      a.priority - b.priority ||
      (a.createdAt < b.createdAt ? -1 : a.createdAt > b.createdAt ? 1 : 0) ||
      (a.id < b.id ? -1 : a.id > b.id ? 1 : 0),
  );
}

function assertNameFree(rules: readonly CacheRuleRecord[], next: CacheRuleRecord): void {
  if (rules.some((r) => r.id !== next.id && r.name === next.name))
    throw new AppError('CONFLICT', `a cache rule named "${next.name}" already exists`, {
      details: { field: 'name' },
    });
}

function requireExpression(value: unknown): string {
  if (typeof value !== 'string') throw invalid('expression', 'must be a string');
  if (value.length > MAX_EXPRESSION_CHARS)
    throw invalid('expression', `must be at most ${MAX_EXPRESSION_CHARS} characters`);
  return value.trim();
}

function requireTtl(value: unknown): CacheRuleRecord['ttl'] {
  const input = requireObject(value, 'ttl');
  for (const key of Object.keys(input)) {
    if (key !== 'mode' && key !== 'seconds') throw invalid(`ttl.${key}`, 'is not a known field');
  }
  if (input.mode !== 'origin' && input.mode !== 'fixed') throw invalid('ttl.mode', 'must be origin or fixed');
  const seconds =
    input.seconds === undefined && input.mode === 'origin'
      ? 0
      : requireInteger(input.seconds, 'ttl.seconds', input.mode === 'fixed' ? 1 : 0, MAX_TTL_SECONDS);
  return { mode: input.mode, seconds };
}

function requireQueryMode(value: unknown): CacheRuleRecord['queryMode'] {
  if (!QUERY_MODES.includes(value as never))
    throw invalid('queryMode', `must be one of ${QUERY_MODES.join(', ')}`);
  return value as CacheRuleRecord['queryMode'];
}

function requireNames(value: unknown, field: string): string[] {
  if (!Array.isArray(value) || value.length > 64) throw invalid(field, 'must be a list of at most 64 names');
  const names: string[] = [];
  for (const [i, item] of value.entries()) {
    if (typeof item !== 'string' || item === '' || item.length > 128 || /[\s&=#]/.test(item))
      throw invalid(`${field}[${i}]`, 'must be a query parameter name');
    if (!names.includes(item)) names.push(item);
  }
  return names;
}

const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9a-z-]+$/;

function requireVaryHeaders(value: unknown): string[] {
  if (!Array.isArray(value) || value.length > 16)
    throw invalid('varyHeaders', 'must be a list of at most 16 header names');
  const names: string[] = [];
  for (const [i, item] of value.entries()) {
    const name = typeof item === 'string' ? item.trim().toLowerCase() : '';
    if (!HEADER_NAME.test(name) || name.length > 128)
      throw invalid(`varyHeaders[${i}]`, 'must be a header name');
    if (FORBIDDEN_VARY_HEADERS.has(name))
      throw invalid(`varyHeaders[${i}]`, `${name} cannot be part of a shared cache key`);
    if (!names.includes(name)) names.push(name);
  }
  return names;
}

function requireMaxObjectBytes(value: unknown): number {
  return requireInteger(value, 'maxObjectBytes', 1, MAX_OBJECT_BYTES);
}
