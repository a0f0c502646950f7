import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { AppError } from '../../src/errors.js';
import { decodeEnvelope, encodeEnvelope } from '../../src/relay/codec.js';
import {
  appErrorFromPayload,
  DEFAULT_MAX_FRAME_BYTES,
  type Envelope,
  type EnvelopeCase,
  errorEnvelope,
  PROTOCOL_VERSION,
} from '../../src/relay/envelope.js';
import { createCertificate } from '../../src/tls/certificates.js';

const der = randomBytes(300);

/** One envelope of every kind, each with every field set to a non-default value. */
const EVERY_KIND: Record<EnvelopeCase, Envelope> = {
  hello: {
    streamId: 0,
    payload: {
      case: 'hello',
      value: {
        protocolVersion: PROTOCOL_VERSION + 1,
        minProtocolVersion: PROTOCOL_VERSION,
        agentVersion: '0.1.0',
        capabilities: ['discover', 'request'],
        limits: {
          maxFrameBytes: 1 << 20,
          maxStreams: 64,
          initialWindowBytes: 1 << 18,
          maxTunnelStreams: 1000,
          tunnelWindowBytes: 1 << 17,
        },
      },
    },
  },
  welcome: {
    streamId: 0,
    payload: {
      case: 'welcome',
      value: {
        protocolVersion: PROTOCOL_VERSION,
        serverVersion: '0.1.0',
        capabilities: ['discover'],
        limits: { maxFrameBytes: 1000, maxStreams: 2, initialWindowBytes: 3 },
        minProtocolVersion: 1,
        maxProtocolVersion: 3,
        replicaId: 'r-0123456789abcdef',
        serverTimeMs: 1_796_000_000_123,
      },
    },
  },
  ping: { streamId: 0, payload: { case: 'ping', value: { nonce: 4_000_000_000 } } },
  pong: { streamId: 0, payload: { case: 'pong', value: { nonce: 7 } } },
  discoverRequest: {
    streamId: 1,
    payload: { case: 'discoverRequest', value: { url: 'https://target.internal:8081', timeoutMs: 5000 } },
  },
  discoverResult: {
    streamId: 3,
    payload: {
      case: 'discoverResult',
      value: {
        chain: [der, randomBytes(10)],
        leaf: {
          fingerprintSha256: 'AB:CD',
          subject: 'CN=target',
          issuer: 'CN=ca',
          subjectAltNames: ['DNS:target.internal', 'IP Address:10.0.0.5'],
          validFrom: '2024-01-01T00:00:00.000Z',
          validTo: '2025-01-01T00:00:00.000Z',
          serialNumber: '01AB',
        },
        expired: true,
        hostnameMatches: true,
      },
    },
  },
  requestHead: {
    streamId: 4_294_967_295,
    payload: {
      case: 'requestHead',
      value: {
        method: 'POST',
        url: 'https://target.internal:8081/api/v1/tokens?x=1',
        headers: [
          { name: 'content-type', value: 'application/json' },
          { name: 'x-repeat', value: 'a' },
          { name: 'x-repeat', value: 'b é ✓' },
        ],
        timeoutMs: 10_000,
        hasBody: true,
        trust: { fingerprintSha256: 'AB:CD', expectedHostname: 'target.internal', certificateDer: der },
        initialWindowBytes: 262_144,
      },
    },
  },
  responseHead: {
    streamId: 5,
    payload: { case: 'responseHead', value: { status: 302, headers: [{ name: 'location', value: '/x' }] } },
  },
  bodyChunk: { streamId: 5, payload: { case: 'bodyChunk', value: { data: randomBytes(64 * 1024) } } },
  end: { streamId: 5, payload: { case: 'end', value: {} } },
  windowUpdate: { streamId: 5, payload: { case: 'windowUpdate', value: { bytes: 65_536 } } },
  cancel: { streamId: 5, payload: { case: 'cancel', value: {} } },
  error: {
    streamId: 5,
    payload: {
      case: 'error',
      value: {
        code: 'CERTIFICATE_CHANGED',
        message: 'the certificate changed',
        observedCertificateDer: der,
        cause: 'ERR_TLS_CERT_ALTNAME_INVALID',
      },
    },
  },
  streamSet: {
    streamId: 0,
    payload: { case: 'streamSet', value: { streamIds: [2, 4, 4_294_967_294], leakedTotal: 3 } },
  },
  drain: {
    streamId: 0,
    payload: { case: 'drain', value: { graceMs: 10_000, reason: 'the replica is stopping' } },
  },
  tunnelRequest: {
    streamId: 6,
    payload: {
      case: 'tunnelRequest',
      value: {
        method: 'PUT',
        url: 'http://app.internal:8080/upload?x=1',
        headers: [
          { name: 'content-type', value: 'application/octet-stream' },
          { name: 'x-forwarded-for', value: '203.0.113.7' },
        ],
        timeoutMs: 30_000,
        hasBody: true,
        initialWindowBytes: 131_072,
        upgrade: true,
      },
    },
  },
  healthWatch: {
    streamId: 8,
    payload: {
      case: 'healthWatch',
      value: {
        checks: [
          {
            id: 'bk_1/mb_1',
            url: 'https://app.internal:8443/healthz',
            intervalMs: 5000,
            timeoutMs: 2000,
            expectStatus: 200,
          },
        ],
      },
    },
  },
  healthReport: {
    streamId: 8,
    payload: {
      case: 'healthReport',
      value: { results: [{ id: 'bk_1/mb_1', ok: false, error: 'status 503, expected 200' }] },
    },
  },
};

