/**
 * The envelope executor: the one place that opens TLS to a target. Envelopes
 * in (discover requests, request heads and bodies, window updates, cancels),
 * envelopes out (discover results, response heads, body chunks, ends,
 * errors). It knows nothing of environments, routes or sockets towards its
 * peer: it runs in-process behind DirectTransport and inside the agent behind
 * the hub WebSocket, with the same envelopes.
 *
 * Flow control: each request stream starts with a window (the head's
 * initial_window_bytes, default 256 KiB). Every body chunk sent spends its
 * size; a window update gives bytes back. When the window is spent the
 * executor pauses the upstream response, so TCP backpressure reaches the
 * target and a slow reader never makes memory grow: per stream, at most one
 * window is in flight and at most one upstream read is held back.
 */

import type { ClientRequest, IncomingMessage, OutgoingHttpHeaders } from 'node:http';
import https from 'node:https';
import type { LookupFunction } from 'node:net';
import { AppError, toAppError } from '../errors.js';
import { HOP_BY_HOP_HEADERS } from '../http-headers.js';
import type { Logger } from '../logger.js';
import {
  describeCertificate,
  fingerprintOf,
  isCurrentlyValid,
  matchesHostname,
  normalizeFingerprint,
} from '../tls/certificates.js';
import {
  DEFAULT_MAX_STREAMS,
  DEFAULT_TIMEOUT_MS,
  DEFAULT_WINDOW_BYTES,
  type DiscoverRequest,
  type Envelope,
  type EnvelopeCase,
  errorEnvelope,
  type Header,
  MAX_CHUNK_BYTES,
  MAX_KEPT_CERTIFICATES,
  MAX_REQUEST_BODY_BYTES,
  observedCertificateDetails,
  type RequestHead,
  takeWithinWindow,
  type UpstreamTiming,
} from './envelope.js';
import {
  type ConnectContext,
  isCertificateFailure,
  kConnectContext,
  PinnedAgent,
  type PinnedTrust,
  probeCertificate,
  serverNameFor,
} from './pinned-tls.js';
import type { StreamHandler } from './relay-peer.js';
import { createTargetPolicy, type Resolver, type TargetPolicy } from './target-policy.js';
import { boundTimeout } from './transport.js';

/** Largest response window a client may ask for: 16 MiB. */
export const MAX_WINDOW_BYTES = 16 * 1024 * 1024;
/** (origin, pin) connection pools kept at most, idle ones evicted first. */
export const DEFAULT_MAX_POOLED_ORIGINS = 64;

/** Headers that belong to one connection and are never forwarded (RFC 9110 §7.6.1). */
const HOP_BY_HOP = HOP_BY_HOP_HEADERS;

/** Options of {@link EnvelopeExecutor}; only `send` is required. */
export interface EnvelopeExecutorOptions {
  /** Delivers an envelope to the client side; must not throw (a throw is logged and the stream dropped). */
  send(envelope: Envelope): void;
  /** `host:port` patterns (see target-policy.ts); null/absent allows every target. */
  allowedTargets?: readonly string[] | null | undefined;
  /** Resolves names that only an address range of `allowedTargets` may allow; default dns.lookup. */
  resolver?: Resolver | undefined;
  logger?: Pick<Logger, 'debug' | 'warn'> | undefined;
  /** Concurrent streams; default {@link DEFAULT_MAX_STREAMS}. More get TOO_MANY_STREAMS. */
  maxStreams?: number | undefined;
  /** Pools kept per (origin, pin); default {@link DEFAULT_MAX_POOLED_ORIGINS}. */
  maxPooledOrigins?: number | undefined;
  /** Idle pooled connections close after this long; default 4 s (DEFAULT_IDLE_SOCKET_TIMEOUT_MS). */
  idleSocketTimeoutMs?: number | undefined;
  /**
   * True while the link towards the client side has as much queued as it may
   * hold: no body chunk is sent then, whatever the windows allow (upstream
   * responses pause), until {@link EnvelopeExecutor.resume} is called.
   * Absent = never congested.
   */
  isCongested?: (() => boolean) | undefined;
  /** Largest body chunk sent; default {@link MAX_CHUNK_BYTES} (64 KiB), less when the peer's frame limit is smaller. */
  maxChunkBytes?: number | undefined;
  /** Response window of a head that asks for none; default {@link DEFAULT_WINDOW_BYTES}. */
  defaultWindowBytes?: number | undefined;
}

