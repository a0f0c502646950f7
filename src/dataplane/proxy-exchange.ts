/**
 * One proxied request, from arrival to the end of the response: runs the
 * pipeline's stages (pipeline.ts: route, then the policies), answers with a
 * stage's answer or with static and redirect targets itself, and forwards upstream
 * targets through undici's dispatcher with end-to-end streaming — the
 * upstream body is written to the client chunk by chunk and the upstream
 * socket is paused while the client does not drain; the request body is
 * streamed to the upstream the same way. When the response is over (or the
 * client gone) the exchange is counted and traced once.
 *
 * Forwarding rules: hop-by-hop headers (`Connection` and the headers it
 * names, `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding`,
 * `Upgrade`) are dropped both ways; `Host` becomes the upstream's and the
 * original travels in `X-Forwarded-Host`; `X-Forwarded-For` gets the client
 * address appended; `X-Forwarded-Proto` is `http` or `https` (the
 * listener's). Paths are normalized before routing (dot segments resolved,
 * encoded unreserved characters decoded); a path that would select another
 * route read differently (unresolved, `%2F` as a separator, `;` parameters
 * stripped) is answered 400 by the route stage.
 *
 * HTTP/1.1 and HTTP/2 (an https listener's `h2`, through node:http2's
 * compatibility API) are handled the same: the h2 `:authority` stands for
 * `Host`, pseudo-headers are never forwarded, and split `cookie` fields are
 * joined into one. An https listener with `hsts` adds
 * `Strict-Transport-Security` to every answer (ACME challenges and the
 * https redirect are the pipeline's `acme` stage, see acme-stage.ts).
 *
 * Failures: no route → 404 (`no_route`); upstream refused/reset/DNS/TLS →
 * 502; upstream timeout → 504; a failure after the response started cuts
 * the client connection. Each carries a traced error kind.
 */

