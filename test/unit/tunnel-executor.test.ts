/**
 * The agent's tunnel executor on its own (envelopes captured, no relay
 * connection) against a real app on loopback: the small reads of one turn
 * leave as one body chunk at the end of the turn, within the chunk size and
 * the window; and the merging helper it sends with.
 */
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { type Envelope, takeWithinWindow } from '../../src/relay/envelope.js';
import { TunnelExecutor } from '../../src/relay/tunnel-executor.js';
import { eventually } from '../helpers/wait.js';

const KiB = 1024;

describe('takeWithinWindow', () => {
  it('takes a view of the first buffer when the piece lies within it', () => {
    const first = Buffer.from('abcdef');
    const stream = { pending: [first, Buffer.from('gh')], pendingBytes: 8, credit: 100 };
    const piece = takeWithinWindow(stream, 4);
    expect(piece.toString()).toBe('abcd');
    expect(piece.buffer).toBe(first.buffer);
    expect(stream).toMatchObject({ pendingBytes: 4, credit: 96 });
    expect(stream.pending.map(String)).toEqual(['ef', 'gh']);
  });

  it('merges consecutive buffers into one piece up to the chunk size and the credit', () => {
    const parts = ['ab', 'cde', 'f', 'ghij'].map((s) => Buffer.from(s));
    const stream = { pending: [...parts], pendingBytes: 10, credit: 100 };
    expect(takeWithinWindow(stream, 7).toString()).toBe('abcdefg');
    expect(stream.pending.map(String)).toEqual(['hij']);
    expect(stream).toMatchObject({ pendingBytes: 3, credit: 93 });
    stream.pending.push(Buffer.from('kl'));
    stream.pendingBytes += 2;
    stream.credit = 4;
    expect(takeWithinWindow(stream, 64).toString()).toBe('hijk');
    expect(stream.pending.map(String)).toEqual(['l']);
    expect(stream).toMatchObject({ pendingBytes: 1, credit: 0 });
  });
});

describe('TunnelExecutor response body', () => {
  let close: (() => Promise<void>) | null = null;
  afterEach(async () => {
    await close?.();
    close = null;
  });

  it('sends the reads of one turn as one body chunk at its end, at most the chunk size each', async () => {
    // Chunked transfer encoding in 4 KiB chunks: the app's parser hands over one chunk per read event.
    const body = Buffer.alloc(1024 * KiB);
    for (let i = 0; i < body.length; i++) body[i] = (i * 7) & 0xff;
    const app = http.createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      for (let at = 0; at < body.length; at += 4 * KiB) res.write(body.subarray(at, at + 4 * KiB));
      res.end();
    });
    app.listen(0, '127.0.0.1');
    await once(app, 'listening');
    const sent: Envelope[] = [];
    let turnEnds = 0;
    const executor = new TunnelExecutor({
      send: (envelope) => sent.push(envelope),
      atTurnEnd: (callback) => {
        turnEnds += 1;
        setImmediate(callback);
      },
    });
    close = async () => {
      executor.close();
      app.closeAllConnections();
      app.close();
    };
    const { port } = app.address() as AddressInfo;
    executor.receive({
      streamId: 1,
      payload: {
        case: 'tunnelRequest',
        value: { method: 'GET', url: `http://127.0.0.1:${port}/`, initialWindowBytes: 16 * 1024 * KiB },
      },
    });
    await eventually(() => sent.at(-1)?.payload.case === 'end');
    const chunks = sent.flatMap((e) => (e.payload.case === 'bodyChunk' ? [e.payload.value.data] : []));
    expect(Buffer.concat(chunks).equals(body)).toBe(true);
    expect(Math.max(...chunks.map((c) => c.byteLength))).toBeLessThanOrEqual(64 * KiB);
    // 256 reads of 4 KiB: one envelope each without merging; a 64 KiB socket read holds 16 of them.
    expect(chunks.length).toBeLessThanOrEqual(32);
    expect(turnEnds).toBeGreaterThan(0);
    expect(executor.stats()).toEqual({ activeStreams: 0, inFlightBytes: 0, bufferedBytes: 0 });
  });
});
