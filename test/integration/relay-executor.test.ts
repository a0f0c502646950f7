import { createHash } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { AppError } from '../../src/errors.js';
import { createDirectTransport, type DirectTransport } from '../../src/relay/direct-transport.js';
import type { RelayResponse, TrustMetadata } from '../../src/relay/transport.js';
import { createCertificate, fingerprintOf, type GeneratedCertificate } from '../../src/tls/certificates.js';
import { useCleanups } from '../helpers/cleanup.js';
import {
  closedPort,
  pinTo as pin,
  type SilentTarget,
  startSilentTarget,
  startTlsTarget,
  type TlsTargetOptions,
} from '../helpers/tls-target.js';
import { eventually } from '../helpers/wait.js';

const DAY = 24 * 3600 * 1000;

let good: GeneratedCertificate;
let impostor: GeneratedCertificate;
let expired: GeneratedCertificate;
let otherHost: GeneratedCertificate;
let ca: GeneratedCertificate;
let caLeaf: GeneratedCertificate;
let caImpostor: GeneratedCertificate;

beforeAll(async () => {
  [good, impostor, otherHost, ca] = await Promise.all([
    createCertificate({ altNames: ['localhost', '127.0.0.1'] }),
    createCertificate({ altNames: ['localhost', '127.0.0.1'] }),
    createCertificate({ altNames: ['other.example'] }),
    createCertificate({ altNames: [], commonName: 'p2pstream test CA', isCa: true }),
  ]);
  expired = await createCertificate({
    altNames: ['localhost', '127.0.0.1'],
    notBefore: new Date(Date.now() - 30 * DAY),
    notAfter: new Date(Date.now() - DAY),
  });
  [caLeaf, caImpostor] = await Promise.all([
    createCertificate({ altNames: ['127.0.0.1'], issuer: ca }),
    createCertificate({ altNames: ['127.0.0.1'], issuer: ca }),
  ]);
});

// Transports first: the targets' close() then proves no connection was left open.
const cleanups = useCleanups();

async function target(options: Partial<TlsTargetOptions> & { certificate?: GeneratedCertificate } = {}) {
  const certificate = options.certificate ?? good;
  const t = await startTlsTarget({ cert: certificate.cert, key: certificate.key, ...options });
  cleanups.push(() => t.close());
  return t;
}

function transport(options: Parameters<typeof createDirectTransport>[0] = {}): DirectTransport {
  const t = createDirectTransport(options);
  cleanups.push(() => t.close());
  return t;
}

/** What a caller sends that must never reach an impostor. */
const SECRET: [string, string][] = [['authorization', 'Bearer secret-token']];

/** A GET of `url` pinned to `trust`, through `relay` (a new transport by default). */
function pinnedGet(
  url: string,
  trust: TrustMetadata,
  options: {
    relay?: DirectTransport;
    headers?: [string, string][];
    timeoutMs?: number;
    signal?: AbortSignal;
  } = {},
): Promise<RelayResponse> {
  const { relay = transport(), headers = [], timeoutMs = 5000, signal } = options;
  return relay.request({ url, method: 'GET', headers, timeoutMs, trust, ...(signal ? { signal } : {}) });
}

async function readAll(response: RelayResponse): Promise<Buffer> {
  const chunks: Uint8Array[] = [];
  for await (const chunk of response.body) chunks.push(chunk);
  return Buffer.concat(chunks);
}

