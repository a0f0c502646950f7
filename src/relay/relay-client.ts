/**
 * The client side of the relay protocol: turns Transport calls into
 * envelopes on numbered streams and the envelopes that come back into
 * results. It knows nothing of sockets: the owner gives it `send` (the hub
 * encodes and writes to the agent's WebSocket; DirectTransport hands the
 * envelope to an in-process executor) and feeds it every envelope received.
 *
 * Flow control is end to end: a response body is read through an async
 * iterator, and the client returns window to the executor only as the
 * consumer takes chunks. A consumer that stops reading stops the executor,
 * which pauses the target; the client never holds more than one window per
 * stream (a peer that sends more is a PROTOCOL_ERROR).
 *
 * A stream's window is `windowBytes`, or `largeWindowBytes` while the large
 * windows of the streams holding one stay within `largeWindowBudgetBytes`
 * (the hub asks for 8× and 64×): a large body then needs fewer window updates
 * and keeps the executor sending through a slow turn of either side. The
 * executor takes any initial window up to 16 MiB, so only the head's
 * `initial_window_bytes` changes. The client's memory bound is therefore
 * `open streams × windowBytes + largeWindowBudgetBytes` of response bytes; a
 * large window is given back once its stream is over and its bytes are read
 * or dropped.
 */
import { AppError, type ErrorCode } from '../errors.js';
import type { Logger } from '../logger.js';
import { describeCertificate } from '../tls/certificates.js';
import {
  appErrorFromPayload,
  DEFAULT_MAX_FRAME_BYTES,
  DEFAULT_MAX_STREAMS,
  DEFAULT_WINDOW_BYTES,
  type Envelope,
  type EnvelopeCase,
  type Header,
  MAX_CHUNK_BYTES,
  MAX_KEPT_CERTIFICATES,
  MAX_REQUEST_BODY_BYTES,
  type UpstreamTiming,
  type DiscoverResult as WireDiscoverResult,
  type TrustMetadata as WireTrust,
} from './envelope.js';
import type { StreamHandler } from './relay-peer.js';
import {
  boundTimeout,
  type CancelSignal,
  type DiscoverOptions,
  type DiscoverResult,
  type HeaderList,
  type RelayRequest,
  type RelayResponse,
  type RelayTiming,
  type Transport,
} from './transport.js';

/** How long after a request's own timeout the client gives up if the executor has not answered. */
export const DEFAULT_TIMEOUT_GRACE_MS = 5000;

const MAX_STREAM_ID = 0xffff_ffff;

/** The largest response window an executor takes (its MAX_WINDOW_BYTES): 16 MiB. */
const LARGEST_WINDOW_BYTES = 16 * 1024 * 1024;

/** Options of {@link RelayClient}; only `send` is required (matches the hub's stream client factory). */
export interface RelayClientOptions {
  /** Delivers an envelope to the executor side. A throw fails the call that sent it. */
  send(envelope: Envelope): void;
  /** Concurrent streams; default {@link DEFAULT_MAX_STREAMS}; more reject with TOO_MANY_STREAMS. */
  maxStreams?: number | undefined;
  /** Response window per stream (bytes buffered before the executor waits); default 256 KiB. */
  windowBytes?: number | undefined;
  /** A stream's window while the budget allows; default `windowBytes` (no large windows). */
  largeWindowBytes?: number | undefined;
  /** Large windows' bytes open streams may hold at once; default 0 (none). */
  largeWindowBudgetBytes?: number | undefined;
  /**
   * Largest frame the executor side accepts; default 1 MiB. A request head that
   * would not fit is refused here with PAYLOAD_TOO_LARGE instead of breaking
   * the connection. Body chunks are at most 64 KiB.
   */
  maxFrameBytes?: number | undefined;
  /** Extra wait beyond a call's timeout for the executor's own answer; default {@link DEFAULT_TIMEOUT_GRACE_MS}. */
  timeoutGraceMs?: number | undefined;
  /** Hands out stream ids (the relay peer's, so they never collide with another handler's); default 1, 2, 3, … */
  nextStreamId?: (() => number) | undefined;
  /**
   * Capability `pin-once` negotiated: a pinned certificate goes with the
   * first head of the connection that needs it, later heads name it by
   * fingerprint. Default false (every head carries it).
   */
  pinOnce?: boolean | undefined;
  logger?: Pick<Logger, 'debug' | 'warn'> | undefined;
}

