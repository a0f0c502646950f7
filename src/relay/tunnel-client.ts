/**
 * The hub's side of tunnel streams (capability `tunnel`, docs/protocol.md, "Tunnel streams"):
 * an undici-shaped dispatcher per connected agent. The data plane hands it a
 * public request exactly as it hands one to its own upstream pool
 * (`dispatch(options, handler)` with the handler API of undici 7:
 * onRequestStart / onResponseStart / onResponseData / onResponseEnd /
 * onResponseError), and the request travels to the agent as a
 * `tunnel_request` stream of the relay peer; the agent makes it to the URL in
 * its own network and streams the answer back.
 *
 * Flow control, both ways:
 * - request body: the hub sends at most the agent's announced
 *   `tunnel_window_bytes` ahead of the agent's window updates (the agent
 *   returns window as its upstream takes the bytes), and no body chunk while
 *   the connection's send queue is congested;
 * - response body: each stream grants the agent `windowBytes` (the hub's own
 *   `tunnel_window_bytes`), or a large window (`largeWindowBytes`, 8× by
 *   default) while the large windows of the connection's open streams stay
 *   within `largeWindowBudgetBytes` (64× by default): a download then needs
 *   an eighth of the window updates (each one its own socket write here and
 *   a wake-up at the agent) and rides out a slow turn of either process.
 *   A handler that calls `controller.pause()` (its client does not drain)
 *   stops the window updates, so the agent pauses the app; chunks that arrive
 *   meanwhile wait here, at most one window per stream. Hence the hub's
 *   memory bound: `open streams × windowBytes + largeWindowBudgetBytes` of
 *   response bytes, whatever the clients do ({@link TunnelClient.stats}
 *   counts them).
 *
 * `controller.abort()` (the client left) sends a cancel: the agent aborts the
 * upstream request at once. The connection ending fails every stream with
 * AGENT_OFFLINE, synchronously, so callers answer 502 at once.
 */
import type { AppError, ErrorCode } from '../errors.js';
import type { Logger } from '../logger.js';
import {
  appErrorFromPayload,
  DEFAULT_MAX_TUNNEL_STREAMS,
  DEFAULT_TIMEOUT_MS,
  DEFAULT_TUNNEL_WINDOW_BYTES,
  type Envelope,
  type EnvelopeCase,
  type Header,
  MAX_CHUNK_BYTES,
} from './envelope.js';
import type { StreamHandler } from './relay-peer.js';
import { boundTimeout } from './transport.js';

/** The largest response window an agent takes (its MAX_TUNNEL_WINDOW_BYTES): 16 MiB. */
const LARGEST_WINDOW_BYTES = 16 * 1024 * 1024;

/** How long after a request's own timeout the hub gives up if the agent has not answered the head. */
export const TUNNEL_TIMEOUT_GRACE_MS = 5000;

/** The subset of undici's DispatchOptions a tunnel understands. */
export interface TunnelDispatchOptions {
  /** `http(s)://host:port` of the app, as the agent reaches it. */
  origin: string | URL;
  /** Path and query. */
  path: string;
  method: string;
  /** Flat `[name, value, …]`, or an object of names to values. */
  headers?: readonly string[] | Readonly<Record<string, string | readonly string[] | undefined>> | null;
  body?: AsyncIterable<Uint8Array | string> | Uint8Array | string | null;
  /** Bounds the wait for the response head (the agent's connect included); default 10 s, at most 300 s. */
  headersTimeout?: number;
  /**
   * As undici's: the longest the response body may go without a chunk while
   * its handler is not paused (0 = none); UND_ERR_BODY_TIMEOUT after it.
   */
  bodyTimeout?: number;
  /** `websocket` (or any token): the request asks for an upgrade; a 101 makes the stream a byte pipe. */
  upgrade?: string | null;
}

/** undici's DispatchController, as the tunnel offers it. */
export interface TunnelController {
  readonly aborted: boolean;
  readonly paused: boolean;
  readonly reason: Error | null;
  abort(reason: Error): void;
  pause(): void;
  resume(): void;
}

