import { once } from 'node:events';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { afterEach, describe, expect, it } from 'vitest';
import { createCertificate, type GeneratedCertificate } from '../../src/tls/certificates.js';
import { freePort } from '../helpers/processes.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { eventually } from './proxy-helpers.js';

let server: TestServer | undefined;
const dirs: string[] = [];

afterEach(async () => {
  await server?.close();
  server = undefined;
  for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
});

async function start(): Promise<{ s: TestServer; token: string }> {
  server = await startTestServer({ config: { tls: { filePollMs: 100, checkIntervalMs: 200 } } });
  return { s: server, token: await server.createToken(await server.setupAdmin()) };
}

let ca: GeneratedCertificate | undefined;
async function testCa(): Promise<GeneratedCertificate> {
  ca ??= await createCertificate({ commonName: 'store test CA', altNames: ['store-ca'], isCa: true });
  return ca;
}

async function leaf(altNames: string[], extra: { notBefore?: Date; notAfter?: Date } = {}) {
  return createCertificate({ altNames, issuer: await testCa(), ...extra });
}

/** The fingerprint of the certificate the listener serves for `servername`, or the error code. */
async function served(port: number, servername: string): Promise<string> {
  const socket = tlsConnect({
    host: '127.0.0.1',
    port,
    servername,
    ca: (await testCa()).cert,
    checkServerIdentity: () => undefined,
  });
  try {
    await once(socket, 'secureConnect');
    return socket.getPeerX509Certificate()!.fingerprint256;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? 'error';
  } finally {
    socket.destroy();
  }
}

