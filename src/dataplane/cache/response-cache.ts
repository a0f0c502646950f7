/**
 * The response cache (docs/pipeline.md "The cache stage"): which requests may
 * use it (rules), their keys, and how a cacheable request is answered — from
 * the store, after a conditional request to the origin, or from the origin
 * while the body is stored. HTTP semantics (RFC 9111: freshness, `no-store`,
 * `private`, `Vary`, validators, `stale-while-revalidate`, `stale-if-error`)
 * come from `http-cache-semantics` as a shared cache.
 *
 * - Rules apply in ascending priority, then creation order; the first
 *   enabled rule whose expression matches decides. No rule → the cache
 *   stays out of the way (no header, no trace value).
 * - Requests that bypass (`BYPASS`): methods other than GET and HEAD, and
 *   requests with `Authorization`, `Cookie`, `Range`, `Upgrade`, a body, or
 *   `Cache-Control: no-store`.
 * - Responses never stored: those with `Set-Cookie`, `no-store`, `private`,
 *   `Vary: *` (or varying on Cookie/Authorization), status 206, statuses
 *   RFC 9111 does not define as cacheable without explicit freshness, and
 *   bodies over the rule's `maxObjectBytes` (streamed through).
 * - Key: route, host, path and the query after the rule's `queryMode`, plus
 *   the values of the rule's `varyHeaders`; variants by the response's Vary.
 * - Concurrent misses (and revalidations) of one key make one origin
 *   request; the others wait for it, then answer from the stored entry, or
 *   go to the origin themselves when it could not be stored.
 * - HEAD is answered from a stored GET; a HEAD miss is forwarded, not stored.
 *
 * Every answer the cache is involved in carries `Cache-Status` (RFC 9211,
 * cache name `p2pstream`); the outcome names the trace value.
 */

import { hash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import type { IncomingHttpHeaders } from 'node:http';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import CachePolicy from 'http-cache-semantics';
import type { CacheRuntime } from '../../domain/cache-service.js';
import type {
  CachePurgeFilter,
  CacheResult,
  CacheStats,
  CompiledCacheRule,
} from '../../domain/cache-types.js';
import type { PolicyRequestFacts } from '../../domain/policy-expression.js';
import { HOP_BY_HOP_HEADERS, hopByHopAnd } from '../../http-headers.js';
import type { Logger } from '../../logger.js';
import type { CacheRuleRecord, CacheSettingsRecord } from '../../storage/schema.js';
import { type CacheEntry, CacheStore, type CacheStoreLimits } from './cache-store.js';

/** Cache-Status cache name. */
export const CACHE_NAME = 'p2pstream';
/** Directory of the disk tier inside the data dir. */
export const CACHE_DIR_NAME = 'cache';
/** Entries with validators are kept this long past their stale windows, for revalidation. */
export const KEEP_FOR_REVALIDATION_MS = 24 * 3600_000;

/** A request as the cache sees it. */
export interface CacheRequest {
  method: string;
  host: string | null;
  path: string;
  /** Raw query without `?`, '' when none. */
  query: string;
  headers: IncomingHttpHeaders;
  routeId: string;
  listenerId: string;
  /** The listener's name (CEL `listener`). */
  listenerName: string;
  clientIp: string | null;
}

/** The origin's answer to one request made for the cache. */
export interface OriginResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: AsyncIterable<Buffer> & { destroy(err?: Error): void };
}

/**
 * Makes a request to the origin for the cache: the client's request (GET,
 * or HEAD for a HEAD miss), without the headers named in `drop`, with `set`
 * added. Rejects with the transport error when there is no answer.
 */
export type Origin = (options: {
  method: 'GET' | 'HEAD';
  set: Record<string, string>;
  drop: readonly string[];
}) => Promise<OriginResponse>;

/** Where the cache writes an answer (the client connection, possibly shaped). */
export interface CacheClient {
  /** Sends the status and headers (flat name/value list); `info` is for traces. */
  head(status: number, headers: string[], info: { result: CacheResult; upstreamMs: number | null }): void;
  /** Writes body bytes; resolves when more may be written (at once when the client is gone). */
  write(chunk: Buffer): Promise<void>;
  end(): void;
  /** Cuts the connection: the answer cannot be completed. */
  abort(err: Error): void;
  /**
   * Calls `release` once the answer is over (every chunk written is sent or
   * dropped): the body written is a view into the memory tier, whose space
   * may not be reused before.
   */
  hold(release: () => void): void;
  readonly gone: boolean;
}

/** How a request the cache took part in ended. */
export interface CacheOutcome {
  result: CacheResult;
  /** The origin's failure when nothing was sent (the caller answers 502/504). */
  error: unknown | null;
  /** Milliseconds until the origin's response head, when one was asked for. */
  upstreamMs: number | null;
  /** The headers sent, for traces. */
  responseHeaders: string[] | null;
}

/** The cache's decision for a request before anything is sent. */
export type CacheLookup =
  | { kind: 'bypass'; rule: CompiledCacheRule; reason: string; cacheStatus: string }
  | { kind: 'cacheable'; rule: CompiledCacheRule; primaryKey: string; request: CacheRequest };

