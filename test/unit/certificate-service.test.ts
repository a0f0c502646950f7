import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { AcmeAccountService } from '../../src/domain/acme-account-service.js';
import { CertificateService } from '../../src/domain/certificate-service.js';
import type {
  AcmeIssuer,
  AcmeOrderRequest,
  ServingCertificate,
  TlsRuntime,
} from '../../src/domain/tls-types.js';
import { emptyDatabase } from '../../src/storage/schema.js';
import { createSecretsBox } from '../../src/storage/secrets-box.js';
import { MemoryStore } from '../../src/storage/store.js';
import { createCertificate } from '../../src/tls/certificates.js';
import { eventually } from '../helpers/wait.js';

/** An issuer whose orders finish when the test says so. */
function controlledIssuer() {
  const calls: AcmeOrderRequest[] = [];
  const pending: { resolve: () => void; reject: (err: Error) => void }[] = [];
  const issuer: AcmeIssuer = {
    register: async () => 'https://acme.test/acct/1',
    async issue(request) {
      calls.push(request);
      await new Promise<void>((resolve, reject) => pending.push({ resolve, reject }));
      const made = await createCertificate({ altNames: [...request.hosts] });
      return { certificatePem: made.cert, privateKeyPem: made.key };
    },
  };
  return { issuer, calls, pending };
}

async function setUp(random = () => 0.5) {
  const store = new MemoryStore(emptyDatabase('i1'));
  const secrets = createSecretsBox(randomBytes(32));
  const { issuer, calls, pending } = controlledIssuer();
  let served: readonly ServingCertificate[] = [];
  const runtime: TlsRuntime = {
    setCertificates: (list) => {
      served = list;
    },
    setHttp01Challenge: () => {},
    setTlsAlpn01Challenge: () => {},
  };
  let now = Date.now();
  const accounts = new AcmeAccountService({ store, secrets, issuer });
  const service = new CertificateService({
    store,
    secrets,
    accounts,
    issuer,
    runtime,
    now: () => now,
    random,
    retryBaseMs: 1000,
    retryMaxMs: 8000,
    checkIntervalMs: 3_600_000,
  });
  const account = await accounts.createAccount({ name: 'ca', directoryUrl: 'https://acme.test/dir' });
  return {
    issuer,
    store,
    service,
    calls,
    pending,
    account,
    served: () => served,
    advance: (ms: number) => {
      now += ms;
    },
    now: () => now,
  };
}

describe('certificate service', () => {
  it('never runs two orders at once for one certificate', async () => {
    const t = await setUp();
    const cert = await t.service.create({
      name: 'c',
      source: 'acme',
      hosts: ['a.test'],
      acmeAccountId: t.account.id,
      challenge: 'http-01',
    });
    await eventually(() => t.calls.length === 1);
    await t.service.renew(cert.id);
    await t.service.renew(cert.id);
    t.service.checkRenewals();
    // Nothing may start: an absence, so a pause rather than a condition.
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(t.calls).toHaveLength(1);
    expect(t.service.get(cert.id).status).toBe('issuing');
    t.pending[0]!.resolve();
    await t.service.settled();
    expect(t.service.get(cert.id).status).toBe('ready');
    expect(t.served().map((s) => s.id)).toEqual([cert.id]);
    await t.service.renew(cert.id);
    await eventually(() => t.calls.length === 2);
    expect(t.service.get(cert.id).status).toBe('renewing');
    t.pending[1]!.resolve();
    await t.service.settled();
  });

  it('backs off exponentially with jitter after failures, capped, and keeps serving the last good certificate', async () => {
    const t = await setUp(() => 1); // the top of the ±20 % jitter band
    const cert = await t.service.create({
      name: 'c',
      source: 'acme',
      hosts: ['a.test'],
      acmeAccountId: t.account.id,
      challenge: 'tls-alpn-01',
    });
    await eventually(() => t.calls.length === 1);
    t.pending[0]!.resolve();
    await t.service.settled();
    const good = t.service.get(cert.id).fingerprintSha256;
    const delays: number[] = [];
    for (let i = 1; i <= 5; i++) {
      await t.service.renew(cert.id);
      await eventually(() => t.calls.length === i + 1);
      t.pending[i]!.reject(new Error(`the directory said no (${i})`));
      await t.service.settled();
      const after = t.service.get(cert.id);
      expect(after).toMatchObject({
        status: 'error',
        lastError: `the directory said no (${i})`,
        fingerprintSha256: good,
      });
      delays.push(Date.parse(after.nextRenewalAt!) - t.now());
    }
    expect(delays).toEqual([1200, 2400, 4800, 9600, 9600]);
    expect(t.served()[0]!.fingerprintSha256).toBe(good);
    // Not due yet: nothing starts; due: the retry starts by itself.
    t.service.checkRenewals();
    // Nothing may start: an absence, so a pause rather than a condition.
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(t.calls).toHaveLength(6);
    t.advance(9600);
    t.service.checkRenewals();
    await eventually(() => t.calls.length === 7);
    t.pending[6]!.resolve();
    await t.service.settled();
    expect(t.service.get(cert.id)).toMatchObject({ status: 'ready', lastError: null });
  });

  it('renews at the time the directory suggests (ACME Renewal Information) when it gives one', async () => {
    const t = await setUp();
    const suggested = new Date(Date.now() + 5 * 86_400_000);
    Object.assign(t.issuer, { suggestedRenewal: async () => suggested });
    const cert = await t.service.create({
      name: 'ari',
      source: 'acme',
      hosts: ['a.test'],
      acmeAccountId: t.account.id,
      challenge: 'http-01',
    });
    await eventually(() => t.calls.length === 1);
    t.pending[0]!.resolve();
    await t.service.settled();
    expect(t.service.get(cert.id)).toMatchObject({ status: 'ready', nextRenewalAt: suggested.toISOString() });
  });

  it('refuses wildcard hosts without dns-01 and dns-01 without a provider', async () => {
    const t = await setUp();
    await expect(
      t.service.create({
        name: 'w',
        source: 'acme',
        hosts: ['*.a.test'],
        acmeAccountId: t.account.id,
        challenge: 'http-01',
      }),
    ).rejects.toMatchObject({ code: 'VALIDATION_FAILED', details: { field: 'hosts' } });
    await expect(
      t.service.create({
        name: 'w',
        source: 'acme',
        hosts: ['*.a.test'],
        acmeAccountId: t.account.id,
        challenge: 'dns-01',
      }),
    ).rejects.toMatchObject({ code: 'VALIDATION_FAILED', details: { field: 'dnsProviderId' } });
    expect(t.calls).toHaveLength(0);
  });
});
