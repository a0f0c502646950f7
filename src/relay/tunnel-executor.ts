/**
 * The agent's side of tunnel streams (capability `tunnel`, docs/protocol.md,
 * "Tunnel streams"): a `tunnel_request` is a public request the control plane
 * sends to an app in the agent's network. The executor makes it over HTTP or
 * HTTPS (default CAs), only to targets its allowed-targets policy admits
 * (`AGENT_ALLOWED_TARGETS`, target-policy.ts), and streams both bodies:
 *
 * - request body: body chunks are written to the upstream request as they
 *   come; window goes back to the control plane (quarter-window batches of
 *   this side's `tunnel_window_bytes`) only as the upstream socket takes the
 *   bytes, so a slow app slows the client's upload and nothing piles up here;
 * - response body: sent under the stream's window (`initial_window_bytes` of
 *   the request); a spent window, or a congested connection, pauses the
 *   upstream response (TCP backpressure reaches the app). The reads of one
 *   turn (a TLS upstream hands over one 16 KiB record each) leave together
 *   at its end, merged into body chunks of up to the chunk size: a download
 *   costs both sides a quarter of the envelopes, and the control plane a
 *   quarter of the writes to its client.
 *
 * A cancel (the public client left, or the control plane gave up) destroys
 * the upstream request at once. Failures become an error envelope with a
 * code of the error table and, when there is one, the system error behind it
 * in `cause` (ECONNREFUSED, ECONNRESET, ENOTFOUND, ETIMEDOUT, …):
 * TARGET_NOT_ALLOWED, VALIDATION_FAILED (bad URL or method),
 * TOO_MANY_STREAMS, ENVIRONMENT_TIMEOUT (no response head in time),
 * ENVIRONMENT_UNREACHABLE, PROTOCOL_ERROR.
 *
 * With `upgrade`, a 101 answer turns the stream into a byte pipe both ways
 * (WebSocket): body chunks carry the bytes, `end` half-closes, each way under
 * its window.
 */
import http, { type ClientRequest, type IncomingMessage, type OutgoingHttpHeaders } from 'node:http';
import https from 'node:https';
import type { Duplex } from 'node:stream';
import { AppError, toAppError } from '../errors.js';
import { HOP_BY_HOP_HEADERS } from '../http-headers.js';
import type { Logger } from '../logger.js';
import {
  DEFAULT_MAX_TUNNEL_STREAMS,
  DEFAULT_TUNNEL_WINDOW_BYTES,
  type Envelope,
  type EnvelopeCase,
  errorEnvelope,
  type Header,
  MAX_CHUNK_BYTES,
  type TunnelRequest,
  takeWithinWindow,
} from './envelope.js';
import type { StreamHandler } from './relay-peer.js';
import { createTargetPolicy, type Resolver, type TargetPolicy } from './target-policy.js';
import { boundTimeout } from './transport.js';

/** Largest response window a request may ask for: 16 MiB. */
export const MAX_TUNNEL_WINDOW_BYTES = 16 * 1024 * 1024;

export interface TunnelExecutorOptions {
  send(envelope: Envelope): void;
  /** `host:port` patterns (target-policy.ts); null/absent allows every target. */
  allowedTargets?: readonly string[] | null | undefined;
  resolver?: Resolver | undefined;
  /** Concurrent tunnel streams accepted (this side's `max_tunnel_streams`). */
  maxStreams?: number | undefined;
  /** Request body bytes the control plane may send ahead of window updates (this side's `tunnel_window_bytes`). */
  windowBytes?: number | undefined;
  /** Response window when the request names none (the control plane's `tunnel_window_bytes`). */
  defaultWindowBytes?: number | undefined;
  /** Largest body chunk sent. */
  maxChunkBytes?: number | undefined;
  isCongested?: (() => boolean) | undefined;
  /** Runs a callback at the end of this turn, before its envelopes leave (the peer's; default setImmediate). */
  atTurnEnd?: ((callback: () => void) => void) | undefined;
  logger?: Pick<Logger, 'debug' | 'warn'> | undefined;
}