export interface ResponseCacheOptions {
  /** The data dir: the disk tier lives in `<dataDir>/cache`. */
  dataDir: string;
  logger: Logger;
  settings?: Readonly<CacheSettingsRecord>;
  /** Called after each `configure` (the data plane re-installs its stage). */
  onConfigure?: () => void;
  now?: () => number;
}

/** Request headers that make the request bypass the cache, with the detail shown. */
const BYPASS_HEADERS: [string, string][] = [
  ['authorization', 'authorization'],
  ['cookie', 'cookie'],
  ['range', 'range'],
  ['upgrade', 'upgrade'],
];

/** Response headers never stored or replayed (hop-by-hop, and per-answer ones). */
const UNSTORED_RESPONSE_HEADERS = hopByHopAnd('content-length', 'age', 'cache-status', 'set-cookie');

/** Client conditional headers, removed when the cache asks the origin for a full answer. */
const CONDITIONAL_HEADERS = [
  'if-none-match',
  'if-modified-since',
  'if-match',
  'if-unmodified-since',
  'if-range',
];

/** Headers a 304 may carry to the client (RFC 9110 §15.4.5). */
const NOT_MODIFIED_HEADERS = new Set([
  'cache-control',
  'content-location',
  'date',
  'etag',
  'expires',
  'vary',
  'last-modified',
]);

type Inflight = Promise<'stored' | 'not_stored'>;

/** A fresh hit's answer; shared by the hits of one second (read-only). */
export interface HitAnswer {
  readonly status: number;
  readonly headers: readonly string[];
  readonly body: Buffer;
}

/** What an entry keeps to answer hits from memory (CacheEntry.hit). */
interface HitMemo {
  readonly body: Buffer;
  /** The stored headers as a flat list. */
  readonly stored: readonly string[];
  readonly maxAge: number;
  /** The policy's age() at `at` (epoch ms). */
  readonly ageAt: number;
  readonly at: number;
  answer: HitAnswer | null;
  ageSeconds: number;
  ttlSeconds: number;
}

function hitMemoOf(entry: CacheEntry, body: Buffer): HitMemo {
  const stored: string[] = [];
  for (const [name, value] of entry.meta.headers) stored.push(name, value);
  const at = Date.now();
  return {
    body,
    stored,
    maxAge: entry.policy.maxAge(),
    ageAt: entry.policy.age(),
    at,
    answer: null,
    ageSeconds: -1,
    ttlSeconds: -1,
  };
}

/** The client of a background revalidation: nobody listens. */
const BACKGROUND: CacheClient = {
  head: () => {},
  write: async () => {},
  end: () => {},
  abort: () => {},
  hold: (release) => release(),
  gone: true,
};

export class ResponseCache implements CacheRuntime {
  readonly #logger: Logger;
  readonly #store: CacheStore;
  readonly #now: () => number;
  readonly #onConfigure: () => void;
  #settings: Readonly<CacheSettingsRecord>;
  #rules: readonly CompiledCacheRule[] = [];
  readonly #inflight = new Map<string, Inflight>();
  /** Requests waiting on an entry of `#inflight` (see {@link waiting}). */
  #waiting = 0;
  #cleanupTimer: ReturnType<typeof setInterval> | null = null;
  #hits = 0;
  #misses = 0;
  #stale = 0;
  #revalidated = 0;
  #expired = 0;
  #bypasses = 0;
  /** Background work (stale-while-revalidate refreshes), awaited by close(). */
  readonly #background = new Set<Promise<void>>();

