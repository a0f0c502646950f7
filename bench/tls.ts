/**
 * What public TLS costs (issue: https listeners), each figure a ratio
 * against a baseline measured in the same run, rounds interleaved:
 *
 * - keep-alive requests/s of an https listener serving a static route ÷ a
 *   bare node:https server answering the same body with the same
 *   certificate (both HTTP/1.1 over TLS, same client pool; goal ≥ 0.85);
 * - full TLS handshakes/s (no resumption) to the listener ÷ to the bare
 *   server (goal ≥ 0.9): the ClientHello read and SNI choice are the extra;
 * - handshakes/s with 1,000 certificates in the SNI index ÷ with 1
 *   (goal ≥ 0.95, i.e. at most 5 % cost).
 *
 * Client and servers share this process (and the machine's cores), so the
 * absolute rates in the notes are low; the ratios compare like with like.
 */
import { once } from 'node:events';
import { createServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { connect } from 'node:tls';
import { Pool } from 'undici';
import { DataPlane } from '../src/dataplane/data-plane.js';
import type { ServingCertificate } from '../src/domain/tls-types.js';
import { createLogger } from '../src/logger.js';
import type { ListenerRecord, RouteRecord } from '../src/storage/schema.js';
import { createCertificate, type GeneratedCertificate } from '../src/tls/certificates.js';
import { type BenchRow, nowMs, spread } from './harness.js';

export interface TlsBenchOptions {
  /** Keep-alive requests per target per round (default 6000). */
  requests?: number;
  /** Handshakes per target per round (default 600). */
  handshakes?: number;
  /** In flight at once (default 16). */
  concurrency?: number;
  rounds?: number;
  /** Certificates in the large SNI index (default 1000). */
  certificates?: number;
}

const NOW = new Date().toISOString();
const BODY = 'hello over tls\n';

function listener(id: string): ListenerRecord {
  return {
    id,
    name: id,
    bindAddress: '127.0.0.1',
    port: 0,
    enabled: true,
    protocol: 'https',
    defaultCertificateId: null,
    createdAt: NOW,
    updatedAt: NOW,
  };
}

function staticRoute(listenerId: string): RouteRecord {
  return {
    id: `${listenerId}-route`,
    listenerId,
    host: null,
    pathPrefix: '/',
    priority: 0,
    target: { type: 'static', status: 200, contentType: 'text/plain', body: BODY },
    createdAt: NOW,
    updatedAt: NOW,
  };
}

function serving(id: string, host: string, cert: GeneratedCertificate): ServingCertificate {
  return {
    id,
    hosts: [host],
    certificatePem: cert.cert,
    privateKeyPem: cert.key,
    fingerprintSha256: `${id}`,
  };
}

async function requestsPerSecond(
  pool: Pool,
  host: string,
  total: number,
  concurrency: number,
): Promise<number> {
  let next = 0;
  const started = nowMs();
  const worker = async () => {
    while (next < total) {
      next += 1;
      const res = await pool.request({ path: '/', method: 'GET', headers: { host } });
      await res.body.text();
      if (res.statusCode !== 200) throw new Error(`status ${res.statusCode}`);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return total / ((nowMs() - started) / 1000);
}

async function handshakesPerSecond(
  port: number,
  servername: string,
  ca: string,
  total: number,
  concurrency: number,
): Promise<number> {
  let next = 0;
  const started = nowMs();
  const worker = async () => {
    while (next < total) {
      next += 1;
      const socket = connect({ host: '127.0.0.1', port, servername, ca, ALPNProtocols: ['http/1.1'] });
      await once(socket, 'secureConnect');
      socket.destroy();
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return total / ((nowMs() - started) / 1000);
}

export async function benchTls(options: TlsBenchOptions = {}): Promise<BenchRow[]> {
  const requests = options.requests ?? 6000;
  const handshakes = options.handshakes ?? 600;
  const concurrency = options.concurrency ?? 16;
  const rounds = options.rounds ?? 3;
  const many = options.certificates ?? 1000;

  const ca = await createCertificate({ commonName: 'bench CA', altNames: ['bench-ca'], isCa: true });
  const site = await createCertificate({ altNames: ['site.bench'], issuer: ca });
  const others: GeneratedCertificate[] = [];
  // Distinct certificates for the large index (the chosen one sits in the middle).
  for (let i = 0; i < many - 1; i++)
    others.push(await createCertificate({ altNames: [`h${i}.bench`], issuer: ca }));

  const bare = createServer({ cert: site.cert, key: site.key }, (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': String(Buffer.byteLength(BODY)) });
    res.end(BODY);
  });
  bare.listen(0, '127.0.0.1');
  await once(bare, 'listening');
  const barePort = (bare.address() as AddressInfo).port;

  const one = new DataPlane({ logger: createLogger('silent') });
  one.setCertificates([serving('site', 'site.bench', site)]);
  await one.start({ listeners: [listener('one')], routes: [staticRoute('one')] });
  const onePort = one.boundPort('one')!;

  const large = new DataPlane({ logger: createLogger('silent') });
  const half = Math.floor(others.length / 2);
  large.setCertificates([
    ...others.slice(0, half).map((c, i) => serving(`o${i}`, `h${i}.bench`, c)),
    serving('site', 'site.bench', site),
    ...others.slice(half).map((c, i) => serving(`o${half + i}`, `h${half + i}.bench`, c)),
  ]);
  await large.start({ listeners: [listener('large')], routes: [staticRoute('large')] });
  const largePort = large.boundPort('large')!;

  const pool = (port: number) =>
    new Pool(`https://127.0.0.1:${port}`, {
      connections: concurrency,
      keepAliveTimeout: 10_000,
      connect: { ca: ca.cert, servername: 'site.bench' },
    });
  const barePool = pool(barePort);
  const onePool = pool(onePort);

  try {
    // Warm-up.
    await requestsPerSecond(barePool, 'site.bench', Math.min(500, requests), concurrency);
    await requestsPerSecond(onePool, 'site.bench', Math.min(500, requests), concurrency);
    const kaBare: number[] = [];
    const kaOurs: number[] = [];
    const hsBare: number[] = [];
    const hsOurs: number[] = [];
    const hsLarge: number[] = [];
    for (let round = 0; round < rounds; round++) {
      const keepAlive = [
        async () => kaBare.push(await requestsPerSecond(barePool, 'site.bench', requests, concurrency)),
        async () => kaOurs.push(await requestsPerSecond(onePool, 'site.bench', requests, concurrency)),
      ];
      for (let i = 0; i < keepAlive.length; i++) await keepAlive[(round + i) % keepAlive.length]!();
      // Handshakes: the three targets take turns in small slices, so load changes on the machine
      // fall on all of them alike; each target's rate is its handshakes over its own time.
      const ports = [barePort, onePort, largePort];
      const spent = [0, 0, 0];
      const slices = 10;
      const perSlice = Math.max(concurrency, Math.round(handshakes / slices));
      for (let slice = 0; slice < slices; slice++) {
        for (let k = 0; k < ports.length; k++) {
          const target = (slice + k) % ports.length;
          const rate = await handshakesPerSecond(
            ports[target]!,
            'site.bench',
            ca.cert,
            perSlice,
            concurrency,
          );
          spent[target]! += perSlice / rate;
        }
      }
      hsBare.push((perSlice * slices) / spent[0]!);
      hsOurs.push((perSlice * slices) / spent[1]!);
      hsLarge.push((perSlice * slices) / spent[2]!);
    }
    const ratio = (a: number[], b: number[]) => spread(a.map((v, i) => v / b[i]!));
    const keepAliveRatio = ratio(kaOurs, kaBare);
    const handshakeRatio = ratio(hsOurs, hsBare);
    const sniRatio = ratio(hsLarge, hsOurs);
    const med = (values: number[]) => Math.round(spread(values).median);
    return [
      {
        group: 'tls',
        metric: 'https listener keep-alive req/s ÷ bare node https',
        value: keepAliveRatio,
        unit: '×',
        goal: '≥ 0.85',
        met: keepAliveRatio.median >= 0.85,
        note: `static route, HTTP/1.1 over TLS, ${concurrency} connections: ${med(kaOurs)} vs ${med(kaBare)} req/s (client in the same process)`,
      },
      {
        group: 'tls',
        metric: 'https listener full handshakes/s ÷ bare node https',
        value: handshakeRatio,
        unit: '×',
        goal: '≥ 0.9',
        met: handshakeRatio.median >= 0.9,
        note: `ECDSA P-256, TLS 1.3, no resumption, ${concurrency} in flight: ${med(hsOurs)} vs ${med(hsBare)} handshakes/s`,
      },
      {
        group: 'tls',
        metric: `handshakes/s with ${many} certificates ÷ with 1`,
        value: sniRatio,
        unit: '×',
        goal: '≥ 0.95',
        met: sniRatio.median >= 0.95,
        note: `SNI index of ${many} certificates, the chosen one in the middle: ${med(hsLarge)} vs ${med(hsOurs)} handshakes/s`,
      },
    ];
  } finally {
    await barePool.close();
    await onePool.close();
    await one.close();
    await large.close();
    bare.closeAllConnections();
    await new Promise<void>((resolve) => bare.close(() => resolve()));
  }
}