async function expectCode(promise: Promise<unknown>, code: string): Promise<AppError> {
  const err = await promise.then(
    () => {
      throw new Error(`expected ${code}, got a result`);
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(AppError);
  expect((err as AppError).code).toBe(code);
  return err as AppError;
}

describe('discovery', () => {
  it('reads the certificate chain and sends no application byte', async () => {
    const t = await target();
    const result = await transport().discover({ url: t.url, timeoutMs: 5000 });
    expect(result.certificate.fingerprintSha256).toBe(good.fingerprintSha256);
    expect(Buffer.from(result.chain[0] as Uint8Array).equals(good.der)).toBe(true);
    expect(result.expired).toBe(false);
    expect(result.hostnameMatches).toBe(true);
    expect(t.connections).toBe(1);
    expect(t.receivedBytes).toBe(0);
  });

  it('sends SNI for a host name and none for an IP address', async () => {
    const t = await target();
    const relay = transport();
    await relay.discover({ url: `https://localhost:${t.port}`, timeoutMs: 5000 });
    await relay.discover({ url: t.url, timeoutMs: 5000 });
    expect(t.servernames).toEqual(['localhost']);
    expect(t.receivedBytes).toBe(0);
  });

  it('reports an expired certificate and one not valid for the host', async () => {
    const relay = transport();
    const old = await target({ certificate: expired });
    const elsewhere = await target({ certificate: otherHost });
    const a = await relay.discover({ url: old.url, timeoutMs: 5000 });
    expect(a.expired).toBe(true);
    expect(a.hostnameMatches).toBe(true);
    const b = await relay.discover({ url: elsewhere.url, timeoutMs: 5000 });
    expect(b.expired).toBe(false);
    expect(b.hostnameMatches).toBe(false);
    expect(old.receivedBytes + elsewhere.receivedBytes).toBe(0);
  });

  it('returns the whole chain of a CA-issued certificate, leaf first', async () => {
    const t = await target({ certificate: caLeaf, cert: `${caLeaf.cert}\n${ca.cert}` });
    const result = await transport().discover({ url: t.url, timeoutMs: 5000 });
    expect(result.chain.map((der) => createHash('sha256').update(der).digest('hex'))).toEqual(
      [caLeaf.der, ca.der].map((der) => createHash('sha256').update(der).digest('hex')),
    );
  });

  it('times out against a target that never answers the handshake, and closes the socket', async () => {
    const silent: SilentTarget = await startSilentTarget();
    cleanups.push(() => silent.close());
    await expectCode(transport().discover({ url: silent.url, timeoutMs: 300 }), 'ENVIRONMENT_TIMEOUT');
    await silent.waitForOpenSockets(0);
  });

  it('reports a closed port as unreachable', async () => {
    const port = await closedPort();
    await expectCode(
      transport().discover({ url: `https://127.0.0.1:${port}`, timeoutMs: 2000 }),
      'ENVIRONMENT_UNREACHABLE',
    );
  });
});

describe('pinned requests', () => {
  it('succeed with the right pin and relay method, path, query, headers and body', async () => {
    const t = await target({
      handler: (req, res) => {
        const chunks: Buffer[] = [];
        req.on('data', (c: Buffer) => chunks.push(c));
        req.on('end', () => {
          res.writeHead(201, { 'content-type': 'application/json', 'x-reply': 'yes' });
          res.end(
            JSON.stringify({
              method: req.method,
              url: req.url,
              auth: req.headers.authorization,
              repeated: req.headers['x-repeat'],
              host: req.headers.host,
              body: Buffer.concat(chunks).toString(),
            }),
          );
        });
      },
    });
    const response = await transport().request({
      url: `${t.url}/api/v1/things?x=1&y=2`,
      method: 'POST',
      headers: [
        ['authorization', 'Bearer secret-token'],
        ['x-repeat', 'a'],
        ['x-repeat', 'b'],
        ['content-type', 'application/json'],
        ['connection', 'close'],
      ],
      body: Buffer.from('{"hello":"world"}'),
      timeoutMs: 5000,
      trust: pin(good),
    });
    expect(response.status).toBe(201);
    expect(response.headers).toContainEqual(['x-reply', 'yes']);
    expect(response.headers.find(([name]) => name === 'connection')).toBeUndefined();
    const echoed = JSON.parse((await readAll(response)).toString());
    expect(echoed).toEqual({
      method: 'POST',
      url: '/api/v1/things?x=1&y=2',
      auth: 'Bearer secret-token',
      repeated: 'a, b',
      host: `127.0.0.1:${t.port}`,
      body: '{"hello":"world"}',
    });
    expect(t.received().toString()).toContain('Bearer secret-token');
  });

  it('accept a pin given in lower case without colons', async () => {
    const t = await target();
    const response = await pinnedGet(t.url, {
      ...pin(good),
      fingerprintSha256: good.fingerprintSha256.replace(/:/g, '').toLowerCase(),
    });
    expect((await readAll(response)).toString()).toBe('ok');
  });

  it('refuse an impostor certificate inside the handshake: CERTIFICATE_CHANGED, zero bytes sent', async () => {
    const t = await target({ certificate: impostor });
    const err = await expectCode(
      pinnedGet(`${t.url}/api/v1/system/info`, pin(good), { headers: SECRET }),
      'CERTIFICATE_CHANGED',
    );
    expect(err.details?.observedCertificate).toMatchObject({ fingerprintSha256: impostor.fingerprintSha256 });
    expect(t.connections).toBeGreaterThan(0);
    expect(t.receivedBytes).toBe(0);
  });

  it('refuse a pinned "certificate" that is not one, even when its hash is the pin: zero bytes sent', async () => {
    // The executor no longer parses the pinned DER on each request; a garbage DER must still fail
    // before any request byte, because the presented leaf is not what the pin names.
    const t = await target();
    const garbage = Buffer.from('this is not a DER certificate at all');
    const err = await expectCode(
      pinnedGet(
        t.url,
        { fingerprintSha256: fingerprintOf(garbage), expectedHostname: '127.0.0.1', certificateDer: garbage },
        { headers: SECRET },
      ),
      'CERTIFICATE_CHANGED',
    );
    expect(err).toBeInstanceOf(AppError);
    expect(t.receivedBytes).toBe(0);
  });

  it('refuse an expired pinned certificate: CERTIFICATE_EXPIRED, zero bytes sent', async () => {
    const t = await target({ certificate: expired });
    const err = await expectCode(pinnedGet(t.url, pin(expired), { headers: SECRET }), 'CERTIFICATE_EXPIRED');
    expect(err.details?.observedCertificate).toMatchObject({ fingerprintSha256: expired.fingerprintSha256 });
    expect(t.receivedBytes).toBe(0);
  });

  it('refuse a pinned certificate not valid for the host: CERTIFICATE_HOSTNAME_MISMATCH, zero bytes', async () => {
    const t = await target({ certificate: otherHost });
    const err = await expectCode(
      pinnedGet(t.url, pin(otherHost, '127.0.0.1'), { headers: SECRET }),
      'CERTIFICATE_HOSTNAME_MISMATCH',
    );
    expect(err.details?.observedCertificate).toMatchObject({
      fingerprintSha256: otherHost.fingerprintSha256,
    });
    expect(t.receivedBytes).toBe(0);
  });

  it('prefer CERTIFICATE_CHANGED when an impostor is also expired', async () => {
    const t = await target({ certificate: expired });
    await expectCode(pinnedGet(t.url, pin(good)), 'CERTIFICATE_CHANGED');
    expect(t.receivedBytes).toBe(0);
  });

  it('anchor on a pinned CA-issued leaf and refuse another leaf of the same CA', async () => {
    const real = await target({ certificate: caLeaf, cert: `${caLeaf.cert}\n${ca.cert}` });
    const relay = transport();
    const ok = await pinnedGet(real.url, pin(caLeaf), { relay });
    expect((await readAll(ok)).toString()).toBe('ok');
    const sibling = await target({ certificate: caImpostor, cert: `${caImpostor.cert}\n${ca.cert}` });
    await expectCode(pinnedGet(sibling.url, pin(caLeaf), { relay }), 'CERTIFICATE_CHANGED');
    expect(sibling.receivedBytes).toBe(0);
  });

  it('return a redirect as it is, without following it', async () => {
    let requests = 0;
    const t = await target({
      handler: (_req, res) => {
        requests++;
        res.writeHead(302, { location: '/elsewhere' });
        res.end();
      },
    });
    const response = await pinnedGet(`${t.url}/start`, pin(good));
    expect(response.status).toBe(302);
    expect(response.headers).toContainEqual(['location', '/elsewhere']);
    expect((await readAll(response)).length).toBe(0);
    expect(requests).toBe(1);
  });

  it('reuse one verified connection for repeated calls to the same origin and pin', async () => {
    const t = await target();
    const relay = transport();
    for (let i = 0; i < 3; i++) {
      const response = await pinnedGet(t.url, pin(good), { relay });
      await readAll(response);
    }
    expect(t.handshakes).toBe(1);
    expect(relay.stats().executor.pooledOrigins).toBe(1);
  });

  it('retry an idempotent request once when its pooled connection was closed, never a POST', async () => {
    let requests = 0;
    const t = await target({
      handler: (req, res) => {
        requests++;
        // The second request and every POST meet a connection that dies, as one the target closed while idle.
        if (requests === 2 || req.method === 'POST') {
          req.socket.destroy();
          return;
        }
        res.end(`reply ${requests}`);
      },
    });
    const relay = transport();
    const call = (method: string) =>
      relay.request({ url: t.url, method, headers: [], timeoutMs: 5000, trust: pin(good) });
    expect((await readAll(await call('GET'))).toString()).toBe('reply 1');
    expect((await readAll(await call('GET'))).toString()).toBe('reply 3');
    expect(t.connections).toBe(2);
    await expectCode(call('POST'), 'ENVIRONMENT_UNREACHABLE');
    expect(requests).toBe(4);
  });

  it('time out against a target that never answers the handshake, closing the socket', async () => {
    const silent = await startSilentTarget();
    cleanups.push(() => silent.close());
    await expectCode(pinnedGet(silent.url, pin(good), { timeoutMs: 300 }), 'ENVIRONMENT_TIMEOUT');
    await silent.waitForOpenSockets(0);
  });

  it('time out when the response head does not come', async () => {
    const t = await target({ handler: () => undefined });
    await expectCode(pinnedGet(t.url, pin(good), { timeoutMs: 300 }), 'ENVIRONMENT_TIMEOUT');
    await t.waitForOpenSockets(0);
  });

  it('report a closed port as unreachable', async () => {
    const port = await closedPort();
    await expectCode(
      pinnedGet(`https://127.0.0.1:${port}`, pin(good), { timeoutMs: 2000 }),
      'ENVIRONMENT_UNREACHABLE',
    );
  });

  it('refuse http:// targets and targets outside the allowed list before connecting', async () => {
    const t = await target();
    await expectCode(
      pinnedGet(`http://127.0.0.1:${t.port}`, pin(good), { timeoutMs: 2000 }),
      'VALIDATION_FAILED',
    );
    const restricted = transport({ allowedTargets: ['*.internal:443', '10.0.0.5:8081'] });
    await expectCode(
      pinnedGet(t.url, pin(good), { relay: restricted, timeoutMs: 2000 }),
      'TARGET_NOT_ALLOWED',
    );
    await expectCode(restricted.discover({ url: t.url, timeoutMs: 2000 }), 'TARGET_NOT_ALLOWED');
    const allowed = transport({ allowedTargets: [`127.0.0.1:${t.port}`] });
    await readAll(await pinnedGet(t.url, pin(good), { relay: allowed, timeoutMs: 2000 }));
    expect(t.connections).toBe(1);
  });

  it('relay a request body of 1 MiB and refuse a larger one', async () => {
    const t = await target({
      handler: (req, res) => {
        const hash = createHash('sha256');
        req.on('data', (c: Buffer) => hash.update(c));
        req.on('end', () => res.end(hash.digest('hex')));
      },
    });
    const body = Buffer.alloc(1024 * 1024, 7);
    const relay = transport();
    const response = await relay.request({
      url: t.url,
      method: 'PUT',
      headers: [],
      body,
      timeoutMs: 5000,
      trust: pin(good),
    });
    expect((await readAll(response)).toString()).toBe(createHash('sha256').update(body).digest('hex'));
    await expectCode(
      relay.request({
        url: t.url,
        method: 'PUT',
        headers: [],
        body: Buffer.alloc(1024 * 1024 + 1),
        timeoutMs: 5000,
        trust: pin(good),
      }),
      'PAYLOAD_TOO_LARGE',
    );
  });
});

describe('streaming', () => {
  it('streams 50 MB to a reader that pauses without exceeding the window anywhere', async () => {
    const total = 50 * 1024 * 1024;
    const block = Buffer.alloc(64 * 1024);
    for (let i = 0; i < block.length; i++) block[i] = (i * 31) & 0xff;
    let written = 0;
    const t = await target({
      handler: async (_req, res) => {
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        while (written < total) {
          written += block.length;
          if (!res.write(block)) await new Promise((resolve) => res.once('drain', resolve));
        }
        res.end();
      },
    });
    const window = 256 * 1024;
    const relay = transport({ windowBytes: window });
    const response = await pinnedGet(t.url, pin(good), { relay });
    const expected = createHash('sha256');
    for (let i = 0; i < total / block.length; i++) expected.update(block);
    const hash = createHash('sha256');
    let received = 0;
    let nextPause = 5 * 1024 * 1024;
    let pauses = 0;
    for await (const chunk of response.body) {
      hash.update(chunk);
      received += chunk.byteLength;
      expect(chunk.byteLength).toBeLessThanOrEqual(64 * 1024);
      if (received >= nextPause) {
        nextPause += 10 * 1024 * 1024;
        pauses++;
        // The reader pauses until the flow stalls: a whole window sent and not yet read.
        await eventually(() => relay.stats().executor.inFlightBytes >= window - 64 * 1024);
        const { client, executor } = relay.stats();
        expect(executor.inFlightBytes).toBeLessThanOrEqual(window);
        expect(client.bufferedBytes).toBeLessThanOrEqual(window);
        // The target is held back too: only socket buffers separate what it wrote from what was read.
        expect(written - received).toBeLessThan(16 * 1024 * 1024);
      }
    }
    expect(pauses).toBe(5);
    expect(received).toBe(total);
    expect(hash.digest('hex')).toBe(expected.digest('hex'));
    const { executor } = relay.stats();
    expect(executor.peakInFlightBytes).toBeGreaterThan(0);
    expect(executor.peakInFlightBytes).toBeLessThanOrEqual(window);
    expect(executor.peakBufferedBytes).toBeLessThanOrEqual(window);
    expect(executor.inFlightBytes).toBe(0);
    expect(executor.bufferedBytes).toBe(0);
    expect(executor.activeStreams).toBe(0);
  });

  it('closes the upstream socket at once when the body is cancelled midway', async () => {
    let serverSawClose!: () => void;
    const closed = new Promise<void>((resolve) => {
      serverSawClose = resolve;
    });
    const t = await target({
      handler: (_req, res) => {
        res.writeHead(200);
        const timer = setInterval(() => res.write(Buffer.alloc(1024)), 5);
        res.on('close', () => {
          clearInterval(timer);
          serverSawClose();
        });
      },
    });
    const relay = transport();
    const response = await pinnedGet(t.url, pin(good), { relay });
    const iterator = response.body[Symbol.asyncIterator]();
    const first = await iterator.next();
    expect(first.done).toBe(false);
    response.cancel();
    await closed;
    await t.waitForOpenSockets(0);
    expect((await iterator.next()).done).toBe(true);
    await eventually(() => relay.stats().executor.activeStreams === 0);
  });

  it('cancels end to end when the caller aborts, before or after the head', async () => {
    let opened = 0;
    const t = await target({
      handler: (_req, res) => {
        opened++;
        res.writeHead(200);
        res.write('x');
      },
    });
    const relay = transport();
    const controller = new AbortController();
    const response = await pinnedGet(t.url, pin(good), { relay, signal: controller.signal });
    controller.abort();
    await expectCode(readAll(response), 'CANCELLED');
    await t.waitForOpenSockets(0);
    const early = new AbortController();
    const pending = pinnedGet(t.url, pin(good), { relay, signal: early.signal });
    early.abort();
    await expectCode(pending, 'CANCELLED');
    await t.waitForOpenSockets(0);
    expect(opened).toBeLessThanOrEqual(2);
  });

  it('completes 100 concurrent streams independently', async () => {
    const t = await target({
      handler: (req, res) => {
        res.end(`reply ${req.url}`);
      },
    });
    const relay = transport();
    const results = await Promise.all(
      Array.from({ length: 100 }, async (_, i) => {
        const response = await pinnedGet(`${t.url}/n/${i}`, pin(good), { relay, timeoutMs: 10_000 });
        return (await readAll(response)).toString();
      }),
    );
    expect(results).toEqual(Array.from({ length: 100 }, (_, i) => `reply /n/${i}`));
    expect(relay.stats().executor.activeStreams).toBe(0);
  });

  it('keeps other streams going while one reader is stalled', async () => {
    const t = await target({
      handler: (req, res) => {
        if (req.url === '/big') res.end(Buffer.alloc(4 * 1024 * 1024));
        else res.end('small');
      },
    });
    const relay = transport();
    const stalled = await pinnedGet(`${t.url}/big`, pin(good), { relay });
    // Nobody reads `stalled`; the others still complete.
    for (let i = 0; i < 5; i++) {
      const response = await pinnedGet(`${t.url}/small`, pin(good), { relay });
      expect((await readAll(response)).toString()).toBe('small');
    }
    expect((await readAll(stalled)).length).toBe(4 * 1024 * 1024);
  });
});