  constructor(options: ResponseCacheOptions) {
    this.#logger = options.logger;
    this.#now = options.now ?? Date.now;
    this.#onConfigure = options.onConfigure ?? (() => {});
    this.#settings = options.settings ?? {
      enabled: true,
      memoryMiB: 64,
      diskMiB: 1024,
      hotObjectKiB: 256,
      maxEntries: 100_000,
      cleanupSeconds: 60,
    };
    this.#store = new CacheStore({
      dir: path.join(options.dataDir, CACHE_DIR_NAME),
      limits: limitsOf(this.#settings),
      logger: options.logger,
      now: this.#now,
    });
  }

  /** Loads the disk tier (in the background) and starts the periodic cleanup. */
  open(): Promise<void> {
    this.#scheduleCleanup();
    return this.#store.open();
  }

  /** Applies settings and rules (rules already compiled, sorted by priority then creation). */
  configure(settings: Readonly<CacheSettingsRecord>, rules: readonly CompiledCacheRule[]): void {
    const cleanupChanged = settings.cleanupSeconds !== this.#settings.cleanupSeconds;
    this.#settings = { ...settings };
    this.#rules = rules;
    this.#store.setLimits(limitsOf(settings));
    if (cleanupChanged && this.#cleanupTimer !== null) this.#scheduleCleanup();
    this.#onConfigure();
  }

  /** True when the cache is on and has at least one enabled rule. */
  get active(): boolean {
    return this.#settings.enabled && this.#rules.length > 0;
  }

  get settings(): Readonly<CacheSettingsRecord> {
    return this.#settings;
  }

  /** The cache directory (for free-space checks). */
  get dir(): string {
    return this.#store.dir;
  }

  stats(): CacheStats {
    const store = this.#store.stats();
    const total = this.#hits + this.#misses;
    return {
      entries: store.entries,
      memoryBytes: store.memoryBytes,
      diskBytes: store.diskBytes,
      hits: this.#hits,
      misses: this.#misses,
      hitRatio: total === 0 ? 0 : this.#hits / total,
      stale: this.#stale,
      revalidated: this.#revalidated,
      expired: this.#expired,
      bypasses: this.#bypasses,
      evictions: store.evictions,
    };
  }

  /** Bytes the cache directory's file system can still take (null when it cannot be asked). */
  async diskFreeBytes(): Promise<number | null> {
    try {
      await fs.mkdir(this.#store.dir, { recursive: true });
      const stat = await fs.statfs(this.#store.dir);
      return stat.bavail * stat.bsize;
    } catch {
      return null;
    }
  }

  /** Removes the entries a filter selects; returns how many. */
  purge(filter: CachePurgeFilter): number {
    return this.#store.purge(filter);
  }

  /** Drops expired entries and stray files now (also run every `cleanupSeconds`). */
  cleanup(): Promise<number> {
    const now = this.#now();
    return this.#store.cleanup((entry) => {
      if (entry.policy.timeToLive() > 0) return false;
      const headers = entry.policy.responseHeaders();
      const validators = headers.etag !== undefined || headers['last-modified'] !== undefined;
      return (
        !validators || now - entry.meta.storedAt > KEEP_FOR_REVALIDATION_MS + entry.policy.maxAge() * 1000
      );
    });
  }

  /** Stops the cleanup timer and waits for background refreshes. */
  async close(): Promise<void> {
    if (this.#cleanupTimer !== null) clearInterval(this.#cleanupTimer);
    this.#cleanupTimer = null;
    await Promise.allSettled([...this.#background]);
    this.#store.close();
  }

  /**
   * Whether the cache takes part in a request: null (cache off, or no rule
   * matches), a bypass (with its Cache-Status), or cacheable.
   */
  lookup(request: CacheRequest): CacheLookup | null {
    if (!this.#settings.enabled || this.#rules.length === 0) return null;
    let facts: PolicyRequestFacts | null = null;
    const rule = this.#rules.find((r) => {
      if (!r.record.enabled) return false;
      if (r.expression.always) return true;
      facts ??= factsOf(request);
      return r.expression.matches(facts);
    });
    if (!rule) return null;
    const reason = bypassReason(request);
    if (reason !== null) {
      this.#bypasses++;
      return { kind: 'bypass', rule, reason, cacheStatus: `${CACHE_NAME}; fwd=bypass; detail=${reason}` };
    }
    return { kind: 'cacheable', rule, primaryKey: primaryKeyOf(rule.record, request), request };
  }

  /**
   * The fast path of a fresh hit: when the entry's body is in memory, the
   * request carries no Cache-Control, Pragma or conditional header and the
   * entry is fresh, the answer is returned synchronously (no stream, no
   * promise) and costs about what a static answer does: the entry keeps its
   * answer (status, header list with `Age` and `Cache-Status`, the stored
   * body itself, never copied) and rebuilds it only when the whole seconds of
   * `Age` or of the remaining freshness change. Null otherwise: use
   * {@link serve}. The body is a view into the memory tier: `hold` gets a
   * function to call once the answer is over (until then that space is not
   * reused).
   */
  hitNow(
    lookup: Extract<CacheLookup, { kind: 'cacheable' }>,
    hold: (release: () => void) => void,
  ): HitAnswer | null {
    const h = lookup.request.headers;
    if (
      h['cache-control'] !== undefined ||
      h.pragma !== undefined ||
      h['if-none-match'] !== undefined ||
      h['if-modified-since'] !== undefined
    )
      return null;
    const entry = this.#find(lookup.primaryKey, h);
    if (!entry || entry.memory === null) return null;
    let hit = entry.hit as HitMemo | null;
    if (hit === null || hit.body !== entry.memory) {
      hit = hitMemoOf(entry, entry.memory);
      entry.hit = hit;
    }
    // http-cache-semantics' age() and maxAge(), without a call into the policy per hit.
    const age = hit.ageAt + (Date.now() - hit.at) / 1000;
    const ttl = hit.maxAge - age;
    if (ttl <= 0) return null;
    const ageSeconds = age < 0 ? 0 : Math.round(age);
    const ttlSeconds = Math.floor(ttl);
    let answer = hit.answer;
    if (answer === null || hit.ageSeconds !== ageSeconds || hit.ttlSeconds !== ttlSeconds) {
      // content-length: the exchange sets it for a buffer answer.
      answer = {
        status: entry.meta.status,
        headers: [
          ...hit.stored,
          'age',
          String(ageSeconds),
          'cache-status',
          `${CACHE_NAME}; hit; ttl=${ttlSeconds}`,
        ],
        body: hit.body,
      };
      hit.answer = answer;
      hit.ageSeconds = ageSeconds;
      hit.ttlSeconds = ttlSeconds;
    }
    this.#hits++;
    hold(this.#store.pin(entry));
    return answer;
  }

  /**
   * Answers a cacheable request (from {@link lookup}) through `client`,
   * asking `origin` when needed. Resolves when the answer is complete or cut;
   * never rejects (an origin failure with nothing sent is in `error`).
   */
  async serve(
    lookup: Extract<CacheLookup, { kind: 'cacheable' }>,
    origin: Origin,
    client: CacheClient,
  ): Promise<CacheOutcome> {
    try {
      return await this.#serve(lookup, origin, client, false);
    } catch (err) {
      this.#logger.warn({ err }, 'cache: an answer failed');
      if (!client.gone) client.abort(err as Error);
      return { result: 'MISS', error: null, upstreamMs: null, responseHeaders: null };
    }
  }

  async #serve(
    lookup: Extract<CacheLookup, { kind: 'cacheable' }>,
    origin: Origin,
    client: CacheClient,
    collapsed: boolean,
  ): Promise<CacheOutcome> {
    const { request, primaryKey } = lookup;
    const policyRequest = policyRequestOf(request, primaryKey);
    const entry = this.#find(primaryKey, request.headers);
    if (entry) {
      const evaluation = entry.policy.evaluateRequest(policyRequest);
      if (evaluation.response && !evaluation.revalidation) {
        const served = await this.#serveEntry(
          entry,
          request,
          client,
          'HIT',
          this.#hitStatus(entry, collapsed),
        );
        if (served) return served;
      } else if (evaluation.response && evaluation.revalidation && !evaluation.revalidation.synchronous) {
        const served = await this.#serveEntry(
          entry,
          request,
          client,
          'STALE',
          `${CACHE_NAME}; hit; ttl=${ttlOf(entry)}; detail=stale-while-revalidate`,
        );
        if (served) {
          this.#refreshInBackground(lookup, entry, origin, evaluation.revalidation.headers);
          return served;
        }
      } else {
        return this.#revalidate(lookup, entry, origin, client);
      }
    }
    if (request.method === 'HEAD') return this.#forwardHead(origin, client);
    const waiting = this.#inflight.get(primaryKey);
    if (waiting && !collapsed) {
      await this.#waitFor(waiting);
      return this.#serve(lookup, origin, client, true);
    }
    return this.#fetchAndStore(lookup, origin, client, 'MISS', {}, collapsed);
  }

  /** Requests waiting right now for another request's origin answer for their key (coalesced). */
  get waiting(): number {
    return this.#waiting;
  }

  async #waitFor(inflight: Inflight): Promise<void> {
    this.#waiting++;
    try {
      await inflight;
    } finally {
      this.#waiting--;
    }
  }

  #hitStatus(entry: CacheEntry, collapsed: boolean): string {
    if (collapsed) return `${CACHE_NAME}; fwd=miss; fwd-status=${entry.meta.status}; collapsed`;
    return `${CACHE_NAME}; hit; ttl=${ttlOf(entry)}`;
  }

  /** The stored variant for a request, or undefined. */
  #find(primaryKey: string, headers: IncomingHttpHeaders): CacheEntry | undefined {
    return this.#store.find(primaryKey, (varyNames) => variantKeyOf(varyNames, headers));
  }

  /**
   * Sends a stored entry. Answers a matching conditional request with 304.
   * Null when the body turned out corrupt before anything was sent (the
   * entry is gone; the caller goes on as for a miss).
   */
  async #serveEntry(
    entry: CacheEntry,
    request: CacheRequest,
    client: CacheClient,
    result: CacheResult,
    cacheStatus: string,
    upstreamMs: number | null = null,
  ): Promise<CacheOutcome | null> {
    const head = request.method === 'HEAD';
    const notModified = entry.meta.status === 200 && conditionalMatches(request.headers, entry);
    // A body in memory is a view into the memory tier: its space is held (before reading, so it
    // cannot be reused meanwhile) until the answer is over.
    const inMemory = head || notModified ? null : entry.memory;
    const release = inMemory === null ? null : this.#store.pin(entry);
    const body = head || notModified ? null : await this.#store.readBody(entry);
    if (release !== null) {
      if (body?.kind === 'memory' && body.body === inMemory) client.hold(release);
      else release();
    }
    // Read from disk into the memory tier: that space is held the same way.
    if (body?.kind === 'memory' && body.release !== null) client.hold(body.release);
    if (body?.kind === 'corrupt') return null;
    const headers: string[] = [];
    for (const [name, value] of entry.meta.headers) {
      if (notModified && !NOT_MODIFIED_HEADERS.has(name)) continue;
      headers.push(name, value);
    }
    headers.push('age', String(Math.max(0, Math.round(entry.policy.age()))));
    headers.push('cache-status', cacheStatus);
    if (!notModified) headers.push('content-length', String(entry.meta.bodyLength));
    this.#count(result, client);
    client.head(notModified ? 304 : entry.meta.status, headers, { result, upstreamMs });
    if (body === null) {
      client.end();
    } else if (body.kind === 'memory') {
      if (body.body.length > 0) await client.write(body.body);
      client.end();
    } else {
      try {
        for await (const chunk of body.chunks) {
          if (client.gone) break;
          await client.write(chunk);
        }
        client.end();
      } catch (err) {
        client.abort(err as Error);
      }
    }
    return { result, error: null, upstreamMs, responseHeaders: headers };
  }

  /** A stale entry that must be checked with the origin before use. */
  async #revalidate(
    lookup: Extract<CacheLookup, { kind: 'cacheable' }>,
    entry: CacheEntry,
    origin: Origin,
    client: CacheClient,
  ): Promise<CacheOutcome> {
    const waiting = this.#inflight.get(lookup.primaryKey);
    if (waiting) {
      // Someone is already asking the origin about this key: use what they get.
      await this.#waitFor(waiting);
      const fresh = this.#find(lookup.primaryKey, lookup.request.headers);
      if (
        fresh &&
        !fresh.policy.evaluateRequest(policyRequestOf(lookup.request, lookup.primaryKey)).revalidation
      ) {
        const served = await this.#serveEntry(
          fresh,
          lookup.request,
          client,
          'HIT',
          this.#hitStatus(fresh, true),
        );
        if (served) return served;
      }
    }
    const policyRequest = policyRequestOf(lookup.request, lookup.primaryKey);
    const conditional = validatorHeaders(entry.policy.revalidationHeaders(policyRequest));
    return this.#fetchAndStore(lookup, origin, client, 'EXPIRED', conditional, true, entry);
  }

  /** A HEAD without a stored GET: forwarded as it is, not stored. */
  async #forwardHead(origin: Origin, client: CacheClient): Promise<CacheOutcome> {
    const started = performance.now();
    let response: OriginResponse;
    try {
      response = await origin({ method: 'HEAD', set: {}, drop: [] });
    } catch (err) {
      return { result: 'MISS', error: err, upstreamMs: null, responseHeaders: null };
    }
    const upstreamMs = performance.now() - started;
    const headers = replayHeaders(response.headers);
    headers.push('cache-status', `${CACHE_NAME}; fwd=miss; fwd-status=${response.status}; detail=head`);
    this.#count('MISS', client);
    client.head(response.status, headers, { result: 'MISS', upstreamMs });
    for await (const _chunk of response.body) {
      // A HEAD answer has no body; drain whatever the client library delivers.
    }
    client.end();
    return { result: 'MISS', error: null, upstreamMs, responseHeaders: headers };
  }

  /**
   * Asks the origin (conditionally when `stale` is given) and answers the
   * client while storing the body. One such request per key at a time:
   * others wait on the in-flight promise.
   */
  async #fetchAndStore(
    lookup: Extract<CacheLookup, { kind: 'cacheable' }>,
    origin: Origin,
    client: CacheClient,
    result: 'MISS' | 'EXPIRED',
    conditional: Record<string, string>,
    collapsed: boolean,
    stale: CacheEntry | null = null,
  ): Promise<CacheOutcome> {
    const { primaryKey, request, rule } = lookup;
    let release: (value: 'stored' | 'not_stored') => void = () => {};
    const leader = !this.#inflight.has(primaryKey);
    if (leader) {
      const promise: Inflight = new Promise((resolve) => {
        release = resolve;
      });
      this.#inflight.set(primaryKey, promise);
      const done = release;
      release = (value) => {
        if (this.#inflight.get(primaryKey) === promise) this.#inflight.delete(primaryKey);
        done(value);
      };
    }
    let released = false;
    const finish = (value: 'stored' | 'not_stored') => {
      if (released) return;
      released = true;
      release(value);
    };
    try {
      const started = performance.now();
      let response: OriginResponse;
      try {
        response = await origin({ method: 'GET', set: conditional, drop: CONDITIONAL_HEADERS });
      } catch (err) {
        finish('not_stored');
        if (stale && canServeStaleIfError(stale)) {
          const served = await this.#serveEntry(
            stale,
            request,
            client,
            'STALE',
            `${CACHE_NAME}; fwd=stale; detail=stale-if-error`,
          );
          if (served) return served;
        }
        return { result, error: err, upstreamMs: null, responseHeaders: null };
      }
      const upstreamMs = performance.now() - started;
      const policyRequest = policyRequestOf(request, primaryKey);

      if (stale && (response.status === 304 || (response.status >= 500 && canServeStaleIfError(stale)))) {
        await drain(response.body);
        if (response.status === 304) {
          const { policy, modified } = stale.policy.revalidatedPolicy(policyRequest, {
            status: 304,
            headers: headerRecord(response.headers),
          });
          if (!modified) {
            const refreshed = rebuildPolicy(rule.record, policyRequest, policy, stale, response.headers);
            await this.#store.refresh(stale, refreshed.policy, refreshed.headers);
            finish('stored');
            const current = this.#find(primaryKey, request.headers) ?? stale;
            const served = await this.#serveEntry(
              current,
              request,
              client,
              'REVALIDATED',
              `${CACHE_NAME}; fwd=stale; fwd-status=304; ttl=${ttlOf(current)}`,
              upstreamMs,
            );
            if (served) return served;
            return { result: 'REVALIDATED', error: null, upstreamMs, responseHeaders: null };
          }
          // A 304 that does not match what is stored: ask again, unconditionally.
          finish('not_stored');
          return this.#fetchAndStore(lookup, origin, client, 'EXPIRED', {}, true, null);
        }
        finish('not_stored');
        const served = await this.#serveEntry(
          stale,
          request,
          client,
          'STALE',
          `${CACHE_NAME}; fwd=stale; fwd-status=${response.status}; detail=stale-if-error`,
          upstreamMs,
        );
        if (served) return served;
        return { result: 'STALE', error: null, upstreamMs, responseHeaders: null };
      }

      const decision = storability(rule.record, policyRequest, response);
      const writer = decision.policy
        ? this.#store.beginWrite(entryId(primaryKey, decision.variantKey))
        : null;
      if (!writer) finish('not_stored');
      const fwd = result === 'EXPIRED' ? 'stale' : 'miss';
      let cacheStatus = `${CACHE_NAME}; fwd=${fwd}; fwd-status=${response.status}`;
      cacheStatus += writer ? '; stored' : `; detail=${decision.reason}`;
      if (collapsed && result === 'MISS') cacheStatus += '; collapsed';
      const headers = replayHeaders(response.headers);
      headers.push('cache-status', cacheStatus);
      this.#count(result, client);
      client.head(response.status, headers, { result, upstreamMs });

      let storing = writer;
      // While storing, the last chunk waits until the entry is committed, so
      // a client that has read the whole body finds it stored on its next request.
      let held: Buffer | null = null;
      try {
        for await (const chunk of response.body) {
          const buffer = chunk as Buffer;
          if (storing) {
            if (storing.bytes + buffer.length > rule.record.maxObjectBytes) {
              storing.abort();
              storing = null;
              finish('not_stored');
            } else {
              await storing.write(buffer);
            }
          }
          if (!client.gone) {
            if (held !== null) await client.write(held);
            held = null;
            if (storing) held = buffer;
            else await client.write(buffer);
          } else if (!storing) {
            // Nobody to answer and nothing to store: stop reading.
            response.body.destroy();
            break;
          }
        }
      } catch (err) {
        storing?.abort();
        finish('not_stored');
        if (!client.gone) client.abort(err as Error);
        return { result, error: null, upstreamMs, responseHeaders: headers };
      }
      if (storing && decision.policy) {
        const entry = await storing.commit(
          {
            id: entryId(primaryKey, decision.variantKey),
            primaryKey,
            variantKey: decision.variantKey,
            varyNames: decision.varyNames,
            host: request.host ?? '',
            path: request.path,
            ruleId: rule.record.id,
            routeId: request.routeId,
            status: response.status,
            headers: storedHeaders(response.headers),
          },
          decision.policy,
        );
        finish(entry ? 'stored' : 'not_stored');
      }
      if (held !== null && !client.gone) await client.write(held);
      if (!client.gone) client.end();
      return { result, error: null, upstreamMs, responseHeaders: headers };
    } finally {
      finish('not_stored');
    }
  }

  /** stale-while-revalidate: one background revalidation per key. */
  #refreshInBackground(
    lookup: Extract<CacheLookup, { kind: 'cacheable' }>,
    entry: CacheEntry,
    origin: Origin,
    revalidationHeaders: CachePolicy.Headers,
  ): void {
    if (this.#inflight.has(lookup.primaryKey)) return;
    const task = this.#fetchAndStore(
      lookup,
      origin,
      BACKGROUND,
      'EXPIRED',
      validatorHeaders(revalidationHeaders),
      true,
      entry,
    )
      .then((outcome) => {
        if (outcome.error)
          this.#logger.debug({ err: outcome.error }, 'cache: background revalidation failed');
      })
      .catch((err) => this.#logger.warn({ err }, 'cache: background revalidation failed'))
      .finally(() => this.#background.delete(task));
    this.#background.add(task);
  }

  #count(result: CacheResult, client: CacheClient): void {
    if (client === BACKGROUND) return;
    switch (result) {
      case 'HIT':
        this.#hits++;
        break;
      case 'STALE':
        this.#hits++;
        this.#stale++;
        break;
      case 'REVALIDATED':
        this.#hits++;
        this.#revalidated++;
        break;
      case 'MISS':
        this.#misses++;
        break;
      case 'EXPIRED':
        this.#misses++;
        this.#expired++;
        break;
      case 'BYPASS':
        break;
    }
  }

  #scheduleCleanup(): void {
    if (this.#cleanupTimer !== null) clearInterval(this.#cleanupTimer);
    this.#cleanupTimer = setInterval(() => {
      this.cleanup().catch((err) => this.#logger.warn({ err }, 'cache: cleanup failed'));
    }, this.#settings.cleanupSeconds * 1000);
    this.#cleanupTimer.unref();
  }
}

