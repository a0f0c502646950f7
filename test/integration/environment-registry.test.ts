/**
 * The environment registry over HTTP between two real instances on loopback:
 * validation, the access token sealed at rest, discovery of the real peer
 * certificate, and the trust rules against targets whose certificates are
 * made in the test (expired, for another host).
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { createCertificate } from '../../src/tls/certificates.js';
import { useCleanups } from '../helpers/cleanup.js';
import { closedPort, startSilentTarget, startTlsTarget, type TlsTarget } from '../helpers/tls-target.js';
import { fingerprintOf, type Instance, registerEnvironment, startInstance } from './environment-helpers.js';

const cleanups = useCleanups();

const instance = (options: Parameters<typeof startInstance>[0] = {}): Promise<Instance> =>
  startInstance(options, cleanups);

async function target(options: Parameters<typeof startTlsTarget>[0]): Promise<TlsTarget> {
  const started = await startTlsTarget(options);
  cleanups.push(() => started.close());
  return started;
}

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const name of await readdir(dir)) {
    const full = path.join(dir, name);
    if ((await stat(full)).isDirectory()) out.push(...(await filesUnder(full)));
    else out.push(full);
  }
  return out;
}

describe('environment registry', () => {
  it('lists the virtual Local environment first and requires authentication', async () => {
    const control = await instance();
    const list = await control.server.request('GET', '/api/v1/environments', { token: control.token });
    expect(list.status).toBe(200);
    expect(list.json.environments).toEqual([{ id: 'local', name: 'Local', virtual: true }]);
    expect((await control.server.request('GET', '/api/v1/environments')).status).toBe(401);
    expect(
      (await control.server.request('POST', '/api/v1/environments', { body: { name: 'x' } })).json.error.code,
    ).toBe('UNAUTHENTICATED');
    expect((await control.server.request('POST', '/api/v1/environments/x/discover')).status).toBe(401);
  });

  it('validates every field with its code', async () => {
    const control = await instance();
    const agent = await control.server.request('POST', '/api/v1/agents', {
      token: control.token,
      body: { name: 'edge' },
    });
    const base = {
      name: 'target',
      url: 'https://127.0.0.1:9443',
      transport: 'direct',
      accessToken: 'p2pat_x',
    };
    const cases: Array<[Record<string, unknown>, number, string]> = [
      [{ ...base, url: 'http://127.0.0.1:9443' }, 400, 'VALIDATION_FAILED'],
      [{ ...base, url: 'https://127.0.0.1:9443/?q=1' }, 400, 'VALIDATION_FAILED'],
      [{ ...base, url: 'https://127.0.0.1:9443/#f' }, 400, 'VALIDATION_FAILED'],
      [{ ...base, url: 'https://me:pw@127.0.0.1:9443' }, 400, 'VALIDATION_FAILED'],
      [{ ...base, url: '/relative' }, 400, 'VALIDATION_FAILED'],
      [{ ...base, name: '' }, 400, 'VALIDATION_FAILED'],
      [{ ...base, name: 'n'.repeat(129) }, 400, 'VALIDATION_FAILED'],
      [{ ...base, name: 'tab\there' }, 400, 'VALIDATION_FAILED'],
      [{ ...base, transport: 'carrier-pigeon' }, 400, 'VALIDATION_FAILED'],
      [{ ...base, agentId: agent.json.agent.id }, 400, 'VALIDATION_FAILED'],
      [{ ...base, transport: 'agent' }, 400, 'VALIDATION_FAILED'],
      [
        { ...base, transport: 'agent', agentId: '6f1c1f7e-0000-4000-8000-000000000000' },
        404,
        'AGENT_NOT_FOUND',
      ],
      [{ ...base, timeoutMs: 999 }, 400, 'VALIDATION_FAILED'],
      [{ ...base, timeoutMs: 300_001 }, 400, 'VALIDATION_FAILED'],
      [{ ...base, accessToken: undefined }, 400, 'VALIDATION_FAILED'],
      [{ ...base, extra: true }, 400, 'VALIDATION_FAILED'],
    ];
    for (const [body, status, code] of cases) {
      const res = await control.server.request('POST', '/api/v1/environments', {
        token: control.token,
        body,
      });
      expect([res.status, res.json?.error?.code], JSON.stringify(body)).toEqual([status, code]);
    }
    const bad = await control.server.request('POST', '/api/v1/environments', {
      token: control.token,
      rawBody: '{"name":',
      headers: { 'content-type': 'application/json' },
    });
    expect(bad.json.error.code).toBe('VALIDATION_FAILED');

    const created = await control.server.request('POST', '/api/v1/environments', {
      token: control.token,
      body: { ...base, url: 'https://LOCALHOST:9443/' },
    });
    expect(created.status).toBe(201);
    expect(created.json.environment).toMatchObject({
      url: 'https://localhost:9443',
      timeoutMs: 10_000,
      enabled: true,
      trustState: 'UNTRUSTED',
      hasAccessToken: true,
    });
    const viaAgent = await control.server.request('POST', '/api/v1/environments', {
      token: control.token,
      body: { ...base, name: 'via agent', transport: 'agent', agentId: agent.json.agent.id, timeoutMs: 1000 },
    });
    expect(viaAgent.status).toBe(201);
    const duplicate = await control.server.request('POST', '/api/v1/environments', {
      token: control.token,
      body: base,
    });
    expect([duplicate.status, duplicate.json.error.code]).toEqual([409, 'CONFLICT']);
    const list = await control.server.request('GET', '/api/v1/environments', { token: control.token });
    expect(list.json.environments.map((e: { name: string }) => e.name)).toEqual([
      'Local',
      'target',
      'via agent',
    ]);

    const id = created.json.environment.id as string;
    expect(
      (await control.server.request('GET', `/api/v1/environments/${id}`, { token: control.token })).status,
    ).toBe(200);
    expect(
      (await control.server.request('GET', '/api/v1/environments/nope', { token: control.token })).json.error
        .code,
    ).toBe('ENVIRONMENT_NOT_FOUND');
    expect(
      (await control.server.request('DELETE', `/api/v1/environments/${id}`, { token: control.token })).status,
    ).toBe(204);
    expect(
      (await control.server.request('GET', `/api/v1/environments/${id}`, { token: control.token })).status,
    ).toBe(404);
  });

  it('keeps the access token sealed at rest, out of answers and out of logs', async () => {
    const control = await instance();
    const remote = await instance();
    const accessToken = await remote.server.createToken(remote.cookie, 'for-control');
    const id = await registerEnvironment(control, { url: remote.server.url, accessToken });
    const read = await control.server.request('GET', `/api/v1/environments/${id}`, { token: control.token });
    expect(read.text).not.toContain(accessToken);
    expect(read.json.environment.hasAccessToken).toBe(true);
    // The token works (the test call uses it), and a PATCH without it keeps it.
    await control.server.request('PATCH', `/api/v1/environments/${id}`, {
      token: control.token,
      body: { name: 'renamed' },
    });
    const tested = await control.server.request('POST', `/api/v1/environments/${id}/test`, {
      token: control.token,
    });
    expect(tested.status).toBe(200);

    await control.server.server.store.flush();
    const files = await filesUnder(control.server.dataDir);
    expect(files.length).toBeGreaterThan(2);
    const secretPart = accessToken.slice('p2pat_'.length);
    for (const file of files) {
      const content = await readFile(file);
      expect(content.includes(accessToken), file).toBe(false);
      expect(content.includes(secretPart), file).toBe(false);
      expect(content.includes(Buffer.from(accessToken).toString('base64')), file).toBe(false);
    }
    const database = await readFile(path.join(control.server.dataDir, 'p2pstream.json'), 'utf8');
    expect(database).toMatch(/"accessTokenSealed": ?"v1\./);
    expect(control.server.logs.join('\n')).not.toContain(secretPart);
  });

  it('discovers the real peer certificate without sending a byte', async () => {
    const control = await instance();
    const remote = await instance();
    const created = await control.server.request('POST', '/api/v1/environments', {
      token: control.token,
      body: { name: 'remote', url: remote.server.url, transport: 'direct', accessToken: 'p2pat_unused' },
    });
    const id = created.json.environment.id as string;
    const discovered = await control.server.request('POST', `/api/v1/environments/${id}/discover`, {
      token: control.token,
    });
    expect(discovered.status).toBe(200);
    expect(discovered.json).toMatchObject({
      certificate: { fingerprintSha256: fingerprintOf(remote.server) },
      trustState: 'UNTRUSTED',
      hostnameMatches: true,
      expired: false,
    });
    expect(discovered.json.certificate.subjectAltNames).toContain('IP Address:127.0.0.1');

    // Through a recording target: the handshake happens, no application byte arrives.
    const cert = await createCertificate({ altNames: ['127.0.0.1'] });
    const recording = await target({ cert: cert.cert, key: cert.key });
    const other = await control.server.request('POST', '/api/v1/environments', {
      token: control.token,
      body: {
        name: 'recording',
        url: recording.url,
        transport: 'direct',
        accessToken: 'p2pat_secret-never-sent',
      },
    });
    const res = await control.server.request(
      'POST',
      `/api/v1/environments/${other.json.environment.id}/discover`,
      {
        token: control.token,
      },
    );
    expect(res.json.certificate.fingerprintSha256).toBe(cert.fingerprintSha256);
    expect(recording.connections).toBeGreaterThan(0);
    expect(recording.receivedBytes).toBe(0);
  });

  it('trusts only the discovered fingerprint and refuses expired or wrong-host certificates', async () => {
    const control = await instance();
    const remote = await instance();
    const id = await registerEnvironment(
      control,
      { url: remote.server.url, accessToken: 'p2pat_unused' },
      { trust: false },
    );
    const trustWith = (fingerprintSha256: string) =>
      control.server.request('POST', `/api/v1/environments/${id}/trust`, {
        token: control.token,
        body: { fingerprintSha256 },
      });
    expect((await trustWith(fingerprintOf(remote.server))).json.error.code).toBe('CONFLICT');
    await control.server.request('POST', `/api/v1/environments/${id}/discover`, { token: control.token });
    const wrong = await trustWith((await createCertificate({ altNames: ['127.0.0.1'] })).fingerprintSha256);
    expect([wrong.status, wrong.json.error.code]).toEqual([409, 'CONFLICT']);
    expect((await trustWith('not a fingerprint')).json.error.code).toBe('VALIDATION_FAILED');
    const ok = await trustWith(fingerprintOf(remote.server).replace(/:/g, '').toLowerCase());
    expect(ok.status).toBe(200);
    expect(ok.json.environment).toMatchObject({
      trustState: 'TRUSTED',
      certificate: { fingerprintSha256: fingerprintOf(remote.server) },
    });

    // Expired: notBefore/notAfter in the past.
    const expired = await createCertificate({
      altNames: ['127.0.0.1'],
      notBefore: new Date(Date.now() - 10 * 86_400_000),
      notAfter: new Date(Date.now() - 86_400_000),
    });
    const expiredTarget = await target({ cert: expired.cert, key: expired.key });
    const expiredId = await registerEnvironment(
      control,
      { url: expiredTarget.url, accessToken: 'p2pat_unused' },
      { trust: false },
    );
    const discoveredExpired = await control.server.request(
      'POST',
      `/api/v1/environments/${expiredId}/discover`,
      {
        token: control.token,
      },
    );
    expect(discoveredExpired.json).toMatchObject({ expired: true });
    const refusedExpired = await control.server.request('POST', `/api/v1/environments/${expiredId}/trust`, {
      token: control.token,
      body: { fingerprintSha256: expired.fingerprintSha256 },
    });
    expect([refusedExpired.status, refusedExpired.json.error.code]).toEqual([412, 'CERTIFICATE_EXPIRED']);

    // Hostname mismatch: SANs that do not cover 127.0.0.1.
    const elsewhere = await createCertificate({ altNames: ['elsewhere.example', '10.9.8.7'] });
    const elsewhereTarget = await target({ cert: elsewhere.cert, key: elsewhere.key });
    const elsewhereId = await registerEnvironment(
      control,
      { url: elsewhereTarget.url, accessToken: 'p2pat_unused' },
      { trust: false },
    );
    const discoveredElsewhere = await control.server.request(
      'POST',
      `/api/v1/environments/${elsewhereId}/discover`,
      {
        token: control.token,
      },
    );
    expect(discoveredElsewhere.json).toMatchObject({ hostnameMatches: false });
    const refusedHost = await control.server.request('POST', `/api/v1/environments/${elsewhereId}/trust`, {
      token: control.token,
      body: { fingerprintSha256: elsewhere.fingerprintSha256 },
    });
    expect([refusedHost.status, refusedHost.json.error.code]).toEqual([412, 'CERTIFICATE_HOSTNAME_MISMATCH']);
    for (const envId of [expiredId, elsewhereId]) {
      const env = await control.server.request('GET', `/api/v1/environments/${envId}`, {
        token: control.token,
      });
      expect(env.json.environment.trustState).toBe('UNTRUSTED');
    }
  });

  it('clears trust when the URL changes', async () => {
    const control = await instance();
    const remote = await instance();
    const id = await registerEnvironment(control, { url: remote.server.url, accessToken: 'p2pat_unused' });
    const moved = await control.server.request('PATCH', `/api/v1/environments/${id}`, {
      token: control.token,
      body: { url: remote.server.url.replace('127.0.0.1', 'localhost'), accessToken: 'p2pat_other' },
    });
    expect(moved.json.environment).toMatchObject({
      trustState: 'UNTRUSTED',
      certificate: null,
      discoveredCertificate: null,
      url: remote.server.url.replace('127.0.0.1', 'localhost'),
    });
  });

  it('records discovery failures: unreachable and timeout', async () => {
    const control = await instance();
    const port = await closedPort();
    const unreachable = await registerEnvironment(
      control,
      { url: `https://127.0.0.1:${port}`, accessToken: 'p2pat_unused' },
      { trust: false },
    );
    const res = await control.server.request('POST', `/api/v1/environments/${unreachable}/discover`, {
      token: control.token,
    });
    expect([res.status, res.json.error.code]).toEqual([502, 'ENVIRONMENT_UNREACHABLE']);
    const env = await control.server.request('GET', `/api/v1/environments/${unreachable}`, {
      token: control.token,
    });
    expect(env.json.environment.lastError).toMatchObject({ code: 'ENVIRONMENT_UNREACHABLE' });

    const silent = await startSilentTarget();
    cleanups.push(() => silent.close());
    const slow = await registerEnvironment(
      control,
      { url: silent.url, accessToken: 'p2pat_unused' },
      { trust: false, timeoutMs: 1000 },
    );
    const timedOut = await control.server.request('POST', `/api/v1/environments/${slow}/discover`, {
      token: control.token,
    });
    expect([timedOut.status, timedOut.json.error.code]).toEqual([504, 'ENVIRONMENT_TIMEOUT']);
  });
});
