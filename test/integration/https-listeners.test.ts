import { once } from 'node:events';
import { connect as http2Connect } from 'node:http2';
import { request as httpsRequest } from 'node:https';
import { connect as netConnect } from 'node:net';
import { Duplex } from 'node:stream';
import { connect as tlsConnect } from 'node:tls';
import { afterEach, describe, expect, it } from 'vitest';
import { DataPlane } from '../../src/dataplane/data-plane.js';
import type { ServingCertificate } from '../../src/domain/tls-types.js';
import { createLogger } from '../../src/logger.js';
import type { ListenerRecord, RouteRecord } from '../../src/storage/schema.js';
import { createCertificate, type GeneratedCertificate } from '../../src/tls/certificates.js';
import { freePort } from '../helpers/processes.js';
import { eventually } from '../helpers/wait.js';
import { proxyClient, startUpstream, type Upstream } from './proxy-helpers.js';

const NOW = new Date().toISOString();
const planes: DataPlane[] = [];
const upstreams: Upstream[] = [];

afterEach(async () => {
  for (const plane of planes.splice(0)) await plane.close();
  for (const upstream of upstreams.splice(0)) await upstream.close();
});

let ca: GeneratedCertificate | undefined;
async function testCa(): Promise<GeneratedCertificate> {
  ca ??= await createCertificate({ commonName: 'listener test CA', altNames: ['test-ca'], isCa: true });
  return ca;
}

async function serving(id: string, hosts: string[]): Promise<ServingCertificate & { der: Buffer }> {
  const cert = await createCertificate({
    altNames: hosts,
    issuer: await testCa(),
  });
  return {
    id,
    hosts,
    certificatePem: cert.cert,
    privateKeyPem: cert.key,
    fingerprintSha256: cert.fingerprintSha256,
    der: cert.der,
  };
}

function listener(id: string, fields: Partial<ListenerRecord> = {}): ListenerRecord {
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
    ...fields,
  };
}

function route(id: string, listenerId: string, target: RouteRecord['target'], pathPrefix = '/'): RouteRecord {
  return { id, listenerId, host: null, pathPrefix, priority: 0, target, createdAt: NOW, updatedAt: NOW };
}

async function startPlane(
  listeners: ListenerRecord[],
  routes: RouteRecord[],
  certificates: ServingCertificate[],
  httpsTimeouts: {
    handshakeTimeoutMs?: number;
    firstRequestTimeoutMs?: number;
    h2IdleTimeoutMs?: number;
  } = {},
): Promise<DataPlane> {
  const plane = new DataPlane({
    logger: createLogger('silent'),
    closeGraceMs: 2000,
    tlsHelloTimeoutMs: 300,
    httpsTimeouts,
  });
  planes.push(plane);
  plane.setCertificates(certificates);
  await plane.start({ listeners, routes });
  return plane;
}

/** A TLS handshake to the listener: the fingerprint of the certificate served, or the error code. */
async function handshake(
  port: number,
  servername: string | undefined,
  alpn: string[] = ['http/1.1'],
): Promise<{ fingerprint: string; alpn: string | false | null } | { error: string }> {
  const socket = tlsConnect({
    host: '127.0.0.1',
    port,
    ...(servername === undefined ? {} : { servername }),
    ca: (await testCa()).cert,
    ALPNProtocols: alpn,
    // The certificate's identity is checked by the assertions (which certificate was served).
    checkServerIdentity: () => undefined,
  });
  try {
    await once(socket, 'secureConnect');
    return { fingerprint: socket.getPeerX509Certificate()!.fingerprint256, alpn: socket.alpnProtocol };
  } catch (err) {
    return { error: (err as NodeJS.ErrnoException).code ?? String(err) };
  } finally {
    socket.destroy();
  }
}

/** One request over HTTP/2. */
async function h2Get(
  port: number,
  servername: string,
  path: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: Record<string, unknown>; text: string }> {
  const session = http2Connect(`https://127.0.0.1:${port}`, { ca: (await testCa()).cert, servername });
  try {
    const stream = session.request({ ':path': path, ...headers });
    const [head] = (await once(stream, 'response')) as [Record<string, unknown>];
    stream.setEncoding('utf8');
    let text = '';
    for await (const chunk of stream) text += chunk;
    return { status: head[':status'] as number, headers: head, text };
  } finally {
    session.close();
  }
}