/** Counters for tests and diagnostics. */
export interface RelayClientStats {
  activeStreams: number;
  /** Response bytes received and not yet taken by consumers. */
  bufferedBytes: number;
  /** The window of a stream opened without a large one. */
  windowBytes: number;
  /** The window of a stream opened while the budget allowed. */
  largeWindowBytes: number;
  /** With `activeStreams × windowBytes`, what `bufferedBytes` can never pass. */
  largeWindowBudgetBytes: number;
  /** Large windows held by streams now. */
  largeWindowsInUse: number;
}

interface DiscoverStream {
  kind: 'discover';
  id: number;
  url: string;
  resolve(result: DiscoverResult): void;
  reject(err: AppError): void;
  cleanup(): void;
}

/**
 * The client multiplexer; implements Transport. Calls reject with AppErrors:
 * TOO_MANY_STREAMS, PAYLOAD_TOO_LARGE (request body over 1 MiB), CANCELLED
 * (signal aborted), ENVIRONMENT_TIMEOUT (no answer within the timeout plus
 * grace), PROTOCOL_ERROR, and whatever the executor reports.
 */
export class RelayClient implements Transport, StreamHandler {
  /** The client only opens streams. */
  readonly opens: readonly EnvelopeCase[] = [];
  readonly #send: (envelope: Envelope) => void;
  readonly #maxStreams: number;
  readonly #window: number;
  readonly #largeWindow: number;
  readonly #largeWindowBudget: number;
  #largeInUse = 0;
  readonly #graceMs: number;
  readonly #maxFrameBytes: number;
  readonly #logger: Pick<Logger, 'debug' | 'warn'> | undefined;
  readonly #nextStreamId: (() => number) | undefined;
  readonly #pinOnce: boolean;
  /** Certificates the executor keeps for this connection (capability `pin-once`), by fingerprint as sent. */
  readonly #kept = new Map<string, Uint8Array>();
  readonly #streams = new Map<number, DiscoverStream | BodyStream>();
  #nextId = 1;
  #buffered = { bytes: 0 };

  constructor(options: RelayClientOptions) {
    this.#send = options.send;
    this.#maxStreams = options.maxStreams ?? DEFAULT_MAX_STREAMS;
    this.#window = Math.max(MAX_CHUNK_BYTES, options.windowBytes ?? DEFAULT_WINDOW_BYTES);
    this.#largeWindow = Math.min(LARGEST_WINDOW_BYTES, Math.max(this.#window, options.largeWindowBytes ?? 0));
    this.#largeWindowBudget = Math.max(0, options.largeWindowBudgetBytes ?? 0);
    this.#graceMs = options.timeoutGraceMs ?? DEFAULT_TIMEOUT_GRACE_MS;
    this.#maxFrameBytes = options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    this.#logger = options.logger;
    this.#nextStreamId = options.nextStreamId;
    this.#pinOnce = options.pinOnce === true;
  }

  /** Whether `streamId` is one of the client's open streams. */
  has(streamId: number): boolean {
    return this.#streams.has(streamId);
  }

  /** Ids of the open streams. */
  streamIds(): Iterable<number> {
    return this.#streams.keys();
  }

  /** Fails one stream the executor side no longer knows, with `error`, and tells it (cancel). */
  reset(streamId: number, error: AppError): void {
    const stream = this.#streams.get(streamId);
    if (stream === undefined) return;
    if (stream.kind === 'discover') {
      stream.cleanup();
      this.#trySend({ streamId, payload: { case: 'cancel', value: {} } });
      stream.reject(error);
    } else {
      stream.fail(error, true);
    }
  }

  /** The connection ended: every stream fails with `error` (see failAll). */
  close(error: AppError): void {
    this.failAll(error.code, error.message);
  }

  /** Streams open now (awaiting a result, or a body not yet finished). */
  get activeStreams(): number {
    return this.#streams.size;
  }

  stats(): RelayClientStats {
    return {
      activeStreams: this.#streams.size,
      bufferedBytes: this.#buffered.bytes,
      windowBytes: this.#window,
      largeWindowBytes: this.#largeWindow,
      largeWindowBudgetBytes: this.#largeWindowBudget,
      largeWindowsInUse: this.#largeInUse / this.#largeWindow,
    };
  }

  /** The response window of a stream being opened: a large one while the budget has room. */
  #takeWindow(): number {
    if (this.#largeWindow === this.#window || this.#largeInUse + this.#largeWindow > this.#largeWindowBudget)
      return this.#window;
    this.#largeInUse += this.#largeWindow;
    return this.#largeWindow;
  }

