/**
 * Data plane headers and paths under a hostile client:
 * - `X-Forwarded-Host` is the host the route matched, not whatever Host
 *   header came along with an absolute-form request;
 * - client-sent `Forwarded`, `X-Forwarded-*` and `X-Real-IP` reach the
 *   upstream only from a peer in the listener's `trustedProxies`;
 * - a path whose dot segments, encoded separators or `;` parameters would
 *   select another route is refused with 400 instead of routed.
 */
import { once } from 'node:events';
import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { useCleanups } from '../helpers/cleanup.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { configureProxy, startUpstream, type Upstream } from './proxy-helpers.js';

const cleanups = useCleanups();

async function setup(): Promise<{ server: TestServer; token: string }> {
  const server = await startTestServer();
  cleanups.push(() => server.close());
  const cookie = await server.setupAdmin();
  const token = await server.createToken(cookie, 'proxy-admin');
  return { server, token };
}

/** An upstream that answers with the request's path and headers as JSON. */
async function echoUpstream(): Promise<Upstream> {
  const upstream = await startUpstream((req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ url: req.url, headers: req.headers }));
  });
  cleanups.push(() => upstream.close());
  return upstream;
}

/** Sends one raw HTTP/1.1 request (exactly these bytes of request line and headers); resolves status and body. */
async function raw(
  port: number,
  target: string,
  headers: string[],
): Promise<{ status: number; body: string }> {
  const socket = net.connect(port, '127.0.0.1');
  await once(socket, 'connect');
  socket.write(
    `GET ${target} HTTP/1.1\r\n${headers.map((h) => `${h}\r\n`).join('')}Connection: close\r\n\r\n`,
  );
  let text = '';
  socket.setEncoding('utf8');
  for await (const chunk of socket) text += chunk;
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1]);
  const body = text.slice(text.indexOf('\r\n\r\n') + 4);
  return { status, body };
}

const SPOOFED = [
  'Forwarded: for=6.6.6.6;host=evil.example;proto=https',
  'X-Forwarded-For: 6.6.6.6',
  'X-Forwarded-Host: evil.example',
  'X-Forwarded-Proto: https',
  'X-Forwarded-Port: 8443',
  'X-Forwarded-Prefix: /evil',
  'X-Real-IP: 6.6.6.6',
];

describe('forwarding headers', () => {
  it('sets X-Forwarded-Host to the host the route matched, not a second Host header', async () => {
    const { server, token } = await setup();
    const upstream = await echoUpstream();
    const { port } = await configureProxy(
      server,
      token,
      { type: 'upstream', url: upstream.url },
      { host: 'app.example' },
    );
    const res = await raw(port, `http://app.example:${port}/x`, ['Host: other.example']);
    expect(res.status).toBe(200);
    const seen = JSON.parse(res.body);
    expect(seen.headers['x-forwarded-host']).toBe(`app.example:${port}`);
  });

  it('drops client forwarding headers from a peer outside trustedProxies', async () => {
    const { server, token } = await setup();
    const upstream = await echoUpstream();
    const { port } = await configureProxy(server, token, { type: 'upstream', url: upstream.url });
    const res = await raw(port, '/x', [`Host: app.example:${port}`, ...SPOOFED]);
    const { headers } = JSON.parse(res.body);
    expect(headers.forwarded).toBeUndefined();
    expect(headers['x-real-ip']).toBeUndefined();
    expect(headers['x-forwarded-port']).toBeUndefined();
    expect(headers['x-forwarded-prefix']).toBeUndefined();
    expect(headers['x-forwarded-for']).toBe('127.0.0.1');
    expect(headers['x-forwarded-proto']).toBe('http');
    expect(headers['x-forwarded-host']).toBe(`app.example:${port}`);
  });

  it('keeps them from a peer in trustedProxies, and validates the list', async () => {
    const { server, token } = await setup();
    const upstream = await echoUpstream();
    const { port, listenerId } = await configureProxy(server, token, { type: 'upstream', url: upstream.url });
    const bad = await server.request('PATCH', `/api/v1/proxy/listeners/${listenerId}`, {
      token,
      body: { trustedProxies: ['127.0.0.0/33'] },
    });
    expect([bad.status, bad.json.error.code]).toEqual([400, 'VALIDATION_FAILED']);
    const patched = await server.request('PATCH', `/api/v1/proxy/listeners/${listenerId}`, {
      token,
      body: { trustedProxies: ['127.0.0.0/8', '::1'] },
    });
    expect(patched.status).toBe(200);
    expect(patched.json.listener.trustedProxies).toEqual(['127.0.0.0/8', '::1/128']);
    const res = await raw(port, '/x', [`Host: app.example:${port}`, ...SPOOFED]);
    const { headers } = JSON.parse(res.body);
    expect(headers.forwarded).toBe('for=6.6.6.6;host=evil.example;proto=https');
    expect(headers['x-real-ip']).toBe('6.6.6.6');
    expect(headers['x-forwarded-for']).toBe('6.6.6.6, 127.0.0.1');
    expect(headers['x-forwarded-proto']).toBe('https');
    expect(headers['x-forwarded-host']).toBe('evil.example');
  });
});

describe('paths that read as another route', () => {
  async function twoRoutes() {
    const { server, token } = await setup();
    const upstream = await echoUpstream();
    const { port, listenerId } = await configureProxy(
      server,
      token,
      { type: 'upstream', url: upstream.url },
      { pathPrefix: '/public' },
    );
    const admin = await server.request('POST', '/api/v1/proxy/routes', {
      token,
      body: {
        listenerId,
        pathPrefix: '/admin',
        target: { type: 'static', status: 403, contentType: 'text/plain', body: 'no' },
      },
    });
    expect(admin.status).toBe(201);
    return { port, upstream };
  }

  it('answers 400 when dot segments, %2F, %5C or ; parameters would change the route', async () => {
    const { port, upstream } = await twoRoutes();
    for (const path of [
      '/public/../admin/x',
      '/public/%2e%2e/admin/x',
      '/public%2F..%2Fadmin/x',
      '/public/..%2Fadmin/x',
      '/public/..%5Cadmin/x',
      '/public/..;/admin/x',
      '/public;x/..;y/admin/x',
    ]) {
      const res = await raw(port, path, ['Host: app.example']);
      expect([path, res.status]).toEqual([path, 400]);
    }
    expect(upstream.seen).toHaveLength(0);
  });

  it('routes on the normalized path when every reading picks the same route', async () => {
    const { port, upstream } = await twoRoutes();
    const dotted = await raw(port, '/public/./a/%2e%2e/b', ['Host: app.example']);
    expect(JSON.parse(dotted.body).url).toBe('/public/b');
    const encoded = await raw(port, '/%70ublic/a%2Fb;v=1', ['Host: app.example']);
    expect(JSON.parse(encoded.body).url).toBe('/public/a%2Fb;v=1');
    // Unreserved characters are matched decoded: %61dmin is the admin route, not a way around it.
    const admin = await raw(port, '/%61dmin/x', ['Host: app.example']);
    expect(admin.status).toBe(403);
    expect(upstream.seen).toHaveLength(2);
  });
});