/** The bytes of a TLS ClientHello for `servername`, as Node's client writes it. */
async function clientHelloBytes(servername: string): Promise<Buffer> {
  let client: ReturnType<typeof tlsConnect> | undefined;
  const bytes = await new Promise<Buffer>((resolve) => {
    const wire = new Duplex({
      read() {},
      write(chunk: Buffer, _encoding, callback) {
        resolve(Buffer.from(chunk));
        callback();
      },
    });
    client = tlsConnect({ socket: wire, servername, ALPNProtocols: ['h2'] });
    client.on('error', () => {});
  });
  client?.destroy();
  return bytes;
}

/** One request over HTTP/1.1 on TLS. */
async function h1Get(
  port: number,
  servername: string,
  path: string,
): Promise<{ status: number; headers: Record<string, unknown>; text: string; alpn: unknown }> {
  const req = httpsRequest({
    host: '127.0.0.1',
    port,
    path,
    servername,
    ca: (await testCa()).cert,
    agent: false,
    // Passed through to tls.connect.
    ...({ ALPNProtocols: ['http/1.1'] } as object),
  });
  req.end();
  const [res] = (await once(req, 'response')) as [import('node:http').IncomingMessage];
  res.setEncoding('utf8');
  let text = '';
  for await (const chunk of res) text += chunk;
  return {
    status: res.statusCode ?? 0,
    headers: res.headers,
    text,
    alpn: (res.socket as import('node:tls').TLSSocket).alpnProtocol,
  };
}

