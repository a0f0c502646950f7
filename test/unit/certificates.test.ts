import tls from 'node:tls';
import { describe, expect, it } from 'vitest';
import {
  createCertificate,
  describeCertificate,
  matchesHostname,
  normalizeFingerprint,
} from '../../src/tls/certificates.js';

describe('certificates', () => {
  it('makes a self-signed certificate that a TLS client accepts for its SANs', async () => {
    const cert = await createCertificate({ altNames: ['localhost', '127.0.0.1', '::1'] });
    const info = describeCertificate(cert.der);
    expect(info.fingerprintSha256).toBe(cert.fingerprintSha256);
    expect(info.subjectAltNames).toEqual([
      'DNS:localhost',
      'IP Address:127.0.0.1',
      'IP Address:0:0:0:0:0:0:0:1',
    ]);
    expect(matchesHostname(cert.der, '127.0.0.1')).toBe(true);
    expect(matchesHostname(cert.der, '[::1]')).toBe(true);
    expect(matchesHostname(cert.der, 'example.com')).toBe(false);
    const server = tls.createServer({ cert: cert.cert, key: cert.key }, (s) => s.end('hi'));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as { port: number }).port;
    const authorized = await new Promise<boolean>((resolve, reject) => {
      const socket = tls.connect(
        { port, host: '127.0.0.1', ca: [cert.cert], servername: 'localhost' },
        () => {
          resolve(socket.authorized);
          socket.destroy();
        },
      );
      socket.on('error', reject);
    });
    server.close();
    expect(authorized).toBe(true);
  });

  it('signs with a CA and honours the validity dates', async () => {
    const ca = await createCertificate({ altNames: [], commonName: 'Test CA', isCa: true });
    const leaf = await createCertificate({
      altNames: ['localhost'],
      issuer: ca,
      notBefore: new Date('2020-01-01T00:00:00Z'),
      notAfter: new Date('2021-01-01T00:00:00Z'),
    });
    const info = describeCertificate(leaf.cert);
    expect(info.issuer).toBe('CN=Test CA');
    expect(info.validTo).toBe('2021-01-01T00:00:00.000Z');
  });

  it('normalises fingerprints in any case, with or without colons', () => {
    const hex = 'ab'.repeat(32);
    expect(normalizeFingerprint(hex)).toBe(Array(32).fill('AB').join(':'));
    expect(normalizeFingerprint(Array(32).fill('ab').join(':'))).toBe(Array(32).fill('AB').join(':'));
    expect(normalizeFingerprint('xyz')).toBeNull();
    expect(normalizeFingerprint(42)).toBeNull();
  });
});
