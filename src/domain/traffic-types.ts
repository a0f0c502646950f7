/**
 * Shapes of the traffic tracer shared by the data plane (which records) and
 * the domain services and routes (which report): trace events, levels,
 * counters and request statistics (docs/pipeline.md "Trace events").
 */

import type { CacheResult } from './cache-types.js';

/** How much a trace event carries; `basic` is the default. */
export type TraceLevel = 'basic' | 'detailed' | 'headers';

export const TRACE_LEVELS: readonly TraceLevel[] = ['basic', 'detailed', 'headers'];

/**
 * Why a request did not get a normal answer, or null. `no_route` (404),
 * `upstream_refused` / `upstream_reset` / `upstream_dns` / `upstream_tls` /
 * `upstream_error` (502), `upstream_timeout` / `upstream_connect_timeout`
 * (504), `upstream_body_timeout` / `upstream_aborted` (the response had
 * started: the client connection is cut), `client_aborted` (the client went
 * away first), `stage_error` (a pipeline stage failed: 500).
 */
export type TraceErrorKind =
  | 'no_route'
  | 'upstream_refused'
  | 'upstream_reset'
  | 'upstream_dns'
  | 'upstream_tls'
  | 'upstream_error'
  | 'upstream_timeout'
  | 'upstream_connect_timeout'
  | 'upstream_body_timeout'
  | 'upstream_aborted'
  | 'client_aborted'
  | 'bad_path'
  | 'stage_error'
  | 'no_healthy_member';

/** The TLS parameters of an https listener's connection, traced at `detailed` and `headers`. */
export interface TraceTls {
  /** `TLSv1.3`, `TLSv1.2`. */
  version: string | null;
  cipher: string | null;
  /** The server name the client sent, or null. */
  sni: string | null;
  /** `h2`, `http/1.1`, or null when the client offered no ALPN. */
  alpn: string | null;
}

/** Pipeline stages that can record a decision in a trace event (docs/pipeline.md). */
export type PolicyStageName = 'acme' | 'route' | 'waf' | 'rate_limit' | 'cache' | 'shaper';

/** One decision of one stage about a request: which rule, and what it did (`block`, `limit`, `log`, …). */
export interface PolicyDecision {
  stage: PolicyStageName;
  /** The rule's name (or id when it has none). */
  rule: string;
  action: string;
}

/** Header values as traced at level `headers` (sensitive values already redacted). */
export type TracedHeaders = Record<string, string | string[]>;

/**
 * A `backend` target's part of a trace event: the backend, the member that
 * served (null: none usable), and for an agent member the agent that carried
 * it and, when the agent could not make the request, what it reported:
 * the relay error code (TARGET_NOT_ALLOWED, ENVIRONMENT_UNREACHABLE,
 * ENVIRONMENT_TIMEOUT, AGENT_OFFLINE…) and the system or TLS error behind it
 * (ECONNREFUSED, DEPTH_ZERO_SELF_SIGNED_CERT), or null.
 */
export interface TraceBackend {
  backendId: string;
  memberId: string | null;
  agentId?: string;
  agentError?: { code: string; cause: string | null };
}

/** One traced request (docs/pipeline.md "Trace events"). Optional fields appear at the levels named. */
export interface TraceEvent {
  /** Monotonic per process, from 1. */
  seq: number;
  id: string;
  /** ISO 8601 time the request arrived. */
  time: string;
  method: string;
  /** Lower-case host name the client asked for (no port), or null. */
  host: string | null;
  /** Path without the query string. */
  path: string;
  /** Status sent to the client, or null when none was (client gone first). */
  status: number | null;
  durationMs: number;
  /** Request body bytes received from the client. */
  bytesIn: number;
  /** Response body bytes sent to the client. */
  bytesOut: number;
  listenerId: string;
  routeId: string | null;
  /** Upstream URL, `redirect STATUS LOCATION` or `static STATUS`; null without a route. */
  target: string | null;
  clientIp: string | null;
  error: TraceErrorKind | null;
  /** Decisions of the pipeline's stages, in order; absent when no stage decided anything. */
  policy?: PolicyDecision[];
  /** How the response cache took part (docs/pipeline.md "The cache stage"); absent when it did not. */
  cache?: CacheResult;
  /**
   * Route targets of type `backend`: the backend and the member that served,
   * and for an agent member the agent that carried it (docs/pipeline.md
   * "Backend targets").
   */
  backend?: TraceBackend;
  /** `detailed` and `headers`: the query string with sensitive parameter values redacted. */
  query?: string | null;
  /** `detailed` and `headers`. */
  httpVersion?: string;
  /** `detailed` and `headers`. */
  userAgent?: string | null;
  /** `detailed` and `headers`: time until the upstream's response head, in ms. */
  upstreamMs?: number | null;
  /** `detailed` and `headers`, for requests on https listeners. */
  tls?: TraceTls;
  /** `headers`: request headers as received, sensitive values redacted. */
  requestHeaders?: TracedHeaders;
  /** `headers`: response headers as sent, sensitive values redacted. */
  responseHeaders?: TracedHeaders;
}

/** The tracer's live counters, reported with its settings. */
export interface TraceCounters {
  /** Open live-stream subscribers. */
  subscribers: number;
  /** Events recorded since start. */
  emittedEvents: number;
  /** Events lost by slow subscribers since start (summed over subscribers). */
  droppedEvents: number;
}

/** Requests seen by the data plane over a window of time. */
export interface RequestStats {
  requests: number;
  /** Answers with a 5xx status (502/504 for upstream failures) and responses cut by an upstream failure. */
  errors: number;
  /** Requests sent to an agent member of a backend (through that agent's tunnel). */
  tunnelled: number;
  /** Latency percentiles in ms (approximate, ±8 %), null when no request. */
  p50Ms: number | null;
  p95Ms: number | null;
}

/** Where the overview reads request statistics from (the data plane's metrics). */
export interface RequestStatsSource {
  /** Statistics over the last `windowMs` milliseconds. */
  stats(windowMs: number): RequestStats;
}
