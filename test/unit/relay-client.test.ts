import { afterEach, describe, expect, it, vi } from 'vitest';
import { AppError } from '../../src/errors.js';
import { encodeEnvelope } from '../../src/relay/codec.js';
import type { Envelope, EnvelopePayload } from '../../src/relay/envelope.js';
import { RelayClient, type RelayClientOptions } from '../../src/relay/relay-client.js';
import type { RelayRequest } from '../../src/relay/transport.js';
import { createCertificate } from '../../src/tls/certificates.js';

const TRUST = { fingerprintSha256: 'AB:CD', expectedHostname: 'target.internal' };

function setup(options: Partial<RelayClientOptions> = {}) {
  const sent: Envelope[] = [];
  const client = new RelayClient({ send: (envelope) => sent.push(envelope), ...options });
  const reply = (streamId: number, payload: EnvelopePayload) => client.receive({ streamId, payload });
  const ofCase = (kind: string) => sent.filter((e) => e.payload.case === kind);
  return { client, sent, reply, ofCase };
}

function request(overrides: Partial<RelayRequest> = {}): RelayRequest {
  return {
    url: 'https://target.internal:8081/api/v1/x',
    method: 'GET',
    headers: [['accept', 'application/json']],
    timeoutMs: 5000,
    trust: TRUST,
    ...overrides,
  };
}