/** Memory and concurrency counters, for tests and diagnostics. */
export interface ExecutorStats {
  activeStreams: number;
  /** Response bytes sent and not yet returned by a window update, over all streams. */
  inFlightBytes: number;
  /** Response bytes read from targets and not yet sent (held back by flow control). */
  bufferedBytes: number;
  /** The largest `inFlightBytes` seen since the executor started. */
  peakInFlightBytes: number;
  /** The largest `bufferedBytes` seen since the executor started. */
  peakBufferedBytes: number;
  /** (origin, pin) connection pools currently kept. */
  pooledOrigins: number;
}

interface Target {
  url: URL;
  /** Hostname without IPv6 brackets. */
  host: string;
  port: number;
  servername: string;
  /** Set when an address range allows the target: resolves once, checks, and that address is dialled. */
  lookup: LookupFunction | undefined;
}

interface DiscoverStream {
  kind: 'discover';
  id: number;
  controller: AbortController;
}

interface RequestStream {
  kind: 'request';
  id: number;
  state: 'body' | 'upstream' | 'done';
  head: RequestHead;
  target: Target;
  trust: PinnedTrust;
  timeoutMs: number;
  body: Buffer[];
  bodyBytes: number;
  connect: ConnectContext;
  /** When the upstream request was started (performance.now()). */
  sentAt: number;
  req?: ClientRequest;
  res?: IncomingMessage;
  timer?: NodeJS.Timeout;
  pool?: PoolEntry;
  window: number;
  credit: number;
  pending: Buffer[];
  pendingBytes: number;
  paused: boolean;
  upstreamEnded: boolean;
}

type Stream = DiscoverStream | RequestStream;

interface PoolEntry {
  key: string;
  agent: PinnedAgent;
  active: number;
}

/**
 * Runs discovery and pinned requests for one relay connection. `receive`
 * never throws; every failure becomes an error envelope on its stream with a
 * code of the error table: VALIDATION_FAILED (bad head or URL, non-https),
 * TARGET_NOT_ALLOWED, TOO_MANY_STREAMS, PAYLOAD_TOO_LARGE (request body over
 * 1 MiB), PROTOCOL_ERROR, CERTIFICATE_CHANGED / CERTIFICATE_EXPIRED /
 * CERTIFICATE_HOSTNAME_MISMATCH / ENVIRONMENT_UNTRUSTED (with the observed
 * certificate), ENVIRONMENT_TIMEOUT, ENVIRONMENT_UNREACHABLE.
 */
export class EnvelopeExecutor implements StreamHandler {
  /** The envelopes that open an executor stream (the relay peer routes them here). */
  readonly opens: readonly EnvelopeCase[] = ['discoverRequest', 'requestHead'];
  readonly #send: (envelope: Envelope) => void;
  readonly #logger: Pick<Logger, 'debug' | 'warn'> | undefined;
  readonly #policy: TargetPolicy;
  readonly #maxStreams: number;
  readonly #maxPooledOrigins: number;
  readonly #idleSocketTimeoutMs: number | undefined;
  readonly #isCongested: () => boolean;
  readonly #maxChunkBytes: number;
  readonly #defaultWindow: number;
  readonly #streams = new Map<number, Stream>();
  // Insertion order doubles as least-recently-used order.
  readonly #pools = new Map<string, PoolEntry>();
  readonly #trusted: TrustCache = new Map();
  readonly #kept: KeptCertificates = new Map();
  #closed = false;
  #resumeFrom = 0;
  #inFlight = 0;
  #buffered = 0;
  #peakInFlight = 0;
  #peakBuffered = 0;

