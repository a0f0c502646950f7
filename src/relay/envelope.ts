/**
 * The relay protocol in TypeScript terms: the envelope and its payloads (one
 * per message of proto/p2pstream/relay/v1/relay.proto), the protocol
 * constants, and the helpers that turn AppErrors into error envelopes and
 * back. Pure: no I/O. The binary form lives in codec.ts.
 *
 * Payload fields mirror the proto (camelCase). Optional fields may be left
 * out when sending; a decoded payload has every scalar field (proto3
 * defaults: 0, "", false, empty bytes, empty list) and message fields may be
 * null.
 */
import { AppError, type ErrorCode, isErrorCode, toAppError } from '../errors.js';
import { type CertificateInfo, describeCertificate } from '../tls/certificates.js';

/** The highest protocol version spoken by this build; hello/welcome carry it. */
export const PROTOCOL_VERSION = 1;
/** The lowest protocol version spoken by this build (the window is MIN_PROTOCOL_VERSION–PROTOCOL_VERSION). */
export const MIN_PROTOCOL_VERSION = 1;
/** Largest encoded envelope accepted by default: 1 MiB. */
export const DEFAULT_MAX_FRAME_BYTES = 1024 * 1024;
/** Largest body chunk sent (request and response bodies): 64 KiB. */
export const MAX_CHUNK_BYTES = 64 * 1024;
/** Response bytes in flight per stream before a window update is needed: 256 KiB. */
export const DEFAULT_WINDOW_BYTES = 256 * 1024;

/** A stream's body bytes waiting for window credit (the executors' send side). */
export interface PendingBody {
  pending: Buffer[];
  pendingBytes: number;
  credit: number;
}

/**
 * Takes the next body chunk the window allows from `stream.pending`: at most
 * `maxChunkBytes` and the stream's credit. A piece within the first buffer is
 * a view of it (no copy); one that spans several buffers (small reads queued
 * in one turn) is copied into one, so it leaves as one envelope rather than
 * one per read. Call only while something is pending and credit is left.
 */
export function takeWithinWindow(stream: PendingBody, maxChunkBytes: number): Buffer {
  const first = stream.pending[0] as Buffer;
  const size = Math.min(stream.pendingBytes, stream.credit, maxChunkBytes);
  stream.pendingBytes -= size;
  stream.credit -= size;
  if (size <= first.length) {
    if (size === first.length) {
      stream.pending.shift();
      return first;
    }
    stream.pending[0] = first.subarray(size);
    return first.subarray(0, size);
  }
  const piece = Buffer.allocUnsafe(size);
  let at = 0;
  while (at < size) {
    const next = stream.pending[0] as Buffer;
    const take = Math.min(next.length, size - at);
    next.copy(piece, at, 0, take);
    at += take;
    if (take === next.length) stream.pending.shift();
    else stream.pending[0] = next.subarray(take);
  }
  return piece;
}
/** Largest request body relayed: 1 MiB (management API bodies). */
export const MAX_REQUEST_BODY_BYTES = 1024 * 1024;
/** Concurrent streams per connection, on both sides, by default. */
export const DEFAULT_MAX_STREAMS = 256;
/** Concurrent tunnel streams per connection by default (their own limit, beside `maxStreams`). */
export const DEFAULT_MAX_TUNNEL_STREAMS = 1024;
/** Bytes a tunnel stream may send towards a side before its window update, by default: 256 KiB. */
export const DEFAULT_TUNNEL_WINDOW_BYTES = 256 * 1024;
/** The timeout default and bound, defined with the Transport they apply to. */
export { DEFAULT_TIMEOUT_MS, MAX_TIMEOUT_MS } from './transport.js';
/** What this implementation can do, announced in hello/welcome. */
export const RELAY_CAPABILITIES: readonly string[] = ['discover', 'request', 'flow-control', 'cancel'];

/** What a peer accepts (hello/welcome); 0 or absent = the protocol default. */
export interface Limits {
  maxFrameBytes?: number;
  maxStreams?: number;
  initialWindowBytes?: number;
  /** Concurrent tunnel streams accepted; 0 = {@link DEFAULT_MAX_TUNNEL_STREAMS}. */
  maxTunnelStreams?: number;
  /** Bytes a tunnel may send towards this side before a window update; 0 = {@link DEFAULT_TUNNEL_WINDOW_BYTES}. */
  tunnelWindowBytes?: number;
}

/** First envelope of the executor side (the agent), on stream 0. */
export interface Hello {
  /** The highest version the sender speaks. */
  protocolVersion: number;
  agentVersion?: string;
  capabilities?: string[];
  limits?: Limits | null;
  /** The lowest version the sender speaks; 0 or absent = `protocolVersion` only. */
  minProtocolVersion?: number;
}