/** undici 7's DispatchHandler methods a tunnel calls. */
export interface TunnelHandler {
  onRequestStart?(controller: TunnelController, context: unknown): void;
  onResponseStart?(
    controller: TunnelController,
    statusCode: number,
    headers: Record<string, string | string[]>,
    statusMessage?: string,
  ): void;
  onResponseData?(controller: TunnelController, chunk: Buffer): void;
  onResponseEnd?(controller: TunnelController, trailers: Record<string, string | string[]>): void;
  onResponseError?(controller: TunnelController, error: Error): void;
  onRequestUpgrade?(
    controller: TunnelController,
    statusCode: number,
    headers: Record<string, string | string[]>,
    socket: unknown,
  ): void;
}

export interface TunnelClientOptions {
  send(envelope: Envelope): void;
  /** A fresh stream id (the relay peer's). */
  nextStreamId(): number;
  /** True while the connection's send queue is full: hold request body chunks until {@link TunnelClient.resume}. */
  isCongested?: () => boolean;
  /** Concurrent tunnel streams (the smaller of both sides' `max_tunnel_streams`). */
  maxStreams?: number;
  /** Response window granted to the agent per stream (this side's `tunnel_window_bytes`). */
  windowBytes?: number;
  /** A stream's window while the budget allows (default 8 × `windowBytes`). */
  largeWindowBytes?: number;
  /** Large windows' bytes open streams may hold at once (default 64 × `windowBytes`); 0 = none. */
  largeWindowBudgetBytes?: number;
  /** Request body bytes the agent accepts ahead of its window updates (its `tunnel_window_bytes`). */
  sendWindowBytes?: number;
  /** Largest body chunk sent (the agent's frame limit, less room for the envelope). */
  maxChunkBytes?: number;
  timeoutGraceMs?: number;
  logger?: Pick<Logger, 'debug' | 'warn'>;
}

/** Counters for tests and diagnostics. */
export interface TunnelClientStats {
  activeStreams: number;
  /** Response bytes received from the agent and not yet handed to a handler (paused ones). */
  bufferedBytes: number;
  /** The largest `bufferedBytes` seen. */
  peakBufferedBytes: number;
  /** The window of a stream opened without a large one. */
  windowBytes: number;
  /** The window of a stream opened while the budget allowed. */
  largeWindowBytes: number;
  /** What `bufferedBytes` can never pass: `activeStreams × windowBytes + largeWindowBudgetBytes`. */
  largeWindowBudgetBytes: number;
  /** Large windows held by open streams now. */
  largeWindowsInUse: number;
}

/**
 * The error a handler gets for a failed tunnel: `code` is what the data
 * plane classifies (the system error behind it when the agent named one,
 * `UND_ERR_HEADERS_TIMEOUT` for a timeout, else the relay code); `relayCode`
 * and `cause` are the agent's report.
 */
export class TunnelError extends Error {
  readonly code: string;
  readonly relayCode: ErrorCode;
  readonly systemCause: string | null;
  /** `code`: undici's code for a failure the hub itself saw (UND_ERR_BODY_TIMEOUT), else derived. */
  constructor(relayCode: ErrorCode, message: string, systemCause: string | null, code?: string) {
    super(message);
    this.name = 'TunnelError';
    this.relayCode = relayCode;
    this.systemCause = systemCause;
    this.code =
      code ??
      (systemCause !== null && systemCause !== ''
        ? systemCause
        : relayCode === 'ENVIRONMENT_TIMEOUT'
          ? 'UND_ERR_HEADERS_TIMEOUT'
          : relayCode);
  }
}

/** The hub's tunnel dispatcher over one agent connection; see the module comment. */
export class TunnelClient implements StreamHandler {
  readonly opens: readonly EnvelopeCase[] = [];
  readonly #options: TunnelClientOptions;
  readonly #streams = new Map<number, TunnelStream>();
  readonly #maxStreams: number;
  readonly window: number;
  readonly largeWindow: number;
  readonly largeWindowBudget: number;
  readonly sendWindow: number;
  readonly chunkBytes: number;
  readonly graceMs: number;
  readonly counters = { buffered: 0, peak: 0 };
  #closed: AppError | null = null;
  #resumeFrom = 0;
  #largeInUse = 0;