import { randomUUID } from 'node:crypto';
import { type IncomingHttpHeaders, type IncomingMessage, ServerResponse } from 'node:http';
import type { Http2ServerRequest, Http2ServerResponse } from 'node:http2';
import { type BlockList, isIP, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { type Duplex, Readable } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import type { Dispatcher } from 'undici';
import { CACHE_NOTE, type CacheResult, UPSTREAM_MS_NOTE } from '../domain/cache-types.js';
import {
  type CompiledTemplate,
  type RenderedResponse,
  renderTemplateResponse,
  type TemplateValues,
} from '../domain/template-render.js';
import type {
  PolicyDecision,
  PolicyStageName,
  TraceBackend,
  TraceErrorKind,
  TraceTls,
} from '../domain/traffic-types.js';
import { HOP_BY_HOP_HEADERS, hopByHopAnd } from '../http-headers.js';
import type { BackendBalancer, MemberLease } from './backend-balancer.js';
import {
  type BodyTransform,
  type ChunkSink,
  CONTINUE,
  isPromiseLike,
  type Pipeline,
  type PipelineListener,
  type PipelineRequest,
  type StageAnswer,
  type StageDecision,
} from './pipeline.js';
import type { RequestMetrics } from './request-metrics.js';
import { type CompiledRoute, normalizeHost, normalizeRequestPath } from './route-table.js';
import type { TraceInput, TraceRecorder } from './trace-recorder.js';

/** What an exchange needs from its data plane. */
export interface ExchangeContext {
  readonly dispatcher: Dispatcher;
  readonly recorder: TraceRecorder;
  readonly metrics: RequestMetrics;
  /** Called once per finished request, after the metrics count it. */
  readonly onRequestDone?: (request: TraceInput) => void;
  /** Upstream timeout when the route sets none. */
  readonly defaultTimeoutMs: number;
  /** The compiled response templates (swapped whole when they change). */
  templates(): ReadonlyMap<string, CompiledTemplate>;
  /** The error template of a listener, or null. */
  listenerErrorTemplate(listenerId: string): string | null;
  /** Picks the member of a `backend` target (absent: such targets answer 503). */
  readonly backends?: Pick<BackendBalancer, 'pick'>;
}

/** What the listener a request arrived on asks of its answers. */
export interface ExchangeOptions {
  /** Add `Strict-Transport-Security` (https listeners). */
  readonly hsts?: boolean;
  /**
   * Peers whose `Forwarded`, `X-Forwarded-*` and `X-Real-IP` are kept (the
   * listener's `trustedProxies`); absent = none, they are dropped.
   */
  readonly trustedProxies?: BlockList | null;
}

/** `host` (as routed) with the port of the authority it came from, or null. */
function routedHost(host: string | null, authority: string | undefined): string | null {
  if (host === null) return null;
  const port = authority === undefined ? undefined : /:(\d{1,5})$/.exec(authority.trim())?.[1];
  return port === undefined ? host : `${host}:${port}`;
}

/** A request of either protocol: HTTP/1.1 (node:http) or HTTP/2 (node:http2's compatibility API). */
export type ExchangeRequest = IncomingMessage | Http2ServerRequest;
export type ExchangeResponse = ServerResponse | Http2ServerResponse;

/** Failures that count against a backend member (passive ejection). */
const MEMBER_FAILURES: ReadonlySet<TraceErrorKind> = new Set([
  'upstream_refused',
  'upstream_reset',
  'upstream_dns',
  'upstream_tls',
  'upstream_error',
  'upstream_timeout',
  'upstream_connect_timeout',
]);

/** The byte pipe of an upgraded tunnel (relay/tunnel-client.ts TunnelSocket). */
interface TunnelPipe {
  write(data: Buffer): Promise<boolean>;
  end(): void;
  destroy(): void;
  read(onData: (chunk: Buffer) => void, onEnd: () => void): void;
  pause(): void;
  resume(): void;
}

/** One year; sent when a listener has `hsts`. */
export const HSTS_VALUE = 'max-age=31536000';

/** Request headers never forwarded (lower case); the `X-Forwarded-*` ones are set afresh. */
const REQUEST_HEADERS_DROPPED = hopByHopAnd(
  'host',
  'expect',
  'x-forwarded-for',
  'x-forwarded-proto',
  'x-forwarded-host',
);

/** Response headers never passed back (lower case). */
const RESPONSE_HEADERS_DROPPED = HOP_BY_HOP_HEADERS;

const TEXT_PLAIN = 'text/plain; charset=utf-8';

/** How an upstream failure is answered and traced. */
export interface UpstreamFailure {
  kind: TraceErrorKind;
  status: 502 | 504;
}

/** Maps an undici / socket error onto a traced kind and a 502 or 504. */
export function classifyUpstreamError(err: unknown): UpstreamFailure {
  const first = (err as { errors?: unknown[] } | null)?.errors?.[0];
  const e = (first ?? err) as { code?: unknown; message?: unknown; name?: unknown } | null;
  const code = typeof e?.code === 'string' ? e.code : '';
  switch (code) {
    case 'UND_ERR_HEADERS_TIMEOUT':
      return { kind: 'upstream_timeout', status: 504 };
    case 'UND_ERR_BODY_TIMEOUT':
      return { kind: 'upstream_body_timeout', status: 504 };
    case 'UND_ERR_CONNECT_TIMEOUT':
    case 'ETIMEDOUT':
      return { kind: 'upstream_connect_timeout', status: 504 };
    case 'ECONNREFUSED':
      return { kind: 'upstream_refused', status: 502 };
    case 'ECONNRESET':
    case 'EPIPE':
    case 'UND_ERR_SOCKET':
    case 'UND_ERR_CLOSED':
    case 'ERR_STREAM_PREMATURE_CLOSE':
      return { kind: 'upstream_reset', status: 502 };
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return { kind: 'upstream_dns', status: 502 };
  }
  if (
    code.startsWith('ERR_TLS') ||
    code.startsWith('ERR_SSL') ||
    code.includes('CERT') ||
    code === 'UNABLE_TO_VERIFY_LEAF_SIGNATURE'
  ) {
    return { kind: 'upstream_tls', status: 502 };
  }
  return { kind: 'upstream_error', status: 502 };
}

/**
 * Handles one request on a listener with the pipeline current when it
 * arrived; everything else happens through callbacks.
 */
export function handleExchange(
  context: ExchangeContext,
  listener: PipelineListener,
  pipeline: Pipeline,
  req: ExchangeRequest,
  res: ExchangeResponse,
  options: ExchangeOptions = NO_OPTIONS,
): void {
  new ProxyExchange(
    context,
    listener,
    pipeline,
    req as IncomingMessage,
    res as ServerResponse,
    options,
  ).run();
}

const NO_OPTIONS: ExchangeOptions = {};

/**
 * Handles an HTTP/1.1 upgrade request (WebSocket) on a plain or https listener: the
 * same pipeline and route as any request; through an agent member's tunnel
 * a 101 from the app turns the connection into a byte pipe both ways. Any
 * other answer (a stage's, a refusal, another target's) is written on the
 * connection, which then closes.
 */
export function handleUpgrade(
  context: ExchangeContext,
  listener: PipelineListener,
  pipeline: Pipeline,
  req: IncomingMessage,
  socket: Duplex,
  head: Buffer,
  options: ExchangeOptions = NO_OPTIONS,
): void {
  const res = new ServerResponse(req);
  res.shouldKeepAlive = false;
  res.assignSocket(socket as Socket);
  res.once('finish', () => {
    res.detachSocket(socket as Socket);
    socket.end();
  });
  socket.on('error', () => socket.destroy());
  const exchange = new ProxyExchange(context, listener, pipeline, req, res, options);
  exchange.upgradeFrom(socket, head);
  exchange.run();
}

const STAGE_FAILED: StageAnswer = {
  status: 500,
  headers: ['content-type', TEXT_PLAIN],
  body: 'internal error\n',
  error: 'stage_error',
};

class ProxyExchange implements TraceInput, PipelineRequest, Dispatcher.DispatchHandler {
  readonly startedAt = Date.now();
  readonly #t0 = performance.now();
  readonly method: string;
  host: string | null;
  path = '/';
  rawPath = '/';
  query = '';
  status: number | null = null;
  durationMs = 0;
  bytesIn = 0;
  bytesOut = 0;
  readonly listener: PipelineListener;
  routeId: string | null = null;
  target: string | null = null;
  readonly clientIp: string | null;
  error: TraceErrorKind | null = null;
  upstreamMs: number | null = null;
  responseHeaders: (string | Buffer)[] | null = null;
  readonly tls: TraceTls | null;
  policy: PolicyDecision[] | null = null;
  /** A `backend` target's backend, member and (agent members) agent (trace `backend`). */
  backend: TraceBackend | null = null;
  #lease: MemberLease | null = null;

  readonly #context: ExchangeContext;
  readonly #pipeline: Pipeline;
  /** Headers stages added for the answer, flat; null when none. */
  #extraHeaders: string[] | null = null;
  #notes: Map<string, unknown> | null = null;
  /** Where response body chunks go when a stage transforms the body; null = straight to the client. */
  #sink: ChunkSink | null = null;
  readonly #options: ExchangeOptions;
  readonly #secure: boolean;
  /** The authority the request was routed on: the absolute-form URL's, else Host / `:authority`. */
  #authority: string | undefined;
  readonly #req: IncomingMessage;
  readonly #res: ServerResponse;
  #controller: Dispatcher.DispatchController | null = null;
  #clientGone = false;
  #finished = false;
  #upstreamDone = false;
  #id: string | null = null;
  #route: CompiledRoute | null = null;
  /** An upgrade request's connection and the bytes read past its head; null for other requests. */
  #upgrade: { socket: Duplex; head: Buffer } | null = null;
  /** True once a 101 made the connection a byte pipe. */
  #piped = false;

  // Both request kinds are driven through the HTTP/1 types: node:http2's compatibility objects
  // offer the same members this class uses (headers, rawHeaders, url, socket, streaming, writeHead
  // with a flat header list, write/drain, end, destroy, headersSent, writableFinished).
  constructor(
    context: ExchangeContext,
    listener: PipelineListener,
    pipeline: Pipeline,
    req: IncomingMessage,
    res: ServerResponse,
    options: ExchangeOptions,
  ) {
    this.#context = context;
    this.#options = options;
    this.listener = listener;
    this.#pipeline = pipeline;
    this.#req = req;
    this.#res = res;
    this.method = req.method ?? 'GET';
    this.#authority = req.headers.host ?? (req.headers[':authority'] as string | undefined);
    this.host = normalizeHost(this.#authority);
    const socket = req.socket as TLSSocket;
    const address = socket.remoteAddress;
    this.clientIp = address?.startsWith('::ffff:') ? address.slice(7) : (address ?? null);
    this.#secure = socket.encrypted === true;
    this.tls = this.#secure && context.recorder.level !== 'basic' ? tlsOf(socket) : null;
    res.once('close', this.#onClose);
  }

  /** Marks the request as an upgrade arriving on `socket` (see handleUpgrade). */
  upgradeFrom(socket: Duplex, head: Buffer): void {
    this.#upgrade = { socket, head };
  }

  /** The request id: the trace event's `id` and a template's `{{requestId}}`. */
  get id(): string {
    this.#id ??= randomUUID();
    return this.#id;
  }

  /** The id if something already asked for it; the trace recorder makes one lazily otherwise. */
  get assignedId(): string | null {
    return this.#id;
  }

  get route(): CompiledRoute | null {
    return this.#route;
  }

  /** Set by the route stage; the trace names the route and target from then on, whoever answers. */
  set route(route: CompiledRoute | null) {
    this.#route = route;
    this.routeId = route?.id ?? null;
    this.target = route?.label ?? null;
  }

  get listenerId(): string {
    return this.listener.id;
  }

  get headers(): IncomingHttpHeaders {
    return this.#req.headers;
  }

  /** The cache stage's part in this request (trace `cache`), or null when it had none. */
  get cache(): CacheResult | null {
    return (this.#notes?.get(CACHE_NOTE) as CacheResult | undefined) ?? null;
  }

  get notes(): Map<string, unknown> {
    this.#notes ??= new Map();
    return this.#notes;
  }

  addResponseHeader(name: string, value: string): void {
    this.#extraHeaders ??= [];
    this.#extraHeaders.push(name, value);
  }

  recordDecision(stage: PolicyStageName, rule: string, action: string): void {
    this.policy ??= [];
    this.policy.push({ stage, rule, action });
  }

  get httpVersion(): string {
    return this.#req.httpVersion;
  }

  get userAgent(): string | null {
    return this.#req.headers['user-agent'] ?? null;
  }

  get requestHeaders(): readonly string[] {
    return this.#req.rawHeaders;
  }

  run(): void {
    if (!this.#parseTarget()) {
      this.#respond(400, 'bad request\n');
      return;
    }
    this.#runStages(0);
  }

  /** Walks the stages from `index`; stays synchronous until a stage returns a promise. */
  #runStages(index: number): void {
    const stages = this.#pipeline.stages;
    for (let i = index; i < stages.length; i++) {
      let decision: StageDecision | PromiseLike<StageDecision>;
      try {
        decision = stages[i]!.decide(this);
      } catch {
        decision = STAGE_FAILED;
      }
      if (isPromiseLike<StageDecision>(decision)) {
        decision.then(
          (settled) => this.#afterStage(settled, i),
          () => this.#afterStage(STAGE_FAILED, i),
        );
        return;
      }
      if (decision !== CONTINUE) {
        this.#answer(decision);
        return;
      }
    }
    this.#toTarget();
  }

  #afterStage(decision: StageDecision, index: number): void {
    if (this.#clientGone) {
      // Nobody will read a streamed answer: let its producer stop.
      if (decision !== CONTINUE && decision.body instanceof Readable) decision.body.destroy();
      return;
    }
    if (decision === CONTINUE) this.#runStages(index + 1);
    else this.#answer(decision);
  }

  /** Sends a stage's answer: its own body, or the named template rendered for this request. */
  #answer(answer: StageAnswer): void {
    this.#drainRequest();
    if (answer.error !== undefined) this.error = answer.error;
    const headers = answer.headers === undefined ? [] : [...answer.headers];
    if (answer.template !== undefined) {
      const rendered = renderTemplateResponse(
        this.#context.templates(),
        answer.template.id,
        this.templateValues(answer.status, answer.template.values),
        answer.status,
      );
      headers.push('content-type', rendered.contentType, 'cache-control', 'no-store');
      const append = answer.template.append;
      const body = append === undefined ? rendered.body : Buffer.concat([rendered.body, Buffer.from(append)]);
      this.#send(rendered.status, headers, body, true);
      return;
    }
    const body = answer.body;
    if (body instanceof Readable) {
      this.#stream(answer.status, headers, body);
      return;
    }
    this.#send(
      answer.status,
      headers,
      body === undefined || body === null ? null : typeof body === 'string' ? Buffer.from(body) : body,
      true,
    );
  }

  /** The route's target, after every stage let the request through. */
  #toTarget(): void {
    const route = this.#route;
    if (route === null) {
      this.error = 'no_route';
      this.#respond(404, 'no route\n');
      return;
    }
    const target = route.target;
    switch (target.type) {
      case 'static':
        this.#drainRequest();
        if (target.templateId !== null) {
          this.#sendRendered(
            renderTemplateResponse(
              this.#context.templates(),
              target.templateId,
              this.templateValues(target.status),
              target.status,
            ),
          );
          return;
        }
        this.#send(target.status, ['content-type', target.contentType], target.body);
        return;
      case 'redirect':
        this.#drainRequest();
        this.#send(target.status, ['location', target.location], null);
        return;
      case 'upstream':
        this.#forward(target.origin, target.basePath, target.timeoutMs);
        return;
      case 'backend':
        this.#toBackend(route, target.backendId);
        return;
    }
  }

  /** A member of the backend, chosen by its algorithm among usable ones; none → 503. */
  #toBackend(route: CompiledRoute, backendId: string): void {
    const req = this.#req;
    const lease =
      this.#context.backends?.pick(backendId, {
        clientIp: this.clientIp ?? '',
        path: this.path,
        header: (name) => {
          const value = req.headers[name];
          return Array.isArray(value) ? value.join(',') : value;
        },
      }) ?? null;
    this.backend = { backendId, memberId: lease?.memberId ?? null };
    if (lease === null) {
      this.error = 'no_healthy_member';
      const templateId = route.record.errorTemplateId ?? this.#context.listenerErrorTemplate(this.listenerId);
      if (templateId) {
        this.#drainRequest();
        this.#sendRendered(
          renderTemplateResponse(this.#context.templates(), templateId, this.templateValues(503), 503),
        );
        return;
      }
      this.#respond(503, 'no healthy backend member\n');
      return;
    }
    this.#lease = lease;
    this.target = `${route.label} ${lease.origin}${lease.basePath}`;
    if (lease.agentId === null) {
      this.#forward(lease.origin, lease.basePath, null);
      return;
    }
    // An agent member: the same forwarding, through the agent's tunnel.
    this.backend.agentId = lease.agentId;
    this.target = `${route.label} agent ${lease.agentId} ${lease.origin}${lease.basePath}`;
    this.#forward(lease.origin, lease.basePath, null, lease.dispatcher as unknown as Dispatcher, true);
  }

  /** Splits the request target into path and query; normalizes the path (route-table.ts). */
  #parseTarget(): boolean {
    let url = this.#req.url ?? '/';
    if (!url.startsWith('/')) {
      // Absolute form (`GET http://host/path`): route on its host and path.
      try {
        const parsed = new URL(url);
        this.#authority = parsed.host;
        this.host = normalizeHost(parsed.host);
        url = parsed.pathname + parsed.search;
      } catch {
        return false;
      }
    }
    const q = url.indexOf('?');
    const rawPath = q < 0 ? url : url.slice(0, q);
    if (q >= 0) this.query = url.slice(q + 1);
    const path = normalizeRequestPath(rawPath);
    if (path === null) return false;
    this.rawPath = rawPath;
    this.path = path;
    return true;
  }

  #forward(
    origin: string,
    basePath: string,
    timeoutMs: number | null,
    dispatcher: Dispatcher = this.#context.dispatcher,
    tunnel = false,
  ): void {
    if (this.method === 'CONNECT') {
      this.#respond(405, 'method not allowed\n');
      return;
    }
    const timeout = timeoutMs ?? this.#context.defaultTimeoutMs;
    const headers = this.upstreamHeaders();
    let body: AsyncIterable<Buffer> | null = this.#hasBody() ? countBytes(this.#req, this) : null;
    if (body !== null) {
      for (const stage of this.#pipeline.requestBodyStages) {
        const transform = stage.requestBody!(this);
        if (transform !== null) body = transform(body);
      }
    }
    try {
      dispatcher.dispatch(
        {
          origin,
          path: basePath + this.path + (this.query === '' ? '' : `?${this.query}`),
          method: this.method,
          headers,
          // undici takes any async iterable as a body; the generator counts bytes and keeps backpressure.
          body: body as unknown as Readable | null,
          headersTimeout: timeout,
          bodyTimeout: timeout,
          // Upgrades pass through agent tunnels; other targets get the request without its Upgrade.
          ...(tunnel && this.#upgrade !== null && typeof this.#req.headers.upgrade === 'string'
            ? { upgrade: this.#req.headers.upgrade }
            : {}),
        },
        this,
      );
    } catch (err) {
      this.onResponseError(null, err as Error);
    }
  }

  /**
   * Request headers for the upstream: without `drop` (lower-case names), with
   * `set` added. Client-sent `Forwarded`, `X-Forwarded-*` and `X-Real-IP` pass
   * only from a peer in the listener's `trustedProxies` (its X-Forwarded-For is
   * then extended); from anyone else they are dropped and set afresh, with
   * `X-Forwarded-Host` the host the route matched.
   */
  upstreamHeaders(drop: readonly string[] = [], set: Readonly<Record<string, string>> = {}): string[] {
    const raw = this.#req.rawHeaders;
    const named = connectionTokens(this.#req.headers);
    const trusted = this.#fromTrustedProxy();
    const out: string[] = [];
    let forwardedFor: string | null = null;
    let forwardedProto: string | null = null;
    let forwardedHost: string | null = null;
    let cookie: string | null = null;
    for (let i = 0; i + 1 < raw.length; i += 2) {
      const name = raw[i]!;
      // HTTP/2 pseudo-headers (`:path`, `:authority`…) stay on this hop.
      if (name.charCodeAt(0) === 58) continue;
      const lower = name.toLowerCase();
      if (lower === 'forwarded' || lower === 'x-real-ip' || lower.startsWith('x-forwarded-')) {
        if (!trusted) continue;
        if (lower === 'x-forwarded-for') {
          forwardedFor = forwardedFor === null ? raw[i + 1]! : `${forwardedFor}, ${raw[i + 1]}`;
          continue;
        }
        if (lower === 'x-forwarded-proto') {
          forwardedProto ??= raw[i + 1]!;
          continue;
        }
        if (lower === 'x-forwarded-host') {
          forwardedHost ??= raw[i + 1]!;
          continue;
        }
      }
      if (lower === 'cookie') {
        // HTTP/2 clients may split cookies into several fields; HTTP/1.1 wants one.
        cookie = cookie === null ? raw[i + 1]! : `${cookie}; ${raw[i + 1]}`;
        continue;
      }
      if (REQUEST_HEADERS_DROPPED.has(lower) || named?.has(lower) || drop.includes(lower)) continue;
      out.push(name, raw[i + 1]!);
    }
    if (cookie !== null) out.push('cookie', cookie);
    for (const [name, value] of Object.entries(set)) out.push(name, value);
    const client = this.clientIp ?? 'unknown';
    out.push('x-forwarded-for', forwardedFor === null ? client : `${forwardedFor}, ${client}`);
    out.push('x-forwarded-proto', forwardedProto ?? (this.#secure ? 'https' : 'http'));
    const host = forwardedHost ?? routedHost(this.host, this.#authority);
    if (host !== null) out.push('x-forwarded-host', host);
    return out;
  }

  #fromTrustedProxy(): boolean {
    const proxies = this.#options.trustedProxies;
    if (!proxies || this.clientIp === null) return false;
    const family = isIP(this.clientIp);
    return family !== 0 && proxies.check(this.clientIp, family === 6 ? 'ipv6' : 'ipv4');
  }

  // --- undici dispatch handler -------------------------------------------------

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.#controller = controller;
    if (this.#clientGone) controller.abort(new Error('the client went away'));
  }

  onResponseStart(
    controller: Dispatcher.DispatchController,
    statusCode: number,
    headers: IncomingHttpHeaders,
  ): void {
    if (statusCode < 200 || this.#clientGone) return;
    this.upstreamMs = performance.now() - this.#t0;
    const named = connectionTokens(headers);
    const list: string[] = [];
    for (const name in headers) {
      if (RESPONSE_HEADERS_DROPPED.has(name) || named?.has(name)) continue;
      const value = headers[name];
      if (value === undefined) continue;
      if (Array.isArray(value)) for (const v of value) list.push(name, v);
      else list.push(name, value);
    }
    if (this.#options.hsts === true && headers['strict-transport-security'] === undefined)
      list.push('strict-transport-security', HSTS_VALUE);
    try {
      this.#writeHead(statusCode, list, false);
    } catch (err) {
      // A header Node refuses to send (invalid characters): the upstream answer is unusable → 502.
      controller.abort(err as Error);
    }
  }

  /** A 101 through a tunnel: the head goes out as is, then bytes flow both ways until either side closes. */
  onRequestUpgrade(
    _controller: Dispatcher.DispatchController,
    statusCode: number,
    headers: IncomingHttpHeaders,
    socket: Duplex,
  ): void {
    // Only tunnels are asked for upgrades: what they hand over is their byte pipe.
    const pipe = socket as unknown as TunnelPipe;
    const upgrade = this.#upgrade;
    if (upgrade === null || this.#clientGone) {
      pipe.destroy();
      return;
    }
    this.upstreamMs = performance.now() - this.#t0;
    this.#upstreamDone = true;
    this.#piped = true;
    const client = upgrade.socket;
    const lines = [`HTTP/1.1 ${statusCode} Switching Protocols`, 'connection: Upgrade'];
    const list: string[] = ['connection', 'Upgrade'];
    const named = connectionTokens(headers);
    for (const name in headers) {
      if (
        name === 'connection' ||
        (name !== 'upgrade' && (RESPONSE_HEADERS_DROPPED.has(name) || named?.has(name)))
      )
        continue;
      const value = headers[name];
      for (const v of Array.isArray(value) ? value : value === undefined ? [] : [value]) {
        if (/[\r\n]/.test(v)) continue;
        lines.push(`${name}: ${v}`);
        list.push(name, v);
      }
    }
    this.responseHeaders = list;
    client.write(`${lines.join('\r\n')}\r\n\r\n`);
    pipe.read(
      (chunk) => {
        this.bytesOut += chunk.length;
        if (!client.write(chunk)) {
          pipe.pause();
          client.once('drain', () => pipe.resume());
        }
      },
      () => client.end(),
    );
    const send = (chunk: Buffer) => {
      this.bytesIn += chunk.length;
      client.pause();
      void pipe.write(chunk).then((open) => {
        if (open) client.resume();
        else client.destroy();
      });
    };
    if (upgrade.head.length > 0) send(upgrade.head);
    client.on('data', send);
    client.once('end', () => pipe.end());
    client.once('close', () => pipe.destroy());
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.#clientGone) return;
    const sink = this.#sink;
    if (sink !== null) {
      if (!sink.write(chunk)) {
        controller.pause();
        sink.onDrain(this.#resume);
      }
      return;
    }
    this.bytesOut += chunk.length;
    if (!this.#res.write(chunk)) {
      controller.pause();
      this.#res.once('drain', this.#resume);
    }
  }

  onResponseEnd(): void {
    this.#upstreamDone = true;
    if (this.#clientGone) return;
    if (this.#sink !== null) this.#sink.end();
    else this.#res.end();
  }

  onResponseError(_controller: Dispatcher.DispatchController | null, err: Error): void {
    this.#upstreamDone = true;
    // A byte pipe ends with its connection; nothing is left to answer.
    if (this.#piped) return;
    if (this.#clientGone) {
      this.error ??= 'client_aborted';
      return;
    }
    const failure = classifyUpstreamError(err);
    // Through an agent: what the agent reported (or the hub saw) goes in the trace.
    const relayCode = (err as { relayCode?: unknown }).relayCode;
    if (this.backend?.agentId !== undefined && typeof relayCode === 'string') {
      const cause = (err as { systemCause?: unknown }).systemCause;
      this.backend.agentError = { code: relayCode, cause: typeof cause === 'string' ? cause : null };
    }
    if (this.#res.headersSent) {
      // The answer had started: the client sees a cut connection, never a truncated "success".
      this.error = failure.kind === 'upstream_body_timeout' ? failure.kind : 'upstream_aborted';
      this.#sink?.abort(err);
      this.#res.destroy(err);
      return;
    }
    this.error = failure.kind;
    const templateId =
      this.#route?.record.errorTemplateId ?? this.#context.listenerErrorTemplate(this.listenerId);
    if (templateId) {
      this.#drainRequest();
      this.#sendRendered(
        renderTemplateResponse(
          this.#context.templates(),
          templateId,
          this.templateValues(failure.status),
          failure.status,
        ),
      );
      return;
    }
    this.#respond(failure.status, failure.status === 504 ? 'gateway timeout\n' : 'bad gateway\n');
  }

  /** The placeholder values of this request for a template answer with `status`. */
  templateValues(status: number, extra: TemplateValues = {}): TemplateValues {
    return {
      status,
      requestId: this.id,
      host: this.host,
      path: this.path,
      clientIp: this.clientIp,
      time: new Date().toISOString(),
      ...extra,
    };
  }

  readonly #resume = (): void => {
    this.#controller?.resume();
  };

  // --- answering and finishing -------------------------------------------------

  /** Sends a rendered template answer; never cached by clients or shared caches. */
  #sendRendered(rendered: RenderedResponse): void {
    this.#send(
      rendered.status,
      ['content-type', rendered.contentType, 'cache-control', 'no-store'],
      rendered.body,
      false,
    );
  }

  #respond(status: number, text: string): void {
    this.#drainRequest();
    this.#send(status, ['content-type', TEXT_PLAIN], Buffer.from(text), false);
  }

  /**
   * Writes the response head with the headers stages added, after the
   * stages' response hooks; installs their body transforms (if any) as
   * `#sink`. Throws what `writeHead` throws (invalid header).
   */
  #writeHead(status: number, headers: string[], answered: boolean): void {
    if (this.#extraHeaders !== null) headers.push(...this.#extraHeaders);
    const stages = this.#pipeline.responseStages;
    let transforms: BodyTransform[] | null = null;
    if (stages.length > 0) {
      const head = { status, headers, answered };
      for (const stage of stages) {
        const transform = stage.response!(this, head);
        if (transform === null) continue;
        transforms ??= [];
        transforms.push(transform);
      }
    }
    this.#res.writeHead(status, headers);
    this.responseHeaders = headers;
    if (transforms !== null) {
      // The first stage's transform sees the body first: wrap from the client outwards.
      let sink = this.#clientSink();
      for (let i = transforms.length - 1; i >= 0; i--) sink = transforms[i]!(sink);
      this.#sink = sink;
    }
  }

  /** The client connection as a sink (used under body transforms). */
  #clientSink(): ChunkSink {
    const res = this.#res;
    return {
      write: (chunk) => {
        if (this.#clientGone) return true;
        this.bytesOut += chunk.length;
        return res.write(chunk);
      },
      end: () => {
        if (!this.#clientGone) res.end();
      },
      onDrain: (listener) => {
        if (this.#clientGone || !res.writableNeedDrain) listener();
        else res.once('drain', listener);
      },
      abort: (err) => {
        res.destroy(err);
      },
    };
  }

  /** Sends a stage's streamed answer with backpressure. */
  #stream(status: number, headers: string[], body: Readable): void {
    const res = this.#res;
    if (res.headersSent || this.#clientGone) {
      body.destroy();
      return;
    }
    if (this.#options.hsts === true) headers.push('strict-transport-security', HSTS_VALUE);
    this.#writeHead(status, headers, true);
    if (this.method === 'HEAD') {
      body.destroy();
      if (this.#sink !== null) this.#sink.end();
      else res.end();
      return;
    }
    const sink = this.#sink ?? this.#clientSink();
    const resume = () => body.resume();
    body.on('data', (chunk: Buffer) => {
      if (!sink.write(chunk)) {
        body.pause();
        sink.onDrain(resume);
      }
    });
    body.once('end', () => sink.end());
    body.once('error', (err) => {
      this.error = 'stage_error';
      sink.abort(err);
      res.destroy(err);
    });
    res.once('close', () => body.destroy());
  }

  #send(status: number, headers: string[], body: Buffer | null, answered = false): void {
    const res = this.#res;
    if (res.headersSent || this.#clientGone) return;
    const length = body === null ? 0 : body.length;
    headers.push('content-length', String(length));
    if (this.#options.hsts === true) headers.push('strict-transport-security', HSTS_VALUE);
    this.#writeHead(status, headers, answered);
    const sink = this.#sink;
    if (body === null || length === 0 || this.method === 'HEAD') {
      if (sink !== null) sink.end();
      else res.end();
    } else if (sink !== null) {
      sink.write(body);
      sink.end();
    } else {
      this.bytesOut += length;
      res.end(body);
    }
  }

  /** Whether a request body follows the head. */
  #hasBody(): boolean {
    const headers = this.#req.headers;
    const length = headers['content-length'];
    return (
      headers['transfer-encoding'] !== undefined ||
      (length !== undefined && length !== '0') ||
      // HTTP/2 has no framing headers: a body follows unless the headers ended the stream.
      (length === undefined && (this.#req as unknown as Http2ServerRequest).stream?.endAfterHeaders === false)
    );
  }

  /** Reads (and counts) a request body that nobody forwards, so the connection can be reused. */
  #drainRequest(): void {
    const req = this.#req;
    // Without a body there is nothing to read (Node discards what is left when the answer ends).
    if (req.complete || req.readableEnded || !this.#hasBody()) return;
    req.on('data', this.#countIn);
    req.resume();
  }

  readonly #countIn = (chunk: Buffer): void => {
    this.bytesIn += chunk.length;
  };

  readonly #onClose = (): void => {
    if (this.#finished) return;
    this.#finished = true;
    const res = this.#res;
    if (!res.writableFinished && !this.#piped) {
      this.#clientGone = true;
      if (!this.#upstreamDone) this.#controller?.abort(new Error('the client went away'));
      this.#sink?.abort(new Error('the client went away'));
      this.error ??= 'client_aborted';
    }
    this.status = this.#piped ? 101 : res.headersSent ? res.statusCode : null;
    this.durationMs = performance.now() - this.#t0;
    this.#lease?.release(this.error === null || !MEMBER_FAILURES.has(this.error));
    // A stage that asked the upstream itself (the cache) leaves the time to its answer in the notes.
    if (this.upstreamMs === null && this.#notes?.has(UPSTREAM_MS_NOTE))
      this.upstreamMs = this.#notes.get(UPSTREAM_MS_NOTE) as number;
    const status = this.status ?? 0;
    const failed =
      status >= 500 || (this.error !== null && this.error !== 'client_aborted' && this.error !== 'no_route');
    this.#context.metrics.observe(this.durationMs, failed, this.backend?.agentId !== undefined);
    this.#context.onRequestDone?.(this);
    this.#context.recorder.record(this);
    const stages = this.#pipeline.completeStages;
    if (stages.length > 0) {
      const done = {
        request: this,
        status: this.status,
        durationMs: this.durationMs,
        bytesIn: this.bytesIn,
        bytesOut: this.bytesOut,
        error: this.error,
      };
      for (const stage of stages) stage.complete!(done);
    }
  };
}

/** The negotiated TLS parameters of a connection, as traced at level `detailed`. */
function tlsOf(socket: TLSSocket): TraceTls {
  const alpn = socket.alpnProtocol;
  return {
    version: socket.getProtocol?.() ?? null,
    cipher: socket.getCipher?.()?.name ?? null,
    sni: typeof socket.servername === 'string' && socket.servername !== '' ? socket.servername : null,
    alpn: typeof alpn === 'string' ? alpn : null,
  };
}

/** Header names listed in a Connection header (other than keep-alive/close), or null. */
function connectionTokens(headers: IncomingHttpHeaders): Set<string> | null {
  const value = headers.connection;
  if (value === undefined) return null;
  const text = Array.isArray(value) ? value.join(',') : value;
  let tokens: Set<string> | null = null;
  for (const part of text.split(',')) {
    const token = part.trim().toLowerCase();
    if (token === '' || token === 'keep-alive' || token === 'close') continue;
    tokens ??= new Set();
    tokens.add(token);
  }
  return tokens;
}

/** Yields the request body unchanged while counting its bytes into `into.bytesIn`. */
async function* countBytes(req: IncomingMessage, into: { bytesIn: number }): AsyncGenerator<Buffer> {
  for await (const chunk of req) {
    into.bytesIn += (chunk as Buffer).length;
    yield chunk as Buffer;
  }
}