/** The control plane's answer to a hello, on stream 0. */
export interface Welcome {
  /** The version chosen for the connection. */
  protocolVersion: number;
  serverVersion?: string;
  capabilities?: string[];
  limits?: Limits | null;
  /** The range the accepting side speaks; 0 or absent = `protocolVersion` only. */
  minProtocolVersion?: number;
  maxProtocolVersion?: number;
  /** The control-plane replica that accepted the connection; '' or absent for a single process. */
  replicaId?: string;
  /** The acceptor's clock at sending (ms since the Unix epoch); 0 or absent = not sent. */
  serverTimeMs?: number;
}

/** Keepalive probe on stream 0; answered by a pong with the same nonce. */
export interface Ping {
  nonce?: number;
}

/** Answer to a ping. */
export interface Pong {
  nonce?: number;
}

/** Opens a discovery stream: TLS handshake only, no application byte. */
export interface DiscoverRequest {
  /** The target origin, `https://host:port`. */
  url: string;
  /** 0 = {@link DEFAULT_TIMEOUT_MS}. */
  timeoutMs?: number;
}

/** The answer to a discover request. */
export interface DiscoverResult {
  /** Peer chain as DER, leaf first. */
  chain: Uint8Array[];
  leaf?: CertificateInfo | null;
  expired?: boolean;
  hostnameMatches?: boolean;
}

/** One header line; names lower-case, repeats allowed. */
export interface Header {
  name: string;
  value: string;
}

/** What a pinned request requires of the target certificate, checked inside the handshake. */
export interface TrustMetadata {
  fingerprintSha256: string;
  expectedHostname: string;
  /** DER of the pinned leaf; empty = verify against the default roots, then the pin. */
  certificateDer?: Uint8Array;
  /** Capability `pin-once`: the executor keeps `certificateDer` for later heads of the connection. */
  keepCertificate?: boolean;
  /** Capability `pin-once`: no `certificateDer`; the one kept for the fingerprint is meant. */
  useKeptCertificate?: boolean;
}

/**
 * Certificates kept per connection under capability `pin-once`: keeping one
 * more starts the set over, on the client and the executor alike.
 */
export const MAX_KEPT_CERTIFICATES = 64;

/** Opens a request stream; with `hasBody`, body chunks and an end follow. */
export interface RequestHead {
  method: string;
  /** Absolute `https://` URL. */
  url: string;
  headers?: Header[];
  /** 0 = {@link DEFAULT_TIMEOUT_MS}. */
  timeoutMs?: number;
  /** Body chunks and an end follow this head. */
  hasBody?: boolean;
  trust?: TrustMetadata | null;
  /** 0 = {@link DEFAULT_WINDOW_BYTES}. */
  initialWindowBytes?: number;
}

/** The executor's side of a request, in microseconds (0 for the steps a pooled connection skipped). */
export interface UpstreamTiming {
  dnsUs?: number;
  connectUs?: number;
  tlsUs?: number;
  ttfbUs?: number;
}

/** The target's status and headers (hop-by-hop headers removed). */
export interface ResponseHead {
  status: number;
  headers?: Header[];
  /** Absent from executors of older builds. */
  timing?: UpstreamTiming | null;
}

/** Up to {@link MAX_CHUNK_BYTES} of a request or response body. */
export interface BodyChunk {
  data: Uint8Array;
}

/** The body of the stream is complete (request body, or response and stream). */
export type End = Record<string, never>;

/**
 * Opens a tunnel stream (capability `tunnel`): a public request the executor
 * (an agent) makes to an app in its network. Body chunks and an end follow
 * with `hasBody`; with `upgrade`, a 101 head turns the stream into a byte pipe.
 */
export interface TunnelRequest {
  method: string;
  /** Absolute `http://` or `https://` URL. */
  url: string;
  headers?: Header[];
  /** Bounds connect and the wait for the response head; 0 = {@link DEFAULT_TIMEOUT_MS}. */
  timeoutMs?: number;
  hasBody?: boolean;
  /** Response window; 0 = {@link DEFAULT_TUNNEL_WINDOW_BYTES}. */
  initialWindowBytes?: number;
  upgrade?: boolean;
}

/** One check an agent runs (capability `health`): GET `url` every `intervalMs`, healthy on `expectStatus`. */
export interface HealthCheck {
  /** The client's name for the check; its results carry it. */
  id: string;
  /** Absolute `http://` or `https://` URL. */
  url: string;
  /** At least {@link MIN_HEALTH_INTERVAL_MS}. */
  intervalMs: number;
  /** Bounds the whole check; 0 = {@link DEFAULT_TIMEOUT_MS}. */
  timeoutMs?: number;
  expectStatus: number;
}

/**
 * Opens a health stream (capability `health`), or on the stream already open
 * replaces its whole set of checks (empty: none run).
 */
export interface HealthWatch {
  checks: HealthCheck[];
}