export interface TunnelExecutorStats {
  activeStreams: number;
  /** Response bytes sent and not yet returned by a window update. */
  inFlightBytes: number;
  /** Response bytes read from apps and not yet sent. */
  bufferedBytes: number;
}

interface Stream {
  id: number;
  state: 'upstream' | 'body' | 'pipe' | 'done';
  req: ClientRequest;
  res?: IncomingMessage;
  /** The upgraded socket (after a 101). */
  socket?: Duplex;
  timer?: NodeJS.Timeout;
  /** Response window. */
  window: number;
  credit: number;
  pending: Buffer[];
  pendingBytes: number;
  paused: boolean;
  upstreamEnded: boolean;
  /** The response's `end` went out (a pipe stays open for the other way after it). */
  endSent: boolean;
  /** Request body bytes received and not yet returned by a window update. */
  outstanding: number;
  /** Request bytes the upstream took since the last window update. */
  taken: number;
  writesPending: number;
  requestEnded: boolean;
}

/** Runs tunnel streams for one relay connection; see the module comment. `receive` never throws. */
export class TunnelExecutor implements StreamHandler {
  readonly opens: readonly EnvelopeCase[] = ['tunnelRequest'];
  readonly #send: (envelope: Envelope) => void;
  readonly #policy: TargetPolicy;
  readonly #maxStreams: number;
  readonly #window: number;
  readonly #defaultWindow: number;
  readonly #chunkBytes: number;
  readonly #isCongested: () => boolean;
  readonly #atTurnEnd: (callback: () => void) => void;
  /** Streams with response bytes held for the end of the turn. */
  readonly #due = new Set<Stream>();
  #turnEndAsked = false;
  readonly #sendDue = (): void => {
    this.#turnEndAsked = false;
    const due = [...this.#due];
    this.#due.clear();
    for (const stream of due) this.#pump(stream);
  };
  readonly #logger: Pick<Logger, 'debug' | 'warn'> | undefined;
  readonly #streams = new Map<number, Stream>();
  readonly #httpAgent = new http.Agent({ keepAlive: true, timeout: 4000 });
  readonly #httpsAgent = new https.Agent({ keepAlive: true, timeout: 4000 });
  #closed = false;
  #resumeFrom = 0;
  #inFlight = 0;
  #buffered = 0;

