/**
 * Shapes of the response cache shared by the domain (settings, rules,
 * statistics) and the data plane (which caches): DESIGN.md §10.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { CacheRuleRecord } from '../storage/schema.js';

/** The trace event's `cache` value. */
export type CacheResult = 'HIT' | 'MISS' | 'STALE' | 'REVALIDATED' | 'BYPASS' | 'EXPIRED';

/** What a cache rule's expression sees (DESIGN.md §9). */
export interface CacheMatchInput {
  method: string;
  host: string;
  path: string;
  /** Raw query string without `?`. */
  query: string;
  headers: IncomingHttpHeaders;
  ip: string;
  listenerId: string;
}

/** A compiled rule expression; the empty expression matches all. */
export type CacheMatcher = (input: CacheMatchInput) => boolean;

/** A rule as the cache applies it. */
export interface CompiledCacheRule {
  readonly record: Readonly<CacheRuleRecord>;
  readonly matches: CacheMatcher;
}

/** Which entries a purge removes: all of them, or those matching every field given. */
export interface CachePurgeFilter {
  all?: boolean;
  host?: string;
  pathPrefix?: string;
  ruleId?: string;
}

/** `GET /api/v1/cache/stats`: DESIGN's fields, then a few more counters. */
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