/** Store bounds from settings. */
export function limitsOf(settings: Readonly<CacheSettingsRecord>): CacheStoreLimits {
  return {
    memoryBytes: settings.memoryMiB * 1024 * 1024,
    diskBytes: settings.diskMiB * 1024 * 1024,
    hotObjectBytes: settings.hotObjectKiB * 1024,
    maxEntries: settings.maxEntries,
  };
}

/** The variables of a CEL match expression for a request (docs/pipeline.md "The policy stages"). */
function factsOf(request: CacheRequest): PolicyRequestFacts {
  const query: Record<string, string> = {};
  if (request.query !== '') {
    for (const [name, value] of new URLSearchParams(request.query)) if (!(name in query)) query[name] = value;
  }
  return {
    method: request.method,
    host: request.host ?? '',
    path: request.path,
    ip: request.clientIp ?? '',
    listener: request.listenerName,
    query,
    headers: request.headers,
  };
}

/** Why a request bypasses the cache, or null. */
function bypassReason(request: CacheRequest): string | null {
  if (request.method !== 'GET' && request.method !== 'HEAD') return 'method';
  const headers = request.headers;
  for (const [name, detail] of BYPASS_HEADERS) if (headers[name] !== undefined) return detail;
  if (headers['transfer-encoding'] !== undefined) return 'body';
  const length = headers['content-length'];
  if (length !== undefined && length !== '0') return 'body';
  const cc = headers['cache-control'];
  if (cc !== undefined && /(^|,)\s*no-store\s*(,|$)/i.test(cc)) return 'no-store';
  return null;
}

