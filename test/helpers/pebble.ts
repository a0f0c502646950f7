/**
 * Starts Debian's pebble (the RFC 8555 test CA) and pebble-challtestsrv (its
 * DNS test server) on loopback in a temp dir, with real validation: pebble
 * resolves every name through the DNS server, which answers 127.0.0.1 for
 * any A query and serves the TXT records set through `setTxt`; HTTP-01 and
 * TLS-ALPN-01 validations connect to `httpPort` / `tlsPort` on 127.0.0.1
 * (the test's own listeners). The directory's TLS certificate is made by
 * the test; `directoryCaPem` is its CA. `close()` stops both processes and
 * waits for them to exit.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Agent, request } from 'undici';
import { createCertificate } from '../../src/tls/certificates.js';
import { freePort } from './processes.js';

export interface PebbleOptions {
  /** Port HTTP-01 validations connect to (an http listener of the test). */
  httpPort: number;
  /** Port TLS-ALPN-01 validations connect to (an https listener of the test). */
  tlsPort: number;
  /** Lifetime of issued certificates in seconds (pebble's default is about five years). */
  certificateValidityPeriod?: number;
}

export interface Pebble {
  directoryUrl: string;
  /** CA of the directory's own TLS certificate. */
  directoryCaPem: string;
  /** Sets a TXT record served to pebble (`fqdn` without trailing dot). */
  setTxt(fqdn: string, value: string): Promise<void>;
  clearTxt(fqdn: string): Promise<void>;
  /** What the processes printed, for failure messages. */
  output(): string;
  close(): Promise<void>;
}

export async function startPebble(options: PebbleOptions): Promise<Pebble> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-pebble-'));
  const ca = await createCertificate({
    commonName: 'pebble directory CA',
    altNames: ['pebble-ca'],
    isCa: true,
  });
  const leaf = await createCertificate({ altNames: ['127.0.0.1', 'localhost'], issuer: ca });
  await writeFile(path.join(dir, 'cert.pem'), leaf.cert);
  await writeFile(path.join(dir, 'key.pem'), leaf.key);
  const [acmePort, managementPort, dnsPort, challManagementPort] = [
    await freePort(),
    await freePort(),
    await freePort(),
    await freePort(),
  ];
  await writeFile(
    path.join(dir, 'pebble.json'),
    JSON.stringify({
      pebble: {
        listenAddress: `127.0.0.1:${acmePort}`,
        managementListenAddress: `127.0.0.1:${managementPort}`,
        certificate: path.join(dir, 'cert.pem'),
        privateKey: path.join(dir, 'key.pem'),
        httpPort: options.httpPort,
        tlsPort: options.tlsPort,
        ocspResponderURL: '',
        externalAccountBindingRequired: false,
        ...(options.certificateValidityPeriod
          ? { certificateValidityPeriod: options.certificateValidityPeriod }
          : {}),
      },
    }),
  );
  let output = '';
  const collect = (child: ChildProcess) => {
    child.stdout?.on('data', (chunk) => {
      output += chunk;
    });
    child.stderr?.on('data', (chunk) => {
      output += chunk;
    });
  };
  const children: ChildProcess[] = [];
  const stop = async () => {
    for (const child of children) {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = once(child, 'exit');
        child.kill('SIGTERM');
        await exited;
      }
    }
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const dns = spawn(
      'pebble-challtestsrv',
      [
        '-dns01',
        `127.0.0.1:${dnsPort}`,
        '-http01',
        '',
        '-https01',
        '',
        '-tlsalpn01',
        '',
        '-management',
        `127.0.0.1:${challManagementPort}`,
        '-defaultIPv4',
        '127.0.0.1',
        '-defaultIPv6',
        '',
      ],
      { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    children.push(dns);
    collect(dns);
    const pebble = spawn(
      'pebble',
      ['-config', path.join(dir, 'pebble.json'), '-dnsserver', `127.0.0.1:${dnsPort}`],
      {
        cwd: dir,
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, PEBBLE_VA_NOSLEEP: '1', PEBBLE_WFE_NONCEREJECT: '0', PEBBLE_AUTHZREUSE: '0' },
      },
    );
    children.push(pebble);
    collect(pebble);
    const dispatcher = new Agent({ connect: { ca: ca.cert } });
    const directoryUrl = `https://127.0.0.1:${acmePort}/dir`;
    const management = `http://127.0.0.1:${challManagementPort}`;
    const deadline = Date.now() + 15_000;
    for (;;) {
      try {
        const res = await request(directoryUrl, { dispatcher });
        await res.body.text();
        const chall = await request(`${management}/set-default-ipv4`, {
          method: 'POST',
          body: JSON.stringify({ ip: '127.0.0.1' }),
        });
        await chall.body.text();
        if (res.statusCode === 200 && chall.statusCode === 200) break;
      } catch {
        // Not listening yet.
      }
      if (Date.now() > deadline) throw new Error(`pebble did not start:\n${output}`);
      if (pebble.exitCode !== null || dns.exitCode !== null) throw new Error(`pebble exited:\n${output}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    await dispatcher.close();
    const post = async (pathname: string, body: unknown) => {
      const res = await request(`${management}${pathname}`, { method: 'POST', body: JSON.stringify(body) });
      await res.body.text();
      if (res.statusCode !== 200) throw new Error(`challtestsrv ${pathname}: ${res.statusCode}`);
    };
    return {
      directoryUrl,
      directoryCaPem: ca.cert,
      setTxt: (fqdn, value) => post('/set-txt', { host: `${fqdn}.`, value }),
      clearTxt: (fqdn) => post('/clear-txt', { host: `${fqdn}.` }),
      output: () => output,
      close: stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}