  /** Throws VALIDATION_FAILED for a malformed `allowedTargets` pattern. */
  constructor(options: EnvelopeExecutorOptions) {
    this.#send = options.send;
    this.#logger = options.logger;
    this.#policy = createTargetPolicy(options.allowedTargets, options.resolver);
    this.#maxStreams = options.maxStreams ?? DEFAULT_MAX_STREAMS;
    this.#maxPooledOrigins = options.maxPooledOrigins ?? DEFAULT_MAX_POOLED_ORIGINS;
    this.#idleSocketTimeoutMs = options.idleSocketTimeoutMs;
    this.#isCongested = options.isCongested ?? (() => false);
    this.#maxChunkBytes = Math.max(1024, Math.min(MAX_CHUNK_BYTES, options.maxChunkBytes ?? MAX_CHUNK_BYTES));
    this.#defaultWindow = Math.min(options.defaultWindowBytes ?? DEFAULT_WINDOW_BYTES, MAX_WINDOW_BYTES);
  }

  /** The link is no longer congested: streams held back by it send again. */
  resume(): void {
    if (this.#closed) return;
    const streams = [...this.#streams.values()];
    // Start one further each time, so the first streams cannot take all the room every time.
    const start = streams.length > 0 ? this.#resumeFrom++ % streams.length : 0;
    for (let i = 0; i < streams.length; i++) {
      const stream = streams[(start + i) % streams.length] as Stream;
      if (stream.kind === 'request' && stream.state === 'upstream' && stream.res !== undefined) {
        this.#pump(stream);
        if (this.#isCongested()) return;
      }
    }
  }

  /** Whether `streamId` is one of the executor's live streams. */
  has(streamId: number): boolean {
    return this.#streams.has(streamId);
  }

  /** Ids of the live streams. */
  streamIds(): Iterable<number> {
    return this.#streams.keys();
  }

  /** Closes a stream the client side no longer knows: aborted here, an error envelope there. */
  reset(streamId: number, error: AppError): void {
    const stream = this.#streams.get(streamId);
    if (!stream) return;
    this.#abort(stream);
    this.#emit(errorEnvelope(streamId, error));
  }

  /** Handles one envelope from the client side. Never throws. Ignored after close(). */
  receive(envelope: Envelope): void {
    if (this.#closed) return;
    try {
      this.#dispatch(envelope);
    } catch (err) {
      this.#logger?.warn({ err, streamId: envelope.streamId }, 'relay envelope could not be handled');
      const stream = this.#streams.get(envelope.streamId);
      if (stream) this.#abort(stream);
      this.#emit(errorEnvelope(envelope.streamId, err));
    }
  }

  /** Counters of memory held and streams open. */
  stats(): ExecutorStats {
    return {
      activeStreams: this.#streams.size,
      inFlightBytes: this.#inFlight,
      bufferedBytes: this.#buffered,
      peakInFlightBytes: this.#peakInFlight,
      peakBufferedBytes: this.#peakBuffered,
      pooledOrigins: this.#pools.size,
    };
  }

  /**
   * Cancels every stream (upstream sockets closed at once), closes every
   * pooled connection and ignores whatever arrives afterwards. Sends nothing:
   * the connection to the client side is going away. Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const stream of [...this.#streams.values()]) this.#abort(stream);
    for (const entry of this.#pools.values()) entry.agent.destroy();
    this.#pools.clear();
  }

  #dispatch(envelope: Envelope): void {
    const { streamId, payload } = envelope;
    switch (payload.case) {
      case 'discoverRequest':
        if (this.#admit(streamId)) this.#openDiscover(streamId, payload.value);
        return;
      case 'requestHead':
        // Kept before any check: the client counts every head it sent asking for it.
        if (payload.value.trust?.keepCertificate === true) keepCertificate(payload.value.trust, this.#kept);
        if (this.#admit(streamId)) this.#openRequest(streamId, payload.value);
        return;
      case 'bodyChunk':
        this.#requestBody(streamId, payload.value.data);
        return;
      case 'end':
        this.#requestEnd(streamId);
        return;
      case 'windowUpdate':
        this.#windowUpdate(streamId, payload.value.bytes);
        return;
      case 'cancel':
      case 'error': {
        // The client gave up on the stream: abort it, answer nothing.
        const stream = this.#streams.get(streamId);
        if (stream) this.#abort(stream);
        return;
      }
      case 'discoverResult':
      case 'responseHead':
      case 'hello':
      case 'welcome':
      case 'ping':
      case 'pong':
      case 'streamSet':
      case 'drain': {
        const stream = this.#streams.get(streamId);
        if (stream) this.#abort(stream);
        this.#emit(
          errorEnvelope(
            streamId,
            new AppError('PROTOCOL_ERROR', `${payload.case} does not belong on an executor stream`),
          ),
        );
        return;
      }
    }
  }

  /** Checks that a new stream may open on `streamId`; answers the refusal itself. */
  #admit(streamId: number): boolean {
    let refusal: AppError | null = null;
    const existing = this.#streams.get(streamId);
    if (streamId === 0) refusal = new AppError('PROTOCOL_ERROR', 'stream 0 is the connection, not a stream');
    else if (existing) {
      this.#abort(existing);
      refusal = new AppError('PROTOCOL_ERROR', `stream ${streamId} is already open`);
    } else if (this.#streams.size >= this.#maxStreams) {
      refusal = new AppError('TOO_MANY_STREAMS', `at most ${this.#maxStreams} concurrent streams`);
    }
    if (refusal === null) return true;
    this.#emit(errorEnvelope(streamId, refusal));
    return false;
  }

  #target(raw: string): Target {
    let url: URL;
    try {
      url = new URL(raw);
    } catch {
      throw new AppError('VALIDATION_FAILED', 'the target URL is not a valid absolute URL');
    }
    if (url.protocol !== 'https:')
      throw new AppError('VALIDATION_FAILED', 'only https:// targets are relayed');
    if (url.username !== '' || url.password !== '') {
      throw new AppError('VALIDATION_FAILED', 'the target URL must not carry credentials');
    }
    const host = url.hostname.replace(/^\[|\]$/g, '');
    const port = url.port === '' ? 443 : Number(url.port);
    if (!this.#policy.allows(host, port)) {
      throw new AppError('TARGET_NOT_ALLOWED', `${url.host} is not among the allowed targets`);
    }
    return { url, host, port, servername: serverNameFor(host), lookup: this.#policy.lookupFor(host, port) };
  }

  #openDiscover(id: number, request: DiscoverRequest): void {
    let target: Target;
    try {
      target = this.#target(request.url);
    } catch (err) {
      this.#emit(errorEnvelope(id, err));
      return;
    }
    const stream: DiscoverStream = { kind: 'discover', id, controller: new AbortController() };
    this.#streams.set(id, stream);
    probeCertificate({
      host: target.host,
      port: target.port,
      servername: target.servername,
      lookup: target.lookup,
      timeoutMs: boundTimeout(request.timeoutMs),
      signal: stream.controller.signal,
    }).then(
      (chain) => {
        if (this.#streams.get(id) !== stream) return;
        this.#streams.delete(id);
        const leafDer = chain[0] as Buffer;
        try {
          const leaf = describeCertificate(leafDer);
          this.#emit({
            streamId: id,
            payload: {
              case: 'discoverResult',
              value: {
                chain,
                leaf,
                expired: !isCurrentlyValid(leaf),
                hostnameMatches: matchesHostname(leafDer, target.host),
              },
            },
          });
        } catch (err) {
          this.#emit(
            errorEnvelope(
              id,
              new AppError('ENVIRONMENT_UNREACHABLE', 'the target presented an unreadable certificate', {
                cause: err,
              }),
            ),
          );
        }
      },
      (err: unknown) => {
        if (this.#streams.get(id) !== stream) return;
        this.#streams.delete(id);
        this.#logger?.debug({ err, streamId: id }, 'discovery failed');
        this.#emit(errorEnvelope(id, err));
      },
    );
  }

  #openRequest(id: number, head: RequestHead): void {
    let target: Target;
    let trust: PinnedTrust;
    try {
      target = this.#target(head.url);
      trust = pinnedTrust(head, target, this.#trusted, this.#kept);
      if (typeof head.method !== 'string' || !/^[A-Z]{1,16}$/.test(head.method)) {
        throw new AppError('VALIDATION_FAILED', 'invalid request method');
      }
    } catch (err) {
      this.#emit(errorEnvelope(id, err));
      return;
    }
    const requested = head.initialWindowBytes ?? 0;
    const window = requested > 0 ? Math.min(requested, MAX_WINDOW_BYTES) : this.#defaultWindow;
    const stream: RequestStream = {
      kind: 'request',
      id,
      state: 'body',
      head,
      target,
      trust,
      timeoutMs: boundTimeout(head.timeoutMs),
      body: [],
      bodyBytes: 0,
      connect: {},
      sentAt: 0,
      window,
      credit: window,
      pending: [],
      pendingBytes: 0,
      paused: false,
      upstreamEnded: false,
    };
    this.#streams.set(id, stream);
    // The timeout covers the wait for the request body too: a client that never ends it cannot pin a stream.
    stream.timer = setTimeout(
      () => this.#fail(stream, new AppError('ENVIRONMENT_TIMEOUT', 'the target did not answer in time')),
      stream.timeoutMs,
    );
    if (head.hasBody !== true) this.#startUpstream(stream);
  }

  #requestBody(id: number, data: Uint8Array): void {
    const stream = this.#streams.get(id);
    if (stream === undefined) return;
    if (stream.kind !== 'request' || stream.state !== 'body') {
      this.#protocolFailure(stream, 'a body chunk arrived outside a request body');
      return;
    }
    stream.bodyBytes += data.byteLength;
    if (stream.bodyBytes > MAX_REQUEST_BODY_BYTES) {
      this.#fail(
        stream,
        new AppError('PAYLOAD_TOO_LARGE', `request bodies are limited to ${MAX_REQUEST_BODY_BYTES} bytes`),
      );
      return;
    }
    stream.body.push(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
  }

