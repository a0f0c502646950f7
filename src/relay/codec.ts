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
 * Decodes one frame holding one envelope. Throws only AppErrors:
 * PAYLOAD_TOO_LARGE when the frame exceeds `maxFrameBytes` (checked before
 * any decoding, so allocation is bounded by the frame), PROTOCOL_ERROR when
 * it is truncated, malformed, carries no payload or is a batch. Bytes fields
 * are views into `bytes`, not copies.
 */
export function decodeEnvelope(bytes: Uint8Array, options: DecodeOptions = {}): Envelope {
  const decoded = decodeFrame(bytes, options);
  if (Array.isArray(decoded)) throw new AppError('PROTOCOL_ERROR', 'a batch where one envelope was expected');
  return decoded;
}

/**
 * Decodes one frame: its envelope, or for a batch frame (capability
 * `batch`) the encoded envelopes it holds, in order, each to be decoded with
 * {@link decodeEnvelope}. Throws as decodeEnvelope does.
 */
export function decodeFrame(bytes: Uint8Array, options: DecodeOptions = {}): Envelope | Uint8Array[] {
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
  if (kind === 'batch') return message.batch?.envelopes ?? [];
  return {
    streamId: message.streamId,
    payload: { case: kind, value: message[kind] } as EnvelopePayload,
  };
}

// Envelope.batch is field 30, length-delimited: tag (30 << 3 | 2) as a varint.
const BATCH_TAG = [0xf2, 0x01] as const;
// Batch.envelopes is field 1, length-delimited.
const ENVELOPES_TAG = 0x0a;
/** Most bytes a batch frame adds around its envelopes besides {@link batchEntryBytes}: tag and length. */
export const BATCH_FRAME_OVERHEAD = BATCH_TAG.length + 5;

/** Bytes one encoded envelope takes inside a batch: its tag, its length, itself. */
export function batchEntryBytes(frame: Uint8Array): number {
  return 1 + varintBytes(frame.byteLength) + frame.byteLength;
}

/**
 * One batch frame holding `frames` (encoded envelopes, none a batch), in
 * order: written directly, one copy of each, no protobuf writer. The caller
 * keeps it within the receiver's frame limit (see {@link batchEntryBytes}).
 */
export function encodeBatch(frames: readonly Uint8Array[]): Uint8Array {
  let inner = 0;
  for (const frame of frames) inner += batchEntryBytes(frame);
  const out = Buffer.allocUnsafe(BATCH_TAG.length + varintBytes(inner) + inner);
  out[0] = BATCH_TAG[0];
  out[1] = BATCH_TAG[1];
  let at = writeVarint(out, BATCH_TAG.length, inner);
  for (const frame of frames) {
    out[at++] = ENVELOPES_TAG;
    at = writeVarint(out, at, frame.byteLength);
    out.set(frame, at);
    at += frame.byteLength;
  }
  return out;
}

function varintBytes(value: number): number {
  let bytes = 1;
  for (let v = value; v >= 0x80; v = Math.floor(v / 128)) bytes++;
  return bytes;
}

function writeVarint(out: Uint8Array, at: number, value: number): number {
  let v = value;
  while (v >= 0x80) {
    out[at++] = (v & 0x7f) | 0x80;
    v = Math.floor(v / 128);
  }
  out[at++] = v;
  return at;
}
