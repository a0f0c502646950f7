/**
 * The one seam between the environment relay and the way a target is reached.
 * DirectTransport runs the envelope executor in-process; AgentTransport sends
 * the same envelopes to an agent over the hub. Callers cannot tell them apart.
 *
 * Failures reject with an AppError whose code is one of the public codes
 * (docs/architecture.md "Errors") (ENVIRONMENT_UNREACHABLE,
 * ENVIRONMENT_TIMEOUT, CERTIFICATE_CHANGED, CERTIFICATE_EXPIRED,
 * CERTIFICATE_HOSTNAME_MISMATCH, AGENT_OFFLINE, …). Certificate failures carry
 * the certificate actually observed in `details.observedCertificate` (a
 * CertificateInfo) so the caller can record it.
 */
import type { CertificateInfo } from '../tls/certificates.js';

/** Timeout of a request or discovery that carries none: 10 s (an environment's default `timeoutMs`). */
export const DEFAULT_TIMEOUT_MS = 10_000;
/** Upper bound on any timeout a request or discovery carries: 5 minutes. */
export const MAX_TIMEOUT_MS = 300_000;

/** A carried timeout made usable: none, zero, negative or not finite → the default; at most the maximum. */
export function boundTimeout(value: number | undefined): number {
  return value !== undefined && Number.isFinite(value) && value > 0
    ? Math.min(value, MAX_TIMEOUT_MS)
    : DEFAULT_TIMEOUT_MS;
}

/** What a pinned request must meet, checked inside the TLS handshake. */
export interface TrustMetadata {
  /** SHA-256 of the pinned leaf certificate, `AB:CD:…`. */
  fingerprintSha256: string;
  /** The hostname the certificate must be valid for (the URL's host). */
  expectedHostname: string;
  /** DER of the pinned leaf certificate, when known. */
  certificateDer?: Uint8Array;
}

/** A discovery: which origin, and how long the handshake may take. */
export interface DiscoverOptions {
  /** The target origin, `https://host:port`. */
  url: string;
  /** Bounds the TCP connect and the TLS handshake. */
  timeoutMs: number;
  signal?: AbortSignal;
}

/** What a discovery saw: the chain and the verdicts a trust decision needs. */
export interface DiscoverResult {
  /** The leaf certificate, described. */
  certificate: CertificateInfo;
  /** The full peer chain as DER, leaf first. */
  chain: Uint8Array[];
  /** The leaf is outside its validity period now. */
  expired: boolean;
  /** The leaf's SANs cover the URL's hostname. */
  hostnameMatches: boolean;
}

/** Header list as name/value pairs; names lower-case, repeats allowed. */
export type HeaderList = Array<[name: string, value: string]>;

/** One pinned HTTPS request to a target. */
export interface RelayRequest {
  /** Absolute `https://` URL: origin + path + query. */
  url: string;
  method: string;
  headers: HeaderList;
  /** Request body (management API bodies are at most 1 MiB). */
  body?: Uint8Array;
  /** Bounds connect, handshake and the wait for the response head. */
  timeoutMs: number;
  trust: TrustMetadata;
  /** Aborting cancels the request end to end (the upstream socket is closed). */
  signal?: CancelSignal;
}

/**
 * What cancelling a request needs of its signal: an AbortSignal is one, and
 * so is a {@link Cancellation}.
 */
export interface CancelSignal {
  readonly aborted: boolean;
  addEventListener(type: 'abort', listener: () => void, options?: { once?: boolean }): void;
  removeEventListener(type: 'abort', listener: () => void): void;
}

/**
 * A one-shot cancel signal without an AbortController's EventTarget (which
 * costs a relayed request a few µs of the control plane's CPU): listeners
 * run once, on the first abort(); one added after it never runs.
 */
export class Cancellation implements CancelSignal {
  #aborted = false;
  #listeners: Array<() => void> | null = null;

  get aborted(): boolean {
    return this.#aborted;
  }

  addEventListener(_type: 'abort', listener: () => void): void {
    if (this.#aborted) return;
    if (this.#listeners === null) this.#listeners = [listener];
    else this.#listeners.push(listener);
  }

  removeEventListener(_type: 'abort', listener: () => void): void {
    const listeners = this.#listeners;
    const at = listeners === null ? -1 : listeners.indexOf(listener);
    if (at !== -1) listeners!.splice(at, 1);
  }

  abort(): void {
    if (this.#aborted) return;
    this.#aborted = true;
    const listeners = this.#listeners;
    this.#listeners = null;
    if (listeners !== null) for (const listener of listeners) listener();
  }
}

/**
 * Where a relayed request's time went, in milliseconds: the executor's
 * name resolution, TCP connect and TLS handshake to the target (0 when a
 * pooled connection was reused), request written → response head (`ttfb`),
 * and `relay`: the rest of the round trip, spent on the relay link itself
 * (the hub, the agent connection and the agent process, or the in-process
 * pipe).
 */
export interface RelayTiming {
  dns: number;
  connect: number;
  tls: number;
  ttfb: number;
  relay: number;
}

/** The response head, with the body to read (or cancel). */
export interface RelayResponse {
  status: number;
  headers: HeaderList;
  /** Absent when the executor did not report it (an agent of an older build). */
  timing?: RelayTiming;
  /** The response body, chunk by chunk as it arrives; flow-controlled. */
  body: AsyncIterable<Uint8Array>;
  /** Stops the body: the upstream request is aborted at once. Idempotent. */
  cancel(): void;
}

/** How the control plane reaches a target's management API. */
export interface Transport {
  /** TLS handshake only: collects the peer certificate, sends no application byte. */
  discover(options: DiscoverOptions): Promise<DiscoverResult>;
  /** A pinned HTTPS request; resolves at the response head. */
  request(request: RelayRequest): Promise<RelayResponse>;
}