  constructor(options: TunnelClientOptions) {
    this.#options = options;
    this.#maxStreams = options.maxStreams ?? DEFAULT_MAX_TUNNEL_STREAMS;
    this.window = Math.max(1024, options.windowBytes ?? DEFAULT_TUNNEL_WINDOW_BYTES);
    this.largeWindow = Math.min(
      LARGEST_WINDOW_BYTES,
      Math.max(this.window, options.largeWindowBytes ?? 8 * this.window),
    );
    this.largeWindowBudget = Math.max(0, options.largeWindowBudgetBytes ?? 64 * this.window);
    this.sendWindow = Math.max(1024, options.sendWindowBytes ?? DEFAULT_TUNNEL_WINDOW_BYTES);
    this.chunkBytes = Math.max(1024, Math.min(MAX_CHUNK_BYTES, options.maxChunkBytes ?? MAX_CHUNK_BYTES));
    this.graceMs = options.timeoutGraceMs ?? TUNNEL_TIMEOUT_GRACE_MS;
  }

  get logger(): Pick<Logger, 'debug' | 'warn'> | undefined {
    return this.#options.logger;
  }

  /** Tunnel streams open now. */
  get activeStreams(): number {
    return this.#streams.size;
  }

  stats(): TunnelClientStats {
    return {
      activeStreams: this.#streams.size,
      bufferedBytes: this.counters.buffered,
      peakBufferedBytes: this.counters.peak,
      windowBytes: this.window,
      largeWindowBytes: this.largeWindow,
      largeWindowBudgetBytes: this.largeWindowBudget,
      largeWindowsInUse: this.#largeInUse / this.largeWindow,
    };
  }

