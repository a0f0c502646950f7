/**
 * What the certificate store and the ACME service drive in the data plane
 * (docs/tls.md): the certificates https listeners serve, and the answers to
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

/**
 * Implemented by the data plane; every call applies to the next handshake or
 * request. The challenge setters may return a promise (the certificate store
 * also publishes challenges to the other replicas); callers await it before
 * asking the CA to validate.
 */
export interface TlsRuntime {
  /** Replaces the set of served certificates (earlier entries win a host claimed twice). */
  setCertificates(certificates: readonly ServingCertificate[]): void;
  /** Answers `GET /.well-known/acme-challenge/TOKEN` with `keyAuthorization`; null withdraws it. */
  setHttp01Challenge(token: string, keyAuthorization: string | null): void | Promise<void>;
  /** Presents this certificate to `acme-tls/1` handshakes for `host`; null withdraws it. */
  setTlsAlpn01Challenge(
    host: string,
    certificate: { cert: string; key: string } | null,
  ): void | Promise<void>;
}

export type AcmeChallengeKind = 'http-01' | 'tls-alpn-01' | 'dns-01';

/** An ACME account as the issuer needs it: secrets opened. */
export interface AcmeAccountSecrets {
  readonly id: string;
  readonly directoryUrl: string;
  readonly email: string | null;
  readonly directoryCaPem: string | null;
  readonly eab: { readonly kid: string; readonly hmacKey: string } | null;
  readonly accountKeyPem: string;
  readonly accountUrl: string | null;
}

/** A DNS provider as the issuer needs it: the token opened. */
export interface DnsProviderSecrets {
  readonly id: string;
  readonly type: 'cloudflare';
  readonly apiToken: string;
  readonly apiBaseUrl: string | null;
}

/** One certificate order. */
export interface AcmeOrderRequest {
  readonly certificateId: string;
  readonly hosts: readonly string[];
  readonly challenge: AcmeChallengeKind;
  readonly account: AcmeAccountSecrets;
  readonly dnsProvider: DnsProviderSecrets | null;
}

export interface AcmeOrderResult {
  /** Leaf first. */
  readonly certificatePem: string;
  readonly privateKeyPem: string;
}

/**
 * Talks to ACME directories (implemented in src/tls with acme-client).
 * Errors are thrown with a message in words (the cause a user can act on).
 */
export interface AcmeIssuer {
  /** Registers (or finds) the account at its directory; returns the account URL. */
  register(account: AcmeAccountSecrets): Promise<string>;
  /** Replaces the registered account's contact (`mailto:` the e-mail, or none). */
  updateContact?(account: AcmeAccountSecrets, email: string | null): Promise<void>;
  /** Runs one order to the end; challenges are published through `runtime` and withdrawn after. */
  issue(request: AcmeOrderRequest, runtime: TlsRuntime): Promise<AcmeOrderResult>;
  /**
   * The renewal time the directory suggests for a certificate (ACME Renewal
   * Information), or null when the directory offers none.
   */
  suggestedRenewal?(account: AcmeAccountSecrets, certificatePem: string): Promise<Date | null>;
}
