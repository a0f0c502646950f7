/**
 * Raw streams on an agent's connection, for envelopes that another replica
 * sends through this one: each bridged stream gets an id on the agent's
 * connection, and its envelopes go to the agent and come back unchanged
 * (request heads, bodies, windows, cancels, errors), so flow control and
 * cancellation stay end to end. A stream handler of the agent session's
 * relay peer, beside the RelayClient.
 */
import type { AppError } from '../errors.js';
import type { Envelope, EnvelopeCase, EnvelopePayload } from '../relay/envelope.js';
import type { StreamContext, StreamHandler } from '../relay/relay-peer.js';

/** One bridged stream. */
export interface BridgedStream {
  /** Its id on the agent's connection. */
  readonly id: number;
  /** Sends a payload on the stream to the agent; throws AGENT_OFFLINE once the connection is gone. */
  send(payload: EnvelopePayload): void;
  /** Forgets the stream (nothing is sent). */
  release(): void;
}

interface Listener {
  envelope(payload: EnvelopePayload): void;
  failed(error: AppError): void;
}

export class AgentStreamBridge implements StreamHandler {
  /** Bridged streams are only opened from this side. */
  readonly opens: readonly EnvelopeCase[] = [];
  readonly #context: StreamContext;
  readonly #streams = new Map<number, Listener>();
  #closed = false;

  constructor(context: StreamContext) {
    this.#context = context;
  }

  /** Streams the agent's connection allows at once (the RelayClient's calls count too, at the agent). */
  get maxStreams(): number {
    return this.#context.session.maxStreams;
  }

  /** Bridged streams open now. */
  get activeStreams(): number {
    return this.#streams.size;
  }

  /** Opens a stream towards the agent; what the agent sends on it goes to `listener`. */
  open(listener: Listener): BridgedStream {
    const id = this.#context.nextStreamId();
    this.#streams.set(id, listener);
    return {
      id,
      send: (payload) => this.#context.send({ streamId: id, payload }),
      release: () => {
        this.#streams.delete(id);
      },
    };
  }

  has(streamId: number): boolean {
    return this.#streams.has(streamId);
  }

  receive(envelope: Envelope): void {
    this.#streams.get(envelope.streamId)?.envelope(envelope.payload);
  }

  streamIds(): Iterable<number> {
    return this.#streams.keys();
  }

  reset(streamId: number, error: AppError): void {
    const listener = this.#streams.get(streamId);
    if (!listener) return;
    this.#streams.delete(streamId);
    try {
      this.#context.send({ streamId, payload: { case: 'cancel', value: {} } });
    } catch {
      // The connection is going: nothing to tell.
    }
    listener.failed(error);
  }

  close(error: AppError): void {
    if (this.#closed) return;
    this.#closed = true;
    const listeners = [...this.#streams.values()];
    this.#streams.clear();
    for (const listener of listeners) listener.failed(error);
  }
}