/** Route, host, path, query (after the rule's mode) and the rule's vary headers. */
export function primaryKeyOf(rule: Readonly<CacheRuleRecord>, request: CacheRequest): string {
  let query = '';
  if (rule.queryMode === 'include') query = request.query;
  else if (rule.queryMode === 'allowlist' && request.query !== '') {
    const params = new URLSearchParams(request.query);
    const kept = [...params].filter(([name]) => rule.queryAllowlist.includes(name));
    kept.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    query = new URLSearchParams(kept).toString();
  }
  let key = `${rule.id}\n${request.routeId}\n${request.host ?? ''}\n${request.path}?${query}`;
  for (const name of rule.varyHeaders) key += `\n${name}:${headerText(request.headers[name])}`;
  return key;
}

function variantKeyOf(varyNames: readonly string[], headers: IncomingHttpHeaders): string {
  let key = '';
  for (const name of varyNames) key += `${name}:${headerText(headers[name])}\n`;
  return key;
}

function entryId(primaryKey: string, variantKey: string): string {
  return hash('sha256', `${primaryKey}\0${variantKey}`, 'hex');
}

function headerText(value: string | string[] | undefined): string {
  if (value === undefined) return '';
  return Array.isArray(value) ? value.join(', ') : value;
}

/** The request as http-cache-semantics sees it: the key stands for URL and host. */
function policyRequestOf(request: CacheRequest, primaryKey: string): CachePolicy.Request {
  const headers: CachePolicy.Headers = {};
  for (const name in request.headers) {
    if (name === 'cookie' || name === 'authorization') continue;
    const value = request.headers[name];
    if (value !== undefined) headers[name] = headerText(value);
  }
  headers.host = request.host ?? '';
  // Conditional headers are the client's business with us, not with the stored entry.
  for (const name of CONDITIONAL_HEADERS) delete headers[name];
  return { method: 'GET', url: primaryKey, headers };
}

