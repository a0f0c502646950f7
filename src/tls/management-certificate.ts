/**
 * The management listener's certificate: the configured files, or a
 * self-signed certificate generated once into the data dir (SANs localhost,
 * 127.0.0.1, ::1 and the host name; valid ten years) and reused on restart.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createCertificate } from './certificates.js';

export const GENERATED_CERT_FILE = 'management-cert.pem';
export const GENERATED_KEY_FILE = 'management-key.pem';
const TEN_YEARS_MS = 10 * 365.25 * 24 * 3600 * 1000;

export interface ManagementCertificate {
  cert: string;
  key: string;
  certFile: string;
  generated: boolean;
}

export async function loadManagementCertificate(options: {
  dataDir: string;
  certFile: string | null;
  keyFile: string | null;
}): Promise<ManagementCertificate> {
  if (options.certFile && options.keyFile) {
    const [cert, key] = await Promise.all([
      fs.readFile(options.certFile, 'utf8'),
      fs.readFile(options.keyFile, 'utf8'),
    ]);
    return { cert, key, certFile: options.certFile, generated: false };
  }
  const certFile = path.join(options.dataDir, GENERATED_CERT_FILE);
  const keyFile = path.join(options.dataDir, GENERATED_KEY_FILE);
  try {
    const [cert, key] = await Promise.all([fs.readFile(certFile, 'utf8'), fs.readFile(keyFile, 'utf8')]);
    return { cert, key, certFile, generated: false };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const hostname = os.hostname();
  const altNames = ['localhost', '127.0.0.1', '::1'];
  if (hostname && !altNames.includes(hostname)) altNames.push(hostname);
  const notBefore = new Date(Date.now() - 60_000);
  const generated = await createCertificate({
    commonName: 'p2pstream management',
    altNames,
    notBefore,
    notAfter: new Date(notBefore.getTime() + TEN_YEARS_MS),
  });
  await fs.writeFile(keyFile, generated.key, { mode: 0o600 });
  await fs.writeFile(certFile, generated.cert, { mode: 0o644 });
  return { cert: generated.cert, key: generated.key, certFile, generated: true };
}
