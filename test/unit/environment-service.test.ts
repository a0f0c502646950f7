/**
 * EnvironmentService over an in-memory store: the registry validation matrix,
 * the sealed access token, the derived trust states and the trust rules.
 * Discovery answers come from a stand-in Transport returning certificates
 * made in the test (the real handshakes are in the integration tests).
 */
import { randomBytes } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  ACCESS_TOKEN_PURPOSE,
  deriveTrustState,
  EnvironmentService,
  normalizeEnvironmentUrl,
} from '../../src/domain/environment-service.js';
import { AppError } from '../../src/errors.js';
import type { DiscoverResult, Transport } from '../../src/relay/transport.js';
import { emptyDatabase, type StoredCertificate } from '../../src/storage/schema.js';
import { createSecretsBox } from '../../src/storage/secrets-box.js';
import { MemoryStore } from '../../src/storage/store.js';
import {
  createCertificate,
  describeCertificate,
  type GeneratedCertificate,
  matchesHostname,
} from '../../src/tls/certificates.js';

const AGENT_ID = '0b5d1f3e-4a8b-4c2d-9e6f-1a2b3c4d5e6f';
const TOKEN = 'p2pat_remote-access-token-value-0123456789abcdefghijk';
const NOW = Date.parse('2030-06-01T00:00:00Z');

let good: GeneratedCertificate;
let other: GeneratedCertificate;
let expired: GeneratedCertificate;
let wrongHost: GeneratedCertificate;

beforeAll(async () => {
  const notBefore = new Date(NOW - 24 * 3600 * 1000);
  good = await createCertificate({ altNames: ['target.example', '127.0.0.1'], notBefore });
  other = await createCertificate({ altNames: ['target.example', '127.0.0.1'], notBefore });
  expired = await createCertificate({
    altNames: ['target.example'],
    notBefore: new Date(NOW - 10 * 24 * 3600 * 1000),
    notAfter: new Date(NOW - 24 * 3600 * 1000),
  });
  wrongHost = await createCertificate({ altNames: ['elsewhere.example'], notBefore });
});

/** A Transport whose handshake presents `current.cert`; requests are never expected here. */
function standInTransport(current: { cert: GeneratedCertificate | null }): Transport {
  return {
    async discover(options): Promise<DiscoverResult> {
      if (!current.cert) throw new AppError('ENVIRONMENT_UNREACHABLE', 'the target could not be reached');
      const info = describeCertificate(current.cert.der);
      return {
        certificate: info,
        chain: [current.cert.der],
        expired: Date.parse(info.validTo) < NOW,
        hostnameMatches: matchesHostname(current.cert.der, new URL(options.url).hostname),
      };
    },
    async request() {
      throw new AppError('INTERNAL', 'not used in unit tests');
    },
  };
}

function setup() {
  const store = new MemoryStore(emptyDatabase('instance-1'));
  const secrets = createSecretsBox(randomBytes(32));
  const current: { cert: GeneratedCertificate | null } = { cert: null };
  const transport = standInTransport(current);
  const environments = new EnvironmentService({
    store,
    secrets,
    agentExists: (id) => id === AGENT_ID,
    transports: { select: () => transport },
    now: () => NOW,
  });
  return { store, secrets, environments, current };
}

async function codeOf(action: Promise<unknown> | (() => unknown)): Promise<string> {
  try {
    await (typeof action === 'function' ? action() : action);
  } catch (err) {
    return (err as AppError).code;
  }
  return 'no error';
}

const valid = {
  name: 'staging',
  url: 'https://target.example:8443',
  transport: 'direct',
  accessToken: TOKEN,
};

