/**
 * The ACME client of the certificate store (RFC 8555), on acme-client: one
 * client per account and directory (with the account's own CA for the
 * directory's TLS when given, and EAB when given), orders with the
 * HTTP-01, TLS-ALPN-01 (RFC 8737) or DNS-01 challenge, each challenge
 * published through the data plane (or the DNS provider) only while its
 * authorization is being validated, and withdrawn afterwards whatever
 * happened. Certificate keys are ECDSA P-256.
 *
 * Errors carry the directory's problem detail in words, e.g. "the
 * authorization for a.example failed: …".
 */
import { Agent as HttpsAgent } from 'node:https';
import { rootCertificates } from 'node:tls';
import * as x509 from '@peculiar/x509';
import * as acme from 'acme-client';
import { request, Agent as UndiciAgent } from 'undici';
import type {
  AcmeAccountSecrets,
  AcmeIssuer,
  AcmeOrderRequest,
  AcmeOrderResult,
  TlsRuntime,
} from '../domain/tls-types.js';
import { createCloudflareProvider, type DnsChallengeProvider } from './dns-cloudflare.js';

/** Time given to DNS to serve a new TXT record before the CA is asked to look. */
export const DEFAULT_DNS_PROPAGATION_MS = 15_000;

// acme-client retries failed requests itself (5 times, 5 s apart, growing); the
// certificate store retries whole orders with backoff, so keep these short.
const acmeSettings = (acme.axios.defaults as unknown as { acmeSettings: Record<string, number> })
  .acmeSettings;
acmeSettings.retryMaxAttempts = 2;
acmeSettings.retryDefaultDelay = 1;
acme.setLogger(() => {});

export interface AcmeIssuerOptions {
  dnsPropagationMs?: number;
  /** Builds the DNS-01 provider of a certificate (default: Cloudflare). */
  dnsProvider?: (secrets: NonNullable<AcmeOrderRequest['dnsProvider']>) => DnsChallengeProvider;
}

export function createAcmeIssuer(options: AcmeIssuerOptions = {}): AcmeIssuer {
  const propagationMs = options.dnsPropagationMs ?? DEFAULT_DNS_PROPAGATION_MS;
  const providerFor =
    options.dnsProvider ??
    ((secrets) => createCloudflareProvider({ apiToken: secrets.apiToken, apiBaseUrl: secrets.apiBaseUrl }));

  return {
    async register(account) {
      const client = clientFor(account);
      await client.createAccount({
        termsOfServiceAgreed: true,
        ...(account.email ? { contact: [`mailto:${account.email}`] } : {}),
      });
      return client.getAccountUrl();
    },

    async updateContact(account, email) {
      await clientFor(account).updateAccount({ contact: email ? [`mailto:${email}`] : [] });
    },

    suggestedRenewal: (account, certificatePem) => fetchSuggestedRenewal(account, certificatePem),

    async issue(wanted: AcmeOrderRequest, runtime: TlsRuntime): Promise<AcmeOrderResult> {
      const client = clientFor(wanted.account);
      // A registered account is used as it is (re-registering it would be an empty update).
      if (!wanted.account.accountUrl) {
        await client.createAccount({
          termsOfServiceAgreed: true,
          ...(wanted.account.email ? { contact: [`mailto:${wanted.account.email}`] } : {}),
        });
      }
      const privateKey = await acme.crypto.createPrivateEcdsaKey('P-256');
      const [, csr] = await acme.crypto.createCsr(
        {
          commonName: wanted.hosts.find((h) => !h.startsWith('*.')) ?? wanted.hosts[0]!,
          altNames: [...wanted.hosts],
        },
        privateKey,
      );
      const order = await client.createOrder({
        identifiers: wanted.hosts.map((value) => ({ type: 'dns', value })),
      });
      const authorizations = await client.getAuthorizations(order);
      for (const authz of authorizations) {
        if (authz.status === 'valid') continue;
        const name = authz.identifier.value;
        const challenge = authz.challenges.find((c) => c.type === wanted.challenge);
        if (!challenge) throw new Error(`the directory offers no ${wanted.challenge} challenge for ${name}`);
        const keyAuthorization = await client.getChallengeKeyAuthorization(challenge);
        let withdraw: () => Promise<void> = async () => {};
        try {
          switch (wanted.challenge) {
            case 'http-01': {
              const token = (challenge as { token: string }).token;
              withdraw = async () => runtime.setHttp01Challenge(token, null);
              await runtime.setHttp01Challenge(token, keyAuthorization);
              break;
            }
            case 'tls-alpn-01': {
              const [key, cert] = await acme.crypto.createAlpnCertificate(authz, keyAuthorization);
              withdraw = async () => runtime.setTlsAlpn01Challenge(name, null);
              await runtime.setTlsAlpn01Challenge(name, { cert: cert.toString(), key: key.toString() });
              break;
            }
            case 'dns-01': {
              if (!wanted.dnsProvider) throw new Error('dns-01 needs a DNS provider');
              const provider = providerFor(wanted.dnsProvider);
              const handle = await provider.createTxt(`_acme-challenge.${name}`, keyAuthorization);
              withdraw = () => provider.removeTxt(handle);
              if (propagationMs > 0) await new Promise((resolve) => setTimeout(resolve, propagationMs));
              break;
            }
          }
          await client.completeChallenge(challenge);
          try {
            await client.waitForValidStatus(challenge);
          } catch (err) {
            throw new Error(
              `the ${wanted.challenge} authorization for ${name} failed: ${await problemOf(client, authz, err)}`,
            );
          }
        } finally {
          await withdraw().catch(() => {});
        }
      }
      const finalized = await client.finalizeOrder(order, csr);
      const certificatePem = await client.getCertificate(finalized);
      return { certificatePem, privateKeyPem: privateKey.toString() };
    },
  };
}