  /** A stream that held `window` is over and its bytes are read or dropped. */
  #returnWindow(window: number): void {
    if (window === this.#largeWindow && window !== this.#window) this.#largeInUse -= window;
  }

  /** TLS handshake only, through the executor; see Transport.discover. */
  discover(options: DiscoverOptions): Promise<DiscoverResult> {
    return new Promise<DiscoverResult>((resolve, reject) => {
      if (options.signal?.aborted) {
        reject(new AppError('CANCELLED', 'the discovery was cancelled'));
        return;
      }
      const id = this.#allocate();
      const timeoutMs = boundTimeout(options.timeoutMs);
      const onAbort = () => fail(new AppError('CANCELLED', 'the discovery was cancelled'), true);
      const timer = setTimeout(
        () => fail(new AppError('ENVIRONMENT_TIMEOUT', 'the relay did not answer in time'), true),
        timeoutMs + this.#graceMs,
      );
      const cleanup = () => {
        clearTimeout(timer);
        options.signal?.removeEventListener('abort', onAbort);
        if (this.#streams.get(id) === stream) this.#streams.delete(id);
      };
      const fail = (err: AppError, cancel: boolean) => {
        if (this.#streams.get(id) !== stream) return;
        cleanup();
        if (cancel) this.#trySend({ streamId: id, payload: { case: 'cancel', value: {} } });
        reject(err);
      };
      const stream: DiscoverStream = { kind: 'discover', id, url: options.url, resolve, reject, cleanup };
      this.#streams.set(id, stream);
      options.signal?.addEventListener('abort', onAbort, { once: true });
      try {
        this.#send({
          streamId: id,
          payload: { case: 'discoverRequest', value: { url: options.url, timeoutMs } },
        });
      } catch (err) {
        cleanup();
        reject(sendFailure(err));
      }
    });
  }

  /** A pinned request through the executor; resolves at the response head. See Transport.request. */
  request(request: RelayRequest): Promise<RelayResponse> {
    if (request.signal?.aborted)
      return Promise.reject(new AppError('CANCELLED', 'the request was cancelled'));
    const body = request.body;
    if (body !== undefined && body.byteLength > MAX_REQUEST_BODY_BYTES) {
      return Promise.reject(
        new AppError('PAYLOAD_TOO_LARGE', `request bodies are limited to ${MAX_REQUEST_BODY_BYTES} bytes`),
      );
    }
    if (!headFits(request, this.#maxFrameBytes)) {
      return Promise.reject(new AppError('PAYLOAD_TOO_LARGE', 'the request head is too large to relay'));
    }
    let id: number;
    try {
      id = this.#allocate();
    } catch (err) {
      return Promise.reject(err);
    }
    const window = this.#takeWindow();
    const stream = new BodyStream({
      id,
      window,
      graceMs: this.#graceMs,
      timeoutMs: boundTimeout(request.timeoutMs),
      signal: request.signal,
      send: (envelope) => this.#trySend(envelope),
      release: () => {
        if (this.#streams.get(id) === stream) this.#streams.delete(id);
      },
      returnWindow: () => this.#returnWindow(window),
      buffered: this.#buffered,
    });
    this.#streams.set(id, stream);
    const hasBody = body !== undefined && body.byteLength > 0;
    const trust = this.#wireTrust(request.trust);
    try {
      this.#send({
        streamId: id,
        payload: {
          case: 'requestHead',
          value: {
            method: request.method,
            url: request.url,
            headers: request.headers.map(([name, value]) => ({ name, value })),
            timeoutMs: stream.timeoutMs,
            hasBody,
            trust,
            initialWindowBytes: window,
          },
        },
      });
      if (trust.keepCertificate === true) this.#keep(trust.fingerprintSha256, request.trust.certificateDer!);
      if (hasBody) {
        for (let offset = 0; offset < body.byteLength; offset += MAX_CHUNK_BYTES) {
          const data = body.subarray(offset, Math.min(offset + MAX_CHUNK_BYTES, body.byteLength));
          this.#send({ streamId: id, payload: { case: 'bodyChunk', value: { data } } });
        }
        this.#send({ streamId: id, payload: { case: 'end', value: {} } });
      }
    } catch (err) {
      stream.fail(sendFailure(err), false);
    }
    return stream.head;
  }

