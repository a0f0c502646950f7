/**
 * How the agent verifies the control plane before any credential is sent:
 *
 * - with a CA bundle (MANAGEMENT_CA_FILE): ordinary chain verification
 *   against that bundle only, hostname included;
 * - with a pinned fingerprint (MANAGEMENT_FINGERPRINT): a handshake-only
 *   probe reads the presented chain; when its leaf matches the pin, the real
 *   connection trusts that chain only and its `checkServerIdentity` requires
 *   the same leaf again, so a certificate swapped between probe and connect
 *   is refused too. A mismatch throws CERTIFICATE_CHANGED, never connects.
 */
import { X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import tls, { type PeerCertificate } from 'node:tls';
import { AppError, toAppError } from '../src/errors.js';

/** TLS options for the control-plane connection (given to the WebSocket client). */
export interface ControlPlaneTlsOptions {
  ca: string | string[];
  checkServerIdentity?: (hostname: string, cert: PeerCertificate) => Error | undefined;
}

/** The chain a TLS server presents, leaf first, as DER. */
export async function probeCertificateChain(url: string, timeoutMs: number): Promise<Buffer[]> {
  const target = new URL(url);
  const host = target.hostname.replace(/^\[|\]$/g, '');
  const port = Number(target.port || 443);
  return new Promise((resolve, reject) => {
    // Verification is off for this probe only: it completes the handshake,
    // reads the chain and closes, and no application byte (no token) is
    // ever written on it. The real connection is verified against the result.
    const socket = tls.connect({
      host,
      port,
      rejectUnauthorized: false,
      ...(isIP(host) === 0 ? { servername: host } : {}),
    });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(
        new AppError('ENVIRONMENT_TIMEOUT', `no TLS handshake with ${target.host} within ${timeoutMs} ms`),
      );
    }, timeoutMs);
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      const chain: Buffer[] = [];
      let cert = socket.getPeerCertificate(true) as PeerCertificate & { issuerCertificate?: PeerCertificate };
      const seen = new Set<string>();
      while (cert?.raw && !seen.has(cert.fingerprint256)) {
        seen.add(cert.fingerprint256);
        chain.push(cert.raw);
        cert = cert.issuerCertificate as typeof cert;
      }
      socket.destroy();
      if (chain.length === 0) reject(new AppError('PROTOCOL_ERROR', 'the control plane sent no certificate'));
      else resolve(chain);
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(toAppError(err, 'ENVIRONMENT_UNREACHABLE'));
    });
  });
}

function toPem(der: Buffer): string {
  const lines = der.toString('base64').match(/.{1,64}/g) ?? [];
  return `-----BEGIN CERTIFICATE-----\n${lines.join('\n')}\n-----END CERTIFICATE-----\n`;
}

function fingerprintOfDer(der: Buffer): string {
  return new X509Certificate(der).fingerprint256;
}

/**
 * The TLS options that make the control-plane connection verified. Throws
 * CERTIFICATE_CHANGED when the presented leaf does not match the pinned
 * fingerprint (details: `expectedFingerprint`, `observedFingerprint`), or the
 * probe's connection error (ENVIRONMENT_UNREACHABLE, ENVIRONMENT_TIMEOUT).
 */
export async function controlPlaneTlsOptions(options: {
  managementUrl: string;
  ca: string | null;
  fingerprint: string | null;
  timeoutMs: number;
}): Promise<ControlPlaneTlsOptions> {
  if (options.ca !== null) return { ca: options.ca };
  const pin = options.fingerprint;
  if (pin === null)
    throw new AppError('VALIDATION_FAILED', 'no way to verify the control plane was configured');
  const chain = await probeCertificateChain(options.managementUrl, options.timeoutMs);
  const observed = fingerprintOfDer(chain[0]!);
  if (observed !== pin) throw fingerprintMismatch(pin, observed);
  return {
    ca: chain.map(toPem),
    checkServerIdentity: (_hostname, cert) =>
      cert.fingerprint256 === pin ? undefined : fingerprintMismatch(pin, cert.fingerprint256),
  };
}

function fingerprintMismatch(expected: string, observed: string): AppError {
  return new AppError(
    'CERTIFICATE_CHANGED',
    `the control plane presented a certificate with fingerprint ${observed}, not the MANAGEMENT_FINGERPRINT ${expected}`,
    { details: { expectedFingerprint: expected, observedFingerprint: observed } },
  );
}

// OpenSSL/Node verification failures, by the code Node gives them.
const EXPIRED_CODES = new Set(['CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID']);
const UNTRUSTED_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'CERT_SIGNATURE_FAILURE',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'INVALID_CA',
]);

/**
 * Normalises a failure of the control-plane connection. Certificate
 * verification failures become CERTIFICATE_HOSTNAME_MISMATCH,
 * CERTIFICATE_EXPIRED or CERTIFICATE_CHANGED (not trusted) with a message
 * saying what was checked; anything else goes through toAppError
 * (ENVIRONMENT_UNREACHABLE when unknown).
 */
export function controlPlaneError(err: unknown, mode: 'ca-file' | 'fingerprint'): AppError {
  if (err instanceof AppError) return err;
  const code = (err as { code?: unknown } | null)?.code;
  const reason = err instanceof Error ? err.message : String(err);
  const against = mode === 'ca-file' ? 'MANAGEMENT_CA_FILE' : 'MANAGEMENT_FINGERPRINT';
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
    return new AppError(
      'CERTIFICATE_HOSTNAME_MISMATCH',
      `the control plane's certificate is not valid for the host of MANAGEMENT_URL (${reason})`,
      { cause: err },
    );
  }
  if (typeof code === 'string' && EXPIRED_CODES.has(code)) {
    return new AppError(
      'CERTIFICATE_EXPIRED',
      `the control plane's certificate is outside its validity (${reason})`,
      {
        cause: err,
      },
    );
  }
  if (typeof code === 'string' && UNTRUSTED_CODES.has(code)) {
    return new AppError(
      'CERTIFICATE_CHANGED',
      `the control plane's certificate does not verify against ${against} (${reason})`,
      { cause: err },
    );
  }
  const { code: normalized } = toAppError(err, 'ENVIRONMENT_UNREACHABLE');
  return new AppError(normalized, `the control plane cannot be reached (${reason})`, { cause: err });
}