describe('environment URL normalization', () => {
  it('lower-cases the host, drops the default port and trailing slashes', () => {
    expect(normalizeEnvironmentUrl('https://Target.Example:443/')).toBe('https://target.example');
    expect(normalizeEnvironmentUrl('https://target.example:8443//')).toBe('https://target.example:8443');
    expect(normalizeEnvironmentUrl(' https://127.0.0.1:9000/base/ ')).toBe('https://127.0.0.1:9000/base');
    expect(normalizeEnvironmentUrl('https://[::1]:9000')).toBe('https://[::1]:9000');
  });

  it.each([
    ['http://target.example', 'http is refused'],
    ['ftp://target.example', 'another scheme'],
    ['target.example', 'not absolute'],
    ['//target.example', 'scheme-relative'],
    ['https://user:pw@target.example', 'userinfo'],
    ['https://user@target.example', 'user name'],
    ['https://target.example/?a=1', 'a query'],
    ['https://target.example/?', 'an empty query'],
    ['https://target.example/#top', 'a fragment'],
    ['https://target.example/#', 'an empty fragment'],
    ['https://tar\nget.example', 'a newline'],
    ['https://target.example/a b', 'a space'],
    ['https:target.example', 'no slashes'],
    ['', 'empty'],
    [`https://${'a'.repeat(2100)}.example`, 'too long'],
  ])('refuses %s (%s)', (url) => {
    expect(() => normalizeEnvironmentUrl(url)).toThrow(AppError);
    try {
      normalizeEnvironmentUrl(url);
    } catch (err) {
      expect((err as AppError).code).toBe('VALIDATION_FAILED');
      expect((err as AppError).details?.field).toBe('url');
    }
  });
});

