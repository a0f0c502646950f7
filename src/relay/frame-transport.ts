/**
 * The byte-level seam under the relay peer (as nats.js's Transport): a
 * frame transport moves whole frames, in order, between two peers and knows
 * nothing of envelopes. The WebSocket of the hub and the agent is one
 * (websocket-frame-transport.ts), the in-memory pipe of the direct transport
 * another; a message bus between control-plane replicas can be a third.
 */
import type { AppError } from '../errors.js';
import type { CLOSE_CODE } from './protocol.js';

/** How a transport ended. */
export interface TransportClosed {
  /** A close status of {@link CLOSE_CODE} (1006 when it was cut or dropped without one). */
  code: number;
  reason: string;
  /** Set when the transport itself failed (a frame it could not accept, a socket error). */
  error?: AppError;
}

/** What a transport delivers to; installed once with {@link FrameTransport.start}. */
export interface FrameReceiver {
  /** One frame from the peer, in order. */
  frame(data: Uint8Array): void;
  /** Something arrived that is not a frame (a text message, say); the receiver decides. */
  invalid(error: AppError): void;
  /** The transport ended, once, whatever the cause (either side closed, an error, a cut). */
  closed(event: TransportClosed): void;
}

/** A bidirectional, ordered carrier of frames. */
export interface FrameTransport {
  /** Starts delivering to `receiver`; frames that arrived before are delivered first. */
  start(receiver: FrameReceiver): void;
  /** Queues one frame towards the peer; ignored once closed. */
  send(frame: Uint8Array): void;
  /**
   * Queues several frames, in order, to leave together: one socket write
   * where the carrier allows it (a corked socket), one delivery in memory.
   * Optional: without it the frames are sent one by one.
   */
  sendMany?(frames: readonly Uint8Array[]): void;
  /**
   * Ends the transport: a close with `code` and `reason` (at most 123 bytes)
   * towards the peer, or an immediate cut when `code` is
   * {@link CLOSE_CODE.CUT}. The receiver's `closed` still follows. Idempotent.
   */
  close(code: number, reason: string): void;
  /** Bytes accepted by `send` and not yet handed to the network (0 in memory). */
  readonly bufferedAmount: number;
  /** Calls `callback` once, as soon as `bufferedAmount` is at most `bytes` (at once when it is already). */
  onceBelow(bytes: number, callback: () => void): void;
  /** Resolves once the underlying connection is gone. */
  readonly done: Promise<void>;
}

/** Options of {@link createFramePipe}. */
export interface FramePipeOptions {
  /** Copies each frame on the way (default false: the sender gives the buffer away). */
  copy?: boolean;
}

/**
 * Two frame transports joined back to back in memory. Delivery is
 * asynchronous (a microtask per frame, in order), as over a socket, so
 * neither side re-enters the other; closing one end closes the other with
 * the same code and reason.
 */
export function createFramePipe(options: FramePipeOptions = {}): [FrameTransport, FrameTransport] {
  const a = new PipeEnd(options.copy === true);
  const b = new PipeEnd(options.copy === true);
  a.peer = b;
  b.peer = a;
  return [a, b];
}

class PipeEnd implements FrameTransport {
  peer!: PipeEnd;
  readonly bufferedAmount = 0;
  readonly done: Promise<void>;
  readonly #copy: boolean;
  #receiver: FrameReceiver | null = null;
  #early: Uint8Array[] = [];
  #closed: TransportClosed | null = null;
  #resolveDone!: () => void;

  constructor(copy: boolean) {
    this.#copy = copy;
    this.done = new Promise((resolve) => {
      this.#resolveDone = resolve;
    });
  }

  start(receiver: FrameReceiver): void {
    this.#receiver = receiver;
    const early = this.#early;
    this.#early = [];
    for (const frame of early) receiver.frame(frame);
    if (this.#closed) receiver.closed(this.#closed);
  }

  send(frame: Uint8Array): void {
    if (this.#closed) return;
    const data = this.#copy ? frame.slice() : frame;
    const peer = this.peer;
    queueMicrotask(() => peer.#deliver(data));
  }

  sendMany(frames: readonly Uint8Array[]): void {
    if (this.#closed) return;
    const data = this.#copy ? frames.map((frame) => frame.slice()) : frames;
    const peer = this.peer;
    queueMicrotask(() => {
      for (const frame of data) peer.#deliver(frame);
    });
  }

  onceBelow(_bytes: number, callback: () => void): void {
    queueMicrotask(callback);
  }

  close(code: number, reason: string): void {
    if (this.#closed) return;
    const event: TransportClosed = { code, reason };
    this.#end(event);
    const peer = this.peer;
    queueMicrotask(() => peer.#end(event));
  }

  #deliver(frame: Uint8Array): void {
    if (this.#closed) return;
    if (this.#receiver) this.#receiver.frame(frame);
    else this.#early.push(frame);
  }

  #end(event: TransportClosed): void {
    if (this.#closed) return;
    this.#closed = event;
    this.#early = [];
    this.#resolveDone();
    this.#receiver?.closed(event);
  }
}