  /** The response window of a stream being opened: a large one while the budget has room. */
  takeWindow(): number {
    if (this.largeWindow === this.window || this.#largeInUse + this.largeWindow > this.largeWindowBudget)
      return this.window;
    this.#largeInUse += this.largeWindow;
    return this.largeWindow;
  }

  /** A stream that held `window` is over. */
  returnWindow(window: number): void {
    if (window === this.largeWindow && window !== this.window) this.#largeInUse -= window;
  }

  /**
   * undici's `dispatch(options, handler)`: starts the request and reports
   * through the handler. Always returns true; failures (no room, the agent
   * gone) arrive as `onResponseError`.
   */
  dispatch(options: TunnelDispatchOptions, handler: TunnelHandler): boolean {
    const stream = new TunnelStream(this, options, handler);
    handler.onRequestStart?.(stream, {});
    if (stream.aborted) return true;
    if (this.#closed) {
      stream.fail(new TunnelError(this.#closed.code, 'the agent is not connected', null), false);
      return true;
    }
    if (this.#streams.size >= this.#maxStreams) {
      stream.fail(
        new TunnelError('TOO_MANY_STREAMS', `at most ${this.#maxStreams} concurrent tunnel streams`, null),
        false,
      );
      return true;
    }
    let id: number;
    try {
      id = this.#options.nextStreamId();
    } catch (err) {
      stream.fail(new TunnelError('AGENT_OFFLINE', 'the agent is not connected', String(err)), false);
      return true;
    }
    this.#streams.set(id, stream);
    stream.open(id);
    return true;
  }

  has(streamId: number): boolean {
    return this.#streams.has(streamId);
  }

  streamIds(): Iterable<number> {
    return this.#streams.keys();
  }

  receive(envelope: Envelope): void {
    this.#streams.get(envelope.streamId)?.receive(envelope);
  }

  reset(streamId: number, error: AppError): void {
    this.#streams.get(streamId)?.fail(new TunnelError(error.code, error.message, null), true);
  }

  /** The connection ended: every stream fails at once with `error` (AGENT_OFFLINE); nothing is sent. */
  close(error: AppError): void {
    this.#closed = error;
    for (const stream of [...this.#streams.values()]) {
      stream.fail(new TunnelError(error.code, 'the agent went away', null), false);
    }
    this.#streams.clear();
  }

  /** The send queue has room again: request bodies held back go on, each stream in turn. */
  resume(): void {
    const streams = [...this.#streams.values()];
    if (streams.length === 0) return;
    const start = this.#resumeFrom++ % streams.length;
    for (let i = 0; i < streams.length; i++) {
      (streams[(start + i) % streams.length] as TunnelStream).wake();
      if (this.congested()) return;
    }
  }

  congested(): boolean {
    return this.#options.isCongested?.() ?? false;
  }

  /** Sends; false when the connection is gone. */
  send(envelope: Envelope): boolean {
    try {
      this.#options.send(envelope);
      return true;
    } catch (err) {
      this.#options.logger?.debug({ err, streamId: envelope.streamId }, 'tunnel envelope could not be sent');
      return false;
    }
  }

  release(id: number, stream: TunnelStream): void {
    if (this.#streams.get(id) === stream) this.#streams.delete(id);
  }
}

type StreamState = 'new' | 'head' | 'body' | 'pipe' | 'done';

/** One tunnelled request; it is the handler's controller too. */
class TunnelStream implements TunnelController {
  readonly #client: TunnelClient;
  readonly #options: TunnelDispatchOptions;
  readonly #handler: TunnelHandler;
  #id = 0;
  #state: StreamState = 'new';
  #aborted = false;
  #paused = false;
  #reason: Error | null = null;
  #timer: NodeJS.Timeout | null = null;
  /** Response window granted to the agent (set when the stream opens). */
  #window = 0;
  /** Request body bytes the agent still accepts. */
  #sendCredit: number;
  #sendWaiter: (() => void) | null = null;
  #bodyIterator: AsyncIterator<Uint8Array | string> | null = null;
  /** Response chunks held while the handler is paused. */
  #queue: Buffer[] = [];
  #queuedBytes = 0;
  #ended = false;
  /** Response bytes received and not yet returned by a window update. */
  #unacknowledged = 0;
  /** Response bytes delivered since the last window update. */
  #consumed = 0;
  #delivering = false;

  constructor(client: TunnelClient, options: TunnelDispatchOptions, handler: TunnelHandler) {
    this.#client = client;
    this.#options = options;
    this.#handler = handler;
    this.#sendCredit = client.sendWindow;
  }

  get aborted(): boolean {
    return this.#aborted;
  }
  get paused(): boolean {
    return this.#paused;
  }
  get reason(): Error | null {
    return this.#reason;
  }

  abort(reason: Error): void {
    if (this.#aborted || this.#state === 'done') return;
    this.#aborted = true;
    this.#reason = reason;
    const opened = this.#state !== 'new';
    this.fail(reason, opened);
  }

  pause(): void {
    this.#paused = true;
  }

  resume(): void {
    if (!this.#paused) return;
    this.#paused = false;
    this.#armBodyTimer();
    this.#deliver();
  }

  /**
   * (Re)starts the body timeout of a response under way, as undici's: the
   * time since the last chunk, or since a paused handler resumed.
   */
  #armBodyTimer(): void {
    const bodyTimeout = this.#options.bodyTimeout ?? 0;
    if (this.#state !== 'body' || this.#ended || !(bodyTimeout > 0)) return;
    if (this.#timer) {
      this.#timer.refresh();
      return;
    }
    this.#timer = setTimeout(() => {
      this.#timer = null;
      // A paused handler is not the app's silence: the timer starts again when it resumes.
      if (this.#paused || this.#state !== 'body' || this.#ended) return;
      this.fail(
        new TunnelError(
          'ENVIRONMENT_TIMEOUT',
          'the app sent no response body within the body timeout',
          null,
          'UND_ERR_BODY_TIMEOUT',
        ),
        true,
      );
    }, bodyTimeout);
  }

  open(id: number): void {
    this.#id = id;
    this.#state = 'head';
    this.#window = this.#client.takeWindow();
    const options = this.#options;
    // The relay's one clamp (as the agent applies it to `timeout_ms`), so both sides give up together.
    const timeoutMs = boundTimeout(Math.round(options.headersTimeout ?? DEFAULT_TIMEOUT_MS));
    const body = options.body ?? null;
    const hasBody = body !== null && !(typeof body === 'string' && body.length === 0);
    const origin = typeof options.origin === 'string' ? options.origin : options.origin.origin;
    const upgrade = typeof options.upgrade === 'string' && options.upgrade !== '';
    const sent = this.#client.send({
      streamId: id,
      payload: {
        case: 'tunnelRequest',
        value: {
          method: options.method,
          url: origin.replace(/\/$/, '') + options.path,
          headers: upgrade
            ? [...headerPairs(options.headers), { name: 'upgrade', value: String(options.upgrade) }]
            : headerPairs(options.headers),
          timeoutMs,
          hasBody,
          initialWindowBytes: this.#window,
          upgrade,
        },
      },
    });
    if (!sent) {
      this.fail(new TunnelError('AGENT_OFFLINE', 'the agent is not connected', null), false);
      return;
    }
    // The agent answers a timeout itself; this only guards against a silent peer.
    this.#timer = setTimeout(
      () => this.fail(new TunnelError('ENVIRONMENT_TIMEOUT', 'the agent did not answer in time', null), true),
      timeoutMs + this.#client.graceMs,
    );
    if (hasBody) void this.#sendBody(body);
  }

  receive(envelope: Envelope): void {
    const { payload } = envelope;
    switch (payload.case) {
      case 'responseHead': {
        if (this.#state !== 'head') break;
        const status = payload.value.status;
        if (!Number.isInteger(status) || status < 100 || status > 599) {
          this.fail(
            new TunnelError('PROTOCOL_ERROR', `the agent sent an invalid status ${status}`, null),
            true,
          );
          return;
        }
        this.#clearTimer();
        const headers = headerObject(payload.value.headers);
        if (status === 101) {
          // The rest of the stream is a byte pipe (WebSocket upgrades).
          this.#state = 'pipe';
          this.#handler.onRequestUpgrade?.(this, status, headers, new TunnelSocket(this));
          return;
        }
        this.#state = 'body';
        this.#armBodyTimer();
        this.#handler.onResponseStart?.(this, status, headers, '');
        return;
      }
      case 'bodyChunk': {
        if (this.#state !== 'body' && this.#state !== 'pipe') break;
        const data = payload.value.data;
        this.#unacknowledged += data.byteLength;
        if (this.#unacknowledged > this.#window) {
          this.fail(
            new TunnelError('PROTOCOL_ERROR', 'the agent sent more than the tunnel window', null),
            true,
          );
          return;
        }
        if (data.byteLength === 0) return;
        this.#armBodyTimer();
        const chunk = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
        this.#queue.push(chunk);
        this.#queuedBytes += chunk.length;
        const counters = this.#client.counters;
        counters.buffered += chunk.length;
        if (counters.buffered > counters.peak) counters.peak = counters.buffered;
        this.#deliver();
        return;
      }
      case 'end':
        if (this.#state !== 'body' && this.#state !== 'pipe') break;
        this.#ended = true;
        this.#clearTimer();
        this.#deliver();
        return;
      case 'windowUpdate': {
        const bytes = payload.value.bytes;
        if (!(bytes > 0)) return;
        this.#sendCredit = Math.min(this.#client.sendWindow, this.#sendCredit + bytes);
        this.wake();
        return;
      }
      case 'error': {
        const error = appErrorFromPayload(payload.value);
        const cause = payload.value.cause || null;
        this.#client.logger?.warn(
          { streamId: this.#id, code: error.code, cause, message: error.message },
          'tunnelled request failed at the agent',
        );
        this.fail(new TunnelError(error.code, error.message, cause), false);
        return;
      }
      case 'cancel':
        this.fail(new TunnelError('CANCELLED', 'the agent cancelled the tunnel stream', null), false);
        return;
      default:
        break;
    }
    this.fail(new TunnelError('PROTOCOL_ERROR', `unexpected ${payload.case} on a tunnel stream`, null), true);
  }

  /** Ends the stream with `error` (once): the handler hears it unless it aborted; `cancel` tells the agent. */
  fail(error: Error, cancel: boolean): void {
    if (this.#state === 'done') return;
    const wasOpen = this.#state !== 'new';
    this.#finish();
    if (cancel && wasOpen) this.#client.send({ streamId: this.#id, payload: { case: 'cancel', value: {} } });
    this.#handler.onResponseError?.(this, error);
  }

  /** Wakes a request body waiting for window or for the send queue. */
  wake(): void {
    const waiter = this.#sendWaiter;
    this.#sendWaiter = null;
    waiter?.();
  }

  /** Bytes of the byte pipe (after a 101) towards the agent; false once the stream is over. */
  writePipe(data: Buffer): Promise<boolean> {
    return this.#sendData(data);
  }

  endPipe(): void {
    if (this.#state !== 'pipe') return;
    this.#client.send({ streamId: this.#id, payload: { case: 'end', value: {} } });
  }

  get isPipe(): boolean {
    return this.#state === 'pipe';
  }

  async #sendBody(body: AsyncIterable<Uint8Array | string> | Uint8Array | string): Promise<void> {
    try {
      if (typeof body === 'string' || body instanceof Uint8Array) {
        if (!(await this.#sendData(typeof body === 'string' ? Buffer.from(body) : Buffer.from(body)))) return;
      } else {
        const iterator = body[Symbol.asyncIterator]();
        this.#bodyIterator = iterator;
        for (;;) {
          const next = await iterator.next();
          if (next.done) break;
          const value = next.value;
          const chunk = typeof value === 'string' ? Buffer.from(value) : value;
          if (!(await this.#sendData(chunk))) return;
        }
        this.#bodyIterator = null;
      }
      if (this.#state === 'head' || this.#state === 'body') {
        this.#client.send({ streamId: this.#id, payload: { case: 'end', value: {} } });
      }
    } catch (err) {
      // The client's upload broke off: the upstream request cannot complete.
      this.fail(
        new TunnelError(
          'CANCELLED',
          'the request body could not be read',
          (err as { code?: string }).code ?? null,
        ),
        true,
      );
    }
  }

  /** Sends `data` as body chunks under the agent's window and the send queue; false once the stream is over. */
  async #sendData(data: Uint8Array): Promise<boolean> {
    let offset = 0;
    while (offset < data.byteLength) {
      if (this.#state === 'done') return false;
      if (this.#sendCredit <= 0 || this.#client.congested()) {
        await new Promise<void>((resolve) => {
          this.#sendWaiter = resolve;
        });
        continue;
      }
      const size = Math.min(data.byteLength - offset, this.#sendCredit, this.#client.chunkBytes);
      const piece = data.subarray(offset, offset + size);
      offset += size;
      this.#sendCredit -= size;
      if (
        !this.#client.send({ streamId: this.#id, payload: { case: 'bodyChunk', value: { data: piece } } })
      ) {
        this.fail(new TunnelError('AGENT_OFFLINE', 'the agent is not connected', null), false);
        return false;
      }
    }
    return this.#state !== 'done';
  }

  /** Hands queued chunks to the handler while it is not paused, then the end; returns window as they go. */
  #deliver(): void {
    if (this.#delivering) return;
    this.#delivering = true;
    try {
      while (!this.#paused && this.#state !== 'done') {
        const chunk = this.#queue.shift();
        if (chunk === undefined) break;
        this.#queuedBytes -= chunk.length;
        this.#client.counters.buffered -= chunk.length;
        this.#returnWindow(chunk.length);
        if (this.#state === 'pipe') this.#pipeData?.(chunk);
        else this.#handler.onResponseData?.(this, chunk);
      }
      if (this.#ended && this.#queue.length === 0 && this.#state !== 'done') {
        const pipe = this.#state === 'pipe';
        // The app closed its side of a pipe: the agent lets its socket go too.
        if (pipe) this.#client.send({ streamId: this.#id, payload: { case: 'cancel', value: {} } });
        this.#finish();
        if (pipe) this.#pipeEnd?.();
        else this.#handler.onResponseEnd?.(this, {});
      }
    } finally {
      this.#delivering = false;
    }
  }

  /** Window goes back in quarter-window batches. */
  #returnWindow(bytes: number): void {
    this.#consumed += bytes;
    if (this.#consumed < this.#window / 4) return;
    const update = this.#consumed;
    this.#consumed = 0;
    this.#unacknowledged -= update;
    this.#client.send({ streamId: this.#id, payload: { case: 'windowUpdate', value: { bytes: update } } });
  }

  #pipeData: ((chunk: Buffer) => void) | null = null;
  #pipeEnd: (() => void) | null = null;

  /** The byte pipe's reader (set by its socket). */
  setPipeReader(onData: (chunk: Buffer) => void, onEnd: () => void): void {
    this.#pipeData = onData;
    this.#pipeEnd = onEnd;
    this.#deliver();
  }

  #clearTimer(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
  }

  #finish(): void {
    if (this.#state === 'done') return;
    this.#state = 'done';
    this.#clearTimer();
    this.#client.counters.buffered -= this.#queuedBytes;
    this.#queue = [];
    this.#queuedBytes = 0;
    if (this.#id !== 0) this.#client.release(this.#id, this);
    this.#client.returnWindow(this.#window);
    this.#window = 0;
    this.wake();
    const iterator = this.#bodyIterator;
    this.#bodyIterator = null;
    iterator?.return?.().catch(() => {});
  }
}

/**
 * The byte pipe of an upgraded tunnel, as a minimal duplex the data plane
 * joins to the client's socket: `write` towards the app, `onData` from it.
 * The data plane joins it to the client's connection after a 101.
 */
export class TunnelSocket {
  readonly #stream: TunnelStream;
  constructor(stream: TunnelStream) {
    this.#stream = stream;
  }
  /** Bytes towards the app; resolves false once the pipe is closed. */
  write(data: Buffer): Promise<boolean> {
    return this.#stream.writePipe(data);
  }
  /** No more bytes towards the app. */
  end(): void {
    this.#stream.endPipe();
  }
  /** Closes both ways at once (cancel towards the agent). */
  destroy(): void {
    this.#stream.abort(new Error('the tunnel pipe was closed'));
  }
  /** Where bytes from the app go, and the app's end. */
  read(onData: (chunk: Buffer) => void, onEnd: () => void): void {
    this.#stream.setPipeReader(onData, onEnd);
  }
  /** Holds bytes from the app (window updates stop) until `resume`. */
  pause(): void {
    this.#stream.pause();
  }
  resume(): void {
    this.#stream.resume();
  }
}

/** Options' headers → wire pairs (lower-case names). */
function headerPairs(headers: TunnelDispatchOptions['headers']): Header[] {
  const out: Header[] = [];
  if (!headers) return out;
  if (Array.isArray(headers)) {
    const flat = headers as readonly string[];
    for (let i = 0; i + 1 < flat.length; i += 2) {
      out.push({ name: String(flat[i]).toLowerCase(), value: String(flat[i + 1]) });
    }
    return out;
  }
  for (const [name, value] of Object.entries(
    headers as Record<string, string | readonly string[] | undefined>,
  )) {
    if (value === undefined) continue;
    const lower = name.toLowerCase();
    if (Array.isArray(value)) for (const v of value) out.push({ name: lower, value: String(v) });
    else out.push({ name: lower, value: String(value) });
  }
  return out;
}

/** Wire pairs → Node's header object (repeats as arrays, `set-cookie` always one). */
function headerObject(headers: readonly Header[] | undefined): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = Object.create(null);
  for (const { name, value } of headers ?? []) {
    const key = name.toLowerCase();
    const existing = out[key];
    if (existing === undefined) out[key] = key === 'set-cookie' ? [value] : value;
    else if (Array.isArray(existing)) existing.push(value);
    else out[key] = [existing, value];
  }
  return out;
}
