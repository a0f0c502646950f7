/**
 * TLS towards targets: the discovery handshake and the pinned connection
 * agent. This is where certificate verification happens, always inside the
 * handshake and never switched off:
 *
 * - A pinned connection makes the pinned leaf its only trust anchor (`ca`,
 *   with partial chains allowed so a CA-issued leaf anchors on its own) and
 *   checks, in `checkServerIdentity` (which Node runs inside the handshake,
 *   before 'secureConnect'), that the leaf's fingerprint equals the pin, that
 *   it is currently valid and that it covers the expected hostname. A socket
 *   is handed to HTTP only after 'secureConnect', so not one request byte is
 *   written to a peer that fails.
 * - Discovery completes a handshake, reads the peer chain and closes without
 *   writing anything.
 *
 * - Every connection that can carry a credential goes through
 *   {@link connectVerified}: `rejectUnauthorized: true` is set there, not
 *   inherited, so NODE_TLS_REJECT_UNAUTHORIZED=0 cannot turn it off (with it,
 *   Node would skip `checkServerIdentity` after a failed chain check and
 *   still emit 'secureConnect'), and a socket that is not `authorized` after
 *   the handshake is destroyed before anyone can write to it.
 *
 * Both read the peer's certificate on the socket's 'secure' event, which
 * Node emits when the handshake is done and before it verifies the peer; a
 * refused peer's certificate can be reported that way. Verification itself
 * never depends on it.
 */
import { X509Certificate } from 'node:crypto';
import https from 'node:https';
import { isIP, type LookupFunction } from 'node:net';
import type { Duplex } from 'node:stream';
import tls, { type DetailedPeerCertificate, type PeerCertificate, type TLSSocket } from 'node:tls';
import { AppError, toAppError } from '../errors.js';
import { describeCertificate, isCurrentlyValid, matchesHostname } from '../tls/certificates.js';
import { DEFAULT_MAX_STREAMS, observedCertificateDetails } from './envelope.js';

/** What a pinned connection must meet; `fingerprintSha256` normalised (`AB:CD:…`). */
export interface PinnedTrust {
  fingerprintSha256: string;
  expectedHostname: string;
  /** DER of the pinned leaf: the only trust anchor. Absent = the default roots, then the pin. */
  certificateDer?: Uint8Array | undefined;
}

/** The lowest TLS version spoken to targets. */
export const MIN_TLS_VERSION = 'TLSv1.2';

/** The SNI name for a URL hostname: none for IP addresses (RFC 6066 §3). */
export function serverNameFor(hostname: string): string {
  const host = hostname.replace(/^\[|\]$/g, '');
  return isIP(host) === 0 ? host : '';
}

/**
 * Checks a presented leaf against the trust metadata. Returns null when it
 * holds, otherwise the AppError to fail with (CERTIFICATE_CHANGED, then
 * CERTIFICATE_EXPIRED, then CERTIFICATE_HOSTNAME_MISMATCH, in that order of
 * precedence), carrying the observed certificate in its details.
 */
export function checkPinnedPeer(trust: PinnedTrust, der: Uint8Array): AppError | null {
  let info: ReturnType<typeof describeCertificate>;
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(Buffer.from(der.buffer, der.byteOffset, der.byteLength));
    info = describeCertificate(x509);
  } catch (err) {
    return new AppError('CERTIFICATE_CHANGED', 'the target presented an unreadable certificate', {
      cause: err,
    });
  }
  // The observed certificate's details are only worked out for a refusal (each handshake checks).
  if (info.fingerprintSha256 !== trust.fingerprintSha256) {
    return new AppError(
      'CERTIFICATE_CHANGED',
      'the target presented a certificate other than the pinned one',
      {
        details: observedCertificateDetails(der),
      },
    );
  }
  if (!isCurrentlyValid(info)) {
    return new AppError('CERTIFICATE_EXPIRED', 'the pinned certificate is outside its validity period', {
      details: observedCertificateDetails(der),
    });
  }
  if (!matchesHostname(x509, trust.expectedHostname)) {
    return new AppError(
      'CERTIFICATE_HOSTNAME_MISMATCH',
      `the pinned certificate is not valid for ${trust.expectedHostname}`,
      { details: observedCertificateDetails(der) },
    );
  }
  return null;
}

// OpenSSL verification results that mean "not currently valid".
const TIME_VERIFY_CODES = new Set(['CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID']);
// Every other X.509 verification result Node reports on a refused chain.
const CHAIN_VERIFY_CODES = new Set([
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_DECRYPT_CERT_SIGNATURE',
  'UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY',
  'CERT_SIGNATURE_FAILURE',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'CERT_CHAIN_TOO_LONG',
  'CERT_REVOKED',
  'INVALID_CA',
  'PATH_LENGTH_EXCEEDED',
  'INVALID_PURPOSE',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'ERROR_IN_CERT_NOT_BEFORE_FIELD',
  'ERROR_IN_CERT_NOT_AFTER_FIELD',
]);