describe('https listeners', () => {
  it('serves h2 and http/1.1 by ALPN with the same routing, and traces the TLS parameters at level detailed', async () => {
    const site = await serving('c1', ['site.test']);
    const plane = await startPlane(
      [listener('l1')],
      [route('r1', 'l1', { type: 'static', status: 200, contentType: 'text/plain', body: 'hello' })],
      [site],
    );
    plane.recorder.configure({ enabled: true, level: 'detailed' });
    const port = plane.boundPort('l1')!;

    const viaH2 = await h2Get(port, 'site.test', '/a');
    expect(viaH2.status).toBe(200);
    expect(viaH2.text).toBe('hello');
    const viaH1 = await h1Get(port, 'site.test', '/b');
    expect(viaH1.status).toBe(200);
    expect(viaH1.text).toBe('hello');
    expect(viaH1.alpn).toBe('http/1.1');

    const [first, second] = plane.recorder.recent(2);
    expect(first).toMatchObject({ path: '/a', status: 200, host: 'site.test', httpVersion: '2.0' });
    expect(first!.tls).toMatchObject({
      sni: 'site.test',
      alpn: 'h2',
      version: expect.stringMatching(/^TLSv1\.[23]$/),
    });
    expect(first!.tls!.cipher).toEqual(expect.any(String));
    expect(second).toMatchObject({ path: '/b', status: 200, httpVersion: '1.1' });
    expect(second!.tls).toMatchObject({ sni: 'site.test', alpn: 'http/1.1' });

    // At level basic the event carries no tls field.
    plane.recorder.configure({ enabled: true, level: 'basic' });
    await h2Get(port, 'site.test', '/c');
    expect(plane.recorder.recent(1)[0]!.tls).toBeUndefined();
  });

  it('proxies HTTP/2 requests upstream as HTTP/1.1: forwarded headers, joined cookies, no pseudo-headers, streamed body', async () => {
    const upstream = await startUpstream((req, res) => {
      let body = '';
      req.setEncoding('utf8');
      req.on('data', (chunk) => {
        body += chunk;
      });
      req.on('end', () =>
        res.end(JSON.stringify({ headers: req.headers, body, method: req.method, url: req.url })),
      );
    });
    upstreams.push(upstream);
    const site = await serving('c1', ['api.test']);
    const plane = await startPlane(
      [listener('l1')],
      [route('r1', 'l1', { type: 'upstream', url: upstream.url })],
      [site],
    );
    const port = plane.boundPort('l1')!;
    const session = http2Connect(`https://127.0.0.1:${port}`, {
      ca: (await testCa()).cert,
      servername: 'api.test',
    });
    try {
      const stream = session.request({
        ':method': 'POST',
        ':path': '/echo?x=1',
        ':authority': 'api.test',
        cookie: ['a=1', 'b=2'],
        'content-type': 'text/plain',
      });
      stream.end('body over h2');
      const [head] = (await once(stream, 'response')) as [Record<string, unknown>];
      stream.setEncoding('utf8');
      let text = '';
      for await (const chunk of stream) text += chunk;
      expect(head[':status']).toBe(200);
      const seen = JSON.parse(text);
      expect(seen).toMatchObject({ method: 'POST', url: '/echo?x=1', body: 'body over h2' });
      expect(seen.headers).toMatchObject({
        'x-forwarded-proto': 'https',
        'x-forwarded-host': 'api.test',
        'x-forwarded-for': '127.0.0.1',
        cookie: 'a=1; b=2',
      });
      expect(Object.keys(seen.headers).some((name) => name.startsWith(':'))).toBe(false);
    } finally {
      session.close();
    }
  });

  it('selects the certificate by SNI: exact, then the longest wildcard, then the default, else the unrecognized_name alert', async () => {
    const exact = await serving('exact', ['www.example.test']);
    const wide = await serving('wide', ['*.example.test']);
    const narrow = await serving('narrow', ['*.b.example.test']);
    const fallback = await serving('fallback', ['fallback.test']);
    const plane = await startPlane(
      [listener('with-default', { defaultCertificateId: 'fallback' }), listener('strict')],
      [],
      [exact, wide, narrow, fallback],
    );
    const port = plane.boundPort('with-default')!;
    const strict = plane.boundPort('strict')!;

    expect(await handshake(port, 'www.example.test')).toMatchObject({ fingerprint: exact.fingerprintSha256 });
    expect(await handshake(port, 'WWW.Example.Test')).toMatchObject({ fingerprint: exact.fingerprintSha256 });
    expect(await handshake(port, 'x.b.example.test')).toMatchObject({
      fingerprint: narrow.fingerprintSha256,
    });
    expect(await handshake(port, 'y.example.test')).toMatchObject({ fingerprint: wide.fingerprintSha256 });
    expect(await handshake(port, 'other.test')).toMatchObject({ fingerprint: fallback.fingerprintSha256 });
    expect(await handshake(port, undefined)).toMatchObject({ fingerprint: fallback.fingerprintSha256 });
    // The bare suffix is not covered by its wildcard.
    expect(await handshake(port, 'example.test')).toMatchObject({ fingerprint: fallback.fingerprintSha256 });

    // Without a default: names that match are served, others get the alert, never another site's certificate.
    expect(await handshake(strict, 'y.example.test')).toMatchObject({ fingerprint: wide.fingerprintSha256 });
    expect(await handshake(strict, 'other.test')).toEqual({ error: 'ERR_SSL_TLSV1_UNRECOGNIZED_NAME' });
    expect(await handshake(strict, undefined)).toEqual({ error: 'ERR_SSL_TLSV1_UNRECOGNIZED_NAME' });
    expect(plane.certificateFor('strict', 'other.test')).toBeNull();
    expect(plane.certificateFor('with-default', 'other.test')).toBe('fallback');

    // ALPN: h2 preferred, http/1.1 offered.
    expect(await handshake(port, 'www.example.test', ['h2', 'http/1.1'])).toMatchObject({ alpn: 'h2' });
    expect(await handshake(port, 'www.example.test', ['http/1.1'])).toMatchObject({ alpn: 'http/1.1' });
  });

  it('swaps a certificate live: open connections keep working, the next handshake gets the new one', async () => {
    const before = await serving('c1', ['swap.test']);
    const plane = await startPlane(
      [listener('l1')],
      [route('r1', 'l1', { type: 'static', status: 200, contentType: 'text/plain', body: 'ok' })],
      [before],
    );
    const port = plane.boundPort('l1')!;
    const session = http2Connect(`https://127.0.0.1:${port}`, {
      ca: (await testCa()).cert,
      servername: 'swap.test',
    });
    try {
      const ask = async () => {
        const stream = session.request({ ':path': '/' });
        stream.setEncoding('utf8');
        let text = '';
        for await (const chunk of stream) text += chunk;
        return text;
      };
      expect(await ask()).toBe('ok');
      const after = await serving('c1', ['swap.test']);
      plane.setCertificates([after]);
      expect(await ask()).toBe('ok');
      expect(session.socket.destroyed).toBe(false);
      expect(await handshake(port, 'swap.test')).toMatchObject({ fingerprint: after.fingerprintSha256 });
      // A certificate that no longer covers the name: the alert, not the other certificate.
      plane.setCertificates([await serving('c2', ['else.test'])]);
      expect(await handshake(port, 'swap.test')).toEqual({ error: 'ERR_SSL_TLSV1_UNRECOGNIZED_NAME' });
      expect(await ask()).toBe('ok');
    } finally {
      session.close();
    }
  });

  it('redirects http to https with 308, sends HSTS on https, and answers pending ACME HTTP-01 tokens before either', async () => {
    const site = await serving('c1', ['site.test']);
    const plane = await startPlane(
      [
        listener('plain', { protocol: 'http', redirectHttps: true }),
        listener('secure', { hsts: true, defaultCertificateId: 'c1' }),
      ],
      [
        route('r1', 'plain', { type: 'static', status: 200, contentType: 'text/plain', body: 'plain' }),
        route('r2', 'secure', { type: 'static', status: 200, contentType: 'text/plain', body: 'secure' }),
      ],
      [site],
    );
    const plainPort = plane.boundPort('plain')!;
    const securePort = plane.boundPort('secure')!;
    const client = proxyClient();
    try {
      const redirected = await client.send(plainPort, '/path?q=1', { headers: { host: 'site.test' } });
      expect(redirected.status).toBe(308);
      expect(redirected.headers.location).toBe(`https://site.test:${securePort}/path?q=1`);

      const secure = await h2Get(securePort, 'site.test', '/');
      expect(secure.text).toBe('secure');
      expect(secure.headers['strict-transport-security']).toBe('max-age=31536000');
      const noRoute = await h1Get(securePort, 'site.test', '/');
      expect(noRoute.headers['strict-transport-security']).toBe('max-age=31536000');

      // An unknown token falls through to the redirect; a pending one is answered on every listener.
      const unknown = await client.send(plainPort, '/.well-known/acme-challenge/tok1', {
        headers: { host: 'site.test' },
      });
      expect(unknown.status).toBe(308);
      plane.setHttp01Challenge('tok1', 'tok1.thumbprint');
      const answered = await client.send(plainPort, '/.well-known/acme-challenge/tok1', {
        headers: { host: 'site.test' },
      });
      expect(answered.status).toBe(200);
      expect(answered.text).toBe('tok1.thumbprint');
      expect((await h2Get(securePort, 'site.test', '/.well-known/acme-challenge/tok1')).text).toBe(
        'tok1.thumbprint',
      );
      plane.setHttp01Challenge('tok1', null);
      expect(
        (await client.send(plainPort, '/.well-known/acme-challenge/tok1', { headers: { host: 'site.test' } }))
          .status,
      ).toBe(308);
    } finally {
      await client.close();
    }
  });

  it('presents the TLS-ALPN-01 challenge certificate only to acme-tls/1 handshakes for a pending name', async () => {
    const site = await serving('c1', ['site.test']);
    const plane = await startPlane([listener('l1')], [], [site]);
    const port = plane.boundPort('l1')!;
    const challenge = await createCertificate({ altNames: ['site.test'], issuer: await testCa() });
    // No challenge pending: the listener does not speak acme-tls/1.
    expect(await handshake(port, 'site.test', ['acme-tls/1'])).toEqual({
      error: 'ERR_SSL_TLSV1_ALERT_NO_APPLICATION_PROTOCOL',
    });
    plane.setTlsAlpn01Challenge('site.test', { cert: challenge.cert, key: challenge.key });
    expect(await handshake(port, 'site.test', ['acme-tls/1'])).toEqual({
      fingerprint: challenge.fingerprintSha256,
      alpn: 'acme-tls/1',
    });
    expect(await handshake(port, 'site.test', ['h2'])).toMatchObject({ fingerprint: site.fingerprintSha256 });
    plane.setTlsAlpn01Challenge('site.test', null);
    expect(await handshake(port, 'site.test', ['acme-tls/1'])).toEqual({
      error: 'ERR_SSL_TLSV1_ALERT_NO_APPLICATION_PROTOCOL',
    });
  });

  it('cuts a client that sends no ClientHello, or only part of one, and switches a port between http and https', async () => {
    const site = await serving('c1', ['switch.test']);
    const port = await freePort();
    const plane = await startPlane(
      [listener('l1', { port })],
      [route('r1', 'l1', { type: 'static', status: 200, contentType: 'text/plain', body: 'ok' })],
      [site],
    );
    for (const bytes of [Buffer.alloc(0), Buffer.from([0x16, 0x03, 0x01])]) {
      const socket = netConnect(port, '127.0.0.1');
      await once(socket, 'connect');
      socket.write(bytes);
      socket.resume();
      await once(socket, 'close');
    }
    expect((await h2Get(port, 'switch.test', '/')).text).toBe('ok');

    // The same port, now plain http; then https again.
    await plane.startListener(listener('l1', { port, protocol: 'http' }));
    const client = proxyClient();
    try {
      expect((await client.send(port, '/')).text).toBe('ok');
    } finally {
      await client.close();
    }
    await plane.startListener(listener('l1', { port }));
    expect(await handshake(port, 'switch.test')).toMatchObject({ fingerprint: site.fingerprintSha256 });
  });

  it('stops an https listener gracefully: a stream in flight finishes, new connections are refused', async () => {
    let release: (() => void) | undefined;
    const upstream = await startUpstream((_req, res) => {
      res.write('part1 ');
      release = () => res.end('part2');
    });
    upstreams.push(upstream);
    const site = await serving('c1', ['slow.test']);
    const plane = await startPlane(
      [listener('l1')],
      [route('r1', 'l1', { type: 'upstream', url: upstream.url })],
      [site],
    );
    const port = plane.boundPort('l1')!;
    const session = http2Connect(`https://127.0.0.1:${port}`, {
      ca: (await testCa()).cert,
      servername: 'slow.test',
    });
    session.on('error', () => {});
    const stream = session.request({ ':path': '/' });
    stream.setEncoding('utf8');
    let text = '';
    stream.on('data', (chunk) => {
      text += chunk;
    });
    await once(stream, 'response');
    await eventually(() => release !== undefined);
    await plane.stopListener('l1');
    expect(await handshake(port, 'slow.test')).toMatchObject({ error: 'ECONNREFUSED' });
    release!();
    await once(stream, 'end');
    expect(text).toBe('part1 part2');
    session.close();
  });
  it('closes connections that finish the handshake and then send no request, over http/1.1 and h2', async () => {
    const site = await serving('c1', ['quiet.test']);
    const plane = await startPlane(
      [listener('l1')],
      [route('r1', 'l1', { type: 'static', status: 200, contentType: 'text/plain', body: 'ok' })],
      [site],
      { handshakeTimeoutMs: 250, firstRequestTimeoutMs: 250, h2IdleTimeoutMs: 60_000 },
    );
    const port = plane.boundPort('l1')!;
    const ca = (await testCa()).cert;
    // A ClientHello, then nothing: the handshake never finishes.
    const stalled = netConnect(port, '127.0.0.1');
    stalled.on('error', () => {});
    await once(stalled, 'connect');
    stalled.write(await clientHelloBytes('quiet.test'));
    stalled.resume();
    await eventually(() => stalled.destroyed || stalled.closed);
    const connect = async (alpn: string) => {
      const socket = tlsConnect({
        host: '127.0.0.1',
        port,
        servername: 'quiet.test',
        ca,
        ALPNProtocols: [alpn],
      });
      socket.on('error', () => {});
      await once(socket, 'secureConnect');
      expect(socket.alpnProtocol).toBe(alpn);
      socket.resume();
      return socket;
    };
    // Silent after the handshake: http/1.1, h2 without even the connection preface.
    const silent1 = await connect('http/1.1');
    const silent2 = await connect('h2');
    // Half a request head, never finished (slowloris).
    const partial = await connect('http/1.1');
    partial.write('GET / HTTP/1.1\r\nHost: quiet.test\r\nX-Slow: ');
    // An h2 session that sends its preface and settings, but no stream.
    const session = http2Connect(`https://127.0.0.1:${port}`, { ca, servername: 'quiet.test' });
    session.on('error', () => {});
    await once(session, 'connect');
    for (const socket of [silent1, silent2, partial])
      await eventually(() => socket.destroyed || socket.closed);
    await eventually(() => session.closed || session.destroyed);
    // Clients that ask in time are answered, on both protocols.
    expect((await h2Get(port, 'quiet.test', '/')).text).toBe('ok');
    expect((await h1Get(port, 'quiet.test', '/')).text).toBe('ok');
  });

  it('closes an HTTP/1.1 keep-alive connection whose next request head does not complete', async () => {
    const site = await serving('c1', ['keep.test']);
    const plane = await startPlane(
      [listener('l1')],
      [route('r1', 'l1', { type: 'static', status: 200, contentType: 'text/plain', body: 'ok' })],
      [site],
      { firstRequestTimeoutMs: 250 },
    );
    const port = plane.boundPort('l1')!;
    const socket = tlsConnect({
      host: '127.0.0.1',
      port,
      servername: 'keep.test',
      ca: (await testCa()).cert,
      ALPNProtocols: ['http/1.1'],
    });
    socket.on('error', () => {});
    await once(socket, 'secureConnect');
    let received = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      received += chunk;
    });
    socket.write('GET / HTTP/1.1\r\nHost: keep.test\r\n\r\n');
    await eventually(() => received.endsWith('ok'));
    expect(received).toMatch(/^HTTP\/1\.1 200/);
    // The next head trickles in a byte at a time, fast enough for an idle timer, never complete.
    const drip = setInterval(() => socket.write('X'), 50);
    try {
      socket.write('GET / HTTP/1.1\r\nHost: keep.test\r\nX-Slow: ');
      await eventually(() => socket.destroyed || socket.closed);
    } finally {
      clearInterval(drip);
    }
  });

  it('closes an HTTP/2 session left without streams, never one with a stream still open', async () => {
    let release: (() => void) | undefined;
    const upstream = await startUpstream((_req, res) => {
      res.write('part1 ');
      release = () => res.end('part2');
    });
    upstreams.push(upstream);
    const site = await serving('c1', ['idle.test']);
    const plane = await startPlane(
      [listener('l1')],
      [
        route('r1', 'l1', { type: 'static', status: 200, contentType: 'text/plain', body: 'ok' }),
        route('r2', 'l1', { type: 'upstream', url: upstream.url }, '/slow'),
      ],
      [site],
      { firstRequestTimeoutMs: 200, h2IdleTimeoutMs: 250 },
    );
    const port = plane.boundPort('l1')!;
    const session = http2Connect(`https://127.0.0.1:${port}`, {
      ca: (await testCa()).cert,
      servername: 'idle.test',
    });
    session.on('error', () => {});
    let goaway = false;
    session.on('goaway', () => {
      goaway = true;
    });
    // A stream held open several idle periods long is left alone.
    const stream = session.request({ ':path': '/slow' });
    stream.setEncoding('utf8');
    let text = '';
    stream.on('data', (chunk: string) => {
      text += chunk;
    });
    await once(stream, 'response');
    await eventually(() => release !== undefined);
    // Time passing with the stream open is what is under test: several idle periods, and no GOAWAY.
    await new Promise((resolve) => setTimeout(resolve, 800));
    expect(session.closed).toBe(false);
    release!();
    await once(stream, 'end');
    expect(text).toBe('part1 part2');
    // Then, with no stream open, the session is told to go away and closes.
    await eventually(() => goaway && (session.closed || session.destroyed));
  });
});