/** Header values as one string each (lists joined). */
type HeaderRecord = Record<string, string>;

function headerRecord(headers: IncomingHttpHeaders): HeaderRecord {
  const out: HeaderRecord = {};
  for (const name in headers) {
    const value = headers[name];
    if (value !== undefined) out[name] = headerText(value);
  }
  return out;
}

/** Hop-by-hop headers: never passed on. */
const HOP_BY_HOP = HOP_BY_HOP_HEADERS;

/** An origin answer's headers as passed to the client (hop-by-hop ones dropped). */
function replayHeaders(headers: IncomingHttpHeaders): string[] {
  const named = connectionTokens(headers);
  const out: string[] = [];
  for (const name in headers) {
    if (HOP_BY_HOP.has(name) || named?.has(name)) continue;
    const value = headers[name];
    if (value === undefined) continue;
    if (Array.isArray(value)) for (const v of value) out.push(name, v);
    else out.push(name, value);
  }
  return out;
}

/** Response headers kept with an entry. */
function storedHeaders(headers: IncomingHttpHeaders): [string, string][] {
  const named = connectionTokens(headers);
  const out: [string, string][] = [];
  for (const name in headers) {
    if (UNSTORED_RESPONSE_HEADERS.has(name) || named?.has(name)) continue;
    const value = headers[name];
    if (value === undefined) continue;
    if (Array.isArray(value)) for (const v of value) out.push([name, v]);
    else out.push([name, value]);
  }
  return out;
}

