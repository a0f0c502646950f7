import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ariCertId, fetchSuggestedRenewal } from '../../src/tls/acme-issuer.js';
import { createCertificate } from '../../src/tls/certificates.js';

let server: Server | undefined;
let dir: string | undefined;

afterEach(async () => {
  if (server) {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server!.close(() => resolve()));
  }
  server = undefined;
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

/** The ARI id computed with openssl, independently of our code. */
async function opensslCertId(pem: string): Promise<string> {
  dir = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-ari-'));
  const file = path.join(dir, 'cert.pem');
  await writeFile(file, pem);
  const text = execFileSync(
    'openssl',
    ['x509', '-in', file, '-noout', '-serial', '-ext', 'authorityKeyIdentifier'],
    {
      encoding: 'utf8',
    },
  );
  const serialHex = /serial=([0-9A-F]+)/i.exec(text)![1]!;
  const keyIdHex = /(?:keyid:)?([0-9A-F]{2}(?::[0-9A-F]{2})+)/i.exec(
    text.split('Authority Key Identifier')[1]!,
  )![1]!;
  let serial = serialHex.length % 2 ? `0${serialHex}` : serialHex;
  if (Number.parseInt(serial.slice(0, 2), 16) >= 0x80) serial = `00${serial}`;
  return `${Buffer.from(keyIdHex.replace(/:/g, ''), 'hex').toString('base64url')}.${Buffer.from(serial, 'hex').toString('base64url')}`;
}

describe('ACME Renewal Information', () => {
  it('asks the directory for the renewal window of a certificate and picks a time inside it', async () => {
    const ca = await createCertificate({ commonName: 'ari CA', altNames: ['ari-ca'], isCa: true });
    const directoryCert = await createCertificate({ altNames: ['127.0.0.1'], issuer: ca });
    const issued = await createCertificate({ altNames: ['site.test'], issuer: ca });
    const expectedId = await opensslCertId(issued.cert);
    expect(ariCertId(issued.cert)).toBe(expectedId);

    const asked: string[] = [];
    let offersAri = true;
    server = createServer({ cert: directoryCert.cert, key: directoryCert.key }, (req, res) => {
      const port = (server!.address() as { port: number }).port;
      res.setHeader('content-type', 'application/json');
      if (req.url === '/dir') {
        res.end(
          JSON.stringify({
            newNonce: `https://127.0.0.1:${port}/nonce`,
            ...(offersAri ? { renewalInfo: `https://127.0.0.1:${port}/ari/` } : {}),
          }),
        );
        return;
      }
      if (req.url?.startsWith('/ari/')) {
        asked.push(req.url.slice('/ari/'.length));
        res.end(
          JSON.stringify({
            suggestedWindow: { start: '2027-01-10T00:00:00Z', end: '2027-01-12T00:00:00Z' },
          }),
        );
        return;
      }
      res.statusCode = 404;
      res.end('{}');
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as { port: number }).port;
    const account = { directoryUrl: `https://127.0.0.1:${port}/dir`, directoryCaPem: ca.cert };

    const suggested = await fetchSuggestedRenewal(account, issued.cert, () => 0.5);
    expect(suggested?.toISOString()).toBe('2027-01-11T00:00:00.000Z');
    expect(asked).toEqual([expectedId]);

    offersAri = false;
    expect(await fetchSuggestedRenewal(account, issued.cert)).toBeNull();
    // A certificate without an authority key identifier cannot be asked about.
    expect(ariCertId(ca.cert)).toBeNull();
    // The directory's TLS is verified: without its CA, nothing is asked.
    await expect(fetchSuggestedRenewal({ ...account, directoryCaPem: null }, issued.cert)).rejects.toThrow();
  });
});
