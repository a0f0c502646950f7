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
import * as acme from 'acme-client';
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

    async issue(request: AcmeOrderRequest, runtime: TlsRuntime): Promise<AcmeOrderResult> {
      const client = clientFor(request.account);
      // A registered account is used as it is (re-registering it would be an empty update).
      if (!request.account.accountUrl) {
        await client.createAccount({
          termsOfServiceAgreed: true,
          ...(request.account.email ? { contact: [`mailto:${request.account.email}`] } : {}),
        });
      }
      const privateKey = await acme.crypto.createPrivateEcdsaKey('P-256');
      const [, csr] = await acme.crypto.createCsr(
        {
          commonName: request.hosts.find((h) => !h.startsWith('*.')) ?? request.hosts[0]!,
          altNames: [...request.hosts],
        },
        privateKey,
      );
      const order = await client.createOrder({
        identifiers: request.hosts.map((value) => ({ type: 'dns', value })),
      });
      const authorizations = await client.getAuthorizations(order);
      for (const authz of authorizations) {
        if (authz.status === 'valid') continue;
        const name = authz.identifier.value;
        const challenge = authz.challenges.find((c) => c.type === request.challenge);
        if (!challenge) throw new Error(`the directory offers no ${request.challenge} challenge for ${name}`);
        const keyAuthorization = await client.getChallengeKeyAuthorization(challenge);
        let withdraw: () => Promise<void> = async () => {};
        try {
          switch (request.challenge) {
            case 'http-01': {
              const token = (challenge as { token: string }).token;
              runtime.setHttp01Challenge(token, keyAuthorization);
              withdraw = async () => runtime.setHttp01Challenge(token, null);
              break;
            }
            case 'tls-alpn-01': {
              const [key, cert] = await acme.crypto.createAlpnCertificate(authz, keyAuthorization);
              runtime.setTlsAlpn01Challenge(name, { cert: cert.toString(), key: key.toString() });
              withdraw = async () => runtime.setTlsAlpn01Challenge(name, null);
              break;
            }
            case 'dns-01': {
              if (!request.dnsProvider) throw new Error('dns-01 needs a DNS provider');
              const provider = providerFor(request.dnsProvider);
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
              `the ${request.challenge} authorization for ${name} failed: ${await problemOf(client, authz, err)}`,
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