/** The certificate verdicts a refused TLS verification can map to. */
export type CertificateVerdictCode =
  | 'CERTIFICATE_EXPIRED'
  | 'CERTIFICATE_CHANGED'
  | 'CERTIFICATE_HOSTNAME_MISMATCH';

/**
 * The one classifier of Node's certificate verification failures, by their
 * `code`: outside the validity period → CERTIFICATE_EXPIRED; a name the
 * certificate does not cover (ERR_TLS_CERT_ALTNAME_INVALID) →
 * CERTIFICATE_HOSTNAME_MISMATCH; any other X.509 verification result (not
 * trusted, bad signature, …) → CERTIFICATE_CHANGED; anything else (a socket
 * error) → null. Used for targets and for the agent's control plane alike.
 */
export function certificateVerdictCode(err: unknown): CertificateVerdictCode | null {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code !== 'string') return null;
  if (TIME_VERIFY_CODES.has(code)) return 'CERTIFICATE_EXPIRED';
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') return 'CERTIFICATE_HOSTNAME_MISMATCH';
  if (CHAIN_VERIFY_CODES.has(code)) return 'CERTIFICATE_CHANGED';
  return null;
}

/**
 * True when an AppError is a certificate verdict (the environment's trust
 * state follows it): CERTIFICATE_CHANGED, CERTIFICATE_EXPIRED,
 * CERTIFICATE_HOSTNAME_MISMATCH or ENVIRONMENT_UNTRUSTED.
 */
export function isCertificateFailure(err: AppError): boolean {
  return (
    err.code === 'CERTIFICATE_CHANGED' ||
    err.code === 'CERTIFICATE_EXPIRED' ||
    err.code === 'CERTIFICATE_HOSTNAME_MISMATCH' ||
    err.code === 'ENVIRONMENT_UNTRUSTED'
  );
}

/**
 * Maps a failed pinned handshake to its AppError. `observed` is the leaf read
 * when the handshake completed, if it did: then the error is Node refusing
 * the peer and the leaf tells why.
 */
function classifyHandshakeError(
  err: unknown,
  observed: Uint8Array | undefined,
  trust: PinnedTrust,
): AppError {
  if (err instanceof AppError) return err;
  const code = (err as { code?: unknown } | null)?.code;
  if (observed !== undefined) {
    const verdict = checkPinnedPeer(trust, observed);
    if (verdict !== null) return verdict;
    const details = observedCertificateDetails(observed);
    if (!trust.certificateDer?.length) {
      return new AppError(
        'ENVIRONMENT_UNTRUSTED',
        'the target cannot be verified without the pinned certificate',
        {
          cause: err,
          details,
        },
      );
    }
    return new AppError(
      'CERTIFICATE_CHANGED',
      `the target's certificate chain was refused (${String(code)})`,
      {
        cause: err,
        details,
      },
    );
  }
  const verdict = certificateVerdictCode(err);
  if (verdict === 'CERTIFICATE_EXPIRED') {
    return new AppError(verdict, 'the target certificate is outside its validity period', { cause: err });
  }
  if (verdict === 'CERTIFICATE_HOSTNAME_MISMATCH') {
    return new AppError(verdict, `the target certificate is not valid for ${trust.expectedHostname}`, {
      cause: err,
    });
  }
  if (verdict !== null) {
    return new AppError(verdict, `the target's certificate chain was refused (${String(code)})`, {
      cause: err,
    });
  }
  return toAppError(err, 'ENVIRONMENT_UNREACHABLE');
}

function derToPem(der: Uint8Array): string {
  const base64 = Buffer.from(der.buffer, der.byteOffset, der.byteLength).toString('base64');
  return `-----BEGIN CERTIFICATE-----\n${base64.match(/.{1,64}/g)?.join('\n') ?? ''}\n-----END CERTIFICATE-----\n`;
}

function leafOf(socket: TLSSocket): Buffer | undefined {
  const raw = socket.getPeerCertificate()?.raw;
  return raw && raw.length > 0 ? raw : undefined;
}

/** The peer chain as DER, leaf first, without repeats (a self-signed root points at itself). */
function chainOf(socket: TLSSocket): Buffer[] {
  const chain: Buffer[] = [];
  const seen = new Set<string>();
  let cert: DetailedPeerCertificate | PeerCertificate | undefined = socket.getPeerCertificate(true);
  while (cert?.raw && cert.raw.length > 0 && chain.length < 16) {
    const key = cert.raw.toString('base64');
    if (seen.has(key)) break;
    seen.add(key);
    chain.push(cert.raw);
    cert = (cert as DetailedPeerCertificate).issuerCertificate;
  }
  return chain;
}