  /** Feeds one envelope from the executor side. Never throws; unknown streams are ignored (late after a cancel). */
  receive(envelope: Envelope): void {
    const { streamId, payload } = envelope;
    if (streamId === 0) {
      // Connection-level traffic (hello, ping, …) is the owner's; an error here ends every stream.
      if (payload.case === 'error') {
        const err = appErrorFromPayload(payload.value);
        this.failAll(err.code, err.message);
      }
      return;
    }
    const stream = this.#streams.get(streamId);
    if (stream === undefined) return;
    if (stream.kind === 'discover') {
      this.#receiveDiscover(stream, envelope);
      return;
    }
    stream.receive(envelope);
  }

  /** Fails every open stream at once with `code` (e.g. AGENT_OFFLINE when the agent drops). Sends nothing. */
  failAll(code: ErrorCode, message: string): void {
    const streams = [...this.#streams.values()];
    this.#streams.clear();
    for (const stream of streams) {
      const error = new AppError(code, message);
      if (stream.kind === 'discover') {
        stream.cleanup();
        stream.reject(error);
      } else {
        stream.fail(error, false);
      }
    }
  }

  #receiveDiscover(stream: DiscoverStream, envelope: Envelope): void {
    const { payload } = envelope;
    if (payload.case === 'discoverResult') {
      stream.cleanup();
      try {
        stream.resolve(discoverResult(payload.value));
      } catch (err) {
        stream.reject(
          new AppError('PROTOCOL_ERROR', 'the discovery result carries no readable certificate', {
            cause: err,
          }),
        );
      }
    } else if (payload.case === 'error') {
      stream.cleanup();
      stream.reject(appErrorFromPayload(payload.value));
    } else {
      stream.cleanup();
      this.#trySend({ streamId: stream.id, payload: { case: 'cancel', value: {} } });
      stream.reject(new AppError('PROTOCOL_ERROR', `unexpected ${payload.case} on a discovery stream`));
    }
  }

  /**
   * The head's trust metadata: with `pin-once`, a certificate the executor
   * already keeps for this connection is named, not sent; one it does not
   * keep yet is sent with the request to keep it.
   */
  #wireTrust(trust: RelayRequest['trust']): WireTrust {
    const { fingerprintSha256, expectedHostname } = trust;
    const der = trust.certificateDer;
    if (der === undefined || der.byteLength === 0)
      return { fingerprintSha256, expectedHostname, certificateDer: NO_BYTES };
    if (!this.#pinOnce) return { fingerprintSha256, expectedHostname, certificateDer: der };
    const kept = this.#kept.get(fingerprintSha256);
    if (kept !== undefined && (kept === der || Buffer.compare(kept, der) === 0)) {
      return { fingerprintSha256, expectedHostname, certificateDer: NO_BYTES, useKeptCertificate: true };
    }
    return { fingerprintSha256, expectedHostname, certificateDer: der, keepCertificate: true };
  }

  /** The executor keeps `der` once the head asking for it is sent; it counts the same way (MAX_KEPT_CERTIFICATES). */
  #keep(fingerprint: string, der: Uint8Array): void {
    if (!this.#kept.has(fingerprint) && this.#kept.size >= MAX_KEPT_CERTIFICATES) this.#kept.clear();
    this.#kept.set(fingerprint, der);
  }

  #allocate(): number {
    if (this.#streams.size >= this.#maxStreams) {
      throw new AppError('TOO_MANY_STREAMS', `at most ${this.#maxStreams} concurrent relayed requests`);
    }
    if (this.#nextStreamId) return this.#nextStreamId();
    let id = this.#nextId;
    while (this.#streams.has(id)) id = id >= MAX_STREAM_ID ? 1 : id + 1;
    this.#nextId = id >= MAX_STREAM_ID ? 1 : id + 1;
    return id;
  }

  #trySend(envelope: Envelope): void {
    try {
      this.#send(envelope);
    } catch (err) {
      this.#logger?.debug({ err, streamId: envelope.streamId }, 'relay envelope could not be sent');
    }
  }
}

const NO_BYTES = new Uint8Array(0);

// Room for field tags, lengths and the numeric fields of a head.
const HEAD_OVERHEAD_BYTES = 1024;

