/**
 * The hub's tunnel dispatcher on its own (no socket): the response window each
 * stream grants the agent, large while the connection's budget has room, and
 * the window updates it returns as the handler takes the bytes.
 */
import { describe, expect, it } from 'vitest';
import { AppError } from '../../src/errors.js';
import type { Envelope } from '../../src/relay/envelope.js';
import { TunnelClient, type TunnelHandler } from '../../src/relay/tunnel-client.js';

const KiB = 1024;

function setup(windowBytes = 16 * KiB) {
  const sent: Envelope[] = [];
  let next = 1;
  const client = new TunnelClient({
    send: (envelope) => sent.push(envelope),
    nextStreamId: () => {
      const id = next;
      next += 2;
      return id;
    },
    windowBytes,
  });
  const opened = () =>
    sent.flatMap((e) =>
      e.payload.case === 'tunnelRequest'
        ? [{ streamId: e.streamId, window: e.payload.value.initialWindowBytes ?? 0 }]
        : [],
    );
  const events: string[] = [];
  const handler: TunnelHandler = {
    onResponseStart: (_c, status) => events.push(`start ${status}`),
    onResponseData: (_c, chunk) => events.push(`data ${chunk.length}`),
    onResponseEnd: () => events.push('end'),
    onResponseError: (_c, err) => events.push(`error ${err.message}`),
  };
  const get = () =>
    client.dispatch({ origin: 'http://app.internal:8080', path: '/', method: 'GET' }, handler);
  return { client, sent, opened, events, get };
}

describe('TunnelClient response windows', () => {
  it('gives 8× windows while 64 windows’ budget has room, the base window after, and takes them back as streams end', () => {
    const { client, opened, get } = setup(16 * KiB);
    for (let i = 0; i < 10; i++) get();
    const windows = opened().map((o) => o.window);
    expect(windows).toEqual([...Array(8).fill(128 * KiB), 16 * KiB, 16 * KiB]);
    expect(client.stats()).toMatchObject({
      activeStreams: 10,
      windowBytes: 16 * KiB,
      largeWindowBytes: 128 * KiB,
      largeWindowBudgetBytes: 1024 * KiB,
      largeWindowsInUse: 8,
    });
    // A stream with a large window ends: the next one gets a large window again.
    const first = opened()[0]!.streamId;
    client.receive({
      streamId: first,
      payload: { case: 'responseHead', value: { status: 200, headers: [] } },
    });
    client.receive({ streamId: first, payload: { case: 'end', value: {} } });
    expect(client.stats().largeWindowsInUse).toBe(7);
    get();
    expect(opened().at(-1)!.window).toBe(128 * KiB);
    // The agent going away returns every window.
    client.close(new AppError('AGENT_OFFLINE', 'gone'));
    expect(client.stats().largeWindowsInUse).toBe(0);
  });

  it('returns window in quarters of the stream’s own window as the handler takes the bytes', () => {
    const { opened, sent, events, get, client } = setup(16 * KiB);
    get();
    const { streamId, window } = opened()[0]!;
    client.receive({ streamId, payload: { case: 'responseHead', value: { status: 200, headers: [] } } });
    const chunk = new Uint8Array(8 * KiB);
    for (let i = 0; i < window / chunk.length; i++)
      client.receive({ streamId, payload: { case: 'bodyChunk', value: { data: chunk } } });
    const updates = sent.filter((e) => e.payload.case === 'windowUpdate');
    expect(updates.map((e) => (e.payload.case === 'windowUpdate' ? e.payload.value.bytes : 0))).toEqual([
      32 * KiB,
      32 * KiB,
      32 * KiB,
      32 * KiB,
    ]);
    expect(events.filter((e) => e.startsWith('data')).length).toBe(16);
    // Everything was returned: another full window is accepted.
    for (let i = 0; i < window / chunk.length; i++)
      client.receive({ streamId, payload: { case: 'bodyChunk', value: { data: chunk } } });
    expect(events.some((e) => e.startsWith('error'))).toBe(false);
  });

  it('holds at most the window for a paused handler and fails a stream the agent overruns', () => {
    const { sent, events, client } = setup(16 * KiB);
    let controller: { pause(): void } | null = null;
    client.dispatch(
      { origin: 'http://app.internal:8080', path: '/', method: 'GET' },
      {
        onResponseStart: (c) => {
          controller = c;
          c.pause();
        },
        onResponseError: (_c, err) => events.push(`error ${(err as { relayCode?: string }).relayCode}`),
      },
    );
    const open = sent.find((e) => e.payload.case === 'tunnelRequest')!;
    const window = open.payload.case === 'tunnelRequest' ? open.payload.value.initialWindowBytes! : 0;
    const streamId = open.streamId;
    client.receive({ streamId, payload: { case: 'responseHead', value: { status: 200, headers: [] } } });
    expect(controller).not.toBeNull();
    client.receive({ streamId, payload: { case: 'bodyChunk', value: { data: new Uint8Array(window) } } });
    expect(client.stats().bufferedBytes).toBe(window);
    expect(sent.some((e) => e.payload.case === 'windowUpdate')).toBe(false);
    client.receive({ streamId, payload: { case: 'bodyChunk', value: { data: new Uint8Array(1) } } });
    expect(events).toEqual(['error PROTOCOL_ERROR']);
    expect(client.stats()).toMatchObject({ activeStreams: 0, bufferedBytes: 0, largeWindowsInUse: 0 });
  });
});