/** Options of {@link connectVerified}: tls.connect options (`rejectUnauthorized` is forced on). */
export type VerifiedConnectOptions = tls.ConnectionOptions & {
  /** Destroys the attempt with ETIMEDOUT when the handshake is not done by then; none when absent. */
  handshakeTimeoutMs?: number | undefined;
};

/**
 * Opens a TLS connection for a client that will send a credential: verification is
 * on whatever the process default says, and `callback` receives the socket only
 * after 'secureConnect' with `socket.authorized` true, so no byte is ever written
 * to a peer that was not verified. On failure the socket is destroyed and
 * `callback` gets the error (Node's verification error, the AppError thrown by
 * `checkServerIdentity`, or the socket error). `onSecure` sees the socket when the
 * handshake completes, before verification is judged (to read a refused peer's
 * certificate). Returns the socket being connected, for cancellation only.
 */
export function connectVerified(
  options: VerifiedConnectOptions,
  callback: (err: Error | null, socket?: TLSSocket) => void,
  onSecure?: (socket: TLSSocket) => void,
): TLSSocket {
  const { handshakeTimeoutMs, ...connect } = options;
  const socket = tls.connect({ ...connect, rejectUnauthorized: true });
  let done = false;
  const finish = (err: Error | null) => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    socket.off('error', finish);
    socket.off('secureConnect', onConnected);
    if (err === null) {
      callback(null, socket);
      return;
    }
    // A late error from the destroyed socket has no one else to go to.
    socket.on('error', () => {});
    socket.destroy();
    callback(err);
  };
  const onConnected = () => {
    if (socket.authorized) {
      finish(null);
      return;
    }
    // Unreachable with rejectUnauthorized set, kept so no future option can make it reachable.
    const reason = String(socket.authorizationError ?? 'unverified peer');
    finish(Object.assign(new Error(`the peer was not verified (${reason})`), { code: reason }));
  };
  const timer =
    handshakeTimeoutMs === undefined
      ? undefined
      : setTimeout(
          () =>
            finish(
              Object.assign(new Error(`TLS handshake not done within ${handshakeTimeoutMs} ms`), {
                code: 'ETIMEDOUT',
              }),
            ),
          handshakeTimeoutMs,
        );
  if (onSecure) socket.prependListener('secure', () => onSecure(socket));
  socket.once('error', finish);
  socket.once('secureConnect', onConnected);
  return socket;
}

/** Where a connection attempt is registered, so a timeout or cancel can destroy it mid-handshake. */
export const kConnectContext = Symbol('p2pstream.connectContext');

/** Carried in the request options under {@link kConnectContext}. */
export interface ConnectContext {
  /** The socket being connected, until it is verified or fails. */
  socket?: TLSSocket | undefined;
  /** When a new connection was opened for the request (performance.now()): its steps, as they happen. */
  timing?: ConnectTiming | undefined;
}

/** Moments of a new connection (performance.now()); a step that did not happen stays undefined. */
export interface ConnectTiming {
  start: number;
  lookup?: number;
  connect?: number;
  secure?: number;
}

/** Options of {@link PinnedAgent}. */
export interface PinnedAgentOptions {
  trust: PinnedTrust;
  /** SNI name ('' = none); see {@link serverNameFor}. */
  servername: string;
  /**
   * Idle pooled sockets kept per origin; default {@link DEFAULT_MAX_FREE_SOCKETS}.
   * Fewer than the concurrent requests means a fresh handshake for most of
   * them under load (no session resumption here), so it matches the stream bound.
   */
  maxFreeSockets?: number;
  /** An idle pooled socket is closed after this long; default {@link DEFAULT_IDLE_SOCKET_TIMEOUT_MS}. */
  idleTimeoutMs?: number;
}

/** Default idle sockets kept per (origin, pin): as many as streams may run at once on one connection to an agent. */
export const DEFAULT_MAX_FREE_SOCKETS = DEFAULT_MAX_STREAMS;

/**
 * Default idle timeout of pooled target connections: 4 s, below Node's default
 * server keep-alive timeout (5 s), so the client normally closes an idle
 * connection before the target does.
 */
export const DEFAULT_IDLE_SOCKET_TIMEOUT_MS = 4000;

/**
 * A keep-alive https.Agent for one (origin, pin): every new connection is
 * verified against the pin inside its handshake and reaches the HTTP layer
 * only once verified. Failures are AppErrors (CERTIFICATE_CHANGED,
 * CERTIFICATE_EXPIRED, CERTIFICATE_HOSTNAME_MISMATCH, ENVIRONMENT_UNTRUSTED,
 * or the socket error mapped by toAppError, default ENVIRONMENT_UNREACHABLE).
 * TLS session resumption is off so every connection runs the full check.
 */