  #requestEnd(id: number): void {
    const stream = this.#streams.get(id);
    if (stream === undefined) return;
    if (stream.kind !== 'request' || stream.state !== 'body') {
      this.#protocolFailure(stream, 'an end arrived outside a request body');
      return;
    }
    this.#startUpstream(stream);
  }

  #startUpstream(stream: RequestStream): void {
    stream.state = 'upstream';
    const { target, trust } = stream;
    stream.pool = this.#acquirePool(target, trust);
    const body = stream.body.length > 0 ? Buffer.concat(stream.body) : undefined;
    stream.body = [];
    this.#sendUpstream(stream, body, true);
  }

  #sendUpstream(stream: RequestStream, body: Buffer | undefined, mayRetry: boolean): void {
    const { target, head } = stream;
    if (mayRetry) stream.sentAt = performance.now();
    const options: https.RequestOptions & { [kConnectContext]: ConnectContext } = {
      agent: (stream.pool as PoolEntry).agent,
      host: target.host,
      port: target.port,
      method: head.method,
      path: `${target.url.pathname}${target.url.search}`,
      headers: requestHeaders(head.headers ?? []),
      ...(target.lookup ? { lookup: target.lookup } : {}),
      // Reaches PinnedAgent.createConnection, so a timeout or cancel can cut a pending handshake.
      [kConnectContext]: stream.connect,
    };
    let req: ClientRequest;
    try {
      req = https.request(options);
    } catch (err) {
      // Node validates header names and values synchronously.
      this.#fail(
        stream,
        new AppError('VALIDATION_FAILED', 'the request head cannot be sent', { cause: err }),
      );
      return;
    }
    stream.req = req;
    req.on('response', (res) => this.#onResponse(stream, res));
    req.on('error', (err) => {
      if (stream.state !== 'upstream' || stream.req !== req) return;
      // A pooled connection the target closed while idle fails on first use: that request never
      // reached the target, so an idempotent one is sent again, once, on a fresh connection.
      if (
        mayRetry &&
        req.reusedSocket &&
        stream.res === undefined &&
        isStaleConnectionError(err, head.method)
      ) {
        this.#logger?.debug({ streamId: stream.id }, 'pooled connection was closed by the target; retrying');
        this.#sendUpstream(stream, body, false);
        return;
      }
      this.#fail(stream, err);
    });
    req.end(body);
  }

  #onResponse(stream: RequestStream, res: IncomingMessage): void {
    if (stream.state !== 'upstream') {
      res.destroy();
      return;
    }
    clearTimeout(stream.timer);
    stream.res = res;
    const headers: Header[] = [];
    const raw = res.rawHeaders;
    for (let i = 0; i + 1 < raw.length; i += 2) {
      const name = (raw[i] as string).toLowerCase();
      if (!HOP_BY_HOP.has(name)) headers.push({ name, value: raw[i + 1] as string });
    }
    this.#emit({
      streamId: stream.id,
      payload: {
        case: 'responseHead',
        value: { status: res.statusCode ?? 502, headers, timing: upstreamTiming(stream) },
      },
    });
    res.on('data', (chunk: Buffer) => this.#onData(stream, chunk));
    res.on('end', () => {
      stream.upstreamEnded = true;
      this.#pump(stream);
    });
    res.on('error', (err) => this.#fail(stream, err));
    res.on('close', () => {
      if (!stream.upstreamEnded) {
        this.#fail(
          stream,
          new AppError(
            'ENVIRONMENT_UNREACHABLE',
            'the target closed the connection before the end of the body',
          ),
        );
      }
    });
  }

  #onData(stream: RequestStream, chunk: Buffer): void {
    if (stream.state === 'done') return;
    stream.pending.push(chunk);
    stream.pendingBytes += chunk.length;
    this.#buffered += chunk.length;
    if (this.#buffered > this.#peakBuffered) this.#peakBuffered = this.#buffered;
    this.#pump(stream);
  }

  /** Sends what the window allows, then pauses or resumes the upstream response. */
  #pump(stream: RequestStream): void {
    const congested = this.#isCongested;
    while (stream.pending.length > 0 && stream.credit > 0 && !congested()) {
      const piece = takeWithinWindow(stream, this.#maxChunkBytes);
      this.#buffered -= piece.length;
      this.#inFlight += piece.length;
      if (this.#inFlight > this.#peakInFlight) this.#peakInFlight = this.#inFlight;
      if (!this.#emit({ streamId: stream.id, payload: { case: 'bodyChunk', value: { data: piece } } })) {
        this.#abort(stream);
        return;
      }
      if (stream.state === 'done') return;
    }
    if (stream.pending.length === 0 && stream.upstreamEnded) {
      this.#emit({ streamId: stream.id, payload: { case: 'end', value: {} } });
      this.#finish(stream, false);
      return;
    }
    const hold = stream.pending.length > 0 || stream.credit <= 0 || congested();
    if (hold && !stream.paused) {
      stream.paused = true;
      stream.res?.pause();
    } else if (!hold && stream.paused) {
      stream.paused = false;
      stream.res?.resume();
    }
  }

  #windowUpdate(id: number, bytes: number): void {
    const stream = this.#streams.get(id);
    if (stream === undefined || stream.kind !== 'request' || stream.state === 'done') return;
    // A client cannot return more than it was sent: the excess is ignored.
    const granted = Math.min(bytes, stream.window - stream.credit);
    if (!(granted > 0)) return;
    stream.credit += granted;
    this.#inFlight -= granted;
    this.#pump(stream);
  }

  #protocolFailure(stream: Stream, message: string): void {
    if (stream.kind === 'request') {
      this.#fail(stream, new AppError('PROTOCOL_ERROR', message));
      return;
    }
    this.#abort(stream);
    this.#emit(errorEnvelope(stream.id, new AppError('PROTOCOL_ERROR', message)));
  }

  #fail(stream: RequestStream, err: unknown): void {
    if (stream.state === 'done') return;
    const error = toAppError(err, 'ENVIRONMENT_UNREACHABLE');
    this.#finish(stream, true);
    this.#logger?.debug({ err: error, streamId: stream.id }, 'relayed request failed');
    if (isCertificateFailure(error) && error.details?.observedCertificateDer === undefined) {
      void this.#reportWithObservation(stream, error);
    } else {
      this.#emit(errorEnvelope(stream.id, error));
    }
  }

  /**
   * A certificate failure whose handshake could not show the certificate:
   * one discovery handshake (no application byte) fetches it for the report.
   */
  async #reportWithObservation(stream: RequestStream, error: AppError): Promise<void> {
    let reported = error;
    try {
      const chain = await probeCertificate({
        host: stream.target.host,
        port: stream.target.port,
        servername: stream.target.servername,
        lookup: stream.target.lookup,
        timeoutMs: Math.min(stream.timeoutMs, DEFAULT_TIMEOUT_MS),
      });
      reported = new AppError(error.code, error.message, {
        cause: error.cause,
        details: { ...error.details, ...observedCertificateDetails(chain[0] as Buffer) },
      });
    } catch {
      // The verdict stands without the certificate.
    }
    this.#emit(errorEnvelope(stream.id, reported));
  }

  /** Stops a stream without answering (cancel, close, or a protocol error answered by the caller). */
  #abort(stream: Stream): void {
    if (stream.kind === 'discover') {
      if (this.#streams.get(stream.id) === stream) this.#streams.delete(stream.id);
      stream.controller.abort();
      return;
    }
    this.#finish(stream, true);
  }

  /** Releases a request stream; with `destroy`, the upstream request and its socket are closed at once. */
  #finish(stream: RequestStream, destroy: boolean): void {
    if (stream.state === 'done') return;
    stream.state = 'done';
    if (this.#streams.get(stream.id) === stream) this.#streams.delete(stream.id);
    clearTimeout(stream.timer);
    this.#inFlight -= stream.window - stream.credit;
    this.#buffered -= stream.pendingBytes;
    stream.credit = stream.window;
    stream.pending = [];
    stream.pendingBytes = 0;
    if (destroy) {
      stream.connect.socket?.destroy();
      stream.res?.destroy();
      stream.req?.destroy();
    }
    if (stream.pool) {
      stream.pool.active--;
      stream.pool = undefined;
    }
  }

  #acquirePool(target: Target, trust: PinnedTrust): PoolEntry {
    const anchored = trust.certificateDer !== undefined;
    const key = `${target.host}:${target.port}|${trust.fingerprintSha256}|${trust.expectedHostname}|${anchored}`;
    let entry = this.#pools.get(key);
    if (entry) {
      this.#pools.delete(key);
    } else {
      entry = {
        key,
        agent: new PinnedAgent({
          trust,
          servername: target.servername,
          idleTimeoutMs: this.#idleSocketTimeoutMs,
        }),
        active: 0,
      };
    }
    this.#pools.set(key, entry);
    entry.active++;
    if (this.#pools.size > this.#maxPooledOrigins) {
      for (const [k, candidate] of this.#pools) {
        if (this.#pools.size <= this.#maxPooledOrigins) break;
        if (candidate.active > 0) continue;
        candidate.agent.destroy();
        this.#pools.delete(k);
      }
    }
    return entry;
  }

  /** Sends unless closed; false when the sender threw (the connection is gone). */
  #emit(envelope: Envelope): boolean {
    if (this.#closed) return false;
    try {
      this.#send(envelope);
      return true;
    } catch (err) {
      this.#logger?.warn({ err, streamId: envelope.streamId }, 'relay envelope could not be sent');
      return false;
    }
  }
}