async function expectCode(promise: Promise<unknown>, code: string): Promise<void> {
  const err = await promise.then(
    () => new Error('resolved'),
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(AppError);
  expect((err as AppError).code).toBe(code);
}

afterEach(() => {
  vi.useRealTimers();
});

describe('relay client', () => {
  it('opens each call on a new stream and sends the head, the body in 64 KiB chunks, then an end', () => {
    const { client, sent } = setup();
    void client.request(request());
    void client.request(request({ method: 'POST', body: new Uint8Array(150 * 1024) }));
    expect(sent.map((e) => [e.streamId, e.payload.case])).toEqual([
      [1, 'requestHead'],
      [2, 'requestHead'],
      [2, 'bodyChunk'],
      [2, 'bodyChunk'],
      [2, 'bodyChunk'],
      [2, 'end'],
    ]);
    const head = sent[0]?.payload;
    expect(head?.case === 'requestHead' && head.value).toMatchObject({
      method: 'GET',
      url: 'https://target.internal:8081/api/v1/x',
      headers: [{ name: 'accept', value: 'application/json' }],
      timeoutMs: 5000,
      hasBody: false,
      trust: { fingerprintSha256: 'AB:CD', expectedHostname: 'target.internal' },
      initialWindowBytes: 256 * 1024,
    });
    const sizes = sent.flatMap((e) =>
      e.payload.case === 'bodyChunk' ? [e.payload.value.data.byteLength] : [],
    );
    expect(sizes).toEqual([65_536, 65_536, 22_528]);
  });

  it('refuses a request body over 1 MiB without sending anything', async () => {
    const { client, sent } = setup();
    await expectCode(client.request(request({ body: new Uint8Array(1024 * 1024 + 1) })), 'PAYLOAD_TOO_LARGE');
    expect(sent).toEqual([]);
  });

  it('refuses a head that would not fit in one frame, and sends one that does', async () => {
    const { client, sent } = setup({ maxFrameBytes: 4096 });
    await expectCode(
      client.request(request({ headers: [['x-big', 'é'.repeat(2000)]] })),
      'PAYLOAD_TOO_LARGE',
    );
    expect(sent).toEqual([]);
    client.request(request({ headers: [['x-small', 'é'.repeat(1000)]] })).catch(() => undefined);
    expect(sent).toHaveLength(1);
    const frame = encodeEnvelope(sent[0] as Envelope);
    expect(frame.byteLength).toBeLessThanOrEqual(4096);
  });

  it('resolves at the head and returns window only as the consumer reads', async () => {
    const { client, reply, ofCase } = setup({ windowBytes: 256 * 1024 });
    const pending = client.request(request());
    reply(1, {
      case: 'responseHead',
      value: { status: 200, headers: [{ name: 'content-type', value: 'x' }] },
    });
    const response = await pending;
    expect(response.status).toBe(200);
    expect(response.headers).toEqual([['content-type', 'x']]);
    for (let i = 0; i < 4; i++) reply(1, { case: 'bodyChunk', value: { data: new Uint8Array(64 * 1024) } });
    expect(client.stats().bufferedBytes).toBe(256 * 1024);
    // Nothing read yet: the executor gets no window back.
    expect(ofCase('windowUpdate')).toEqual([]);
    const iterator = response.body[Symbol.asyncIterator]();
    await iterator.next();
    expect(ofCase('windowUpdate').map((e) => e.payload.value)).toEqual([{ bytes: 64 * 1024 }]);
    await iterator.next();
    await iterator.next();
    await iterator.next();
    expect(ofCase('windowUpdate')).toHaveLength(4);
    expect(client.stats().bufferedBytes).toBe(0);
    reply(1, { case: 'end', value: {} });
    expect((await iterator.next()).done).toBe(true);
    expect(client.activeStreams).toBe(0);
  });

  it('fails a stream whose peer sends more than the window, and cancels it', async () => {
    const { client, reply, ofCase } = setup({ windowBytes: 64 * 1024 });
    const pending = client.request(request());
    reply(1, { case: 'responseHead', value: { status: 200 } });
    const response = await pending;
    reply(1, { case: 'bodyChunk', value: { data: new Uint8Array(64 * 1024) } });
    reply(1, { case: 'bodyChunk', value: { data: new Uint8Array(1) } });
    expect(ofCase('cancel')).toHaveLength(1);
    const iterator = response.body[Symbol.asyncIterator]();
    await expectCode(iterator.next(), 'PROTOCOL_ERROR');
  });

  it('asks for large windows while their budget has room, polices and returns each stream’s own window', async () => {
    const KiB = 1024;
    const { client, reply, ofCase } = setup({
      windowBytes: 64 * KiB,
      largeWindowBytes: 512 * KiB,
      largeWindowBudgetBytes: 1024 * KiB,
    });
    const pending = [1, 2, 3].map(() => client.request(request()));
    // Two large windows fit the budget; the third stream gets the base window.
    expect(
      ofCase('requestHead').map(
        (e) => e.payload.case === 'requestHead' && e.payload.value.initialWindowBytes,
      ),
    ).toEqual([512 * KiB, 512 * KiB, 64 * KiB]);
    expect(client.stats()).toMatchObject({ largeWindowsInUse: 2, largeWindowBudgetBytes: 1024 * KiB });
    for (const id of [1, 2, 3]) reply(id, { case: 'responseHead', value: { status: 200 } });
    const [large, other, small] = await Promise.all(pending);
    // A whole large window is fine on stream 1; one byte past the base window fails stream 3.
    for (let i = 0; i < 8; i++) reply(1, { case: 'bodyChunk', value: { data: new Uint8Array(64 * KiB) } });
    reply(3, { case: 'bodyChunk', value: { data: new Uint8Array(64 * KiB + 1) } });
    await expectCode(small!.body[Symbol.asyncIterator]().next(), 'PROTOCOL_ERROR');
    // Window goes back in quarters of the stream's own window.
    const iterator = large!.body[Symbol.asyncIterator]();
    for (let i = 0; i < 2; i++) await iterator.next();
    expect(ofCase('windowUpdate').map((e) => e.payload.value)).toEqual([{ bytes: 128 * KiB }]);
    // An ended stream keeps its large window until its bytes are read; a cancelled one gives it back at once.
    reply(1, { case: 'end', value: {} });
    expect(client.stats().largeWindowsInUse).toBe(2);
    other!.cancel();
    expect(client.stats().largeWindowsInUse).toBe(1);
    for (let i = 0; i < 6; i++) await iterator.next();
    expect(client.stats().largeWindowsInUse).toBe(0);
    expect((await iterator.next()).done).toBe(true);
    expect(client.stats()).toMatchObject({ activeStreams: 0, bufferedBytes: 0, largeWindowsInUse: 0 });
  });

  it('carries the executor error code, with the observed certificate described', async () => {
    const cert = await createCertificate({ altNames: ['impostor.example'] });
    const { client, reply } = setup();
    const pending = client.request(request());
    reply(1, {
      case: 'error',
      value: { code: 'CERTIFICATE_CHANGED', message: 'changed', observedCertificateDer: cert.der },
    });
    const err = await pending.then(
      () => null,
      (e: unknown) => e as AppError,
    );
    expect(err?.code).toBe('CERTIFICATE_CHANGED');
    expect(err?.details?.observedCertificate).toMatchObject({ fingerprintSha256: cert.fingerprintSha256 });
  });

  it('describes a discovered leaf from its DER', async () => {
    const cert = await createCertificate({ altNames: ['target.internal'] });
    const { client, reply, sent } = setup();
    const pending = client.discover({ url: 'https://target.internal:8081', timeoutMs: 3000 });
    expect(sent[0]?.payload).toEqual({
      case: 'discoverRequest',
      value: { url: 'https://target.internal:8081', timeoutMs: 3000 },
    });
    reply(1, { case: 'discoverResult', value: { chain: [cert.der], expired: false, hostnameMatches: true } });
    const result = await pending;
    expect(result.certificate.fingerprintSha256).toBe(cert.fingerprintSha256);
    expect(result.hostnameMatches).toBe(true);
    expect(result.expired).toBe(false);
  });

  it('fails every stream at once with failAll: pending heads reject, open bodies throw', async () => {
    const { client, reply, sent } = setup();
    const head = client.request(request());
    const discovery = client.discover({ url: 'https://x:1', timeoutMs: 1000 });
    const streaming = client.request(request());
    reply(3, { case: 'responseHead', value: { status: 200 } });
    const response = await streaming;
    reply(3, { case: 'bodyChunk', value: { data: new Uint8Array(10) } });
    const iterator = response.body[Symbol.asyncIterator]();
    await iterator.next();
    const reading = iterator.next();
    const before = sent.length;
    client.failAll('AGENT_OFFLINE', 'the agent disconnected');
    await expectCode(head, 'AGENT_OFFLINE');
    await expectCode(discovery, 'AGENT_OFFLINE');
    await expectCode(reading, 'AGENT_OFFLINE');
    expect(client.activeStreams).toBe(0);
    // Nothing to send to a connection that is gone.
    expect(sent.length).toBe(before);
  });

  it('bounds concurrent streams with TOO_MANY_STREAMS and frees a slot when a stream ends', async () => {
    const { client, reply } = setup({ maxStreams: 2 });
    void client.request(request());
    const second = client.request(request());
    await expectCode(client.request(request()), 'TOO_MANY_STREAMS');
    await expectCode(client.discover({ url: 'https://x:1', timeoutMs: 1000 }), 'TOO_MANY_STREAMS');
    reply(2, { case: 'error', value: { code: 'ENVIRONMENT_UNREACHABLE', message: 'down' } });
    await expectCode(second, 'ENVIRONMENT_UNREACHABLE');
    void client.request(request());
    expect(client.activeStreams).toBe(2);
  });

  it('sends a cancel when the signal aborts, before or after the head, or the reader stops', async () => {
    const { client, reply, ofCase } = setup();
    const early = new AbortController();
    const first = client.request(request({ signal: early.signal }));
    early.abort();
    await expectCode(first, 'CANCELLED');
    expect(ofCase('cancel').map((e) => e.streamId)).toEqual([1]);

    const late = new AbortController();
    const second = client.request(request({ signal: late.signal }));
    reply(2, { case: 'responseHead', value: { status: 200 } });
    const response = await second;
    late.abort();
    await expectCode(response.body[Symbol.asyncIterator]().next(), 'CANCELLED');
    expect(ofCase('cancel').map((e) => e.streamId)).toEqual([1, 2]);

    const third = client.request(request());
    reply(3, { case: 'responseHead', value: { status: 200 } });
    reply(3, { case: 'bodyChunk', value: { data: new Uint8Array(3) } });
    for await (const chunk of (await third).body) {
      expect(chunk.byteLength).toBe(3);
      break;
    }
    expect(ofCase('cancel').map((e) => e.streamId)).toEqual([1, 2, 3]);

    await expectCode(client.request(request({ signal: AbortSignal.abort() })), 'CANCELLED');
    expect(client.activeStreams).toBe(0);
  });

  it('ignores envelopes for streams it no longer has', async () => {
    const { client, reply } = setup();
    const pending = client.request(request());
    pending.catch(() => undefined);
    reply(1, { case: 'error', value: { code: 'ENVIRONMENT_TIMEOUT', message: 'slow' } });
    expect(() => {
      reply(1, { case: 'bodyChunk', value: { data: new Uint8Array(1) } });
      reply(99, { case: 'end', value: {} });
    }).not.toThrow();
    await expectCode(pending, 'ENVIRONMENT_TIMEOUT');
  });

  it('gives up on a silent executor after the timeout plus grace, and cancels', async () => {
    vi.useFakeTimers();
    const { client, ofCase } = setup({ timeoutGraceMs: 1000 });
    const pending = client.request(request({ timeoutMs: 2000 }));
    const outcome = pending.then(
      () => 'resolved',
      (e: AppError) => e.code,
    );
    await vi.advanceTimersByTimeAsync(2999);
    expect(ofCase('cancel')).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    expect(await outcome).toBe('ENVIRONMENT_TIMEOUT');
    expect(ofCase('cancel')).toHaveLength(1);
  });

  it('rejects with AGENT_OFFLINE when the envelope cannot be sent', async () => {
    const client = new RelayClient({
      send: () => {
        throw new Error('socket closed');
      },
    });
    await expectCode(client.request(request()), 'AGENT_OFFLINE');
    await expectCode(client.discover({ url: 'https://x:1', timeoutMs: 1000 }), 'AGENT_OFFLINE');
    expect(client.activeStreams).toBe(0);
  });

  it('turns a connection-level error into the failure of every stream', async () => {
    const { client, reply } = setup();
    const pending = client.request(request());
    reply(0, { case: 'error', value: { code: 'PROTOCOL_ERROR', message: 'bad version' } });
    await expectCode(pending, 'PROTOCOL_ERROR');
  });
});