/** Whether a request head encodes within `limit` bytes; exact UTF-8 counts only near the limit. */
function headFits(request: RelayRequest, limit: number): boolean {
  const der = request.trust.certificateDer?.byteLength ?? 0;
  let chars = request.url.length + request.method.length + request.trust.expectedHostname.length;
  for (const [name, value] of request.headers) chars += name.length + value.length + 8;
  // A UTF-16 code unit is at most 3 bytes of UTF-8.
  if (chars * 3 + der + HEAD_OVERHEAD_BYTES <= limit) return true;
  let bytes = Buffer.byteLength(request.url) + Buffer.byteLength(request.method);
  bytes += Buffer.byteLength(request.trust.expectedHostname);
  for (const [name, value] of request.headers)
    bytes += Buffer.byteLength(name) + Buffer.byteLength(value) + 8;
  return bytes + der + HEAD_OVERHEAD_BYTES <= limit;
}

function sendFailure(err: unknown): AppError {
  if (err instanceof AppError) return err;
  return new AppError('AGENT_OFFLINE', 'the relay connection is not available', { cause: err });
}

function discoverResult(wire: WireDiscoverResult): DiscoverResult {
  const chain = wire.chain.map((der) => new Uint8Array(der));
  const leaf = chain[0];
  if (leaf === undefined) throw new Error('empty chain');
  return {
    certificate: describeCertificate(leaf),
    chain,
    expired: wire.expired === true,
    hostnameMatches: wire.hostnameMatches === true,
  };
}

/** The executor's timing in ms, and the rest of the round trip as the relay's own share. */
function relayTiming(upstream: UpstreamTiming, startedAt: number): RelayTiming {
  const ms = (us: number | undefined) => (us ?? 0) / 1000;
  const timing = {
    dns: ms(upstream.dnsUs),
    connect: ms(upstream.connectUs),
    tls: ms(upstream.tlsUs),
    ttfb: ms(upstream.ttfbUs),
    relay: 0,
  };
  const elapsed = performance.now() - startedAt;
  timing.relay = Math.max(0, elapsed - timing.dns - timing.connect - timing.tls - timing.ttfb);
  return timing;
}

function headerList(headers: readonly Header[] | undefined): HeaderList {
  return (headers ?? []).map(({ name, value }) => [name, value]);
}

interface BodyStreamOptions {
  id: number;
  window: number;
  graceMs: number;
  timeoutMs: number;
  signal: CancelSignal | undefined;
  send(envelope: Envelope): void;
  release(): void;
  /** The stream is over and holds no bytes: its window may go to another stream. Called once. */
  returnWindow(): void;
  buffered: { bytes: number };
}

/** One request stream: the head promise, then the body queue under flow control. */
class BodyStream {
  readonly kind = 'body';
  readonly id: number;
  readonly timeoutMs: number;
  readonly head: Promise<RelayResponse>;
  readonly #options: BodyStreamOptions;
  #resolveHead!: (response: RelayResponse) => void;
  #rejectHead!: (err: AppError) => void;
  #state: 'head' | 'body' | 'done' = 'head';
  readonly #startedAt = performance.now();
  #queue: Uint8Array[] = [];
  #queuedBytes = 0;
  /** Bytes received and not yet returned by a window update. */
  #unacknowledged = 0;
  /** Bytes consumed since the last window update. */
  #consumed = 0;
  #ended = false;
  #windowReturned = false;
  #error: AppError | undefined;
  #waiter: (() => void) | undefined;
  readonly #timer: NodeJS.Timeout;
  readonly #onAbort = () => this.fail(new AppError('CANCELLED', 'the request was cancelled'), true);

  constructor(options: BodyStreamOptions) {
    this.#options = options;
    this.id = options.id;
    this.timeoutMs = options.timeoutMs;
    this.head = new Promise<RelayResponse>((resolve, reject) => {
      this.#resolveHead = resolve;
      this.#rejectHead = reject;
    });
    // The executor answers ENVIRONMENT_TIMEOUT itself; this only guards against a silent peer.
    this.#timer = setTimeout(
      () => this.fail(new AppError('ENVIRONMENT_TIMEOUT', 'the relay did not answer in time'), true),
      options.timeoutMs + options.graceMs,
    );
    options.signal?.addEventListener('abort', this.#onAbort, { once: true });
  }