/**
 * The ARI certificate identifier (RFC 9773): base64url of the authority key
 * identifier, a dot, base64url of the serial number's DER content octets.
 * Null when the certificate has no authority key identifier.
 */
export function ariCertId(certificatePem: string): string | null {
  const cert = new x509.X509Certificate(certificatePem);
  const aki = cert.getExtension(x509.AuthorityKeyIdentifierExtension);
  if (!aki?.keyId) return null;
  let serial = cert.serialNumber.toLowerCase();
  if (serial.length % 2 === 1) serial = `0${serial}`;
  // DER INTEGER content: a leading zero byte keeps a high first bit positive.
  if (Number.parseInt(serial.slice(0, 2), 16) >= 0x80) serial = `00${serial}`;
  return `${Buffer.from(aki.keyId, 'hex').toString('base64url')}.${Buffer.from(serial, 'hex').toString('base64url')}`;
}

/**
 * The renewal time a directory suggests for a certificate (ACME Renewal
 * Information): a random moment in its `suggestedWindow`, or null when the
 * directory offers no `renewalInfo` or the certificate cannot be identified.
 */
export async function fetchSuggestedRenewal(
  account: Pick<AcmeAccountSecrets, 'directoryUrl' | 'directoryCaPem'>,
  certificatePem: string,
  random: () => number = Math.random,
): Promise<Date | null> {
  const certId = ariCertId(certificatePem);
  if (certId === null) return null;
  const dispatcher = account.directoryCaPem
    ? new UndiciAgent({ connect: { ca: [account.directoryCaPem, ...rootCertificates] } })
    : undefined;
  try {
    const get = async (url: string) => {
      const res = await request(url, { ...(dispatcher ? { dispatcher } : {}), headersTimeout: 10_000 });
      const text = await res.body.text();
      if (res.statusCode !== 200) throw new Error(`${url}: HTTP ${res.statusCode}`);
      return JSON.parse(text) as Record<string, unknown>;
    };
    const directory = await get(account.directoryUrl);
    const base = directory.renewalInfo;
    if (typeof base !== 'string') return null;
    const info = await get(`${base.replace(/\/+$/, '')}/${certId}`);
    const window = info.suggestedWindow as { start?: unknown; end?: unknown } | undefined;
    const start = Date.parse(String(window?.start));
    const end = Date.parse(String(window?.end));
    if (Number.isNaN(start) || Number.isNaN(end) || end < start) return null;
    return new Date(start + random() * (end - start));
  } finally {
    await dispatcher?.close();
  }
}

/** A client for the account, trusting `directoryCaPem` (plus the system roots) for the directory. */
function clientFor(account: AcmeAccountSecrets): acme.Client {
  const client = new acme.Client({
    directoryUrl: account.directoryUrl,
    accountKey: account.accountKeyPem,
    ...(account.accountUrl ? { accountUrl: account.accountUrl } : {}),
    ...(account.eab ? { externalAccountBinding: account.eab } : {}),
    backoffAttempts: 30,
    backoffMin: 500,
    backoffMax: 3000,
  });
  if (account.directoryCaPem) {
    const agent = new HttpsAgent({ ca: [account.directoryCaPem, ...rootCertificates], keepAlive: true });
    // acme-client shares one axios instance; give this client's requests their own trust.
    const http = (
      client as unknown as { http: { request: (u: string, m: string, o?: object) => Promise<unknown> } }
    ).http;
    const original = http.request.bind(http);
    http.request = (url, method, opts = {}) => original(url, method, { ...opts, httpsAgent: agent });
  }
  return client;
}

/** The validation error the directory recorded for a failed challenge, in words. */
async function problemOf(client: acme.Client, authz: acme.Authorization, err: unknown): Promise<string> {
  try {
    const fresh = (
      await (
        client as unknown as { api: { getAuthorization(url: string): Promise<{ data: acme.Authorization }> } }
      ).api.getAuthorization(authz.url)
    ).data;
    for (const challenge of fresh.challenges) {
      const error = (challenge as { error?: { detail?: string; type?: string } }).error;
      if (error?.detail) return error.detail;
    }
  } catch {
    // Fall back to the client's message.
  }
  return err instanceof Error ? err.message : String(err);
}
