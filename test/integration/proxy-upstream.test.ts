import { once } from 'node:events';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { useCleanups } from '../helpers/cleanup.js';
import { freePort } from '../helpers/processes.js';
import type { TestServer } from '../helpers/server.js';
import { configureProxy, eventually, startProxyTest, startUpstream } from './proxy-helpers.js';

const cleanups = useCleanups();

async function lastEvent(s: TestServer, token: string) {
  const res = await s.request('GET', '/api/v1/traffic/recent?limit=1', { token });
  return res.json.events[0];
}

/** A GET through node:http (any headers allowed), answering the response object. */
async function rawGet(
  port: number,
  path: string,
  headers: Record<string, string> = {},
): Promise<IncomingMessage> {
  const req = httpRequest({ host: '127.0.0.1', port, path, headers, agent: false });
  req.end();
  const [res] = (await once(req, 'response')) as [IncomingMessage];
  return res;
}

async function bodyOf(res: IncomingMessage): Promise<string> {
  let text = '';
  res.setEncoding('utf8');
  for await (const chunk of res) text += chunk;
  return text;
}

/** Waits until `read()` has not changed for `quietMs` and returns its value. */
async function settled(read: () => number, quietMs = 300): Promise<number> {
  let last = read();
  let since = Date.now();
  while (Date.now() - since < quietMs) {
    await new Promise((resolve) => setTimeout(resolve, 25));
    const now = read();
    if (now !== last) {
      last = now;
      since = Date.now();
    }
  }
  return last;
}

const MB = 1024 * 1024;