const IDEMPOTENT_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);

function isStaleConnectionError(err: unknown, method: string): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return (code === 'ECONNRESET' || code === 'EPIPE') && IDEMPOTENT_METHODS.has(method);
}

/** The executor's side of a request in µs: a new connection's steps (0 when pooled), then to the response head. */
function upstreamTiming(stream: RequestStream): UpstreamTiming {
  const now = performance.now();
  const t = stream.connect.timing;
  const us = (ms: number) => Math.max(0, Math.round(ms * 1000));
  if (t === undefined) return { dnsUs: 0, connectUs: 0, tlsUs: 0, ttfbUs: us(now - stream.sentAt) };
  const lookup = t.lookup ?? t.start;
  const connect = t.connect ?? lookup;
  const secure = t.secure ?? connect;
  return {
    dnsUs: us(lookup - t.start),
    connectUs: us(connect - lookup),
    tlsUs: us(secure - connect),
    ttfbUs: us(now - secure),
  };
}

/** Pins checked before, by the fingerprint as a head sent it (see {@link pinnedTrust}). */
type TrustCache = Map<string, { fingerprintSha256: string; certificateDer: Buffer | undefined }>;

/** Pins remembered per executor; past this the cache starts over. */
const MAX_CACHED_PINS = 64;

/**
 * Certificates kept for the connection (capability `pin-once`), by the
 * fingerprint as the head sent it; null for one that does not match it.
 */
