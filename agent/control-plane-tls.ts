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
import type { PeerCertificate } from 'node:tls';
import { AppError, toAppError } from '../src/errors.js';
import { certificateVerdictCode, probeCertificate, serverNameFor } from '../src/relay/pinned-tls.js';

/** TLS options for the control-plane connection (given to the WebSocket client). */
export interface ControlPlaneTlsOptions {
  ca: string | string[];
  checkServerIdentity?: (hostname: string, cert: PeerCertificate) => Error | undefined;
}

/**
 * The chain the control plane presents, leaf first, as DER: the relay's
 * discovery handshake (no application byte, so no token, is written on it).
 */
export async function probeCertificateChain(url: string, timeoutMs: number): Promise<Buffer[]> {
  const target = new URL(url);
  const host = target.hostname.replace(/^\[|\]$/g, '');
  try {
    return await probeCertificate({
      host,
      port: Number(target.port || 443),
      servername: serverNameFor(host),
      timeoutMs,
    });
  } catch (err) {
    const error = toAppError(err, 'ENVIRONMENT_UNREACHABLE');
    if (error.code === 'ENVIRONMENT_TIMEOUT') {
      throw new AppError(
        'ENVIRONMENT_TIMEOUT',
        `no TLS handshake with ${target.host} within ${timeoutMs} ms`,
        {
          cause: err,
        },
      );
    }
    throw error;
  }
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

/**
 * Normalises a failure of the control-plane connection. Certificate
 * verification failures become CERTIFICATE_HOSTNAME_MISMATCH,
 * CERTIFICATE_EXPIRED or CERTIFICATE_CHANGED (not trusted) with a message
 * saying what was checked; anything else goes through toAppError
 * (ENVIRONMENT_UNREACHABLE when unknown).
 */
export function controlPlaneError(err: unknown, mode: 'ca-file' | 'fingerprint'): AppError {
  if (err instanceof AppError) return err;
  const verdict = certificateVerdictCode(err);
  const reason = err instanceof Error ? err.message : String(err);
  const against = mode === 'ca-file' ? 'MANAGEMENT_CA_FILE' : 'MANAGEMENT_FINGERPRINT';
  if (verdict === 'CERTIFICATE_HOSTNAME_MISMATCH') {
    return new AppError(
      'CERTIFICATE_HOSTNAME_MISMATCH',
      `the control plane's certificate is not valid for the host of MANAGEMENT_URL (${reason})`,
      { cause: err },
    );
  }
  if (verdict === 'CERTIFICATE_EXPIRED') {
    return new AppError(
      'CERTIFICATE_EXPIRED',
      `the control plane's certificate is outside its validity (${reason})`,
      {
        cause: err,
      },
    );
  }
  if (verdict === 'CERTIFICATE_CHANGED') {
    return new AppError(
      'CERTIFICATE_CHANGED',
      `the control plane's certificate does not verify against ${against} (${reason})`,
      { cause: err },
    );
  }
  const { code: normalized } = toAppError(err, 'ENVIRONMENT_UNREACHABLE');
  return new AppError(normalized, `the control plane cannot be reached (${reason})`, { cause: err });
}