describe('proxying to an upstream', () => {
  it('forwards method, path, query and body with X-Forwarded-* and without hop-by-hop headers, both ways', async () => {
    const { server, token } = await startProxyTest(cleanups);
    const upstream = await startUpstream(async (req, res) => {
      let body = '';
      for await (const chunk of req) body += chunk;
      res.setHeader('connection', 'keep-alive, x-upstream-hop');
      res.setHeader('x-upstream-hop', 'private');
      res.setHeader('x-upstream-kept', 'yes');
      res.setHeader('set-cookie', ['a=1', 'b=2']);
      res.end(JSON.stringify({ method: req.method, url: req.url, headers: req.headers, body }));
    }, cleanups);
    const { port } = await configureProxy(server, token, { type: 'upstream', url: `${upstream.url}/base` });
    const req = httpRequest({
      host: '127.0.0.1',
      port,
      method: 'POST',
      path: '/orders/7?expand=items',
      agent: false,
      headers: {
        host: `app.test:${port}`,
        connection: 'keep-alive, x-client-hop',
        'x-client-hop': 'private',
        te: 'trailers',
        'proxy-authorization': 'Basic cHJveHk6cHJveHk=',
        'x-forwarded-for': '203.0.113.9',
        'x-kept': 'yes',
        'content-type': 'application/json',
        'content-length': '11',
      },
    });
    req.end('{"qty": 3} ');
    const [res] = (await once(req, 'response')) as [IncomingMessage];
    const echoed = JSON.parse(await bodyOf(res));
    expect(res.statusCode).toBe(200);
    expect(echoed).toMatchObject({ method: 'POST', url: '/base/orders/7?expand=items', body: '{"qty": 3} ' });
    expect(echoed.headers).toMatchObject({
      host: `127.0.0.1:${upstream.port}`,
      // The client's own X-Forwarded-For is dropped: 127.0.0.1 is not among the listener's trustedProxies.
      'x-forwarded-for': '127.0.0.1',
      'x-forwarded-proto': 'http',
      'x-forwarded-host': `app.test:${port}`,
      'x-kept': 'yes',
      'content-length': '11',
    });
    for (const name of ['x-client-hop', 'te', 'proxy-authorization'])
      expect(echoed.headers).not.toHaveProperty(name);
    expect(res.headers['x-upstream-kept']).toBe('yes');
    expect(res.headers['set-cookie']).toEqual(['a=1', 'b=2']);
    expect(res.headers).not.toHaveProperty('x-upstream-hop');

    const event = await lastEvent(server, token);
    expect(event).toMatchObject({
      method: 'POST',
      host: 'app.test',
      path: '/orders/7',
      status: 200,
      bytesIn: 11,
      target: `${upstream.url}/base`,
      clientIp: '127.0.0.1',
      error: null,
    });
    expect(event.bytesOut).toBe(Number(res.headers['content-length']));
  });

  it('keeps upstream connections alive across requests', async () => {
    const { server, token, client } = await startProxyTest(cleanups);
    const upstream = await startUpstream((_req, res) => res.end('ok'), cleanups);
    let connections = 0;
    upstream.server.on('connection', () => {
      connections += 1;
    });
    const { port } = await configureProxy(server, token, { type: 'upstream', url: upstream.url });
    for (let i = 0; i < 10; i++) expect((await client.send(port, `/${i}`)).text).toBe('ok');
    expect(connections).toBe(1);
  });

  it('resolves dot segments before routing, and refuses those that would change the route', async () => {
    const { server, token } = await startProxyTest(cleanups);
    const upstream = await startUpstream((req, res) => res.end(`upstream ${req.url}`), cleanups);
    const { port, listenerId } = await configureProxy(
      server,
      token,
      { type: 'upstream', url: upstream.url },
      { pathPrefix: '/public' },
    );
    await server.request('POST', '/api/v1/proxy/routes', {
      token,
      body: {
        listenerId,
        pathPrefix: '/admin',
        target: { type: 'static', status: 403, contentType: 'text/plain', body: 'no' },
      },
    });
    // Routed as /admin, read as /public by anything that does not resolve it: refused.
    const res = await rawGet(port, '/public/../admin/x');
    expect(res.statusCode).toBe(400);
    await bodyOf(res);
    const ok = await rawGet(port, '/public/./a/%2e%2e/b');
    expect(await bodyOf(ok)).toBe('upstream /public/b');
    const doubled = await rawGet(port, '//public/./c');
    expect(doubled.statusCode).toBe(404);
    await bodyOf(doubled);
  });

  it('streams a 100 MB response end to end: a paused reader holds the upstream back', async () => {
    const { server, token } = await startProxyTest(cleanups);
    const total = 100 * MB;
    const chunk = Buffer.alloc(64 * 1024, 7);
    let written = 0;
    const upstream = await startUpstream(async (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(total) });
      while (written < total) {
        written += chunk.length;
        if (!res.write(chunk)) await once(res, 'drain');
      }
      res.end();
    }, cleanups);
    const { port } = await configureProxy(server, token, { type: 'upstream', url: upstream.url });
    const res = await rawGet(port, '/big');
    let received = 0;
    res.on('data', (c: Buffer) => {
      received += c.length;
    });
    await once(res, 'data');
    res.pause();
    const sent = await settled(() => written);
    // Everything in flight sits in socket buffers and stream high-water marks, nowhere near the body.
    const inFlight = sent - received;
    expect(sent).toBeLessThan(total);
    expect(inFlight).toBeLessThan(40 * MB);
    res.resume();
    await once(res, 'end');
    expect(received).toBe(total);
    await eventually(async () => (await lastEvent(server, token))?.bytesOut === total);
  });

  it('streams a 100 MB request body end to end: a paused upstream holds the client back', async () => {
    const { server, token } = await startProxyTest(cleanups);
    const total = 100 * MB;
    let upstreamRead = 0;
    let upstreamReq: IncomingMessage | undefined;
    const upstream = await startUpstream((req, res) => {
      upstreamReq = req;
      req.pause();
      req.on('data', (c: Buffer) => {
        upstreamRead += c.length;
      });
      req.on('end', () => res.end(String(upstreamRead)));
    }, cleanups);
    const { port } = await configureProxy(server, token, { type: 'upstream', url: upstream.url });
    const req = httpRequest({
      host: '127.0.0.1',
      port,
      method: 'PUT',
      path: '/upload',
      agent: false,
      headers: { 'content-length': String(total) },
    });
    const chunk = Buffer.alloc(64 * 1024, 1);
    let clientWritten = 0;
    let writing = true;
    const writer = (async () => {
      while (clientWritten < total && writing) {
        clientWritten += chunk.length;
        if (!req.write(chunk)) await once(req, 'drain');
      }
      req.end();
    })();
    await eventually(() => upstreamReq !== undefined);
    const sent = await settled(() => clientWritten);
    expect(sent).toBeLessThan(total);
    expect(sent - upstreamRead).toBeLessThan(40 * MB);
    const responded = once(req, 'response') as Promise<[IncomingMessage]>;
    upstreamReq!.resume();
    await writer;
    writing = false;
    const [res] = await responded;
    expect(await bodyOf(res)).toBe(String(total));
    await eventually(async () => (await lastEvent(server, token))?.bytesIn === total);
  });

  it('answers 502 for a refused or reset upstream and 504 for a silent one, each traced with its kind', async () => {
    const { server, token, client } = await startProxyTest(cleanups);
    const silent: Socket[] = [];
    const upstream = await startUpstream((req, res) => {
      if (req.url === '/reset') req.socket.destroy();
      else if (req.url === '/cut') {
        res.writeHead(200, { 'content-length': '1000' });
        res.write('partial');
        setTimeout(() => req.socket.destroy(), 20);
      } else silent.push(req.socket);
    }, cleanups);
    const refusedPort = await freePort();
    const refused = await configureProxy(server, token, {
      type: 'upstream',
      url: `http://127.0.0.1:${refusedPort}`,
    });
    const res502 = await client.send(refused.port, '/x');
    expect(res502.status).toBe(502);
    expect(await lastEvent(server, token)).toMatchObject({
      status: 502,
      error: 'upstream_refused',
      routeId: refused.routeId,
    });

    const timing = await configureProxy(server, token, {
      type: 'upstream',
      url: upstream.url,
      timeoutMs: 300,
    });
    const res504 = await client.send(timing.port, '/slow');
    expect(res504.status).toBe(504);
    const timedOut = await lastEvent(server, token);
    expect(timedOut).toMatchObject({ status: 504, error: 'upstream_timeout' });
    expect(timedOut.durationMs).toBeGreaterThanOrEqual(250);

    const reset = await client.send(timing.port, '/reset');
    expect(reset.status).toBe(502);
    expect(await lastEvent(server, token)).toMatchObject({ status: 502, error: 'upstream_reset' });

    // A failure after the answer started cuts the client connection, traced as such.
    const cut = await rawGet(timing.port, '/cut');
    expect(cut.statusCode).toBe(200);
    await expect(bodyOf(cut)).rejects.toThrow();
    await eventually(async () => (await lastEvent(server, token))?.error === 'upstream_aborted');

    const overview = await server.request('GET', '/api/v1/overview', { token });
    expect(overview.json.errors.last5m).toBe(4);
    expect(overview.json.requests.last5m).toBe(4);
    for (const socket of silent) socket.destroy();
  });

  it('cancels the upstream exchange when the client goes away', async () => {
    const { server, token } = await startProxyTest(cleanups);
    let upstreamClosed = false;
    const upstream = await startUpstream((_req, res) => {
      res.writeHead(200);
      const timer = setInterval(() => res.write('tick\n'), 10);
      res.on('close', () => {
        clearInterval(timer);
        upstreamClosed = true;
      });
    }, cleanups);
    const { port } = await configureProxy(server, token, { type: 'upstream', url: upstream.url });
    const res = await rawGet(port, '/forever');
    await once(res, 'data');
    res.destroy();
    await eventually(() => upstreamClosed);
    await eventually(async () => (await lastEvent(server, token))?.error === 'client_aborted');
  });
});