type KeptCertificates = Map<string, Buffer | null>;

/** Keeps a head's certificate, checked against its fingerprint once; counted as the client counts. */
function keepCertificate(trust: NonNullable<RequestHead['trust']>, kept: KeptCertificates): void {
  const der = trust.certificateDer;
  if (der === undefined || der.length === 0) return;
  const key = trust.fingerprintSha256;
  const before = kept.get(key);
  if (before?.equals(der)) return;
  if (before === undefined && kept.size >= MAX_KEPT_CERTIFICATES) kept.clear();
  const fingerprint = normalizeFingerprint(key);
  // A copy: the received frame it points into is not kept alive.
  kept.set(key, fingerprint !== null && fingerprintOf(der) === fingerprint ? Buffer.from(der) : null);
}

/**
 * The trust metadata of a head, checked and normalised. Throws
 * VALIDATION_FAILED. A pin seen before skips the normalising and, when the
 * head carries the same certificate byte for byte, the hash of it: every
 * request of an environment carries the same ~1 KB certificate.
 */
function pinnedTrust(
  head: RequestHead,
  target: Target,
  cache: TrustCache,
  kept: KeptCertificates,
): PinnedTrust {
  const trust = head.trust;
  if (!trust) throw new AppError('VALIDATION_FAILED', 'a relayed request needs trust metadata');
  let known = cache.get(trust.fingerprintSha256);
  if (known === undefined) {
    const fingerprintSha256 = normalizeFingerprint(trust.fingerprintSha256);
    if (fingerprintSha256 === null) throw new AppError('VALIDATION_FAILED', 'invalid pinned fingerprint');
    if (cache.size >= MAX_CACHED_PINS) cache.clear();
    known = { fingerprintSha256, certificateDer: undefined };
    cache.set(trust.fingerprintSha256, known);
  }
  const { fingerprintSha256 } = known;
  const expectedHostname = trust.expectedHostname || target.host;
  if (trust.keepCertificate === true || trust.useKeptCertificate === true) {
    const certificateDer = kept.get(trust.fingerprintSha256);
    if (certificateDer === undefined) {
      throw new AppError('PROTOCOL_ERROR', 'no certificate is kept for this fingerprint on this connection');
    }
    if (certificateDer === null) {
      throw new AppError('VALIDATION_FAILED', 'the pinned certificate does not match the pinned fingerprint');
    }
    return { fingerprintSha256, expectedHostname, certificateDer };
  }
  const der = trust.certificateDer;
  if (der === undefined || der.length === 0) return { fingerprintSha256, expectedHostname };
  if (known.certificateDer === undefined || !known.certificateDer.equals(der)) {
    // A DER that is not a certificate fails the handshake later, before any request byte.
    if (fingerprintOf(der) !== fingerprintSha256) {
      throw new AppError('VALIDATION_FAILED', 'the pinned certificate does not match the pinned fingerprint');
    }
    // A copy: the received frame it points into is not kept alive by the cache.
    known.certificateDer = Buffer.from(der);
  }
  return { fingerprintSha256, expectedHostname, certificateDer: known.certificateDer };
}

/** Header list → Node headers: hop-by-hop, Host and Content-Length dropped (Node sets them). */
function requestHeaders(headers: readonly Header[]): OutgoingHttpHeaders {
  const out: Record<string, string | string[]> = {};
  for (const { name, value } of headers) {
    const key = name.toLowerCase();
    if (HOP_BY_HOP.has(key) || key === 'host' || key === 'content-length') continue;
    const existing = out[key];
    if (existing === undefined) out[key] = value;
    else if (Array.isArray(existing)) existing.push(value);
    else out[key] = [existing, value];
  }
  return out;
}