describe('certificate store', () => {
  it('stores an uploaded chain sealed at rest, serves it on an https listener, and never returns the key', async () => {
    const { s, token } = await start();
    const cert = await leaf(['shop.test', 'www.shop.test']);
    const created = await s.request('POST', '/api/v1/tls/certificates', {
      token,
      body: {
        name: 'shop',
        source: 'upload',
        certificatePem: cert.cert + (await testCa()).cert,
        privateKeyPem: cert.key,
      },
    });
    expect(created.status).toBe(201);
    const certificate = created.json.certificate;
    expect(certificate).toMatchObject({
      name: 'shop',
      source: 'upload',
      status: 'ready',
      hosts: ['shop.test', 'www.shop.test'],
      fingerprintSha256: cert.fingerprintSha256,
      lastError: null,
      nextRenewalAt: null,
      usedBy: [],
    });
    expect(created.text).not.toContain('PRIVATE KEY');
    const stored = await readFile(path.join(s.dataDir, 'p2pstream.json'), 'utf8');
    expect(stored).not.toContain(cert.key.split('\n')[1]!);

    const port = await freePort();
    const listener = await s.request('POST', '/api/v1/proxy/listeners', {
      token,
      body: { name: 'public-tls', bindAddress: '127.0.0.1', port, protocol: 'https' },
    });
    expect(listener.status).toBe(201);
    expect(listener.json.listener).toMatchObject({
      protocol: 'https',
      defaultCertificateId: null,
      hsts: false,
    });
    expect(await served(port, 'www.shop.test')).toBe(cert.fingerprintSha256);
    expect(await served(port, 'other.test')).toBe('ERR_SSL_TLSV1_UNRECOGNIZED_NAME');

    // As the listener's default it serves any name, and cannot be deleted while it is.
    const patched = await s.request('PATCH', `/api/v1/proxy/listeners/${listener.json.listener.id}`, {
      token,
      body: { defaultCertificateId: certificate.id },
    });
    expect(patched.status).toBe(200);
    expect(await served(port, 'other.test')).toBe(cert.fingerprintSha256);
    const refused = await s.request('DELETE', `/api/v1/tls/certificates/${certificate.id}`, { token });
    expect(refused.status).toBe(409);
    expect(refused.json.error.code).toBe('CONFLICT');
    expect(refused.json.error.details.usedBy).toEqual([
      { type: 'listener', id: listener.json.listener.id, name: 'public-tls' },
    ]);
    expect(
      (await s.request('GET', `/api/v1/tls/certificates/${certificate.id}`, { token })).json.certificate
        .usedBy,
    ).toHaveLength(1);

    await s.request('PATCH', `/api/v1/proxy/listeners/${listener.json.listener.id}`, {
      token,
      body: { defaultCertificateId: null },
    });
    expect((await s.request('DELETE', `/api/v1/tls/certificates/${certificate.id}`, { token })).status).toBe(
      204,
    );
    expect(await served(port, 'www.shop.test')).toBe('ERR_SSL_TLSV1_UNRECOGNIZED_NAME');
  });

  it('refuses bad uploads with a 400 naming the field and the reason, and keeps the stored certificate', async () => {
    const { s, token } = await start();
    const good = await leaf(['a.test']);
    const other = await leaf(['a.test']);
    const expired = await leaf(['a.test'], {
      notBefore: new Date(Date.now() - 10 * 86_400_000),
      notAfter: new Date(Date.now() - 86_400_000),
    });
    const post = (body: Record<string, unknown>) =>
      s.request('POST', '/api/v1/tls/certificates', {
        token,
        body: { name: 'c', source: 'upload', ...body },
      });
    const cases: [Record<string, unknown>, string, RegExp][] = [
      [{ certificatePem: 'not a pem', privateKeyPem: good.key }, 'certificatePem', /no PEM certificate/],
      [
        {
          certificatePem: '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n',
          privateKeyPem: good.key,
        },
        'certificatePem',
        /not valid/,
      ],
      [{ certificatePem: good.cert, privateKeyPem: 'garbage' }, 'privateKeyPem', /not a PEM private key/],
      [{ certificatePem: good.cert, privateKeyPem: other.key }, 'privateKeyPem', /does not match/],
      [
        { certificatePem: (await testCa()).cert + good.cert, privateKeyPem: good.key },
        'privateKeyPem',
        /does not match/,
      ],
      [{ certificatePem: good.cert + other.cert, privateKeyPem: good.key }, 'certificatePem', /leaf first/],
      [{ certificatePem: expired.cert, privateKeyPem: expired.key }, 'certificatePem', /expired/],
      [
        { certificatePem: good.cert, privateKeyPem: good.key, hosts: ['b.test'] },
        'certificatePem',
        /does not cover the host b\.test/,
      ],
      [
        { certificatePem: good.cert, privateKeyPem: good.key, hosts: ['a.test', 'bad host!'] },
        'hosts[1]',
        /not a host name/,
      ],
      [
        { certificatePem: good.cert, privateKeyPem: good.key, certificateFile: '/x' },
        'certificateFile',
        /does not apply/,
      ],
    ];
    for (const [body, field, message] of cases) {
      const res = await post(body);
      expect(res.status, JSON.stringify(body).slice(0, 80)).toBe(400);
      expect(res.json.error.code).toBe('VALIDATION_FAILED');
      expect(res.json.error.details.field).toBe(field);
      expect(res.json.error.message).toMatch(message);
    }
    const ok = await post({ certificatePem: good.cert, privateKeyPem: good.key });
    expect(ok.status).toBe(201);
    // A bad replacement leaves the stored one as it was.
    const bad = await s.request('PATCH', `/api/v1/tls/certificates/${ok.json.certificate.id}`, {
      token,
      body: { certificatePem: other.cert, privateKeyPem: good.key },
    });
    expect(bad.status).toBe(400);
    const after = await s.request('GET', `/api/v1/tls/certificates/${ok.json.certificate.id}`, { token });
    expect(after.json.certificate.fingerprintSha256).toBe(good.fingerprintSha256);
    const replaced = await s.request('PATCH', `/api/v1/tls/certificates/${ok.json.certificate.id}`, {
      token,
      body: { certificatePem: other.cert, privateKeyPem: other.key },
    });
    expect(replaced.status).toBe(200);
    expect(replaced.json.certificate.fingerprintSha256).toBe(other.fingerprintSha256);
    expect((await s.request('GET', '/api/v1/tls/certificates', { token })).json.certificates).toHaveLength(1);
  });

  it('makes self-signed certificates, regenerates them on renew, and schedules renewal at a third of the lifetime left', async () => {
    const { s, token } = await start();
    const created = await s.request('POST', '/api/v1/tls/certificates', {
      token,
      body: {
        name: 'internal',
        source: 'self-signed',
        hosts: ['internal.test', '*.internal.test'],
        validDays: 30,
      },
    });
    expect(created.status).toBe(201);
    const c = created.json.certificate;
    expect(c).toMatchObject({
      status: 'ready',
      source: 'self-signed',
      validDays: 30,
      hosts: ['internal.test', '*.internal.test'],
    });
    const lifetime = Date.parse(c.notAfter) - Date.parse(c.notBefore);
    expect(Date.parse(c.nextRenewalAt)).toBe(Date.parse(c.notBefore) + Math.round((lifetime * 2) / 3));
    const renewed = await s.request('POST', `/api/v1/tls/certificates/${c.id}/renew`, { token });
    expect(renewed.status).toBe(200);
    expect(renewed.json.certificate.status).toBe('ready');
    expect(renewed.json.certificate.fingerprintSha256).not.toBe(c.fingerprintSha256);
    expect(
      (
        await s.request('POST', '/api/v1/tls/certificates', {
          token,
          body: { name: 'x', source: 'self-signed' },
        })
      ).json.error.details.field,
    ).toBe('hosts');
  });

  it('re-reads file certificates when they change; a bad change is an error while the previous one keeps serving', async () => {
    const { s, token } = await start();
    const dir = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-certs-'));
    dirs.push(dir);
    const certFile = path.join(dir, 'cert.pem');
    const keyFile = path.join(dir, 'key.pem');
    const first = await leaf(['files.test']);
    await writeFile(certFile, first.cert);
    await writeFile(keyFile, first.key);
    const created = await s.request('POST', '/api/v1/tls/certificates', {
      token,
      body: { name: 'from files', source: 'file', certificateFile: certFile, privateKeyFile: keyFile },
    });
    expect(created.status).toBe(201);
    const id = created.json.certificate.id;
    expect(created.json.certificate).toMatchObject({
      status: 'ready',
      hosts: ['files.test'],
      certificateFile: certFile,
    });
    const port = await freePort();
    await s.request('POST', '/api/v1/proxy/listeners', {
      token,
      body: { name: 'files', bindAddress: '127.0.0.1', port, protocol: 'https' },
    });
    expect(await served(port, 'files.test')).toBe(first.fingerprintSha256);

    // Another tool renews the files: picked up without any call.
    const second = await leaf(['files.test']);
    await writeFile(keyFile, second.key);
    await writeFile(certFile, second.cert);
    await eventually(async () => (await served(port, 'files.test')) === second.fingerprintSha256);

    // A broken write: error with the cause, the previous certificate still served.
    await writeFile(certFile, 'truncated');
    await eventually(async () => {
      const got = await s.request('GET', `/api/v1/tls/certificates/${id}`, { token });
      return got.json.certificate.status === 'error';
    });
    const broken = await s.request('GET', `/api/v1/tls/certificates/${id}`, { token });
    expect(broken.json.certificate.lastError).toMatch(/certificateFile: holds no PEM certificate/);
    expect(await served(port, 'files.test')).toBe(second.fingerprintSha256);

    const missing = await s.request('POST', '/api/v1/tls/certificates', {
      token,
      body: {
        name: 'missing',
        source: 'file',
        certificateFile: path.join(dir, 'nope.pem'),
        privateKeyFile: keyFile,
      },
    });
    expect(missing.status).toBe(400);
    expect(missing.json.error.details.field).toBe('certificateFile');
  });

  it('validates the TLS fields of listeners', async () => {
    const { s, token } = await start();
    const post = (body: Record<string, unknown>) =>
      s.request('POST', '/api/v1/proxy/listeners', {
        token,
        body: { name: `l${Math.random()}`, bindAddress: '127.0.0.1', port: 1, enabled: false, ...body },
      });
    const cases: [Record<string, unknown>, string][] = [
      [{ protocol: 'ftp' }, 'protocol'],
      [{ protocol: 'https', defaultCertificateId: 'nope' }, 'defaultCertificateId'],
      [{ protocol: 'http', hsts: true }, 'hsts'],
      [{ protocol: 'https', redirectHttps: true }, 'redirectHttps'],
      [{ defaultCertificateId: 'x' }, 'defaultCertificateId'],
    ];
    for (const [body, field] of cases) {
      const res = await post(body);
      expect(res.status).toBe(400);
      expect(res.json.error.details.field).toBe(field);
    }
  });
});