describe('EnvironmentService registry', () => {
  it('creates an UNTRUSTED environment with defaults and no token in the answer', async () => {
    const { environments } = setup();
    const environment = await environments.create(valid);
    expect(environment).toMatchObject({
      name: 'staging',
      url: 'https://target.example:8443',
      transport: 'direct',
      agentId: null,
      enabled: true,
      timeoutMs: 10_000,
      trustState: 'UNTRUSTED',
      certificate: null,
      discoveredCertificate: null,
      hasAccessToken: true,
      lastTest: null,
      lastError: null,
    });
    expect(JSON.stringify(environment)).not.toContain(TOKEN);
    expect(JSON.stringify(environments.list())).not.toContain(TOKEN);
    expect(Object.keys(environment)).not.toContain('accessTokenSealed');
  });

  it('refuses each invalid field with VALIDATION_FAILED naming it', async () => {
    const { environments } = setup();
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ ...valid, name: '' }, 'name'],
      [{ ...valid, name: 'x'.repeat(129) }, 'name'],
      [{ ...valid, name: 'a\u0007b' }, 'name'],
      [{ ...valid, name: 42 }, 'name'],
      [{ ...valid, url: 'http://target.example' }, 'url'],
      [{ ...valid, url: 'https://target.example?x' }, 'url'],
      [{ ...valid, transport: 'ssh' }, 'transport'],
      [{ ...valid, transport: undefined }, 'transport'],
      [{ ...valid, agentId: AGENT_ID }, 'agentId'],
      [{ ...valid, transport: 'agent' }, 'agentId'],
      [{ ...valid, timeoutMs: 999 }, 'timeoutMs'],
      [{ ...valid, timeoutMs: 300_001 }, 'timeoutMs'],
      [{ ...valid, timeoutMs: 1500.5 }, 'timeoutMs'],
      [{ ...valid, timeoutMs: '5000' }, 'timeoutMs'],
      [{ ...valid, accessToken: undefined }, 'accessToken'],
      [{ ...valid, accessToken: '' }, 'accessToken'],
      [{ ...valid, accessToken: 'has space' }, 'accessToken'],
      [{ ...valid, accessToken: 'x'.repeat(4097) }, 'accessToken'],
      [{ ...valid, enabled: 'yes' }, 'enabled'],
      [{ ...valid, certificate: null }, 'certificate'],
    ];
    for (const [body, field] of cases) {
      const err = await environments.create(body).then(
        () => null,
        (e: AppError) => e,
      );
      expect(err?.code, JSON.stringify(body).slice(0, 80)).toBe('VALIDATION_FAILED');
      expect(err?.details?.field).toBe(field);
    }
    expect(await codeOf(environments.create(null))).toBe('VALIDATION_FAILED');
    expect(await codeOf(environments.create([valid]))).toBe('VALIDATION_FAILED');
    expect(environments.list()).toEqual([]);
  });

  it('accepts the timeout bounds and agent transport with an existing agent', async () => {
    const { environments } = setup();
    expect((await environments.create({ ...valid, name: 'a', timeoutMs: 1000 })).timeoutMs).toBe(1000);
    expect((await environments.create({ ...valid, name: 'b', timeoutMs: 300_000 })).timeoutMs).toBe(300_000);
    const viaAgent = await environments.create({
      ...valid,
      name: 'c',
      transport: 'agent',
      agentId: AGENT_ID,
    });
    expect(viaAgent).toMatchObject({ transport: 'agent', agentId: AGENT_ID });
    expect((await environments.create({ ...valid, name: 'd', agentId: null })).agentId).toBeNull();
  });

  it('answers AGENT_NOT_FOUND for agent transport naming an unknown agent', async () => {
    const { environments } = setup();
    const err = await environments
      .create({ ...valid, transport: 'agent', agentId: '11111111-2222-4333-8444-555555555555' })
      .catch((e: AppError) => e);
    expect(err).toMatchObject({ code: 'AGENT_NOT_FOUND', details: { field: 'agentId' } });
    expect(await codeOf(environments.create({ ...valid, transport: 'agent', agentId: 'not-an-id' }))).toBe(
      'AGENT_NOT_FOUND',
    );
  });

  it('keeps names unique (case-insensitively, Local included)', async () => {
    const { environments } = setup();
    const first = await environments.create(valid);
    expect(await codeOf(environments.create({ ...valid, name: 'Staging' }))).toBe('CONFLICT');
    expect(await codeOf(environments.create({ ...valid, name: 'local' }))).toBe('CONFLICT');
    const second = await environments.create({ ...valid, name: 'production' });
    expect(await codeOf(environments.update(second.id, { name: 'STAGING' }))).toBe('CONFLICT');
    expect((await environments.update(first.id, { name: 'Staging' })).name).toBe('Staging');
  });

  it('seals the access token bound to the environment id; PATCH without it keeps it', async () => {
    const { store, secrets, environments } = setup();
    const environment = await environments.create(valid);
    const sealed = store.read().environments[0]!.accessTokenSealed;
    expect(JSON.stringify(store.read())).not.toContain(TOKEN);
    expect(secrets.open(ACCESS_TOKEN_PURPOSE, environment.id, sealed)).toBe(TOKEN);
    expect(() => secrets.open(ACCESS_TOKEN_PURPOSE, 'another-id', sealed)).toThrow();

    await environments.update(environment.id, { name: 'renamed', timeoutMs: 2000, enabled: false });
    expect(store.read().environments[0]!.accessTokenSealed).toBe(sealed);
    await environments.update(environment.id, { accessToken: 'new-token' });
    const resealed = store.read().environments[0]!.accessTokenSealed;
    expect(secrets.open(ACCESS_TOKEN_PURPOSE, environment.id, resealed)).toBe('new-token');
    expect(await codeOf(environments.update(environment.id, { accessToken: null }))).toBe(
      'VALIDATION_FAILED',
    );
  });

  it('switches transports with the agent rules and clears agentId for direct', async () => {
    const { environments } = setup();
    const { id } = await environments.create(valid);
    expect(await codeOf(environments.update(id, { transport: 'agent' }))).toBe('VALIDATION_FAILED');
    expect(await codeOf(environments.update(id, { agentId: AGENT_ID }))).toBe('VALIDATION_FAILED');
    // A move needs the token in the same request (token custody).
    expect(await codeOf(environments.update(id, { transport: 'agent', agentId: AGENT_ID }))).toBe(
      'VALIDATION_FAILED',
    );
    expect(
      await environments.update(id, {
        transport: 'agent',
        agentId: AGENT_ID,
        accessToken: 'p2pat_for-the-agent',
      }),
    ).toMatchObject({
      transport: 'agent',
      agentId: AGENT_ID,
    });
    expect(await environments.update(id, { transport: 'direct', accessToken: 'p2pat_direct' })).toMatchObject(
      {
        transport: 'direct',
        agentId: null,
      },
    );
  });

  it('answers ENVIRONMENT_NOT_FOUND for unknown ids and deletes for good', async () => {
    const { environments } = setup();
    const { id } = await environments.create(valid);
    expect(await codeOf(() => environments.get('local'))).toBe('ENVIRONMENT_NOT_FOUND');
    expect(await codeOf(() => environments.get('11111111-2222-4333-8444-555555555555'))).toBe(
      'ENVIRONMENT_NOT_FOUND',
    );
    await environments.remove(id);
    expect(await codeOf(() => environments.get(id))).toBe('ENVIRONMENT_NOT_FOUND');
    expect(await codeOf(environments.remove(id))).toBe('ENVIRONMENT_NOT_FOUND');
    expect(await codeOf(environments.update(id, { name: 'x' }))).toBe('ENVIRONMENT_NOT_FOUND');
  });
});

