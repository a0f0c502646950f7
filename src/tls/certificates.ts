/**
 * Certificate helpers shared by the server (its generated management
 * certificate), the relay (describing and checking peer certificates) and the
 * tests (certificates made on the spot: impostors, expired, wrong host).
 */
import { createHash, webcrypto, X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

/** The public description of a certificate (docs/architecture.md "Local and operational routes"). */
export interface CertificateInfo {
  fingerprintSha256: string;
  subject: string;
  issuer: string;
  subjectAltNames: string[];
  validFrom: string;
  validTo: string;
  serialNumber: string;
}

export interface CreateCertificateOptions {
  /** Subject common name; default the first alt name or `p2pstream`. */
  commonName?: string;
  /** DNS names and IP addresses for the SAN extension. */
  altNames: string[];
  /** Default: one minute ago (tolerates small clock skew). */
  notBefore?: Date;
  /** Default: one year after `notBefore`. */
  notAfter?: Date;
  /** Sign with this CA instead of self-signing. */
  issuer?: GeneratedCertificate;
  /** Make a CA certificate (basic constraints cA=true). */
  isCa?: boolean;
}

/** A certificate and its private key, PEM encoded, with its DER and fingerprint. */
export interface GeneratedCertificate {
  cert: string;
  key: string;
  der: Buffer;
  fingerprintSha256: string;
}

const ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

/** Makes an ECDSA P-256 certificate; self-signed unless `issuer` is given. */
export async function createCertificate(options: CreateCertificateOptions): Promise<GeneratedCertificate> {
  const keys = (await webcrypto.subtle.generateKey(ALGORITHM, true, ['sign', 'verify'])) as CryptoKeyPair;
  const notBefore = options.notBefore ?? new Date(Date.now() - 60_000);
  const notAfter = options.notAfter ?? new Date(notBefore.getTime() + 365 * 24 * 3600 * 1000);
  const commonName = options.commonName ?? options.altNames[0] ?? 'p2pstream';
  const name = `CN=${commonName.replace(/[,=+<>#;"\\]/g, '_')}`;
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(options.isCa === true, undefined, true),
    new x509.KeyUsagesExtension(
      options.isCa === true
        ? x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature
        : x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment,
      true,
    ),
    await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
  ];
  if (options.altNames.length > 0) {
    extensions.push(
      new x509.SubjectAlternativeNameExtension(
        options.altNames.map((value) => ({ type: isIP(value) ? ('ip' as const) : ('dns' as const), value })),
      ),
    );
  }
  if (options.isCa !== true)
    extensions.push(new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]));
  const serialNumber = Buffer.from(webcrypto.getRandomValues(new Uint8Array(16)))
    .toString('hex')
    .replace(/^[89a-f]/, '1');
  let certificate: x509.X509Certificate;
  if (options.issuer) {
    const issuerCert = new x509.X509Certificate(options.issuer.cert);
    extensions.push(await x509.AuthorityKeyIdentifierExtension.create(issuerCert.publicKey));
    const issuerKey = await importPrivateKey(options.issuer.key);
    certificate = await x509.X509CertificateGenerator.create({
      serialNumber,
      subject: name,
      issuer: issuerCert.subject,
      notBefore,
      notAfter,
      publicKey: keys.publicKey,
      signingKey: issuerKey,
      signingAlgorithm: ALGORITHM,
      extensions,
    });
  } else {
    certificate = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber,
      name,
      notBefore,
      notAfter,
      keys,
      signingAlgorithm: ALGORITHM,
      extensions,
    });
  }
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
  const der = Buffer.from(certificate.rawData);
  return {
    cert: certificate.toString('pem'),
    key: toPem('PRIVATE KEY', pkcs8),
    der,
    fingerprintSha256: fingerprintOf(der),
  };
}

async function importPrivateKey(pem: string): Promise<CryptoKey> {
  const body = pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, '');
  return webcrypto.subtle.importKey('pkcs8', Buffer.from(body, 'base64'), ALGORITHM, false, ['sign']);
}

function toPem(label: string, der: Buffer): string {
  const lines = der.toString('base64').match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`;
}

/**
 * SHA-256 of a DER certificate as upper-case hex pairs joined by colons (what
 * X509Certificate.fingerprint256 gives, without parsing the certificate: this
 * runs for every relayed request).
 */
export function fingerprintOf(der: Uint8Array): string {
  const hex = createHash('sha256').update(der).digest('hex').toUpperCase();
  return hex.replace(/(..)(?!$)/g, '$1:');
}

/**
 * Normalises a user-supplied fingerprint (any case, with or without colons)
 * to `AB:CD:…`; returns null when it is not 32 hex bytes.
 */
export function normalizeFingerprint(input: unknown): string | null {
  if (typeof input !== 'string') return null;
  const hex = input.replace(/:/g, '').trim().toUpperCase();
  if (!/^[0-9A-F]{64}$/.test(hex)) return null;
  return hex.match(/.{2}/g)!.join(':');
}

/**
 * Describes a DER or PEM certificate in its public shape (docs/architecture.md,
 * "Local and operational routes").
 */
export function describeCertificate(input: Uint8Array | string | X509Certificate): CertificateInfo {
  const cert =
    input instanceof X509Certificate
      ? input
      : new X509Certificate(typeof input === 'string' ? input : Buffer.from(input));
  return {
    fingerprintSha256: cert.fingerprint256,
    subject: cert.subject.replace(/\n/g, ', '),
    issuer: cert.issuer.replace(/\n/g, ', '),
    subjectAltNames: parseAltNames(cert.subjectAltName),
    validFrom: new Date(cert.validFrom).toISOString(),
    validTo: new Date(cert.validTo).toISOString(),
    serialNumber: cert.serialNumber.toUpperCase(),
  };
}

function parseAltNames(value: string | undefined): string[] {
  if (!value) return [];
  return value.split(/,\s*/).map((entry) => entry.trim());
}

/** True when the certificate is valid at `now` (notBefore ≤ now ≤ notAfter). */
export function isCurrentlyValid(
  info: Pick<CertificateInfo, 'validFrom' | 'validTo'>,
  now = Date.now(),
): boolean {
  return Date.parse(info.validFrom) <= now && now <= Date.parse(info.validTo);
}

/** True when the certificate's SANs (or CN without SANs) cover `hostname` (DNS name or IP). */
export function matchesHostname(cert: X509Certificate | Uint8Array, hostname: string): boolean {
  const x = cert instanceof X509Certificate ? cert : new X509Certificate(Buffer.from(cert));
  const host = hostname.replace(/^\[|\]$/g, '');
  if (isIP(host)) return x.checkIP(host) !== undefined;
  return x.checkHost(host) !== undefined;
}
