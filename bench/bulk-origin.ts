/**
 * The origin of the streaming and tunnel benchmarks, run as its own child
 * process (forked by bench/relay.ts and bench/tunnel.ts) so neither the
 * plain-TLS baseline nor the proxied paths share a process with the client.
 * It answers every request with `?bytes=N` bytes (default 0) of `a`, written
 * in 64 KiB blocks under back-pressure, on TLS and on plain HTTP (the same
 * handler, two ports), and tells the parent `{url, httpUrl, cert}` once both
 * listen on 127.0.0.1 (any free ports). It exits when the parent disconnects.
 */
import { once } from 'node:events';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { createCertificate } from '../src/tls/certificates.js';

/** What the origin sends its parent once listening. */
export interface BulkOriginReady {
  /** `https://127.0.0.1:PORT`. */
  url: string;
  /** `http://127.0.0.1:PORT`: the same answers without TLS. */
  httpUrl: string;
  /** PEM of its self-signed certificate (SANs localhost, 127.0.0.1). */
  cert: string;
}

const block = Buffer.alloc(64 * 1024, 0x61);

async function answer(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const requested = Number(new URL(req.url ?? '/', 'https://origin').searchParams.get('bytes') ?? 0);
  const size = Number.isSafeInteger(requested) && requested > 0 ? requested : 0;
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(size) });
  let left = size;
  while (left > 0) {
    const chunk = left >= block.length ? block : block.subarray(0, left);
    left -= chunk.length;
    if (!res.write(chunk)) await once(res, 'drain');
    if (res.destroyed) return;
  }
  res.end();
}

async function main(): Promise<void> {
  const cert = await createCertificate({ altNames: ['localhost', '127.0.0.1'] });
  const servers = [https.createServer({ cert: cert.cert, key: cert.key }, answer), http.createServer(answer)];
  for (const server of servers) {
    server.keepAliveTimeout = 30_000;
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
  }
  process.once('disconnect', () => {
    let open = servers.length;
    for (const server of servers) {
      server.closeAllConnections();
      server.close(() => {
        if (--open === 0) process.exit(0);
      });
    }
  });
  const port = (i: number) => (servers[i]!.address() as AddressInfo).port;
  const ready: BulkOriginReady = {
    url: `https://127.0.0.1:${port(0)}`,
    httpUrl: `http://127.0.0.1:${port(1)}`,
    cert: cert.cert,
  };
  process.send!(ready);
}

main().catch((err: unknown) => {
  process.stderr.write(`bulk origin failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