function stored(cert: GeneratedCertificate): StoredCertificate {
  return { ...describeCertificate(cert.der), der: cert.der.toString('base64') };
}

describe('trust state', () => {
  it('is derived from the trusted and discovered certificates and the clock', () => {
    expect(deriveTrustState({ certificate: null, discoveredCertificate: null }, NOW)).toBe('UNTRUSTED');
    expect(deriveTrustState({ certificate: null, discoveredCertificate: stored(good) }, NOW)).toBe(
      'UNTRUSTED',
    );
    expect(deriveTrustState({ certificate: stored(good), discoveredCertificate: stored(good) }, NOW)).toBe(
      'TRUSTED',
    );
    expect(deriveTrustState({ certificate: stored(good), discoveredCertificate: null }, NOW)).toBe('TRUSTED');
    expect(deriveTrustState({ certificate: stored(good), discoveredCertificate: stored(other) }, NOW)).toBe(
      'CHANGED',
    );
    expect(
      deriveTrustState({ certificate: stored(expired), discoveredCertificate: stored(expired) }, NOW),
    ).toBe('EXPIRED');
    const validTo = Date.parse(describeCertificate(good.der).validTo);
    expect(deriveTrustState({ certificate: stored(good), discoveredCertificate: null }, validTo + 1000)).toBe(
      'EXPIRED',
    );
  });
});

