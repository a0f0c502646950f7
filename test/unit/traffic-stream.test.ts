import { Writable } from 'node:stream';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { type TraceInput, TraceRecorder } from '../../src/dataplane/trace-recorder.js';
import { TraceStreamSubscriber } from '../../src/dataplane/trace-stream.js';

function input(path = '/'): TraceInput {
  return {
    startedAt: Date.now(),
    method: 'GET',
    host: null,
    path,
    query: '',
    status: 200,
    durationMs: 1,
    bytesIn: 0,
    bytesOut: 0,
    listenerId: 'L',
    routeId: null,
    target: null,
    clientIp: null,
    error: null,
    httpVersion: '1.1',
    userAgent: null,
    upstreamMs: null,
    requestHeaders: [],
    responseHeaders: null,
  };
}

/**
 * A writable standing for a client socket: `stalled` ones complete writes only
 * when `release()` is called (a client that stopped reading).
 */
class ClientSocket extends Writable {
  readonly written: string[] = [];
  readonly #stalled: boolean;
  #pending: (() => void)[] = [];
  constructor(options: { stalled: boolean; highWaterMark?: number }) {
    super({ highWaterMark: options.highWaterMark ?? 16384, decodeStrings: false });
    this.#stalled = options.stalled;
  }
  override _write(chunk: string, _encoding: string, callback: () => void): void {
    this.written.push(String(chunk));
    if (this.#stalled) this.#pending.push(callback);
    else callback();
  }
  /** Completes every pending write, and those that follow (the client read everything). */
  release(): void {
    while (this.#pending.length > 0) this.#pending.shift()!();
  }
  get text(): string {
    return this.written.join('');
  }
}

/** Parses `id`/`event`/`data` blocks from SSE text. */
function parse(text: string): { event: string; id: number | null; data: unknown }[] {
  return text
    .split('\n\n')
    .filter((block) => block.split('\n').some((line) => line.startsWith('data: ')))
    .map((block) => {
      const lines = block.split('\n');
      const field = (name: string) => lines.find((l) => l.startsWith(`${name}: `))?.slice(name.length + 2);
      const id = field('id');
      return {
        event: field('event') ?? 'message',
        id: id === undefined ? null : Number(id),
        data: JSON.parse(field('data')!),
      };
    });
}

afterEach(() => {
  vi.useRealTimers();
});

describe('trace stream subscriber', () => {
  it('writes each event at once as id + data, after retained events newer than `after`', () => {
    const recorder = new TraceRecorder();
    for (let i = 1; i <= 5; i++) recorder.record(input(`/${i}`));
    const out = new ClientSocket({ stalled: false });
    new TraceStreamSubscriber(out, recorder).start(3);
    expect(parse(out.text).map((m) => m.id)).toEqual([4, 5]);
    recorder.record(input('/live'));
    const messages = parse(out.text);
    expect(messages.at(-1)).toMatchObject({ event: 'message', id: 6, data: { seq: 6, path: '/live' } });
    expect(out.text.startsWith(':')).toBe(true);
  });

  it('sends a heartbeat comment every interval', () => {
    vi.useFakeTimers();
    const recorder = new TraceRecorder();
    const out = new ClientSocket({ stalled: false });
    const subscriber = new TraceStreamSubscriber(out, recorder, { heartbeatMs: 1000 });
    subscriber.start(null);
    vi.advanceTimersByTime(3500);
    expect(out.written.filter((w) => w === ': heartbeat\n\n')).toHaveLength(3);
    subscriber.close();
    vi.advanceTimersByTime(5000);
    expect(out.written.filter((w) => w === ': heartbeat\n\n')).toHaveLength(3);
  });

  it('drops events beyond its queue while the socket does not drain, counts them and reports them in order', () => {
    const recorder = new TraceRecorder();
    const out = new ClientSocket({ stalled: true, highWaterMark: 64 });
    const subscriber = new TraceStreamSubscriber(out, recorder, { maxQueueEvents: 5 });
    subscriber.start(null);
    // The first event fills the socket's small buffer: the next five queue, the rest drop.
    for (let i = 1; i <= 20; i++) recorder.record(input(`/${i}`));
    expect(subscriber.dropped).toBe(14);
    expect(recorder.counters()).toMatchObject({ subscribers: 1, emittedEvents: 20, droppedEvents: 14 });
    out.release();
    // Drained: the queued five went out, then the report, then live events again.
    for (let i = 21; i <= 22; i++) recorder.record(input(`/${i}`));
    out.release();
    const messages = parse(out.text);
    expect(messages.map((m) => (m.event === 'dropped' ? 'dropped' : m.id))).toEqual([
      1,
      2,
      3,
      4,
      5,
      6,
      'dropped',
      21,
      22,
    ]);
    expect(messages.find((m) => m.event === 'dropped')!.data).toEqual({ dropped: 14, total: 14 });
  });

  it('bounds its queue by bytes too', () => {
    const recorder = new TraceRecorder();
    const out = new ClientSocket({ stalled: true, highWaterMark: 16 });
    const subscriber = new TraceStreamSubscriber(out, recorder, {
      maxQueueEvents: 1000,
      maxQueueBytes: 1000,
    });
    subscriber.start(null);
    for (let i = 0; i < 100; i++) recorder.record(input(`/${'x'.repeat(100)}`));
    expect(subscriber.dropped).toBeGreaterThan(90);
    expect(subscriber.dropped).toBeLessThan(100);
  });

  it('unsubscribes when the stream closes, and ends the stream on close()', async () => {
    const recorder = new TraceRecorder();
    const gone = new ClientSocket({ stalled: false });
    new TraceStreamSubscriber(gone, recorder).start(null);
    const ended = new ClientSocket({ stalled: false });
    const closing = new TraceStreamSubscriber(ended, recorder);
    closing.start(null);
    expect(recorder.subscriberCount).toBe(2);
    gone.destroy();
    await new Promise((resolve) => setImmediate(resolve));
    expect(recorder.subscriberCount).toBe(1);
    closing.close();
    expect(recorder.subscriberCount).toBe(0);
    expect(ended.writableEnded).toBe(true);
    recorder.record(input());
    expect(parse(ended.text)).toEqual([]);
  });

  it('does not subscribe when the client left before the stream started', () => {
    const recorder = new TraceRecorder();
    const gone = new ClientSocket({ stalled: false });
    gone.destroy();
    const subscriber = new TraceStreamSubscriber(gone, recorder);
    subscriber.start(null);
    expect(subscriber.closed).toBe(true);
    expect(recorder.subscriberCount).toBe(0);
  });
});