/** The result of one run of a check. */
export interface HealthResult {
  id: string;
  ok: boolean;
  /** Why not (`status 503, expected 200`, `timed out`, `ECONNREFUSED`, `TARGET_NOT_ALLOWED`…); '' when ok. */
  error?: string;
}

/** Check results, on a health stream. */
export interface HealthReport {
  results: HealthResult[];
}

/** The shortest interval between two runs of a health check an agent accepts: 1 s. */
export const MIN_HEALTH_INTERVAL_MS = 1000;
/** The most checks one health watch may name. */
export const MAX_HEALTH_CHECKS = 1024;

/** The client consumed `bytes` more of the response: the executor may send that much more. */
export interface WindowUpdate {
  bytes: number;
}

/** The client gives the stream up; the upstream request is aborted at once. */
export type Cancel = Record<string, never>;

/** A failed stream (or, on stream 0, connection), with a code of the error table. */
export interface RelayError {
  /** A code of the error table (src/errors.ts). */
  code: string;
  message?: string;
  /** For certificate failures: DER of the leaf actually presented. */
  observedCertificateDer?: Uint8Array;
  /** The system error behind it (ECONNREFUSED, ECONNRESET, …), when there is one. */
  cause?: string;
}

/** Stream reconciliation (stream 0): the sender's live stream ids and its leak count so far. */
export interface StreamSet {
  streamIds: number[];
  leakedTotal?: number;
}

/**
 * The sender is going away (stream 0, capability `drain`): open no new
 * stream on this connection and connect elsewhere; open streams may finish
 * within `graceMs`, then the sender closes (1001).
 */
export interface Drain {
  graceMs: number;
  reason?: string;
}

/** The payload of an envelope: exactly one of the proto's oneof, tagged by `case`. */
export type EnvelopePayload =
  | { case: 'hello'; value: Hello }
  | { case: 'welcome'; value: Welcome }
  | { case: 'ping'; value: Ping }
  | { case: 'pong'; value: Pong }
  | { case: 'discoverRequest'; value: DiscoverRequest }
  | { case: 'discoverResult'; value: DiscoverResult }
  | { case: 'requestHead'; value: RequestHead }
  | { case: 'responseHead'; value: ResponseHead }
  | { case: 'bodyChunk'; value: BodyChunk }
  | { case: 'end'; value: End }
  | { case: 'windowUpdate'; value: WindowUpdate }
  | { case: 'cancel'; value: Cancel }
  | { case: 'error'; value: RelayError }
  | { case: 'streamSet'; value: StreamSet }
  | { case: 'drain'; value: Drain }
  | { case: 'tunnelRequest'; value: TunnelRequest }
  | { case: 'healthWatch'; value: HealthWatch }
  | { case: 'healthReport'; value: HealthReport };

/** The kinds of payload, in proto field order. */
export type EnvelopeCase = EnvelopePayload['case'];

/** One frame of the relay protocol. `streamId` 0 is the connection itself. */
export interface Envelope {
  streamId: number;
  payload: EnvelopePayload;
}

/**
 * Builds the error envelope for anything thrown (normalised with toAppError).
 * A certificate failure's observed certificate (`details.observedCertificateDer`,
 * base64) travels as DER.
 */
export function errorEnvelope(streamId: number, err: unknown): Envelope {
  const appError = toAppError(err);
  const value: RelayError = { code: appError.code, message: appError.message };
  const der = appError.details?.observedCertificateDer;
  if (typeof der === 'string' && der.length > 0) value.observedCertificateDer = Buffer.from(der, 'base64');
  return { streamId, payload: { case: 'error', value } };
}

/**
 * Turns a received error payload back into an AppError with the same code.
 * An unknown code becomes PROTOCOL_ERROR. An observed certificate is
 * described in `details.observedCertificate` (CertificateInfo) and kept as
 * base64 DER in `details.observedCertificateDer`.
 */
export function appErrorFromPayload(error: RelayError): AppError {
  const code: ErrorCode = isErrorCode(error.code) ? error.code : 'PROTOCOL_ERROR';
  const message =
    code === error.code ? error.message || code : `unknown error code from relay peer: ${String(error.code)}`;
  const der = error.observedCertificateDer;
  if (der !== undefined && der.length > 0) {
    try {
      return new AppError(code, message, { details: observedCertificateDetails(der) });
    } catch {
      // An unparsable certificate from the peer is dropped; the code still stands.
    }
  }
  return new AppError(code, message);
}

/** The `details` of a certificate failure: the observed leaf described and as base64 DER. */
export function observedCertificateDetails(der: Uint8Array): {
  observedCertificate: CertificateInfo;
  observedCertificateDer: string;
} {
  return {
    observedCertificate: describeCertificate(der),
    observedCertificateDer: Buffer.from(der.buffer, der.byteOffset, der.byteLength).toString('base64'),
  };
}
