/**
 * The request pipeline of the public proxy (docs/pipeline.md): a public request
 * passes listener → ACME challenge → route → WAF → rate limits → cache →
 * shapers → target. Each data-plane feature is one {@link Stage} with one
 * interface: `decide(request)` answers the request itself or lets it
 * continue, and optional hooks see the response head, transform the request
 * or response body as it streams (shapers, the cache) and observe the end of
 * the exchange (auto-mode WAF rules).
 *
 * A {@link Pipeline} is immutable: the data plane builds a new one from the
 * saved configuration whenever a stage or the route table changes and swaps
 * the reference, so each request runs against the pipeline it started with
 * (the old rule set or the new one, never half of each). A slot without a
 * stage costs nothing: only installed stages are in the list a request walks.
 *
 * Stages are independent of the wire protocol: a {@link PipelineRequest} is
 * built the same way for HTTP/1.1 and HTTP/2 (compat) requests, and answers
 * are written by the exchange, not by the stage.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { Readable } from 'node:stream';
import type { TemplateValues } from '../domain/template-render.js';
import type { PolicyDecision, PolicyStageName, TraceErrorKind } from '../domain/traffic-types.js';
import type { CompiledRoute, ListenerRoutes } from './route-table.js';
import { AMBIGUOUS_PATH, matchRouteStrictly, routesOf } from './route-table.js';

/** Slots of the pipeline (one stage each), in the order a request passes them. */
export type StageSlot = PolicyStageName;

export const STAGE_ORDER: readonly StageSlot[] = ['acme', 'route', 'waf', 'rate_limit', 'cache', 'shaper'];

/** The listener a request arrived on, as stages see it. */
export interface PipelineListener {
  readonly id: string;
  readonly name: string;
  /** True on a TLS listener (https / h2). */
  readonly secure: boolean;
}

/**
 * A request as stages see it: normalised, protocol-independent, read-only
 * except for what stages may add (response headers, trace decisions, notes).
 */
export interface PipelineRequest {
  readonly method: string;
  /** Lower-case host name without port, or null. */
  readonly host: string | null;
  /** Path without query, normalized (dot segments resolved; see route-table.ts). */
  readonly path: string;
  /** Path without query as the client sent it. */
  readonly rawPath: string;
  /** Raw query string without `?`, '' when none. */
  readonly query: string;
  /** Request headers, lower-case names (HTTP/2 pseudo-headers excluded from matching by stages). */
  readonly headers: IncomingHttpHeaders;
  /** Client address (IPv4-mapped IPv6 unwrapped), or null. */
  readonly clientIp: string | null;
  readonly listener: PipelineListener;
  /** The matched route once the route stage has run, else null. */
  readonly route: CompiledRoute | null;
  /** Epoch ms the request arrived. */
  readonly startedAt: number;
  /** Adds a header to whatever answer the client gets (proxied or answered by a stage). */
  addResponseHeader(name: string, value: string): void;
  /**
   * The headers the target request carries (hop-by-hop dropped, forwarding
   * headers by the listener's rules), without `drop`, with `set`: for a stage
   * that asks the upstream itself (the cache). Absent outside the exchange.
   */
  upstreamHeaders?(drop?: readonly string[], set?: Readonly<Record<string, string>>): string[];
  /** Records a decision in the trace event's `policy` list. */
  recordDecision(stage: PolicyStageName, rule: string, action: string): void;
  /** Per-request scratch space shared between hooks of the same stage (keyed by stage). */
  readonly notes: Map<string, unknown>;
}

/** An answer a stage gives instead of the target. */
export interface StageAnswer {
  readonly status: number;
  /** Flat `[name, value, name, value, …]` list; `content-length` is set by the exchange for buffers. */
  readonly headers?: readonly string[];
  /** Body: bytes, text (UTF-8), a readable stream (piped with backpressure), or none. */
  readonly body?: Buffer | string | Readable | null;
  /**
   * Render this response template instead of `body` (with `status`; the
   * request's own placeholder values, plus `values` such as `retryAfter` and
   * `ruleName`). A missing template gives the built-in page.
   */
  readonly template?: {
    readonly id: string;
    readonly values?: TemplateValues;
    /** Appended to the rendered body as it is (e.g. the challenge's solver script). */
    readonly append?: string;
  };
  /** Error kind the trace shows for this answer (e.g. `no_route`), if any. */
  readonly error?: TraceErrorKind;
}

/** Let the request go on to the next stage. */
export const CONTINUE: unique symbol = Symbol('continue');

export type StageDecision = typeof CONTINUE | StageAnswer;

