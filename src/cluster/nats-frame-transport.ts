/**
 * A frame transport over NATS (the third after the WebSocket and the
 * in-memory pipe): the link between two control-plane replicas for calls
 * through an agent the other replica holds. The relay peer runs above it
 * unchanged, with its handshake, windows, keepalive and close codes.
 *
 * A link has an id and two subjects, one per direction
 * (`p2pstream.link.<id>.a` / `.b`). Each message is one frame or a close:
 *
 *   byte 0     kind: 0 frame, 1 close
 *   bytes 1–4  sequence number (uint32, big-endian, from 0 per direction)
 *   rest       the frame; or, for a close, the code (uint16) and the reason (UTF-8)
 *
 * NATS keeps a publisher's order towards a subscriber but may drop messages
 * (a slow consumer, a reconnect): a gap in the sequence cuts the link (1006)
 * rather than let the peer see a hole in a stream. `cut()` closes it from
 * outside (the other replica is gone, or the bus).
 */
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { AppError } from '../errors.js';
import type { FrameReceiver, FrameTransport, TransportClosed } from '../relay/frame-transport.js';
import { CLOSE_CODE } from '../relay/protocol.js';

/** Subject prefix of link traffic. */
export const LINK_SUBJECT_PREFIX = 'p2pstream.link';
const KIND_FRAME = 0;
const KIND_CLOSE = 1;
const HEADER_BYTES = 5;

/** The subject one side of a link receives on. */
export function linkSubject(linkId: string, side: 'a' | 'b'): string {
  return `${LINK_SUBJECT_PREFIX}.${linkId}.${side}`;
}

export interface NatsFrameTransportOptions {
  nc: NatsConnection;
  linkId: string;
  /** This side: `a` (the replica that opened the link) or `b`. */
  side: 'a' | 'b';
}

export class NatsFrameTransport implements FrameTransport {
  readonly linkId: string;
  readonly bufferedAmount = 0;
  readonly done: Promise<void>;
  readonly #nc: NatsConnection;
  readonly #outbox: string;
  readonly #subscription: Subscription;
  #receiver: FrameReceiver | null = null;
  #early: Uint8Array[] = [];
  #closed: TransportClosed | null = null;
  #sendSeq = 0;
  #recvSeq = 0;
  #resolveDone!: () => void;

  /** Subscribes at once, so nothing the peer sends after this is missed. */
  constructor(options: NatsFrameTransportOptions) {
    this.linkId = options.linkId;
    this.#nc = options.nc;
    this.#outbox = linkSubject(options.linkId, options.side === 'a' ? 'b' : 'a');
    this.done = new Promise((resolve) => {
      this.#resolveDone = resolve;
    });
    this.#subscription = options.nc.subscribe(linkSubject(options.linkId, options.side), {
      callback: (err, message) => {
        if (err) {
          this.#end({ code: CLOSE_CODE.CUT, reason: 'the bus subscription failed' });
          return;
        }
        this.#onMessage(message.data);
      },
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
    const message = new Uint8Array(HEADER_BYTES + frame.byteLength);
    message[0] = KIND_FRAME;
    new DataView(message.buffer).setUint32(1, this.#sendSeq);
    this.#sendSeq = (this.#sendSeq + 1) >>> 0;
    message.set(frame, HEADER_BYTES);
    try {
      this.#nc.publish(this.#outbox, message);
    } catch (err) {
      this.#end({
        code: CLOSE_CODE.CUT,
        reason: 'the bus refused a frame',
        error: new AppError('AGENT_OFFLINE', 'the link to the replica holding the agent failed', {
          cause: err,
        }),
      });
    }
  }

  onceBelow(_bytes: number, callback: () => void): void {
    // The client library buffers towards the server; windows bound what is in flight.
    queueMicrotask(callback);
  }

  close(code: number, reason: string): void {
    if (this.#closed) return;
    if (code !== CLOSE_CODE.CUT) {
      const text = new TextEncoder().encode(reason).slice(0, 123);
      const message = new Uint8Array(HEADER_BYTES + 2 + text.byteLength);
      message[0] = KIND_CLOSE;
      const view = new DataView(message.buffer);
      view.setUint32(1, this.#sendSeq);
      view.setUint16(HEADER_BYTES, code);
      message.set(text, HEADER_BYTES + 2);
      try {
        this.#nc.publish(this.#outbox, message);
      } catch {
        // The bus is gone: the peer's keepalive or the presence watch ends its side.
      }
    }
    this.#end({ code, reason });
  }

  /** Ends the link at once without telling the peer (it is gone, or the bus is). */
  cut(reason: string): void {
    this.#end({ code: CLOSE_CODE.CUT, reason });
  }

  #onMessage(data: Uint8Array): void {
    if (this.#closed || data.byteLength < HEADER_BYTES) return;
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const seq = view.getUint32(1);
    if (seq !== this.#recvSeq) {
      this.#end({
        code: CLOSE_CODE.CUT,
        reason: 'frames were lost on the bus',
        error: new AppError('AGENT_OFFLINE', 'frames were lost on the link between replicas'),
      });
      return;
    }
    this.#recvSeq = (this.#recvSeq + 1) >>> 0;
    if (data[0] === KIND_CLOSE) {
      const code = data.byteLength >= HEADER_BYTES + 2 ? view.getUint16(HEADER_BYTES) : CLOSE_CODE.CUT;
      const reason = new TextDecoder().decode(data.subarray(HEADER_BYTES + 2));
      this.#end({ code, reason });
      return;
    }
    const frame = data.subarray(HEADER_BYTES);
    if (this.#receiver) this.#receiver.frame(frame);
    else this.#early.push(frame);
  }

  #end(event: TransportClosed): void {
    if (this.#closed) return;
    this.#closed = event;
    this.#early = [];
    this.#subscription.unsubscribe();
    this.#resolveDone();
    this.#receiver?.closed(event);
  }
}
