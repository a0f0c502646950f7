/**
 * The WebSocket as a frame transport: one binary message per frame. Used by
 * both ends of the agent link (the hub's accepted socket, the agent's client
 * socket), so socket errors and close handshakes are handled once.
 *
 * ws closes the connection itself on a message it cannot accept (1009 over
 * `maxPayload`, 1002 for a broken frame); the transport reports the end at
 * that moment, not when the close handshake is over, and a peer that does not
 * answer a close within the grace period is cut.
 */
import type { Duplex } from 'node:stream';
import type { WebSocket } from 'ws';
import { AppError } from '../errors.js';
import type { FrameReceiver, FrameTransport, TransportClosed } from './frame-transport.js';
import { CLOSE_CODE } from './protocol.js';

/** A closing peer has this long to answer the close frame before the socket is cut. */
export const DEFAULT_CLOSE_GRACE_MS = 1000;

/** Options of {@link createWebSocketFrameTransport}. */
export interface WebSocketFrameTransportOptions {
  /** Default {@link DEFAULT_CLOSE_GRACE_MS}. */
  closeGraceMs?: number | undefined;
}

/** Wraps an open WebSocket (the caller has removed listeners it no longer wants). */
export function createWebSocketFrameTransport(
  socket: WebSocket,
  options: WebSocketFrameTransportOptions = {},
): FrameTransport {
  return new WebSocketFrameTransport(socket, options.closeGraceMs ?? DEFAULT_CLOSE_GRACE_MS);
}

const OPEN = 1;
const CLOSED = 3;
const BINARY = { binary: true } as const;

class WebSocketFrameTransport implements FrameTransport {
  readonly done: Promise<void>;
  readonly #socket: WebSocket;
  readonly #graceMs: number;
  #receiver: FrameReceiver | null = null;
  #early: Array<{ data: unknown; isBinary: boolean }> = [];
  #ended: TransportClosed | null = null;
  #graceTimer: ReturnType<typeof setTimeout> | null = null;
  // Bytes handed to ws and not yet written to the socket, counted by ws's per-frame callbacks (FIFO).
  #queued = 0;
  readonly #sizes: number[] = [];
  #below: { bytes: number; callback: () => void } | null = null;
  readonly #onWritten = (): void => {
    this.#queued -= this.#sizes.shift() ?? 0;
    const below = this.#below;
    if (below !== null && this.#queued <= below.bytes) {
      this.#below = null;
      below.callback();
    }
  };

  constructor(socket: WebSocket, graceMs: number) {
    this.#socket = socket;
    this.#graceMs = graceMs;
    let resolveDone!: () => void;
    this.done = new Promise((resolve) => {
      resolveDone = resolve;
    });
    if (socket.readyState === CLOSED) resolveDone();
    socket.on('message', (data, isBinary) => {
      if (this.#receiver === null) this.#early.push({ data, isBinary });
      else this.#deliver(data, isBinary);
    });
    socket.on('error', (err: Error & { code?: string }) => {
      const tooLarge = err.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH';
      const broken = err.code?.startsWith('WS_ERR_') === true;
      const error = tooLarge
        ? new AppError('PAYLOAD_TOO_LARGE', 'a relay frame exceeds the limit', { cause: err })
        : new AppError(broken ? 'PROTOCOL_ERROR' : 'AGENT_OFFLINE', err.message, { cause: err });
      const code = tooLarge ? CLOSE_CODE.TOO_LARGE : broken ? CLOSE_CODE.PROTOCOL_ERROR : CLOSE_CODE.CUT;
      this.#end({ code, reason: error.message, error });
      // ws has sent its close frame (or the socket is gone); a peer that never answers is cut.
      this.#cutAfterGrace();
    });
    socket.on('close', (code, reason) => {
      if (this.#graceTimer) clearTimeout(this.#graceTimer);
      this.#end({ code, reason: reason.toString('utf8') });
      resolveDone();
    });
  }

  get bufferedAmount(): number {
    return this.#queued;
  }

  onceBelow(bytes: number, callback: () => void): void {
    if (this.#queued <= bytes) {
      queueMicrotask(callback);
      return;
    }
    this.#below = { bytes, callback };
  }

  start(receiver: FrameReceiver): void {
    this.#receiver = receiver;
    const early = this.#early;
    this.#early = [];
    for (const { data, isBinary } of early) {
      if (this.#ended) break;
      this.#deliver(data, isBinary);
    }
    if (this.#ended) receiver.closed(this.#ended);
  }

  send(frame: Uint8Array): void {
    if (this.#socket.readyState !== OPEN) return;
    this.#queued += frame.byteLength;
    this.#sizes.push(frame.byteLength);
    this.#socket.send(frame, BINARY, this.#onWritten);
  }

  /** One binary message per frame, written to the network socket in one go (corked around them). */
  sendMany(frames: readonly Uint8Array[]): void {
    if (this.#socket.readyState !== OPEN) return;
    const raw = (this.#socket as unknown as { _socket?: Duplex | null })._socket;
    raw?.cork();
    try {
      for (const frame of frames) this.send(frame);
    } finally {
      raw?.uncork();
    }
  }

  close(code: number, reason: string): void {
    const socket = this.#socket;
    if (socket.readyState === CLOSED) return;
    if (code === CLOSE_CODE.CUT) {
      this.#end({ code, reason });
      socket.terminate();
      return;
    }
    this.#end({ code, reason });
    if (socket.readyState === OPEN || socket.readyState === 0) socket.close(code, truncate(reason));
    this.#cutAfterGrace();
  }

  #deliver(data: unknown, isBinary: boolean): void {
    if (this.#ended !== null || this.#receiver === null) return;
    if (!isBinary) {
      this.#receiver.invalid(new AppError('PROTOCOL_ERROR', 'relay frames must be binary'));
      return;
    }
    let bytes: Uint8Array;
    if (data instanceof Uint8Array) bytes = data;
    else if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
    else if (Array.isArray(data)) bytes = Buffer.concat(data as Buffer[]);
    else {
      this.#receiver.invalid(new AppError('PROTOCOL_ERROR', 'relay frame is not binary'));
      return;
    }
    this.#receiver.frame(bytes);
  }

  #end(event: TransportClosed): void {
    if (this.#ended !== null) return;
    this.#ended = event;
    this.#receiver?.closed(event);
  }

  #cutAfterGrace(): void {
    if (this.#graceTimer !== null || this.#socket.readyState === CLOSED) return;
    const socket = this.#socket;
    this.#graceTimer = setTimeout(() => socket.terminate(), this.#graceMs);
    this.#graceTimer.unref?.();
  }
}

/** A close reason fits in a control frame (123 bytes); cut on a character boundary. */
function truncate(reason: string): string {
  let out = reason.slice(0, 120);
  while (Buffer.byteLength(out) > 123) out = out.slice(0, -1);
  return out;
}
