/**
 * The TLS origin of the streaming benchmark, run as its own child process
 * (forked by bench/relay.ts) so neither the plain-TLS baseline nor the agent
 * path shares a process with the reading client. It answers every request
 * with `?bytes=N` bytes (default 0) of `a`, written in 64 KiB blocks under
 * back-pressure, and tells the parent `{url, cert}` once it listens on
 * 127.0.0.1 (any free port). It exits when the parent disconnects.
 */
import { once } from 'node:events';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { createCertificate } from '../src/tls/certificates.js';

/** What the origin sends its parent once listening. */
export interface BulkOriginReady {
  url: string;
  /** PEM of its self-signed certificate (SANs localhost, 127.0.0.1). */
  cert: string;
}

async function main(): Promise<void> {
  const cert = await createCertificate({ altNames: ['localhost', '127.0.0.1'] });
  const block = Buffer.alloc(64 * 1024, 0x61);
  const server = https.createServer({ cert: cert.cert, key: cert.key }, async (req, res) => {
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
  });
  server.keepAliveTimeout = 30_000;
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  process.once('disconnect', () => {
    server.closeAllConnections();
    server.close(() => process.exit(0));
  });
  const ready: BulkOriginReady = {
    url: `https://127.0.0.1:${(server.address() as AddressInfo).port}`,
    cert: cert.cert,
  };
  process.send!(ready);
}

main().catch((err: unknown) => {
  process.stderr.write(`bulk origin failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