function connectionTokens(headers: IncomingHttpHeaders): Set<string> | null {
  const value = headers.connection;
  if (value === undefined) return null;
  const tokens = new Set<string>();
  for (const part of headerText(value).split(',')) {
    const token = part.trim().toLowerCase();
    if (token !== '' && token !== 'keep-alive' && token !== 'close') tokens.add(token);
  }
  return tokens;
}

interface Storability {
  policy: CachePolicy | null;
  reason: string;
  varyNames: string[];
  variantKey: string;
}

/** Whether a response may be stored, and with which policy (the rule's TTL applied). */
function storability(
  rule: Readonly<CacheRuleRecord>,
  request: CachePolicy.Request,
  response: OriginResponse,
): Storability {
  const none = (reason: string): Storability => ({ policy: null, reason, varyNames: [], variantKey: '' });
  const headers = headerRecord(response.headers);
  if (response.status === 206) return none('partial');
  if (headers['set-cookie'] !== undefined) return none('set-cookie');
  const length = headers['content-length'];
  if (length !== undefined && Number(length) > rule.maxObjectBytes) return none('too-large');
  const varyNames = (headers.vary ?? '')
    .toLowerCase()
    .split(',')
    .map((v) => v.trim())
    .filter((v) => v !== '');
  if (varyNames.includes('*') || varyNames.includes('cookie') || varyNames.includes('authorization'))
    return none('vary');
  const original = new CachePolicy(request, { status: response.status, headers }, { shared: true });
  if (!original.storable()) {
    const cc = headers['cache-control'] ?? '';
    if (/(^|,)\s*no-store/i.test(cc)) return none('no-store');
    if (/(^|,)\s*private/i.test(cc)) return none('private');
    return none('not-cacheable');
  }
  const policy = applyTtl(rule, request, response.status, headers) ?? original;
  if (!policy.storable()) return none('not-cacheable');
  // Never fresh and nothing to revalidate with: storing it would only cost.
  if (policy.timeToLive() <= 0 && headers.etag === undefined && headers['last-modified'] === undefined)
    return none('no-freshness');
  const trimmed = trimPolicy(policy, varyNames);
  return {
    policy: trimmed,
    reason: '',
    varyNames,
    variantKey: variantKeyOf(varyNames, request.headers),
  };
}

