/**
 * What the certificate store and the ACME service drive in the data plane
 * (DESIGN.md §8): the certificates https listeners serve, and the answers to
 * pending ACME challenges.
 */

/** A certificate ready to serve: its hosts (exact names or `*.suffix`), chain and key (PEM). */
export interface ServingCertificate {
  readonly id: string;
  readonly hosts: readonly string[];
  /** Leaf first. */
  readonly certificatePem: string;
  readonly privateKeyPem: string;
  readonly fingerprintSha256: string;
}

/** Implemented by the data plane; every call applies to the next handshake or request. */
export interface TlsRuntime {
  /** Replaces the set of served certificates (earlier entries win a host claimed twice). */
  setCertificates(certificates: readonly ServingCertificate[]): void;
  /** Answers `GET /.well-known/acme-challenge/TOKEN` with `keyAuthorization`; null withdraws it. */
  setHttp01Challenge(token: string, keyAuthorization: string | null): void;
  /** Presents this certificate to `acme-tls/1` handshakes for `host`; null withdraws it. */
  setTlsAlpn01Challenge(host: string, certificate: { cert: string; key: string } | null): void;
}