  receive(envelope: Envelope): void {
    const { payload } = envelope;
    switch (payload.case) {
      case 'responseHead': {
        if (this.#state !== 'head') break;
        const status = payload.value.status;
        if (!Number.isInteger(status) || status < 100 || status > 599) {
          // An HTTP status the caller's side could not even write: the peer is broken or hostile.
          this.fail(new AppError('PROTOCOL_ERROR', `the relay sent an invalid status ${status}`), true);
          return;
        }
        clearTimeout(this.#timer);
        this.#state = 'body';
        this.#resolveHead({
          status: payload.value.status,
          headers: headerList(payload.value.headers),
          ...(payload.value.timing ? { timing: relayTiming(payload.value.timing, this.#startedAt) } : {}),
          body: { [Symbol.asyncIterator]: () => this.#iterator() },
          cancel: () => this.cancel(),
        });
        return;
      }
      case 'bodyChunk': {
        if (this.#state !== 'body') break;
        const data = payload.value.data;
        this.#unacknowledged += data.byteLength;
        if (this.#unacknowledged > this.#options.window) {
          this.fail(new AppError('PROTOCOL_ERROR', 'the relay sent more than the flow-control window'), true);
          return;
        }
        if (data.byteLength === 0) return;
        this.#queue.push(data);
        this.#queuedBytes += data.byteLength;
        this.#options.buffered.bytes += data.byteLength;
        this.#wake();
        return;
      }
      case 'end':
        if (this.#state !== 'body') break;
        this.#ended = true;
        this.#finish();
        this.#wake();
        return;
      case 'error':
        this.fail(appErrorFromPayload(payload.value), false);
        return;
      default:
        break;
    }
    this.fail(new AppError('PROTOCOL_ERROR', `unexpected ${payload.case} on a request stream`), true);
  }

  /** Ends the stream with an error: the head rejects, or the body throws. `cancel` tells the executor. */
  fail(error: AppError, cancel: boolean): void {
    if (this.#state === 'done') return;
    const hadHead = this.#state === 'body';
    this.#finish();
    this.#drop();
    if (cancel) this.#options.send({ streamId: this.id, payload: { case: 'cancel', value: {} } });
    if (hadHead) {
      this.#error = error;
      this.#wake();
    } else {
      this.#rejectHead(error);
    }
  }

  /** The consumer is done with the body: the executor aborts the upstream request. Idempotent. */
  cancel(): void {
    if (this.#state === 'done') {
      this.#drop();
      return;
    }
    this.#finish();
    this.#drop();
    this.#ended = true;
    this.#options.send({ streamId: this.id, payload: { case: 'cancel', value: {} } });
    this.#wake();
  }

  #iterator(): AsyncIterator<Uint8Array> {
    return {
      next: () => this.#next(),
      return: () => {
        this.cancel();
        return Promise.resolve({ done: true, value: undefined });
      },
    };
  }

  async #next(): Promise<IteratorResult<Uint8Array>> {
    for (;;) {
      const chunk = this.#queue.shift();
      if (chunk !== undefined) {
        this.#queuedBytes -= chunk.byteLength;
        this.#options.buffered.bytes -= chunk.byteLength;
        this.#returnWindow(chunk.byteLength);
        this.#giveBackWindow();
        return { done: false, value: chunk };
      }
      if (this.#error) throw this.#error;
      if (this.#ended) return { done: true, value: undefined };
      await new Promise<void>((resolve) => {
        this.#waiter = resolve;
      });
    }
  }

  /** Window goes back in batches of a quarter window, so updates stay few but never stall the executor. */
  #returnWindow(bytes: number): void {
    if (this.#state !== 'body') return;
    this.#consumed += bytes;
    if (this.#consumed < this.#options.window / 4) return;
    const update = this.#consumed;
    this.#consumed = 0;
    this.#unacknowledged -= update;
    this.#options.send({ streamId: this.id, payload: { case: 'windowUpdate', value: { bytes: update } } });
  }

  #wake(): void {
    const waiter = this.#waiter;
    this.#waiter = undefined;
    waiter?.();
  }

  /** The stream takes no more envelopes (end, error or cancel); queued chunks stay readable after an end. */
  #finish(): void {
    if (this.#state === 'done') return;
    this.#state = 'done';
    clearTimeout(this.#timer);
    this.#options.signal?.removeEventListener('abort', this.#onAbort);
    this.#options.release();
    this.#giveBackWindow();
  }

  /** Once the stream is over and none of its bytes wait here, its window goes back to the client. */
  #giveBackWindow(): void {
    if (this.#windowReturned || this.#state !== 'done' || this.#queuedBytes > 0) return;
    this.#windowReturned = true;
    this.#options.returnWindow();
  }

  /** Forgets queued chunks (after a cancel or an error nobody will read them). */
  #drop(): void {
    this.#options.buffered.bytes -= this.#queuedBytes;
    this.#queue = [];
    this.#queuedBytes = 0;
    this.#giveBackWindow();
  }
}
