/**
 * The runtime's own limit for the proxy benchmark (bench/peers.ts): the
 * smallest Node proxy that forwards correctly, in its own process. Forked with
 * the upstream's origin as its argument; it listens on two 127.0.0.1 ports
 * (any free ones) and tells its parent `{proxyUrl, staticUrl}`:
 *
 * - proxy: each request goes to the upstream through undici's `Pool`
 *   (keep-alive, pipelining off, as many connections as requests in flight),
 *   status and headers copied, the body streamed both ways — no routing, no
 *   header rules, no tracing, no metrics;
 * - static: every request answered `200 ok`.
 *
 * It exits when the parent disconnects.
 */
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Pool } from 'undici';

/** What the minimal proxy sends its parent once listening. */
export interface MinimalProxyReady {
  proxyUrl: string;
  staticUrl: string;
}

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'host']);

async function main(): Promise<void> {
  const origin = process.argv[2];
  if (!origin) throw new Error('usage: minimal-proxy <upstream origin>');
  const pool = new Pool(origin, { pipelining: 1, keepAliveTimeout: 30_000 });
  const proxy = createServer((req, res) => {
    const headers: string[] = [];
    const raw = req.rawHeaders;
    for (let i = 0; i < raw.length; i += 2) {
      if (!HOP_BY_HOP.has(raw[i]!.toLowerCase())) headers.push(raw[i]!, raw[i + 1]!);
    }
    const hasBody =
      req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined;
    pool.stream(
      { method: req.method as 'GET', path: req.url ?? '/', headers, body: hasBody ? req : null },
      ({ statusCode, headers: upstreamHeaders }) => {
        const out: string[] = [];
        for (const name in upstreamHeaders) {
          const value = upstreamHeaders[name];
          if (value === undefined || HOP_BY_HOP.has(name)) continue;
          if (Array.isArray(value)) for (const v of value) out.push(name, v);
          else out.push(name, value);
        }
        res.writeHead(statusCode, out);
        return res;
      },
      (err) => {
        if (!err) return;
        if (res.headersSent) res.destroy();
        else res.writeHead(502).end();
      },
    );
  });
  const body = Buffer.from('ok');
  const answer = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8', 'content-length': '2' });
    res.end(body);
  });
  for (const server of [proxy, answer]) {
    server.keepAliveTimeout = 30_000;
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
  }
  process.once('disconnect', () => {
    for (const server of [proxy, answer]) server.closeAllConnections();
    void pool.close().finally(() => process.exit(0));
  });
  const url = (server: typeof proxy) => `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const ready: MinimalProxyReady = { proxyUrl: url(proxy), staticUrl: url(answer) };
  process.send!(ready);
}

main().catch((err: unknown) => {
  process.stderr.write(`minimal proxy failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
