/**
 * The client and the executor joined by encoded frames, as the hub and an
 * agent are (minus the WebSocket): every envelope is encoded, checked
 * against the frame limit and decoded on the way.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { AppError } from '../../src/errors.js';
import { decodeEnvelope, encodeEnvelope } from '../../src/relay/codec.js';
import { EnvelopeExecutor } from '../../src/relay/envelope-executor.js';
import { RelayClient } from '../../src/relay/relay-client.js';
import { createCertificate, type GeneratedCertificate } from '../../src/tls/certificates.js';
import { useCleanups } from '../helpers/cleanup.js';
import { pinTo as pin, startTlsTarget, type TlsTarget } from '../helpers/tls-target.js';

let good: GeneratedCertificate;
let impostor: GeneratedCertificate;

beforeAll(async () => {
  [good, impostor] = await Promise.all([
    createCertificate({ altNames: ['127.0.0.1'] }),
    createCertificate({ altNames: ['127.0.0.1'] }),
  ]);
});

const cleanups = useCleanups();

/** A connected pair; `drop()` simulates the connection going away (the agent disconnects). */
function wire() {
  let connected = true;
  const frames = { up: 0, down: 0, largest: 0 };
  const carry = (bytes: Uint8Array) => {
    frames.largest = Math.max(frames.largest, bytes.byteLength);
    return decodeEnvelope(bytes);
  };
  const executor: EnvelopeExecutor = new EnvelopeExecutor({
    send: (envelope) => {
      const bytes = encodeEnvelope(envelope);
      frames.down++;
      setImmediate(() => {
        if (connected) client.receive(carry(bytes));
      });
    },
  });
  const client: RelayClient = new RelayClient({
    send: (envelope) => {
      if (!connected) throw new Error('connection closed');
      const bytes = encodeEnvelope(envelope);
      frames.up++;
      setImmediate(() => {
        if (connected) executor.receive(carry(bytes));
      });
    },
  });
  const drop = () => {
    if (!connected) return;
    connected = false;
    client.failAll('AGENT_OFFLINE', 'the agent disconnected');
    executor.close();
  };
  cleanups.push(drop);
  return { client, executor, frames, drop };
}

async function target(
  certificate: GeneratedCertificate,
  handler?: Parameters<typeof startTlsTarget>[0]['handler'],
) {
  const t = await startTlsTarget({ cert: certificate.cert, key: certificate.key, handler });
  cleanups.push(() => t.close());
  return t;
}

describe('relay over encoded frames', () => {
  it('relays a pinned request and streams its body in frames of at most 64 KiB of data', async () => {
    const body = Buffer.alloc(3 * 1024 * 1024, 1);
    const t: TlsTarget = await target(good, (_req, res) => res.end(body));
    const { client, frames } = wire();
    const response = await client.request({
      url: t.url,
      method: 'GET',
      headers: [],
      timeoutMs: 5000,
      trust: pin(good),
    });
    let received = 0;
    for await (const chunk of response.body) received += chunk.byteLength;
    expect(received).toBe(body.length);
    expect(frames.largest).toBeLessThanOrEqual(64 * 1024 + 16);
    expect(frames.up).toBeGreaterThan(1);
  });

  it('brings a certificate failure back with its code and the observed certificate', async () => {
    const t = await target(impostor);
    const { client } = wire();
    const err = await client
      .request({
        url: t.url,
        method: 'GET',
        headers: [['authorization', 'Bearer x']],
        timeoutMs: 5000,
        trust: pin(good),
      })
      .then(
        () => null,
        (e: unknown) => e as AppError,
      );
    expect(err).toBeInstanceOf(AppError);
    expect(err?.code).toBe('CERTIFICATE_CHANGED');
    expect(err?.details?.observedCertificate).toMatchObject({
      fingerprintSha256: impostor.fingerprintSha256,
    });
    expect(t.receivedBytes).toBe(0);
  });

  it('discovers through frames', async () => {
    const t = await target(good);
    const { client } = wire();
    const result = await client.discover({ url: t.url, timeoutMs: 5000 });
    expect(result.certificate.fingerprintSha256).toBe(good.fingerprintSha256);
    expect(t.receivedBytes).toBe(0);
  });

  it('fails an open body with AGENT_OFFLINE at once when the connection drops, and closes the upstream', async () => {
    const t = await target(good, (_req, res) => {
      res.writeHead(200);
      res.write('first');
      // The rest never comes: only the drop ends this stream.
    });
    const { client, drop, executor } = wire();
    const response = await client.request({
      url: t.url,
      method: 'GET',
      headers: [],
      timeoutMs: 5000,
      trust: pin(good),
    });
    const iterator = response.body[Symbol.asyncIterator]();
    expect(Buffer.from((await iterator.next()).value as Uint8Array).toString()).toBe('first');
    const waiting = iterator.next();
    drop();
    const err = await waiting.then(
      () => null,
      (e: unknown) => e as AppError,
    );
    expect(err?.code).toBe('AGENT_OFFLINE');
    expect(executor.stats().activeStreams).toBe(0);
    await t.waitForOpenSockets(0);
    const after = await client
      .request({ url: t.url, method: 'GET', headers: [], timeoutMs: 5000, trust: pin(good) })
      .then(
        () => null,
        (e: unknown) => e as AppError,
      );
    expect(after?.code).toBe('AGENT_OFFLINE');
  });
});
