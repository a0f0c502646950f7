import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { afterEach, describe, expect, it } from 'vitest';
import { type Pebble, startPebble } from '../helpers/pebble.js';
import { freePort } from '../helpers/processes.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { eventually } from './proxy-helpers.js';

const servers: TestServer[] = [];
let pebble: Pebble | undefined;
let standIn: Server | undefined;
const dirs: string[] = [];

afterEach(async () => {
  for (const s of servers.splice(0)) await s.close();
  await pebble?.close();
  pebble = undefined;
  if (standIn) {
    standIn.closeAllConnections();
    await new Promise<void>((resolve) => standIn!.close(() => resolve()));
    standIn = undefined;
  }
  for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
});

const TLS_TIMINGS = { checkIntervalMs: 100, retryBaseMs: 400, filePollMs: 1000, dnsPropagationMs: 0 };

interface Setup {
  s: TestServer;
  token: string;
  httpPort: number;
  tlsPort: number;
  httpListenerId: string;
  accountId: string;
}

/** A server with an http and an https listener, pebble validating against them, and an account. */
async function setUp(options: { validity?: number; dataDir?: string } = {}): Promise<Setup> {
  const s = await startTestServer({
    config: { tls: TLS_TIMINGS },
    ...(options.dataDir ? { dataDir: options.dataDir, keepDataDir: true } : {}),
  });
  servers.push(s);
  const token = await s.createToken(await s.setupAdmin());
  const httpPort = await freePort();
  const tlsPort = await freePort();
  const http = await s.request('POST', '/api/v1/proxy/listeners', {
    token,
    body: { name: 'web', bindAddress: '127.0.0.1', port: httpPort, redirectHttps: true },
  });
  expect(http.status).toBe(201);
  const https = await s.request('POST', '/api/v1/proxy/listeners', {
    token,
    body: { name: 'web-tls', bindAddress: '127.0.0.1', port: tlsPort, protocol: 'https', hsts: true },
  });
  expect(https.status).toBe(201);
  pebble = await startPebble({ httpPort, tlsPort, certificateValidityPeriod: options.validity });
  const account = await s.request('POST', '/api/v1/tls/acme/accounts', {
    token,
    body: {
      name: 'pebble',
      directoryUrl: pebble.directoryUrl,
      email: 'admin@example.test',
      directoryCaPem: pebble.directoryCaPem,
    },
  });
  expect(account.status, account.text).toBe(201);
  expect(account.json.account).toMatchObject({ directoryUrl: pebble.directoryUrl, hasDirectoryCa: true });
  expect(account.json.account.accountUrl).toMatch(/^https:\/\/127\.0\.0\.1:\d+\//);
  expect(account.text).not.toContain('PRIVATE KEY');
  return {
    s,
    token,
    httpPort,
    tlsPort,
    httpListenerId: http.json.listener.id,
    accountId: account.json.account.id,
  };
}

async function waitForStatus(setup: Setup, id: string, status: string, timeoutMs = 30_000) {
  let last: Record<string, unknown> = {};
  try {
    await eventually(async () => {
      const res = await setup.s.request('GET', `/api/v1/tls/certificates/${id}`, { token: setup.token });
      last = res.json.certificate;
      return last.status === status;
    }, timeoutMs);
  } catch {
    throw new Error(
      `certificate never reached ${status}: ${JSON.stringify(last)}\n${pebble?.output().slice(-2000)}`,
    );
  }
  return last as { fingerprintSha256: string; [key: string]: unknown };
}

/** Fingerprint of the certificate served for `servername`, and whether pebble's CA issued it. */
async function served(port: number, servername: string): Promise<{ fingerprint: string; issuer: string }> {
  const socket = tlsConnect({ host: '127.0.0.1', port, servername, rejectUnauthorized: false });
  try {
    await once(socket, 'secureConnect');
    const cert = socket.getPeerX509Certificate()!;
    return { fingerprint: cert.fingerprint256, issuer: cert.issuer };
  } finally {
    socket.destroy();
  }
}

async function createAcme(setup: Setup, body: Record<string, unknown>) {
  const res = await setup.s.request('POST', '/api/v1/tls/certificates', {
    token: setup.token,
    body: { source: 'acme', acmeAccountId: setup.accountId, ...body },
  });
  expect(res.status, res.text).toBe(201);
  return res.json.certificate as { id: string; status: string };
}

describe('ACME against pebble (real validation)', () => {
  it('issues with HTTP-01 through the http listener and with TLS-ALPN-01 through the https listener', async () => {
    const setup = await setUp();
    const viaHttp = await createAcme(setup, {
      name: 'http01',
      hosts: ['www.http01.test'],
      challenge: 'http-01',
    });
    expect(['pending', 'issuing']).toContain(viaHttp.status);
    const ready = await waitForStatus(setup, viaHttp.id, 'ready');
    expect(ready).toMatchObject({ lastError: null, hosts: ['www.http01.test'] });
    expect(ready.issuer).toMatch(/Pebble/);
    const lifetime = Date.parse(String(ready.notAfter)) - Date.parse(String(ready.notBefore));
    expect(Date.parse(String(ready.nextRenewalAt))).toBeCloseTo(
      Date.parse(String(ready.notBefore)) + (lifetime * 2) / 3,
      -3,
    );
    expect((await served(setup.tlsPort, 'www.http01.test')).fingerprint).toBe(ready.fingerprintSha256);
    // The challenge was withdrawn: the redirect answers again.
    const events = (await setup.s.request('GET', '/api/v1/traffic/recent', { token: setup.token })).json
      .events;
    const answered = events.filter((e: { path: string }) =>
      e.path.startsWith('/.well-known/acme-challenge/'),
    );
    expect(answered.length).toBeGreaterThan(0);
    expect(answered[0]).toMatchObject({
      status: 200,
      policy: [{ stage: 'acme', rule: 'http-01', action: 'answer' }],
    });

    const viaAlpn = await createAcme(setup, { name: 'alpn', hosts: ['alpn.test'], challenge: 'tls-alpn-01' });
    const alpnReady = await waitForStatus(setup, viaAlpn.id, 'ready');
    expect((await served(setup.tlsPort, 'alpn.test')).fingerprint).toBe(alpnReady.fingerprintSha256);
  });

  it('issues a wildcard with DNS-01 through the Cloudflare provider (a local stand-in of its API)', async () => {
    const setup = await setUp();
    const records = new Map<string, string>();
    const seenAuth: string[] = [];
    standIn = createServer((req, res) => {
      seenAuth.push(req.headers.authorization ?? '');
      const reply = (status: number, body: unknown) => {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(JSON.stringify(body));
      };
      if (req.headers.authorization !== 'Bearer cf-test-token')
        return reply(403, { success: false, errors: [{ code: 10000, message: 'Authentication error' }] });
      const url = new URL(req.url ?? '/', 'http://x');
      if (req.method === 'GET' && url.pathname === '/client/v4/zones') {
        const name = url.searchParams.get('name');
        return reply(200, { success: true, result: name === 'dns.test' ? [{ id: 'zone1', name }] : [] });
      }
      let body = '';
      req.on('data', (chunk) => {
        body += chunk;
      });
      req.on('end', async () => {
        if (req.method === 'POST' && url.pathname === '/client/v4/zones/zone1/dns_records') {
          const record = JSON.parse(body) as { type: string; name: string; content: string };
          const id = `rec${records.size + 1}`;
          records.set(id, record.name);
          await pebble!.setTxt(record.name, record.content);
          return reply(200, { success: true, result: { id, ...record } });
        }
        const match = /^\/client\/v4\/zones\/zone1\/dns_records\/(\w+)$/.exec(url.pathname);
        if (req.method === 'DELETE' && match && records.has(match[1]!)) {
          await pebble!.clearTxt(records.get(match[1]!)!);
          records.delete(match[1]!);
          return reply(200, { success: true, result: { id: match[1] } });
        }
        reply(404, { success: false, errors: [{ message: 'not found' }] });
      });
    });
    standIn.listen(0, '127.0.0.1');
    await once(standIn, 'listening');
    const apiBaseUrl = `http://127.0.0.1:${(standIn.address() as { port: number }).port}/client/v4`;

    // A wrong token: the order fails with the API's own message.
    const wrong = await setup.s.request('POST', '/api/v1/tls/dns-providers', {
      token: setup.token,
      body: { name: 'cf-wrong', type: 'cloudflare', apiToken: 'nope', apiBaseUrl },
    });
    expect(wrong.status).toBe(201);
    expect(wrong.text).not.toContain('nope');
    const failing = await createAcme(setup, {
      name: 'wild-wrong',
      hosts: ['*.dns.test'],
      challenge: 'dns-01',
      dnsProviderId: wrong.json.provider.id,
    });
    const failed = await waitForStatus(setup, failing.id, 'error');
    expect(failed.lastError).toMatch(/Authentication error/);

    const provider = await setup.s.request('POST', '/api/v1/tls/dns-providers', {
      token: setup.token,
      body: { name: 'cf', type: 'cloudflare', apiToken: 'cf-test-token', apiBaseUrl },
    });
    expect(provider.status).toBe(201);
    expect(provider.json.provider).toMatchObject({ type: 'cloudflare', apiBaseUrl, hasApiToken: true });
    const wildcard = await createAcme(setup, {
      name: 'wild',
      hosts: ['*.dns.test', 'dns.test'],
      challenge: 'dns-01',
      dnsProviderId: provider.json.provider.id,
    });
    const ready = await waitForStatus(setup, wildcard.id, 'ready');
    expect((await served(setup.tlsPort, 'any.dns.test')).fingerprint).toBe(ready.fingerprintSha256);
    expect((await served(setup.tlsPort, 'dns.test')).fingerprint).toBe(ready.fingerprintSha256);
    expect(records.size).toBe(0); // every TXT record removed again
    expect(seenAuth).toContain('Bearer cf-test-token');

    // A provider in use cannot be deleted.
    const inUse = await setup.s.request('DELETE', `/api/v1/tls/dns-providers/${provider.json.provider.id}`, {
      token: setup.token,
    });
    expect(inUse.status).toBe(409);
  });

  it('a failing challenge is an error with the cause and the next attempt; the previous certificate keeps serving, retries survive a restart', async () => {
    const dataDir = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-acme-'));
    dirs.push(dataDir);
    const first = await setUp({ dataDir });
    const cert = await createAcme(first, { name: 'site', hosts: ['site.test'], challenge: 'http-01' });
    const ready = await waitForStatus(first, cert.id, 'ready');

    // The http listener goes away: the renewal's HTTP-01 validation cannot connect.
    await first.s.request('PATCH', `/api/v1/proxy/listeners/${first.httpListenerId}`, {
      token: first.token,
      body: { enabled: false },
    });
    const renewing = await first.s.request('POST', `/api/v1/tls/certificates/${cert.id}/renew`, {
      token: first.token,
    });
    expect(renewing.status).toBe(200);
    expect(renewing.json.certificate.status).toBe('renewing');
    const failed = await waitForStatus(first, cert.id, 'error');
    expect(failed.lastError).toMatch(/http-01 authorization for site\.test failed: .*(refused|connect)/i);
    expect(Date.parse(String(failed.nextRenewalAt))).toBeGreaterThan(Date.now() - 1000);
    expect(failed.fingerprintSha256).toBe(ready.fingerprintSha256);
    expect((await served(first.tlsPort, 'site.test')).fingerprint).toBe(ready.fingerprintSha256);

    // Restart on the same data: the stored certificate serves at once; the retry goes on and succeeds.
    servers.splice(servers.indexOf(first.s), 1);
    await first.s.close();
    const again = await startTestServer({ dataDir, keepDataDir: true, config: { tls: TLS_TIMINGS } });
    servers.push(again);
    const token = first.token;
    const ports = { tls: first.tlsPort };
    expect((await served(ports.tls, 'site.test')).fingerprint).toBe(ready.fingerprintSha256);
    await again.request('PATCH', `/api/v1/proxy/listeners/${first.httpListenerId}`, {
      token,
      body: { enabled: true },
    });
    const second: Setup = { ...first, s: again };
    const renewed = await waitForStatus(second, cert.id, 'ready');
    expect(renewed.fingerprintSha256).not.toBe(ready.fingerprintSha256);
    expect((await served(ports.tls, 'site.test')).fingerprint).toBe(renewed.fingerprintSha256);
  });

  it('renews a short-lived certificate by itself when a third of its lifetime remains', async () => {
    const setup = await setUp({ validity: 15 });
    const cert = await createAcme(setup, { name: 'short', hosts: ['short.test'], challenge: 'tls-alpn-01' });
    const first = await waitForStatus(setup, cert.id, 'ready');
    const lifetime = Date.parse(String(first.notAfter)) - Date.parse(String(first.notBefore));
    expect(lifetime).toBeLessThan(60_000);
    await eventually(async () => {
      const res = await setup.s.request('GET', `/api/v1/tls/certificates/${cert.id}`, { token: setup.token });
      const now = res.json.certificate;
      return now.status === 'ready' && now.fingerprintSha256 !== first.fingerprintSha256;
    }, 40_000);
    const second = (
      await setup.s.request('GET', `/api/v1/tls/certificates/${cert.id}`, { token: setup.token })
    ).json.certificate;
    expect(Date.parse(second.notAfter)).toBeGreaterThan(Date.parse(String(first.notAfter)));
    expect((await served(setup.tlsPort, 'short.test')).fingerprint).toBe(second.fingerprintSha256);
  }, 90_000);

  it('refuses an account whose directory cannot be reached or is not ACME, with the cause', async () => {
    const s = await startTestServer({ config: { tls: TLS_TIMINGS } });
    servers.push(s);
    const token = await s.createToken(await s.setupAdmin());
    const port = await freePort();
    const unreachable = await s.request('POST', '/api/v1/tls/acme/accounts', {
      token,
      body: { name: 'nowhere', directoryUrl: `https://127.0.0.1:${port}/directory` },
    });
    expect(unreachable.status).toBe(400);
    expect(unreachable.json.error.details.field).toBe('directoryUrl');
    expect(unreachable.json.error.message).toMatch(/ECONNREFUSED|could not be reached/);
    // An https server that is not an ACME directory (the management API itself).
    const notAcme = await s.request('POST', '/api/v1/tls/acme/accounts', {
      token,
      body: { name: 'not acme', directoryUrl: `${s.url}/api/v1/system/info` },
    });
    expect(notAcme.status).toBe(400);
    expect(notAcme.json.error.details.field).toBe('directoryUrl');
    for (const [body, field] of [
      [{ name: 'a', directoryUrl: 'http://acme.example/dir' }, 'directoryUrl'],
      [{ name: 'a', directoryUrl: 'letsencrypt', email: 'not-an-email' }, 'email'],
      [{ name: 'a', directoryUrl: 'letsencrypt', directoryCaPem: 'nope' }, 'directoryCaPem'],
      [{ name: 'a', directoryUrl: 'letsencrypt', eab: { kid: 'k', hmacKey: 'not base64!' } }, 'eab.hmacKey'],
    ] as const) {
      const res = await s.request('POST', '/api/v1/tls/acme/accounts', { token, body });
      expect(res.status).toBe(400);
      expect(res.json.error.details.field).toBe(field);
    }
    expect((await s.request('GET', '/api/v1/tls/acme/accounts', { token })).json.accounts).toEqual([]);
    const noAccount = await s.request('POST', '/api/v1/tls/certificates', {
      token,
      body: { name: 'c', source: 'acme', hosts: ['a.test'], acmeAccountId: 'nope', challenge: 'http-01' },
    });
    expect(noAccount.json.error.details.field).toBe('acmeAccountId');
  });
});
