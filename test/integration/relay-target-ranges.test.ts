/**
 * Allowed targets given as address ranges (`10.0.0.0/8:8081`), for the
 * agent's AGENT_ALLOWED_TARGETS and the control plane's DIRECT_ALLOWED_TARGETS:
 * a name is resolved once, the resolved addresses outside the ranges are
 * dropped, and the connection dials the address that was checked (no second
 * lookup that DNS rebinding could answer differently), while SNI and the
 * certificate check stay on the name.
 */
import type { LookupAddress } from 'node:dns';
import { beforeAll, describe, expect, it } from 'vitest';
import { AppError } from '../../src/errors.js';
import { createDirectTransport, type DirectTransport } from '../../src/relay/direct-transport.js';
import type { Resolver } from '../../src/relay/target-policy.js';
import type { RelayResponse, TrustMetadata } from '../../src/relay/transport.js';
import { createCertificate, type GeneratedCertificate } from '../../src/tls/certificates.js';
import { useCleanups } from '../helpers/cleanup.js';
import { pinTo, startTlsTarget, type TlsTarget } from '../helpers/tls-target.js';
import { startInstance } from './environment-helpers.js';

let cert: GeneratedCertificate;
beforeAll(async () => {
  cert = await createCertificate({ altNames: ['app.internal.test', '127.0.0.1'] });
});

const cleanups = useCleanups();

async function target(): Promise<TlsTarget> {
  const t = await startTlsTarget({ cert: cert.cert, key: cert.key });
  cleanups.push(() => t.close());
  return t;
}

function transport(allowedTargets: string[], resolver?: Resolver): DirectTransport {
  const t = createDirectTransport({ allowedTargets, ...(resolver ? { resolver } : {}) });
  cleanups.push(() => t.close());
  return t;
}

/** A resolver answering from a script, one answer per call, counting calls. */
function scripted(...answers: string[][]): Resolver & { calls: string[] } {
  const calls: string[] = [];
  const resolver = async (hostname: string): Promise<LookupAddress[]> => {
    calls.push(hostname);
    const answer = answers[Math.min(calls.length - 1, answers.length - 1)] ?? [];
    return answer.map((address) => ({ address, family: address.includes(':') ? 6 : 4 }));
  };
  return Object.assign(resolver, { calls });
}

const trust = (expectedHostname: string): TrustMetadata => pinTo(cert, expectedHostname);

async function text(response: RelayResponse): Promise<string> {
  const chunks: Uint8Array[] = [];
  for await (const chunk of response.body) chunks.push(chunk);
  return Buffer.concat(chunks).toString();
}

async function expectCode(promise: Promise<unknown>, code: string): Promise<void> {
  const err = await promise.then(
    () => new Error(`expected ${code}, got a result`),
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(AppError);
  expect((err as AppError).code).toBe(code);
}

describe('allowed targets as address ranges', () => {
  it('reaches a name whose resolved address is in the range, with SNI and the check on the name', async () => {
    const t = await target();
    const resolver = scripted(['10.255.0.9', '127.0.0.1']);
    const relay = transport([`127.0.0.0/8:${t.port}`], resolver);
    const url = `https://app.internal.test:${t.port}/hello`;
    const response = await relay.request({
      url,
      method: 'GET',
      headers: [],
      timeoutMs: 5000,
      trust: trust('app.internal.test'),
    });
    expect([response.status, await text(response)]).toEqual([200, 'ok']);
    // Resolved once; the address outside the range was never dialled (it would not have answered).
    expect(resolver.calls).toEqual(['app.internal.test']);
    expect(t.servernames).toEqual(['app.internal.test']);
    expect(t.connections).toBe(1);
  });

  it('dials the address it checked: a rebinding answer on a later lookup cannot redirect it', async () => {
    const t = await target();
    // First answer: the allowed address. Any later lookup would answer an address outside the range.
    const resolver = scripted(['127.0.0.1'], ['10.255.0.9']);
    const relay = transport([`127.0.0.1/32:${t.port}`], resolver);
    const url = `https://app.internal.test:${t.port}/`;
    const response = await relay.request({
      url,
      method: 'GET',
      headers: [],
      timeoutMs: 5000,
      trust: trust('app.internal.test'),
    });
    expect(await text(response)).toBe('ok');
    expect(resolver.calls).toHaveLength(1);
  });

  it('refuses a name that resolves outside every range, before any connection', async () => {
    const t = await target();
    const resolver = scripted(['10.255.0.9', '192.168.7.7']);
    const relay = transport([`127.0.0.0/8:${t.port}`], resolver);
    const url = `https://app.internal.test:${t.port}/`;
    await expectCode(
      relay.request({ url, method: 'GET', headers: [], timeoutMs: 5000, trust: trust('app.internal.test') }),
      'TARGET_NOT_ALLOWED',
    );
    await expectCode(relay.discover({ url, timeoutMs: 5000 }), 'TARGET_NOT_ALLOWED');
    expect(t.connections).toBe(0);
  });

  it('checks an address literal against the range and the port without resolving', async () => {
    const t = await target();
    const resolver = scripted();
    const inRange = transport([`127.0.0.0/8:${t.port}`], resolver);
    const response = await inRange.request({
      url: t.url,
      method: 'GET',
      headers: [],
      timeoutMs: 5000,
      trust: trust('127.0.0.1'),
    });
    expect(await text(response)).toBe('ok');
    const otherPort = transport([`127.0.0.0/8:${t.port + 1}`], resolver);
    await expectCode(
      otherPort.request({
        url: t.url,
        method: 'GET',
        headers: [],
        timeoutMs: 5000,
        trust: trust('127.0.0.1'),
      }),
      'TARGET_NOT_ALLOWED',
    );
    const otherRange = transport([`10.0.0.0/8:${t.port}`], resolver);
    await expectCode(otherRange.discover({ url: t.url, timeoutMs: 5000 }), 'TARGET_NOT_ALLOWED');
    expect(resolver.calls).toEqual([]);
    expect(t.connections).toBe(1);
  });

  it('DIRECT_ALLOWED_TARGETS limits what the control plane reaches directly', async () => {
    const t = await target();
    const refusing = await startInstance({
      env: { DIRECT_ALLOWED_TARGETS: '10.0.0.0/8:443, *.example.com' },
    });
    cleanups.push(() => refusing.server.close());
    const allowing = await startInstance({ env: { DIRECT_ALLOWED_TARGETS: `127.0.0.0/8:${t.port}` } });
    cleanups.push(() => allowing.server.close());
    for (const [instance, expected] of [
      [refusing, 403],
      [allowing, 200],
    ] as const) {
      const created = await instance.server.request('POST', '/api/v1/environments', {
        token: instance.token,
        body: { name: 'target', url: t.url, transport: 'direct', accessToken: 'p2pat_any' },
      });
      expect(created.status).toBe(201);
      const discovered = await instance.server.request(
        'POST',
        `/api/v1/environments/${created.json.environment.id}/discover`,
        { token: instance.token },
      );
      expect(discovered.status).toBe(expected);
      if (expected === 403) expect(discovered.json.error.code).toBe('TARGET_NOT_ALLOWED');
    }
    expect(t.connections).toBe(1);
  });
});