/** A response head as the client will get it; stages may push headers onto `headers` (flat list). */
export interface ResponseHead {
  readonly status: number;
  readonly headers: string[];
  /** True when a stage (not the target) answered. */
  readonly answered: boolean;
}

/**
 * Where response (or request) body chunks go. `write` returns false when the
 * writer must wait for `onDrain` before writing again (backpressure).
 */
export interface ChunkSink {
  write(chunk: Buffer): boolean;
  end(): void;
  /** Calls `listener` once when writing may go on. */
  onDrain(listener: () => void): void;
  /** The body will not complete (client gone, upstream failed). */
  abort(err: Error): void;
}

/** Wraps the sink a body goes to; the wrapper forwards (possibly later, or changed) to `next`. */
export type BodyTransform = (next: ChunkSink) => ChunkSink;

/** Transforms a request body on its way to the target, keeping backpressure (pull-based). */
export type RequestBodyTransform = (source: AsyncIterable<Buffer>) => AsyncIterable<Buffer>;

/** What the exchange reports to `complete` hooks when it is over. */
export interface CompletedExchange {
  readonly request: PipelineRequest;
  readonly status: number | null;
  readonly durationMs: number;
  readonly bytesIn: number;
  readonly bytesOut: number;
  readonly error: TraceErrorKind | null;
}

/**
 * One stage. Only `slot` and `decide` are required; every hook is optional
 * and a stage without rules should not be installed at all (pass null).
 * Hooks must not throw; a `decide` that throws or rejects answers 500.
 */
export interface Stage {
  readonly slot: StageSlot;
  /** Answer the request, or `CONTINUE`. Synchronous where possible (no promise on the hot path). */
  decide(request: PipelineRequest): StageDecision | Promise<StageDecision>;
  /** Sees the response head before it is written (may add headers); may return a body transform. */
  response?(request: PipelineRequest, head: ResponseHead): BodyTransform | null;
  /** May transform the request body sent to the target. */
  requestBody?(request: PipelineRequest): RequestBodyTransform | null;
  /** Called once when the exchange is over (answered, proxied, failed or aborted). */
  complete?(exchange: CompletedExchange): void;
}

/** An immutable, ready-to-run pipeline. */
export interface Pipeline {
  /** Installed stages in {@link STAGE_ORDER}; the route stage is always there. */
  readonly stages: readonly Stage[];
  /** Stages with a `response` hook, in order (empty = no cost on the response path). */
  readonly responseStages: readonly Stage[];
  readonly requestBodyStages: readonly Stage[];
  readonly completeStages: readonly Stage[];
}

/** Builds a pipeline from the stages installed per slot (null = empty slot). */
export function buildPipeline(slots: ReadonlyMap<StageSlot, Stage>): Pipeline {
  const stages: Stage[] = [];
  for (const slot of STAGE_ORDER) {
    const stage = slots.get(slot);
    if (stage) stages.push(stage);
  }
  return {
    stages,
    responseStages: stages.filter((s) => s.response !== undefined),
    requestBodyStages: stages.filter((s) => s.requestBody !== undefined),
    completeStages: stages.filter((s) => s.complete !== undefined),
  };
}

const NO_ROUTE: StageAnswer = {
  status: 404,
  headers: ['content-type', 'text/plain; charset=utf-8'],
  body: 'no route\n',
  error: 'no_route',
};

const AMBIGUOUS: StageAnswer = {
  status: 400,
  headers: ['content-type', 'text/plain; charset=utf-8'],
  body: 'ambiguous path\n',
  error: 'bad_path',
};

/** Route stage state the exchange writes the matched route into. */
export interface RoutableRequest extends PipelineRequest {
  route: CompiledRoute | null;
}

/**
 * The route stage: picks the listener's route (see route-table.ts) or answers
 * 404 `no_route`, or 400 `bad_path` for a path that reads as another route.
 */
export function createRouteStage(tables: Map<string, ListenerRoutes>): Stage {
  return {
    slot: 'route',
    decide(request) {
      const table = routesOf(tables, request.listener.id);
      const route = matchRouteStrictly(table, request.host, request.rawPath, request.path);
      if (route === AMBIGUOUS_PATH) return AMBIGUOUS;
      if (route === null) return NO_ROUTE;
      (request as RoutableRequest).route = route;
      return CONTINUE;
    },
  };
}

/** True for a promise-like decision (the exchange awaits it, otherwise stays synchronous). */
export function isPromiseLike<T>(value: unknown): value is PromiseLike<T> {
  return typeof (value as { then?: unknown } | null)?.then === 'function';
}

/** Re-exported for stages that only import the pipeline. */
export type { PolicyDecision, PolicyStageName };