/** Compares a decoded envelope with the original, bytes as bytes (decoded bytes are Buffers). */
function normalise(value: unknown): unknown {
  if (value instanceof Uint8Array) return { bytes: Buffer.from(value).toString('hex') };
  if (Array.isArray(value)) return value.map(normalise);
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries({ ...value }).map(([k, v]) => [k, normalise(v)]));
  }
  return value;
}

function expectAppError(fn: () => unknown, code: string): AppError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(AppError);
    expect((err as AppError).code).toBe(code);
    return err as AppError;
  }
  throw new Error(`expected an AppError ${code}`);
}

describe('relay codec', () => {
  for (const [kind, envelope] of Object.entries(EVERY_KIND)) {
    it(`round-trips a ${kind} envelope`, () => {
      const frame = encodeEnvelope(envelope);
      const decoded = decodeEnvelope(frame);
      expect(decoded.streamId).toBe(envelope.streamId);
      expect(decoded.payload.case).toBe(kind);
      expect(normalise(decoded.payload.value)).toEqual(normalise(envelope.payload.value));
    });
  }

  it('fills omitted fields with their defaults when decoding', () => {
    const decoded = decodeEnvelope(
      encodeEnvelope({ streamId: 9, payload: { case: 'requestHead', value: { method: 'GET', url: 'u' } } }),
    );
    if (decoded.payload.case !== 'requestHead') throw new Error('wrong case');
    const head = decoded.payload.value;
    expect(head.headers).toEqual([]);
    expect(head.timeoutMs).toBe(0);
    expect(head.hasBody).toBe(false);
    expect(head.trust ?? null).toBeNull();
  });

  it('refuses a frame over the limit before decoding it', () => {
    const frame = encodeEnvelope({
      streamId: 1,
      payload: { case: 'bodyChunk', value: { data: new Uint8Array(DEFAULT_MAX_FRAME_BYTES) } },
    });
    expectAppError(() => decodeEnvelope(frame), 'PAYLOAD_TOO_LARGE');
    expectAppError(() => decodeEnvelope(new Uint8Array(101), { maxFrameBytes: 100 }), 'PAYLOAD_TOO_LARGE');
  });

  it('refuses every truncation of a valid frame with PROTOCOL_ERROR', () => {
    const frame = encodeEnvelope(EVERY_KIND.requestHead);
    for (let length = 1; length < frame.length; length++) {
      const slice = frame.subarray(0, length);
      try {
        const decoded = decodeEnvelope(slice);
        // A cut exactly between two fields of the envelope is itself a valid frame.
        expect(decoded.streamId).toBe(EVERY_KIND.requestHead.streamId);
      } catch (err) {
        expect(err).toBeInstanceOf(AppError);
        expect((err as AppError).code).toBe('PROTOCOL_ERROR');
      }
    }
    expectAppError(() => decodeEnvelope(frame.subarray(0, frame.length - 1)), 'PROTOCOL_ERROR');
  });

  it('refuses an empty frame, a frame without payload and a non-binary frame', () => {
    expectAppError(() => decodeEnvelope(new Uint8Array(0)), 'PROTOCOL_ERROR');
    expectAppError(() => decodeEnvelope(Uint8Array.of(0x08, 0x05)), 'PROTOCOL_ERROR');
    expectAppError(() => decodeEnvelope('hello' as unknown as Uint8Array), 'PROTOCOL_ERROR');
  });

  it('refuses deeply nested groups without overflowing the stack', () => {
    // Field 15, wire type 3 (start group), repeated: recursion in the skipper.
    expectAppError(() => decodeEnvelope(new Uint8Array(200_000).fill(0x7b)), 'PROTOCOL_ERROR');
  });

  it('answers random bytes with an envelope or an AppError, never another exception', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 512 }), fc.integer({ min: 1, max: 600 }), (bytes, limit) => {
        try {
          const decoded = decodeEnvelope(bytes, { maxFrameBytes: limit });
          expect(typeof decoded.streamId).toBe('number');
          expect(typeof decoded.payload.case).toBe('string');
        } catch (err) {
          expect(err).toBeInstanceOf(AppError);
          expect(['PROTOCOL_ERROR', 'PAYLOAD_TOO_LARGE']).toContain((err as AppError).code);
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('answers mutated valid frames with an envelope or an AppError', () => {
    const frames = Object.values(EVERY_KIND).map((envelope) => encodeEnvelope(envelope));
    fc.assert(
      fc.property(
        fc.constantFrom(...frames),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 }),
        (frame, edits) => {
          const mutated = Uint8Array.from(frame);
          for (const [at, byte] of edits) mutated[at % mutated.length] = byte;
          try {
            decodeEnvelope(mutated);
          } catch (err) {
            expect(err).toBeInstanceOf(AppError);
          }
        },
      ),
      { numRuns: 1000 },
    );
  });

  it('carries a refusal on stream 0 across the wire with its code', () => {
    const reply = decodeEnvelope(encodeEnvelope(errorEnvelope(0, new AppError('PROTOCOL_ERROR', 'v1–v1'))));
    expect(reply.streamId).toBe(0);
    expect(reply.payload.case).toBe('error');
    if (reply.payload.case === 'error')
      expect(reply.payload.value).toMatchObject({ code: 'PROTOCOL_ERROR', message: 'v1–v1' });
  });

  it('carries an error code and the observed certificate across the wire unchanged', async () => {
    const cert = await createCertificate({ altNames: ['impostor.example'] });
    const original = new AppError('CERTIFICATE_CHANGED', 'the certificate changed', {
      details: { observedCertificateDer: cert.der.toString('base64') },
    });
    const decoded = decodeEnvelope(encodeEnvelope(errorEnvelope(7, original)));
    if (decoded.payload.case !== 'error') throw new Error('wrong case');
    const back = appErrorFromPayload(decoded.payload.value);
    expect(back.code).toBe('CERTIFICATE_CHANGED');
    expect(back.message).toBe('the certificate changed');
    expect(back.details?.observedCertificate).toMatchObject({ fingerprintSha256: cert.fingerprintSha256 });
    expect(back.details?.observedCertificateDer).toBe(cert.der.toString('base64'));
  });

  it('turns an unknown error code from a peer into PROTOCOL_ERROR and hides internal errors', () => {
    expect(appErrorFromPayload({ code: 'NOT_A_CODE', message: 'x' }).code).toBe('PROTOCOL_ERROR');
    const internal = decodeEnvelope(encodeEnvelope(errorEnvelope(1, new TypeError('secret detail'))));
    if (internal.payload.case !== 'error') throw new Error('wrong case');
    expect(internal.payload.value.code).toBe('INTERNAL');
    expect(internal.payload.value.message).not.toContain('secret');
  });
});
