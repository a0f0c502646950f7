/**
 * Checks a certificate chain and private key before they are stored or
 * served (docs/tls.md, upload and file sources): PEM that parses, the key
 * matching the leaf, the leaf first and each certificate issued by the next,
 * the leaf valid now, and every requested host covered. Each failure is a
 * {@link MaterialError} naming the field and the reason in words.
 */
import { createPrivateKey, type KeyObject, X509Certificate } from 'node:crypto';

/** A checked chain and key, with what the store shows of the leaf. */
export interface CertificateMaterial {
  /** The chain re-encoded as PEM, leaf first. */
  certificatePem: string;
  /** The key as unencrypted PKCS#8 PEM. */
  privateKeyPem: string;
  fingerprintSha256: string;
  subject: string;
  issuer: string;
  notBefore: string;
  notAfter: string;
  /** DNS names of the leaf's subjectAltName. */
  dnsNames: string[];
}

export class MaterialError extends Error {
  override readonly name = 'MaterialError';
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`);
  }
}

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;

/** The certificates of a PEM bundle, in order; throws MaterialError naming `field`. */
export function parseCertificateChain(pem: unknown, field = 'certificatePem'): X509Certificate[] {
  if (typeof pem !== 'string' || pem.trim() === '') throw new MaterialError(field, 'is required (PEM)');
  const blocks = pem.match(PEM_CERTIFICATE);
  if (!blocks) throw new MaterialError(field, 'holds no PEM certificate (-----BEGIN CERTIFICATE-----)');
  return blocks.map((block, index) => {
    try {
      return new X509Certificate(block);
    } catch {
      throw new MaterialError(field, `certificate ${index + 1} of the chain is not valid PEM/DER`);
    }
  });
}

/** A private key from PEM; throws MaterialError naming `field` (encrypted keys are refused). */
export function parsePrivateKey(pem: unknown, field = 'privateKeyPem'): KeyObject {
  if (typeof pem !== 'string' || pem.trim() === '') throw new MaterialError(field, 'is required (PEM)');
  if (/ENCRYPTED/.test(pem))
    throw new MaterialError(field, 'is encrypted; give the key without a passphrase');
  try {
    return createPrivateKey({ key: pem, format: 'pem' });
  } catch {
    throw new MaterialError(field, 'is not a PEM private key');
  }
}

/** True when the leaf covers `host` (an exact name, or `*.suffix` covered by a wildcard SAN). */
export function coversHost(leaf: X509Certificate, host: string): boolean {
  if (host.startsWith('*.')) {
    const sans = (leaf.subjectAltName ?? '').split(/,\s*/).map((s) => s.trim().toLowerCase());
    return sans.includes(`dns:${host}`);
  }
  return leaf.checkHost(host) !== undefined;
}

/**
 * Checks a chain and key for serving `hosts` at `now`. Field names in errors
 * are `certificatePem` / `privateKeyPem` unless given (`certificateFile`, …).
 */
export function checkMaterial(
  input: { certificatePem: unknown; privateKeyPem: unknown; hosts: readonly string[] },
  options: { now?: number; certificateField?: string; keyField?: string } = {},
): CertificateMaterial {
  const certificateField = options.certificateField ?? 'certificatePem';
  const keyField = options.keyField ?? 'privateKeyPem';
  const chain = parseCertificateChain(input.certificatePem, certificateField);
  const key = parsePrivateKey(input.privateKeyPem, keyField);
  const leaf = chain[0]!;
  if (key.type !== 'private') throw new MaterialError(keyField, 'is not a private key');
  if (!leaf.checkPrivateKey(key))
    throw new MaterialError(keyField, 'does not match the certificate (the first one of the chain)');
  if (leaf.ca && chain.length > 1)
    throw new MaterialError(
      certificateField,
      'the first certificate is a CA: put the leaf first, then its issuers',
    );
  for (let i = 0; i + 1 < chain.length; i++) {
    if (!chain[i]!.checkIssued(chain[i + 1]!))
      throw new MaterialError(
        certificateField,
        `certificate ${i + 2} did not issue certificate ${i + 1}: the chain must be leaf first, then each issuer`,
      );
  }
  const now = options.now ?? Date.now();
  const notBefore = Date.parse(leaf.validFrom);
  const notAfter = Date.parse(leaf.validTo);
  if (now > notAfter)
    throw new MaterialError(
      certificateField,
      `the certificate expired on ${new Date(notAfter).toISOString()}`,
    );
  if (now < notBefore)
    throw new MaterialError(
      certificateField,
      `the certificate is not valid before ${new Date(notBefore).toISOString()}`,
    );
  for (const host of input.hosts) {
    if (!coversHost(leaf, host))
      throw new MaterialError(certificateField, `the certificate does not cover the host ${host}`);
  }
  const dnsNames = (leaf.subjectAltName ?? '')
    .split(/,\s*/)
    .filter((s) => s.startsWith('DNS:'))
    .map((s) => s.slice(4).toLowerCase());
  return {
    certificatePem: chain.map((c) => c.toString()).join(''),
    privateKeyPem: key.export({ format: 'pem', type: 'pkcs8' }).toString(),
    fingerprintSha256: leaf.fingerprint256,
    subject: leaf.subject.replace(/\n/g, ', '),
    issuer: leaf.issuer.replace(/\n/g, ', '),
    notBefore: new Date(notBefore).toISOString(),
    notAfter: new Date(notAfter).toISOString(),
    dnsNames,
  };
}