  /** Throws VALIDATION_FAILED for a malformed `allowedTargets` pattern. */
  constructor(options: TunnelExecutorOptions) {
    this.#send = options.send;
    this.#policy = createTargetPolicy(options.allowedTargets, options.resolver);
    this.#maxStreams = options.maxStreams ?? DEFAULT_MAX_TUNNEL_STREAMS;
    this.#window = Math.max(1024, options.windowBytes ?? DEFAULT_TUNNEL_WINDOW_BYTES);
    this.#defaultWindow = Math.min(
      options.defaultWindowBytes ?? DEFAULT_TUNNEL_WINDOW_BYTES,
      MAX_TUNNEL_WINDOW_BYTES,
    );
    this.#chunkBytes = Math.max(1024, Math.min(MAX_CHUNK_BYTES, options.maxChunkBytes ?? MAX_CHUNK_BYTES));
    this.#isCongested = options.isCongested ?? (() => false);
    this.#atTurnEnd = options.atTurnEnd ?? ((callback) => setImmediate(callback));
    this.#logger = options.logger;
  }

  has(streamId: number): boolean {
    return this.#streams.has(streamId);
  }

  streamIds(): Iterable<number> {
    return this.#streams.keys();
  }

  stats(): TunnelExecutorStats {
    return {
      activeStreams: this.#streams.size,
      inFlightBytes: this.#inFlight,
      bufferedBytes: this.#buffered,
    };
  }

  reset(streamId: number, error: AppError): void {
    const stream = this.#streams.get(streamId);
    if (!stream) return;
    this.#finish(stream, true);
    this.#emit(errorEnvelope(streamId, error));
  }

  /** The connection ended: every upstream request is destroyed; nothing is sent. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const stream of [...this.#streams.values()]) this.#finish(stream, true);
    this.#httpAgent.destroy();
    this.#httpsAgent.destroy();
  }

  /** The connection has room again: held responses go on, each stream in turn. */
  resume(): void {
    if (this.#closed) return;
    const streams = [...this.#streams.values()];
    if (streams.length === 0) return;
    const start = this.#resumeFrom++ % streams.length;
    for (let i = 0; i < streams.length; i++) {
      this.#pump(streams[(start + i) % streams.length] as Stream);
      if (this.#isCongested()) return;
    }
  }

  /**
   * One health check of an app (capability `health`, health-check-executor.ts):
   * GET `rawUrl` as a tunnel request would go, under the allowed-targets
   * policy, with the same TLS handling (default CAs) and connection pools,
   * redirects not followed; `timeoutMs` bounds it until the response head.
   * Resolves null when the status is `expect`, else what went wrong:
   * `status 503, expected 200`, `timed out`, the system or TLS error code
   * (ECONNREFUSED, DEPTH_ZERO_SELF_SIGNED_CERT…), TARGET_NOT_ALLOWED,
   * VALIDATION_FAILED. Never rejects.
   */
  probe(rawUrl: string, timeoutMs: number, expect: number): Promise<string | null> {
    if (this.#closed) return Promise.resolve('AGENT_OFFLINE');
    let url: URL;
    let lookup: ReturnType<TargetPolicy['lookupFor']>;
    try {
      url = targetUrl(rawUrl);
      const host = url.hostname.replace(/^\[|\]$/g, '');
      const port = url.port === '' ? (url.protocol === 'https:' ? 443 : 80) : Number(url.port);
      if (!this.#policy.allows(host, port)) return Promise.resolve('TARGET_NOT_ALLOWED');
      lookup = this.#policy.lookupFor(host, port);
    } catch (err) {
      return Promise.resolve(toAppError(err).code);
    }
    const secure = url.protocol === 'https:';
    return new Promise((resolve) => {
      let settled = false;
      const settle = (result: string | null): void => {
        if (settled) return;
        settled = true;
        resolve(result);
      };
      const req = (secure ? https : http).request({
        agent: secure ? this.#httpsAgent : this.#httpAgent,
        protocol: url.protocol,
        hostname: url.hostname.replace(/^\[|\]$/g, ''),
        port: url.port === '' ? undefined : Number(url.port),
        method: 'GET',
        path: `${url.pathname}${url.search}`,
        headers: { 'user-agent': 'p2pstream-agent health check' },
        ...(lookup ? { lookup } : {}),
      });
      // Bounds the answer; a body still coming then is cut too (only its status mattered).
      const timer = setTimeout(() => {
        settle('timed out');
        req.destroy();
      }, boundTimeout(timeoutMs));
      timer.unref();
      req.on('response', (res) => {
        const status = res.statusCode ?? 0;
        settle(status === expect ? null : `status ${status}, expected ${expect}`);
        // Read the body away so the connection serves again; a large one is not worth it.
        let read = 0;
        res.on('data', (chunk: Buffer) => {
          read += chunk.length;
          if (read > PROBE_BODY_BYTES) req.destroy();
        });
        res.on('close', () => clearTimeout(timer));
        res.on('error', () => {});
      });
      req.on('error', (err) => {
        clearTimeout(timer);
        settle(probeError(err));
      });
      req.end();
    });
  }

  receive(envelope: Envelope): void {
    if (this.#closed) return;
    try {
      this.#dispatch(envelope);
    } catch (err) {
      this.#logger?.warn({ err, streamId: envelope.streamId }, 'tunnel envelope could not be handled');
      const stream = this.#streams.get(envelope.streamId);
      if (stream) this.#fail(stream, err);
      else this.#emit(errorEnvelope(envelope.streamId, err));
    }
  }

  #dispatch(envelope: Envelope): void {
    const { streamId, payload } = envelope;
    const stream = this.#streams.get(streamId);
    switch (payload.case) {
      case 'tunnelRequest':
        if (stream) {
          this.#fail(stream, new AppError('PROTOCOL_ERROR', `stream ${streamId} is already open`));
          return;
        }
        this.#open(streamId, payload.value);
        return;
      case 'bodyChunk':
        if (stream) this.#requestData(stream, payload.value.data);
        return;
      case 'end':
        if (stream) this.#requestEnd(stream);
        return;
      case 'windowUpdate':
        if (stream) this.#windowUpdate(stream, payload.value.bytes);
        return;
      case 'cancel':
      case 'error':
        if (stream) this.#finish(stream, true);
        return;
      default:
        if (stream)
          this.#fail(
            stream,
            new AppError('PROTOCOL_ERROR', `${payload.case} does not belong on a tunnel stream`),
          );
        return;
    }
  }

  #open(id: number, request: TunnelRequest): void {
    let url: URL;
    let lookup: ReturnType<TargetPolicy['lookupFor']>;
    try {
      if (id === 0) throw new AppError('PROTOCOL_ERROR', 'stream 0 is the connection, not a stream');
      if (this.#streams.size >= this.#maxStreams)
        throw new AppError('TOO_MANY_STREAMS', `at most ${this.#maxStreams} concurrent tunnel streams`);
      url = targetUrl(request.url);
      if (typeof request.method !== 'string' || !/^[A-Z][A-Z-]{0,19}$/.test(request.method))
        throw new AppError('VALIDATION_FAILED', 'invalid request method');
      const host = url.hostname.replace(/^\[|\]$/g, '');
      const port = url.port === '' ? (url.protocol === 'https:' ? 443 : 80) : Number(url.port);
      if (!this.#policy.allows(host, port)) {
        throw new AppError('TARGET_NOT_ALLOWED', `${url.host} is not among the agent's allowed targets`);
      }
      lookup = this.#policy.lookupFor(host, port);
    } catch (err) {
      this.#emit(errorEnvelope(id, err));
      return;
    }
    const secure = url.protocol === 'https:';
    const upgrade = request.upgrade === true;
    const options: http.RequestOptions = {
      agent: upgrade ? false : secure ? this.#httpsAgent : this.#httpAgent,
      protocol: url.protocol,
      hostname: url.hostname.replace(/^\[|\]$/g, ''),
      port: url.port === '' ? undefined : Number(url.port),
      method: request.method,
      path: `${url.pathname}${url.search}`,
      headers: requestHeaders(request.headers ?? [], upgrade),
      ...(lookup ? { lookup } : {}),
    };
    let req: ClientRequest;
    try {
      req = (secure ? https : http).request(options);
    } catch (err) {
      this.#emit(
        errorEnvelope(
          id,
          new AppError('VALIDATION_FAILED', 'the request head cannot be sent', { cause: err }),
        ),
      );
      return;
    }
    const requested = request.initialWindowBytes ?? 0;
    const window = requested > 0 ? Math.min(requested, MAX_TUNNEL_WINDOW_BYTES) : this.#defaultWindow;
    const stream: Stream = {
      id,
      state: 'upstream',
      req,
      window,
      credit: window,
      pending: [],
      pendingBytes: 0,
      paused: false,
      upstreamEnded: false,
      endSent: false,
      outstanding: 0,
      taken: 0,
      writesPending: 0,
      requestEnded: request.hasBody !== true,
    };
    this.#streams.set(id, stream);
    stream.timer = setTimeout(
      () =>
        // ETIMEDOUT only while still connecting: a connected app that is slow to answer is no connect timeout.
        this.#fail(
          stream,
          new AppError('ENVIRONMENT_TIMEOUT', 'the app did not answer in time'),
          req.socket === null || req.socket.connecting ? 'ETIMEDOUT' : undefined,
        ),
      boundTimeout(request.timeoutMs),
    );
    req.on('response', (res) => this.#onResponse(stream, res));
    req.on('upgrade', (res, socket, head) => this.#onUpgrade(stream, res, socket, head));
    req.on('error', (err) => this.#fail(stream, err));
    if (upgrade) req.flushHeaders();
    if (stream.requestEnded) req.end();
  }

  #requestData(stream: Stream, data: Uint8Array): void {
    if (stream.state === 'done') return;
    stream.outstanding += data.byteLength;
    if (stream.outstanding > this.#window) {
      this.#fail(
        stream,
        new AppError('PROTOCOL_ERROR', 'the control plane sent more than the tunnel window'),
      );
      return;
    }
    const chunk = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    if (stream.state === 'pipe') {
      const socket = stream.socket as Duplex;
      stream.writesPending += chunk.length;
      socket.write(chunk, () => this.#taken(stream, chunk.length));
      return;
    }
    if (stream.requestEnded) {
      this.#fail(
        stream,
        new AppError('PROTOCOL_ERROR', 'a body chunk arrived after the end of the request body'),
      );
      return;
    }
    stream.writesPending += chunk.length;
    stream.req.write(chunk, () => this.#taken(stream, chunk.length));
  }

  /** The upstream took `bytes` of the request body: window goes back in quarter-window batches. */
  #taken(stream: Stream, bytes: number): void {
    if (stream.state === 'done') return;
    stream.writesPending -= bytes;
    stream.taken += bytes;
    if (stream.taken < this.#window / 4 && !(stream.writesPending === 0 && stream.taken > 0)) return;
    const update = stream.taken;
    stream.taken = 0;
    stream.outstanding -= update;
    this.#emit({ streamId: stream.id, payload: { case: 'windowUpdate', value: { bytes: update } } });
  }

  #requestEnd(stream: Stream): void {
    if (stream.state === 'done') return;
    if (stream.state === 'pipe') {
      stream.socket?.end();
      return;
    }
    if (stream.requestEnded) return;
    stream.requestEnded = true;
    stream.req.end();
  }

  #onResponse(stream: Stream, res: IncomingMessage): void {
    if (stream.state !== 'upstream') {
      res.destroy();
      return;
    }
    clearTimeout(stream.timer);
    stream.state = 'body';
    stream.res = res;
    this.#emit({
      streamId: stream.id,
      payload: {
        case: 'responseHead',
        value: { status: res.statusCode ?? 502, headers: responseHeaders(res.rawHeaders, false) },
      },
    });
    res.on('data', (chunk: Buffer) => this.#onData(stream, chunk));
    res.on('end', () => {
      stream.upstreamEnded = true;
      this.#pump(stream);
    });
    res.on('error', (err) => this.#fail(stream, err));
    res.on('close', () => {
      if (!stream.upstreamEnded)
        this.#fail(
          stream,
          new AppError('ENVIRONMENT_UNREACHABLE', 'the app closed the connection before the end of the body'),
          'ECONNRESET',
        );
    });
  }

  #onUpgrade(stream: Stream, res: IncomingMessage, socket: Duplex, head: Buffer): void {
    if (stream.state !== 'upstream') {
      socket.destroy();
      return;
    }
    clearTimeout(stream.timer);
    stream.state = 'pipe';
    stream.socket = socket;
    stream.requestEnded = true;
    this.#emit({
      streamId: stream.id,
      payload: {
        case: 'responseHead',
        value: { status: 101, headers: responseHeaders(res.rawHeaders, true) },
      },
    });
    if (head.length > 0) this.#onData(stream, head);
    socket.on('data', (chunk: Buffer) => this.#onData(stream, chunk));
    socket.on('end', () => {
      stream.upstreamEnded = true;
      this.#pump(stream);
    });
    socket.on('error', (err) => this.#fail(stream, err));
    socket.on('close', () => {
      if (!stream.upstreamEnded) {
        stream.upstreamEnded = true;
        this.#pump(stream);
      }
    });
  }

  /** Full chunks leave at once; what is left of the turn's reads waits for its end, to leave merged. */
  #onData(stream: Stream, chunk: Buffer): void {
    if (stream.state === 'done') return;
    stream.pending.push(chunk);
    stream.pendingBytes += chunk.length;
    this.#buffered += chunk.length;
    if (stream.pendingBytes >= this.#chunkBytes) this.#pump(stream, true);
    else if (!stream.paused) this.#sendAtTurnEnd(stream);
  }

  #sendAtTurnEnd(stream: Stream): void {
    this.#due.add(stream);
    if (this.#turnEndAsked) return;
    this.#turnEndAsked = true;
    this.#atTurnEnd(this.#sendDue);
  }

  /**
   * Sends what the window allows (with `fullOnly`, only whole chunks, the
   * rest held for the end of the turn), then pauses or resumes the app's
   * response.
   */
  #pump(stream: Stream, fullOnly = false): void {
    if (stream.state === 'done') return;
    while (
      stream.pending.length > 0 &&
      stream.credit > 0 &&
      !(fullOnly && stream.pendingBytes < this.#chunkBytes) &&
      !this.#isCongested()
    ) {
      const piece = takeWithinWindow(stream, this.#chunkBytes);
      this.#buffered -= piece.length;
      this.#inFlight += piece.length;
      if (!this.#emit({ streamId: stream.id, payload: { case: 'bodyChunk', value: { data: piece } } })) {
        this.#finish(stream, true);
        return;
      }
    }
    if (stream.pending.length === 0 && stream.upstreamEnded) {
      if (stream.endSent) return;
      stream.endSent = true;
      this.#emit({ streamId: stream.id, payload: { case: 'end', value: {} } });
      // A pipe stays open for the other way until the control plane ends it too or cancels.
      if (stream.state !== 'pipe' || stream.socket?.writableEnded === true) this.#finish(stream, false);
      return;
    }
    const source = stream.res ?? stream.socket;
    // A part chunk held for the end of the turn does not stop the reads; a spent window or a full queue does.
    const hold =
      stream.credit <= 0 ||
      this.#isCongested() ||
      (stream.pending.length > 0 && !(fullOnly && stream.pendingBytes < this.#chunkBytes));
    if (fullOnly && stream.pending.length > 0 && !hold) this.#sendAtTurnEnd(stream);
    if (hold && !stream.paused) {
      stream.paused = true;
      source?.pause();
    } else if (!hold && stream.paused) {
      stream.paused = false;
      source?.resume();
    }
  }

  #windowUpdate(stream: Stream, bytes: number): void {
    if (stream.state === 'done') return;
    const granted = Math.min(bytes, stream.window - stream.credit);
    if (!(granted > 0)) return;
    stream.credit += granted;
    this.#inFlight -= granted;
    this.#pump(stream);
  }

  #fail(stream: Stream, err: unknown, cause?: string): void {
    if (stream.state === 'done') return;
    const systemCause = cause ?? systemCode(err);
    const error = toAppError(err, 'ENVIRONMENT_UNREACHABLE');
    this.#finish(stream, true);
    this.#logger?.debug({ err: error, cause: systemCause, streamId: stream.id }, 'tunnelled request failed');
    const envelope = errorEnvelope(stream.id, error);
    if (systemCause && envelope.payload.case === 'error') envelope.payload.value.cause = systemCause;
    this.#emit(envelope);
  }

  #finish(stream: Stream, destroy: boolean): void {
    if (stream.state === 'done') return;
    stream.state = 'done';
    if (this.#streams.get(stream.id) === stream) this.#streams.delete(stream.id);
    this.#due.delete(stream);
    clearTimeout(stream.timer);
    this.#inFlight -= stream.window - stream.credit;
    this.#buffered -= stream.pendingBytes;
    stream.credit = stream.window;
    stream.pending = [];
    stream.pendingBytes = 0;
    if (destroy) {
      stream.res?.destroy();
      stream.socket?.destroy();
      stream.req.destroy();
    } else if (stream.socket) {
      stream.socket.destroy();
    }
  }

  #emit(envelope: Envelope): boolean {
    if (this.#closed) return false;
    try {
      this.#send(envelope);
      return true;
    } catch (err) {
      this.#logger?.warn({ err, streamId: envelope.streamId }, 'tunnel envelope could not be sent');
      return false;
    }
  }
}

/** The URL of a tunnel request: absolute http(s), no credentials. Throws VALIDATION_FAILED. */
function targetUrl(raw: string): URL {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new AppError('VALIDATION_FAILED', 'the target URL is not a valid absolute URL');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw new AppError('VALIDATION_FAILED', 'only http:// and https:// targets are tunnelled');
  if (url.username !== '' || url.password !== '')
    throw new AppError('VALIDATION_FAILED', 'the target URL must not carry credentials');
  return url;
}

/** Body bytes a health check reads away before it closes the connection instead: 64 KiB. */
const PROBE_BODY_BYTES = 64 * 1024;

/** A failed check in a word: the system or TLS error code (ECONNREFUSED, CERT_HAS_EXPIRED…), else the message. */
function probeError(err: unknown): string {
  const e = err as { code?: unknown; message?: unknown } | null;
  if (typeof e?.code === 'string' && /^[A-Z][A-Z0-9_]+$/.test(e.code)) return e.code;
  return typeof e?.message === 'string' && e.message !== '' ? e.message.slice(0, 200) : 'check failed';
}

/**
 * The system or TLS error code behind a failure (ECONNREFUSED,
 * UNABLE_TO_VERIFY_LEAF_SIGNATURE, ERR_TLS_CERT_ALTNAME_INVALID…), if any;
 * never one of the error table's own codes (an AppError raised here).
 */
function systemCode(err: unknown): string | undefined {
  if (err instanceof AppError) return undefined;
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^[A-Z][A-Z0-9_]+$/.test(code) ? code : undefined;
}

/** Wire headers → Node's: hop-by-hop (and Connection-named) and Host dropped (Node sets Host from the URL); an upgrade keeps `upgrade`. */
function requestHeaders(headers: readonly Header[], upgrade: boolean): OutgoingHttpHeaders {
  const named = connectionTokens(
    headers.filter((h) => h.name.toLowerCase() === 'connection').map((h) => h.value),
  );
  const out: Record<string, string | string[]> = {};
  for (const { name, value } of headers) {
    const key = name.toLowerCase();
    if (upgrade && key === 'upgrade') {
      out[key] = value;
      continue;
    }
    if (key === 'host' || HOP_BY_HOP_HEADERS.has(key) || named.has(key)) continue;
    const existing = out[key];
    if (existing === undefined) out[key] = value;
    else if (Array.isArray(existing)) existing.push(value);
    else out[key] = [existing, value];
  }
  if (upgrade) {
    out.connection = 'Upgrade';
    out.upgrade ??= 'websocket';
  }
  return out;
}

/** Header names a Connection header lists (hop-by-hop too), lower case. */
function connectionTokens(values: readonly string[]): Set<string> {
  const tokens = new Set<string>();
  for (const value of values)
    for (const part of value.split(',')) {
      const token = part.trim().toLowerCase();
      if (token !== '') tokens.add(token);
    }
  return tokens;
}

/** Raw response headers → wire pairs without hop-by-hop ones, nor those Connection names (a 101 keeps `upgrade`). */
function responseHeaders(raw: readonly string[], upgrade: boolean): Header[] {
  const connection: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2)
    if ((raw[i] as string).toLowerCase() === 'connection') connection.push(raw[i + 1] as string);
  const named = connectionTokens(connection);
  const headers: Header[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = (raw[i] as string).toLowerCase();
    if (upgrade && name === 'upgrade') {
      headers.push({ name, value: raw[i + 1] as string });
      continue;
    }
    if (HOP_BY_HOP_HEADERS.has(name) || named.has(name)) continue;
    headers.push({ name, value: raw[i + 1] as string });
  }
  return headers;
}
