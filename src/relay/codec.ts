/**
 * The binary form of the relay envelope: protobuf, with the static code
 * generated from proto/p2pstream/relay/v1/relay.proto (`npm run gen:proto`).
 * No reflection on the hot path: encode and decode are the generated
 * functions plus a constant-time wrap of the oneof.
 */
import { AppError } from '../errors.js';
import { DEFAULT_MAX_FRAME_BYTES, type Envelope, type EnvelopePayload } from './envelope.js';
import { p2pstream } from './generated/relay.gen.js';

const WireEnvelope = p2pstream.relay.v1.Envelope;

/** Options of {@link decodeEnvelope}. */
export interface DecodeOptions {
  /** Frames larger than this are refused before decoding; default {@link DEFAULT_MAX_FRAME_BYTES}. */
  maxFrameBytes?: number;
}

/** Encodes one envelope as one frame. Throws PROTOCOL_ERROR for a value the schema cannot hold. */
export function encodeEnvelope(envelope: Envelope): Uint8Array {
  const { payload } = envelope;
  const message: Record<string, unknown> = { streamId: envelope.streamId };
  message[payload.case] = payload.value;
  try {
    return WireEnvelope.encode(message).finish();
  } catch (err) {
    throw new AppError('PROTOCOL_ERROR', 'relay envelope cannot be encoded', { cause: err });
  }
}

/**
 * Decodes one frame. Throws only AppErrors: PAYLOAD_TOO_LARGE when the frame
 * exceeds `maxFrameBytes` (checked before any decoding, so allocation is
 * bounded by the frame), PROTOCOL_ERROR when it is truncated, malformed or
 * carries no payload. Bytes fields are views into `bytes`, not copies.
 */
export function decodeEnvelope(bytes: Uint8Array, options: DecodeOptions = {}): Envelope {
  const maxFrameBytes = options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
  if (!(bytes instanceof Uint8Array)) throw new AppError('PROTOCOL_ERROR', 'relay frame is not binary');
  if (bytes.byteLength > maxFrameBytes) {
    throw new AppError(
      'PAYLOAD_TOO_LARGE',
      `relay frame of ${bytes.byteLength} bytes exceeds the limit of ${maxFrameBytes}`,
    );
  }
  let message: p2pstream.relay.v1.Envelope;
  try {
    message = WireEnvelope.decode(bytes);
  } catch (err) {
    // protobufjs throws RangeError on truncation and Error on bad wire types or nesting.
    throw new AppError('PROTOCOL_ERROR', 'malformed relay frame', { cause: err });
  }
  const kind = message.payload;
  if (kind === undefined) throw new AppError('PROTOCOL_ERROR', 'relay frame carries no payload');
  return {
    streamId: message.streamId,
    payload: { case: kind, value: message[kind] } as EnvelopePayload,
  };
}
