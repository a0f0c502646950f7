import { describe, expect, it } from 'vitest';
import { AppError } from '../../src/errors.js';
import type { Envelope, EnvelopePayload, RequestHead } from '../../src/relay/envelope.js';
import { EnvelopeExecutor } from '../../src/relay/envelope-executor.js';
import { createCertificate } from '../../src/tls/certificates.js';

const PIN = Array(32).fill('AB').join(':');

function setup(options: { maxStreams?: number; allowedTargets?: string[] } = {}) {
  const sent: Envelope[] = [];
  const executor = new EnvelopeExecutor({ send: (envelope) => sent.push(envelope), ...options });
  const send = (streamId: number, payload: EnvelopePayload) => executor.receive({ streamId, payload });
  const errors = () =>
    sent.flatMap((e) => (e.payload.case === 'error' ? [[e.streamId, e.payload.value.code] as const] : []));
  return { executor, sent, send, errors };
}

// hasBody keeps a stream waiting for its body: no connection is opened in these tests.
function head(overrides: Partial<RequestHead> = {}): EnvelopePayload {
  return {
    case: 'requestHead',
    value: {
      method: 'POST',
      url: 'https://127.0.0.1:9/x',
      hasBody: true,
      timeoutMs: 60_000,
      trust: { fingerprintSha256: PIN, expectedHostname: '127.0.0.1' },
      ...overrides,
    },
  };
}

describe('envelope executor handlers', () => {
  it('refuses heads it cannot honour before connecting', async () => {
    const other = await createCertificate({ altNames: ['x'] });
    const { send, errors, executor } = setup();
    send(0, head());
    send(1, head({ trust: null }));
    send(2, head({ trust: { fingerprintSha256: 'not-hex', expectedHostname: 'x' } }));
    send(3, head({ trust: { fingerprintSha256: PIN, expectedHostname: 'x', certificateDer: other.der } }));
    send(4, head({ url: 'http://127.0.0.1:9/x' }));
    send(5, head({ url: 'https://user:pw@127.0.0.1:9/x' }));
    send(6, head({ url: 'not a url' }));
    send(7, head({ method: 'get me' }));
    send(8, { case: 'discoverRequest', value: { url: 'ftp://127.0.0.1' } });
    expect(errors()).toEqual([
      [0, 'PROTOCOL_ERROR'],
      [1, 'VALIDATION_FAILED'],
      [2, 'VALIDATION_FAILED'],
      [3, 'VALIDATION_FAILED'],
      [4, 'VALIDATION_FAILED'],
      [5, 'VALIDATION_FAILED'],
      [6, 'VALIDATION_FAILED'],
      [7, 'VALIDATION_FAILED'],
      [8, 'VALIDATION_FAILED'],
    ]);
    expect(executor.stats().activeStreams).toBe(0);
  });

  it('refuses targets outside allowedTargets with TARGET_NOT_ALLOWED', () => {
    const { send, errors } = setup({ allowedTargets: ['*.internal:443'] });
    send(1, head());
    send(3, { case: 'discoverRequest', value: { url: 'https://10.0.0.5:8081' } });
    expect(errors()).toEqual([
      [1, 'TARGET_NOT_ALLOWED'],
      [3, 'TARGET_NOT_ALLOWED'],
    ]);
  });

  it('throws VALIDATION_FAILED for a malformed allowedTargets pattern', () => {
    expect(() => new EnvelopeExecutor({ send: () => undefined, allowedTargets: ['bad pattern'] })).toThrow(
      AppError,
    );
  });

  it('bounds concurrent streams with TOO_MANY_STREAMS', () => {
    const { send, errors, executor } = setup({ maxStreams: 2 });
    send(1, head());
    send(2, head());
    send(3, head());
    expect(errors()).toEqual([[3, 'TOO_MANY_STREAMS']]);
    expect(executor.stats().activeStreams).toBe(2);
    send(1, { case: 'cancel', value: {} });
    send(4, head());
    expect(errors()).toEqual([[3, 'TOO_MANY_STREAMS']]);
    executor.close();
  });

  it('keeps certificates asked to be kept (pin-once), also from a refused head, and names a missing one', async () => {
    const [certificate, other] = await Promise.all([
      createCertificate({ altNames: ['127.0.0.1'] }),
      createCertificate({ altNames: ['127.0.0.1'] }),
    ]);
    const { send, errors } = setup({ maxStreams: 1 });
    const trust = (keep: 'keep' | 'use', der = certificate.der) => ({
      fingerprintSha256: certificate.fingerprintSha256,
      expectedHostname: '127.0.0.1',
      ...(keep === 'keep' ? { certificateDer: der, keepCertificate: true } : { useKeptCertificate: true }),
    });
    send(1, head({ trust: trust('use') }));
    send(3, head());
    // Refused (one stream at most), yet kept: the client counts it as sent.
    send(5, head({ trust: trust('keep') }));
    send(3, { case: 'cancel', value: {} });
    send(7, head({ trust: trust('use') }));
    send(7, { case: 'cancel', value: {} });
    // A certificate that does not match its fingerprint is kept as such: every head naming it fails.
    send(9, head({ trust: trust('keep', other.der) }));
    send(11, head({ trust: trust('use') }));
    expect(errors()).toEqual([
      [1, 'PROTOCOL_ERROR'],
      [5, 'TOO_MANY_STREAMS'],
      [9, 'VALIDATION_FAILED'],
      [11, 'VALIDATION_FAILED'],
    ]);
  });

  it('refuses a request body over 1 MiB with PAYLOAD_TOO_LARGE', () => {
    const { send, errors, executor } = setup();
    send(1, head());
    for (let i = 0; i < 16; i++) send(1, { case: 'bodyChunk', value: { data: new Uint8Array(64 * 1024) } });
    expect(errors()).toEqual([]);
    send(1, { case: 'bodyChunk', value: { data: new Uint8Array(1) } });
    expect(errors()).toEqual([[1, 'PAYLOAD_TOO_LARGE']]);
    expect(executor.stats().activeStreams).toBe(0);
  });

  it('treats a reused stream id and executor-only payloads as protocol errors', () => {
    const { send, errors, executor } = setup();
    send(1, head());
    send(1, head());
    send(2, head({ hasBody: false, url: 'https://127.0.0.1:9' }));
    send(5, { case: 'responseHead', value: { status: 200 } });
    expect(errors()).toEqual([
      [1, 'PROTOCOL_ERROR'],
      [5, 'PROTOCOL_ERROR'],
    ]);
    send(2, { case: 'bodyChunk', value: { data: new Uint8Array(1) } });
    expect(errors()).toContainEqual([2, 'PROTOCOL_ERROR']);
    executor.close();
  });

  it('ignores late envelopes for streams it no longer has', () => {
    const { send, sent } = setup();
    send(9, { case: 'bodyChunk', value: { data: new Uint8Array(1) } });
    send(9, { case: 'windowUpdate', value: { bytes: 100 } });
    send(9, { case: 'end', value: {} });
    send(9, { case: 'cancel', value: {} });
    expect(sent).toEqual([]);
  });

  it('cancels every stream on close and ignores what arrives afterwards', () => {
    const { send, sent, executor } = setup();
    send(1, head());
    send(2, head());
    executor.close();
    expect(executor.stats().activeStreams).toBe(0);
    send(3, head({ trust: null }));
    send(4, { case: 'windowUpdate', value: { bytes: 1 } });
    expect(sent).toEqual([]);
  });
});