/**
 * The policy with the rule's TTL: `fixed` replaces the origin's freshness
 * (keeping its stale-* windows and validators); `origin` uses the rule's
 * seconds only when the origin gave no explicit freshness. Null = as the origin said.
 */
function applyTtl(
  rule: Readonly<CacheRuleRecord>,
  request: CachePolicy.Request,
  status: number,
  headers: HeaderRecord,
): CachePolicy | null {
  const cc = headers['cache-control'] ?? '';
  const directives = cc
    .split(',')
    .map((d) => d.trim())
    .filter((d) => d !== '');
  const explicit =
    directives.some((d) => /^(s-maxage|max-age)\s*=/i.test(d) || /^no-cache$/i.test(d)) ||
    headers.expires !== undefined;
  if (rule.ttl.mode === 'origin' && (explicit || rule.ttl.seconds === 0)) return null;
  const kept = directives.filter((d) => /^(stale-while-revalidate|stale-if-error)\s*=/i.test(d));
  const rewritten: HeaderRecord = {
    ...headers,
    'cache-control': [`s-maxage=${rule.ttl.seconds}`, ...kept].join(', '),
  };
  delete rewritten.expires;
  delete rewritten.pragma;
  return new CachePolicy(request, { status, headers: rewritten }, { shared: true });
}

/** Keeps in the policy only the request headers its Vary names (the rest is never read). */
function trimPolicy(policy: CachePolicy, varyNames: readonly string[]): CachePolicy {
  const obj = policy.toObject();
  if (obj.reqh) {
    const kept: CachePolicy.Headers = {};
    for (const name of varyNames) {
      const value = obj.reqh[name];
      if (value !== undefined) kept[name] = value;
    }
    obj.reqh = kept;
  }
  return CachePolicy.fromObject(obj);
}

/** After a 304: the refreshed policy (rule TTL re-applied) and headers to store. */
function rebuildPolicy(
  rule: Readonly<CacheRuleRecord>,
  request: CachePolicy.Request,
  refreshed: CachePolicy,
  stale: CacheEntry,
  notModified: IncomingHttpHeaders,
): { policy: CachePolicy; headers: [string, string][] } {
  // The stored headers, updated by the 304's (RFC 9111 §4.3.4); not its length.
  const merged = new Map<string, string>(stale.meta.headers);
  for (const [name, value] of storedHeaders(notModified)) merged.set(name, value);
  const record: HeaderRecord = Object.fromEntries(merged);
  const policy = applyTtl(rule, request, stale.meta.status, record) ?? refreshed;
  return { policy: trimPolicy(policy, stale.meta.varyNames), headers: [...merged] };
}

/** Only the validators of http-cache-semantics' revalidation headers: the rest is the client's request. */
function validatorHeaders(headers: CachePolicy.Headers): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of ['if-none-match', 'if-modified-since']) {
    const value = headers[name];
    if (typeof value === 'string') out[name] = value;
  }
  return out;
}

/** Reads and discards a (short) body, so the upstream connection can be reused; errors are ignored. */
async function drain(body: AsyncIterable<Buffer>): Promise<void> {
  try {
    for await (const _chunk of body) {
      // discarded
    }
  } catch {
    // An error while discarding changes nothing.
  }
}

function canServeStaleIfError(entry: CacheEntry): boolean {
  const cc = entry.meta.headers.find(([name]) => name === 'cache-control')?.[1] ?? '';
  const match = /stale-if-error\s*=\s*(\d+)/i.exec(cc);
  if (!match) return false;
  return entry.policy.maxAge() + Number(match[1]) > entry.policy.age();
}

/** Seconds of freshness left (negative once stale), as Cache-Status `ttl`. */
function ttlOf(entry: CacheEntry): number {
  return Math.floor(entry.policy.maxAge() - entry.policy.age());
}

/** True when the client's conditional headers match the entry (it already has this body). */
function conditionalMatches(headers: IncomingHttpHeaders, entry: CacheEntry): boolean {
  const stored = new Map(entry.meta.headers);
  const inm = headers['if-none-match'];
  if (inm !== undefined) {
    const etag = stored.get('etag');
    if (etag === undefined) return false;
    const bare = (tag: string) => tag.trim().replace(/^W\//, '');
    return inm.trim() === '*' || inm.split(',').some((tag) => bare(tag) === bare(etag));
  }
  const ims = headers['if-modified-since'];
  const lastModified = stored.get('last-modified');
  if (ims !== undefined && lastModified !== undefined) {
    const since = Date.parse(ims);
    const modified = Date.parse(lastModified);
    return Number.isFinite(since) && Number.isFinite(modified) && modified <= since;
  }
  return false;
}
