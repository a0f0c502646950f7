/**
 * The envelope decoder against frames built to hurt (oversized varints, huge
 * declared lengths, unknown fields, wrong wire types), and fuzzed frames sent
 * by an authenticated agent over a real hub WebSocket: only that connection
 * is closed, the others keep relaying.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { AppError } from '../../src/errors.js';
import { decodeEnvelope, encodeEnvelope } from '../../src/relay/codec.js';
import type { Envelope } from '../../src/relay/envelope.js';
import { agentHeaders, upgradeAgent } from '../helpers/agent.js';
import { useCleanups } from '../helpers/cleanup.js';
import { startBareHub } from '../helpers/hub.js';

function varint(value: bigint): number[] {
  const out: number[] = [];
  let v = value;
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) byte |= 0x80;
    out.push(byte);
  } while (v > 0n);
  return out;
}

const tag = (field: number, wireType: number) => varint((BigInt(field) << 3n) | BigInt(wireType));

const VALID: Envelope = {
  streamId: 3,
  payload: { case: 'bodyChunk', value: { data: Buffer.from('hello') } },
};

/** Decodes, or throws an AppError; any other outcome fails the property. */
function decodeOrAppError(bytes: Uint8Array): void {
  try {
    const decoded = decodeEnvelope(bytes);
    expect(typeof decoded.streamId).toBe('number');
  } catch (err) {
    if (!(err instanceof AppError)) throw err;
  }
}

describe('envelope decoder against hostile frames', () => {
  it('refuses oversized varints and lengths declared past the frame without allocating them', () => {
    const before = process.memoryUsage().arrayBuffers;
    for (const declared of [2n ** 31n - 1n, 2n ** 32n, 2n ** 63n, 2n ** 64n - 1n]) {
      // stream_id with a varint of up to 10 bytes, then a length-delimited field claiming `declared` bytes.
      const frame = Uint8Array.from([
        ...tag(1, 0),
        ...varint(declared),
        ...tag(9, 2),
        ...varint(declared),
        1,
        2,
      ]);
      expect(() => decodeEnvelope(frame)).toThrow(AppError);
    }
    // Eleven continuation bytes: a varint longer than any integer.
    expect(() => decodeEnvelope(Uint8Array.from([0x08, ...Array(11).fill(0xff), 0x01]))).toThrow(AppError);
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(16 * 1024 * 1024);
  });

  it('answers unknown fields and wrong wire types with an envelope or an AppError', () => {
    const valid = encodeEnvelope(VALID);
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 2 ** 29 - 1 }),
        fc.integer({ min: 0, max: 7 }),
        fc.uint8Array({ maxLength: 64 }),
        fc.boolean(),
        (field, wireType, payload, before) => {
          const extra = [...tag(field, wireType), ...payload];
          decodeOrAppError(Uint8Array.from(before ? [...extra, ...valid] : [...valid, ...extra]));
        },
      ),
      { numRuns: 3000 },
    );
  });
});

describe('fuzzed frames over a real hub connection', () => {
  const cleanups = useCleanups();

  it('closes only the connection that sent a broken frame', async () => {
    const bare = await startBareHub();
    cleanups.push(() => bare.close());
    const honest = await bare.agents.create({ name: 'honest' });
    const ok = await upgradeAgent(bare.target, agentHeaders(honest.agent.id, honest.token), {
      answerPings: true,
    });
    if (!ok.ok) throw new Error(`refused with ${ok.status}`);
    cleanups.push(() => ok.socket.close());
    await ok.socket.handshake();

    const frames = fc.sample(
      fc.oneof(
        fc.uint8Array({ minLength: 1, maxLength: 256 }),
        fc.constant(Uint8Array.from([0x08, ...Array(11).fill(0xff)])),
        fc.constant(Uint8Array.from([0x4a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x00])),
      ),
      { numRuns: 24, seed: 42 },
    );
    let closedByHub = 0;
    for (const frame of frames) {
      const rogue = await bare.agents.create({ name: `rogue-${closedByHub}-${Math.random()}` });
      const raw = await upgradeAgent(bare.target, agentHeaders(rogue.agent.id, rogue.token), {
        answerPings: true,
      });
      if (!raw.ok) throw new Error(`refused with ${raw.status}`);
      cleanups.push(() => raw.socket.close());
      await raw.socket.handshake();
      raw.socket.ws.send(frame, { binary: true });
      // A frame that happens to decode may be ignored; one that does not ends that connection.
      let decodes = true;
      try {
        decodeEnvelope(frame);
      } catch {
        decodes = false;
      }
      if (!decodes) {
        const closed = await raw.socket.closed;
        expect([1002, 1008]).toContain(closed.code);
        closedByHub++;
      }
      expect(bare.hub.isConnected(honest.agent.id)).toBe(true);
    }
    expect(closedByHub).toBeGreaterThan(0);
    // The honest agent's connection still carries frames both ways and stays on.
    await ok.socket.roundTrip();
    expect(bare.hub.isConnected(honest.agent.id)).toBe(true);
  });
});
