/**
 * Shapes of the response cache shared by the domain (settings, rules,
 * statistics) and the data plane (which caches): docs/pipeline.md "The cache
 * stage".
 */
import type { CacheRuleRecord } from '../storage/schema.js';
import type { CompiledExpression } from './policy-expression.js';

/** Where the cache stage leaves its result for the trace (request notes). */
export const CACHE_NOTE = 'cache';
/** Where a stage that asked the upstream itself leaves the time to its answer head, in ms. */
export const UPSTREAM_MS_NOTE = 'upstreamMs';

/** The trace event's `cache` value. */
export type CacheResult = 'HIT' | 'MISS' | 'STALE' | 'REVALIDATED' | 'BYPASS' | 'EXPIRED';

/** A rule as the cache applies it. */
export interface CompiledCacheRule {
  readonly record: Readonly<CacheRuleRecord>;
  /** The rule's match expression, compiled (CEL, docs/pipeline.md "The policy stages"). */
  readonly expression: CompiledExpression;
}

/** Which entries a purge removes: all of them, or those matching every field given. */
export interface CachePurgeFilter {
  all?: boolean;
  host?: string;
  pathPrefix?: string;
  ruleId?: string;
}

/** `GET /api/v1/cache/stats`: the documented fields, then a few more counters. */
export interface CacheStats {
  entries: number;
  memoryBytes: number;
  diskBytes: number;
  /** Answers from the cache (fresh hits, stale answers, revalidated ones). */
  hits: number;
  /** Answers the origin gave (misses and expired entries refetched). */
  misses: number;
  /** hits / (hits + misses), 0 before the first. */
  hitRatio: number;
  stale: number;
  revalidated: number;
  /** Misses where an expired entry was refetched with a new body. */
  expired: number;
  bypasses: number;
  evictions: number;
}