describe('discover and trust', () => {
  it('stores the discovered certificate and trusts only that fingerprint', async () => {
    const { environments, current } = setup();
    const { id } = await environments.create({ ...valid, url: 'https://target.example' });
    current.cert = good;
    const discovered = await environments.discover(id);
    expect(discovered).toMatchObject({
      certificate: { fingerprintSha256: good.fingerprintSha256 },
      trustState: 'UNTRUSTED',
      expired: false,
      hostnameMatches: true,
    });
    expect(environments.get(id).discoveredCertificate?.fingerprintSha256).toBe(good.fingerprintSha256);

    expect(await codeOf(environments.trust(id, { fingerprintSha256: other.fingerprintSha256 }))).toBe(
      'CONFLICT',
    );
    expect(await codeOf(environments.trust(id, { fingerprintSha256: 'AB:CD' }))).toBe('VALIDATION_FAILED');
    expect(await codeOf(environments.trust(id, {}))).toBe('VALIDATION_FAILED');
    expect(environments.get(id).trustState).toBe('UNTRUSTED');

    // Any case, colons optional.
    const relaxed = good.fingerprintSha256.replace(/:/g, '').toLowerCase();
    const trusted = await environments.trust(id, { fingerprintSha256: relaxed });
    expect(trusted.trustState).toBe('TRUSTED');
    expect(trusted.certificate?.fingerprintSha256).toBe(good.fingerprintSha256);
    expect(Object.keys(trusted.certificate ?? {})).not.toContain('der');

    // The target rotates: discovery shows CHANGED until the new one is trusted.
    current.cert = other;
    expect((await environments.discover(id)).trustState).toBe('CHANGED');
    expect(await codeOf(() => environments.prepareRelay(id))).toBe('CERTIFICATE_CHANGED');
    // Seeing the trusted certificate again does not lift CHANGED: only trusting again does.
    current.cert = good;
    expect((await environments.discover(id)).trustState).toBe('CHANGED');
    expect(environments.get(id).trustState).toBe('CHANGED');
    expect(await codeOf(() => environments.prepareRelay(id))).toBe('CERTIFICATE_CHANGED');
    current.cert = other;
    await environments.discover(id);
    expect((await environments.trust(id, { fingerprintSha256: other.fingerprintSha256 })).trustState).toBe(
      'TRUSTED',
    );
  });

  it('refuses to trust before any discovery', async () => {
    const { environments } = setup();
    const { id } = await environments.create(valid);
    expect(await codeOf(environments.trust(id, { fingerprintSha256: good.fingerprintSha256 }))).toBe(
      'CONFLICT',
    );
  });

  it('refuses an expired or hostname-mismatched certificate with 412 codes', async () => {
    const { environments, current } = setup();
    const { id } = await environments.create({ ...valid, url: 'https://target.example' });
    current.cert = expired;
    expect((await environments.discover(id)).expired).toBe(true);
    const expiredErr = await environments
      .trust(id, { fingerprintSha256: expired.fingerprintSha256 })
      .catch((e: AppError) => e);
    expect(expiredErr).toMatchObject({ code: 'CERTIFICATE_EXPIRED', status: 412 });

    current.cert = wrongHost;
    expect((await environments.discover(id)).hostnameMatches).toBe(false);
    const hostErr = await environments
      .trust(id, { fingerprintSha256: wrongHost.fingerprintSha256 })
      .catch((e: AppError) => e);
    expect(hostErr).toMatchObject({ code: 'CERTIFICATE_HOSTNAME_MISMATCH', status: 412 });
    expect(environments.get(id).trustState).toBe('UNTRUSTED');
  });

  it('records a failed discovery in lastError and clears it on success', async () => {
    const { environments, current } = setup();
    const { id } = await environments.create(valid);
    expect(await codeOf(environments.discover(id))).toBe('ENVIRONMENT_UNREACHABLE');
    expect(environments.get(id).lastError).toMatchObject({ code: 'ENVIRONMENT_UNREACHABLE' });
    current.cert = good;
    await environments.discover(id);
    expect(environments.get(id).lastError).toBeNull();
  });

  it('clears both certificates when the URL changes', async () => {
    const { environments, current } = setup();
    const { id } = await environments.create({ ...valid, url: 'https://target.example' });
    current.cert = good;
    await environments.discover(id);
    await environments.trust(id, { fingerprintSha256: good.fingerprintSha256 });
    // The same URL written differently is no change.
    expect((await environments.update(id, { url: 'https://TARGET.example:443/' })).trustState).toBe(
      'TRUSTED',
    );
    const moved = await environments.update(id, {
      url: 'https://target.example:9443',
      accessToken: 'p2pat_for-9443',
    });
    expect(moved).toMatchObject({ trustState: 'UNTRUSTED', certificate: null, discoveredCertificate: null });
  });
});