export class PinnedAgent extends https.Agent {
  readonly trust: PinnedTrust;

  constructor(options: PinnedAgentOptions) {
    const { trust } = options;
    const anchored = trust.certificateDer !== undefined && trust.certificateDer.length > 0;
    super({
      keepAlive: true,
      maxFreeSockets: options.maxFreeSockets ?? DEFAULT_MAX_FREE_SOCKETS,
      timeout: options.idleTimeoutMs ?? DEFAULT_IDLE_SOCKET_TIMEOUT_MS,
      maxCachedSessions: 0,
      scheduling: 'lifo',
      rejectUnauthorized: true,
      minVersion: MIN_TLS_VERSION,
      servername: options.servername,
      // One secure context for the pool's connections (tls.connect would build one per
      // connection from these options, parsing the pinned certificate each time).
      secureContext: tls.createSecureContext({
        minVersion: MIN_TLS_VERSION,
        ...(anchored
          ? { ca: [derToPem(trust.certificateDer as Uint8Array)], allowPartialTrustChain: true }
          : {}),
      }),
      checkServerIdentity: (_hostname, cert) => checkPinnedPeer(trust, cert.raw) ?? undefined,
    });
    this.trust = trust;
  }

  override createConnection(
    options: https.RequestOptions,
    callback?: (err: Error | null, stream: Duplex) => void,
  ): Duplex | null | undefined {
    const context = (options as Record<symbol, unknown>)[kConnectContext] as ConnectContext | undefined;
    let observed: Buffer | undefined;
    const timing: ConnectTiming = { start: performance.now() };
    if (context) context.timing = timing;
    const socket = connectVerified(
      options as tls.ConnectionOptions,
      (err, verified) => {
        if (context) context.socket = undefined;
        if (err !== null || verified === undefined) {
          callback?.(classifyHandshakeError(err, observed, this.trust), undefined as unknown as Duplex);
        } else {
          callback?.(null, verified);
        }
      },
      (secured) => {
        timing.secure = performance.now();
        observed = leafOf(secured);
      },
    );
    socket.once('lookup', () => {
      timing.lookup = performance.now();
    });
    socket.once('connect', () => {
      timing.connect = performance.now();
    });
    if (context) context.socket = socket;
    // Handing the socket over only from the callback is what keeps request bytes behind verification.
    return undefined;
  }
}

/** Options of {@link probeCertificate}. */
export interface ProbeOptions {
  host: string;
  port: number;
  /** SNI name ('' = none). */
  servername: string;
  /** Resolves `host` (see target-policy.ts); default dns.lookup. */
  lookup?: LookupFunction | undefined;
  timeoutMs: number;
  signal?: AbortSignal | undefined;
}

/**
 * The discovery handshake: TLS 1.2+ with SNI, reads the peer chain (DER, leaf
 * first) and closes; writes no application byte. The peer's certificate need
 * not be trusted. Fails with ENVIRONMENT_TIMEOUT, CANCELLED or the socket
 * error (ENVIRONMENT_UNREACHABLE by default).
 */
export function probeCertificate(options: ProbeOptions): Promise<Buffer[]> {
  return new Promise((resolve, reject) => {
    if (options.signal?.aborted) {
      reject(new AppError('CANCELLED', 'the discovery was cancelled'));
      return;
    }
    let chain: Buffer[] | undefined;
    let settled = false;
    const socket = tls.connect({
      host: options.host,
      port: options.port,
      ...(options.servername ? { servername: options.servername } : {}),
      ...(options.lookup ? { lookup: options.lookup } : {}),
      minVersion: MIN_TLS_VERSION,
      // Discovery reads the certificate; a verdict on it is the caller's.
      checkServerIdentity: () => undefined,
    });
    const finish = (err?: unknown) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
      socket.destroy();
      if (chain !== undefined && chain.length > 0) resolve(chain);
      else reject(toAppError(err ?? new Error('no certificate presented'), 'ENVIRONMENT_UNREACHABLE'));
    };
    const onAbort = () => finish(new AppError('CANCELLED', 'the discovery was cancelled'));
    const timer = setTimeout(
      () => finish(new AppError('ENVIRONMENT_TIMEOUT', 'the TLS handshake did not complete in time')),
      options.timeoutMs,
    );
    options.signal?.addEventListener('abort', onAbort, { once: true });
    socket.prependListener('secure', () => {
      chain = chainOf(socket);
    });
    socket.once('secureConnect', () => finish());
    // A peer the default roots do not trust is refused after 'secure': its chain is already read.
    socket.once('error', (err) => finish(err));
  });
}