describe('relay checks', () => {
  it('blocks in order: not found, disabled, untrusted, changed, expired', async () => {
    const { environments, current, store } = setup();
    expect(await codeOf(() => environments.prepareRelay('nope'))).toBe('ENVIRONMENT_NOT_FOUND');
    const { id } = await environments.create({ ...valid, url: 'https://target.example', enabled: false });
    expect(await codeOf(() => environments.prepareRelay(id))).toBe('ENVIRONMENT_DISABLED');
    await environments.update(id, { enabled: true });
    expect(await codeOf(() => environments.prepareRelay(id))).toBe('ENVIRONMENT_UNTRUSTED');
    current.cert = good;
    await environments.discover(id);
    await environments.trust(id, { fingerprintSha256: good.fingerprintSha256 });
    const target = environments.prepareRelay(id);
    expect(target).toMatchObject({
      environmentId: id,
      baseUrl: 'https://target.example',
      origin: 'https://target.example',
      accessToken: TOKEN,
      timeoutMs: 10_000,
      trust: { fingerprintSha256: good.fingerprintSha256, expectedHostname: 'target.example' },
    });
    expect(Buffer.from(target.trust.certificateDer!).equals(good.der)).toBe(true);

    await environments.recordCallFailure(
      id,
      new AppError('CERTIFICATE_CHANGED', 'another certificate', {
        details: { observedCertificate: describeCertificate(other.der) },
      }),
    );
    const changed = environments.get(id);
    expect(changed.trustState).toBe('CHANGED');
    expect(changed.discoveredCertificate?.fingerprintSha256).toBe(other.fingerprintSha256);
    expect(changed.lastError).toMatchObject({ code: 'CERTIFICATE_CHANGED' });
    expect(await codeOf(() => environments.prepareRelay(id))).toBe('CERTIFICATE_CHANGED');

    // A trusted certificate past its validTo blocks with CERTIFICATE_EXPIRED.
    await store.update((db) => {
      const record = db.environments[0]!;
      record.certificate = stored(expired);
      record.discoveredCertificate = stored(expired);
      // As a trust does: the earlier change is reviewed.
      record.certificateChangedAt = null;
    });
    expect(await codeOf(() => environments.prepareRelay(id))).toBe('CERTIFICATE_EXPIRED');
  });

  it('derives the token, URL and pin once, and again as soon as any of them changes', async () => {
    const { environments, current } = setup();
    const { id } = await environments.create({ ...valid, url: 'https://target.example' });
    current.cert = good;
    await environments.discover(id);
    await environments.trust(id, { fingerprintSha256: good.fingerprintSha256 });
    const first = environments.prepareRelay(id);
    // Unchanged inputs: the same derived trust, not a fresh decrypt and decode.
    expect(environments.prepareRelay(id).trust).toBe(first.trust);
    expect(Object.isFrozen(first.trust)).toBe(true);
    await environments.update(id, { accessToken: 'p2pat_rotated-access-token-0123456789abcdefghijklmn' });
    expect(environments.prepareRelay(id).accessToken).toBe(
      'p2pat_rotated-access-token-0123456789abcdefghijklmn',
    );
    await environments.update(id, { url: 'https://target.example:8443', accessToken: TOKEN });
    current.cert = other;
    await environments.discover(id);
    await environments.trust(id, { fingerprintSha256: other.fingerprintSha256 });
    const moved = environments.prepareRelay(id);
    expect(moved).toMatchObject({
      origin: 'https://target.example:8443',
      trust: { fingerprintSha256: other.fingerprintSha256, expectedHostname: 'target.example' },
    });
    expect(Buffer.from(moved.trust.certificateDer!).equals(other.der)).toBe(true);
  });

  it('does not record errors that are not about certificates', async () => {
    const { environments } = setup();
    const { id } = await environments.create(valid);
    await environments.recordCallFailure(id, new AppError('ENVIRONMENT_TIMEOUT', 'slow'));
    expect(environments.get(id).lastError).toBeNull();
  });
});
