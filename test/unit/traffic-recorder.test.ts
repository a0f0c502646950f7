import { describe, expect, it } from 'vitest';
import { isSensitiveName, REDACTED, redactHeaderList, redactQuery } from '../../src/dataplane/redact.js';
import {
  isoTime,
  type TraceInput,
  TraceRecorder,
  type TraceSink,
} from '../../src/dataplane/trace-recorder.js';

function input(overrides: Partial<TraceInput> = {}): TraceInput {
  return {
    startedAt: Date.UTC(2026, 0, 1),
    method: 'GET',
    host: 'shop.example.com',
    path: '/cart',
    query: 'page=2&api_key=abc&token=t0k',
    status: 200,
    durationMs: 1.23456,
    bytesIn: 0,
    bytesOut: 5,
    listenerId: 'L',
    routeId: 'R',
    target: 'http://127.0.0.1:3000',
    clientIp: '127.0.0.1',
    error: null,
    httpVersion: '1.1',
    userAgent: 'test',
    upstreamMs: 0.5,
    requestHeaders: [
      'Host',
      'shop.example.com',
      'Authorization',
      'Bearer secret-value',
      'Cookie',
      'sid=secret-value',
      'X-Api-Key',
      'secret-value',
      'X-Request-Id',
      'abc',
      'Accept',
      'a',
      'Accept',
      'b',
    ],
    responseHeaders: [
      'set-cookie',
      'sid=secret-value',
      'content-type',
      'text/plain',
      'x-upstream-password',
      'secret-value',
    ],
    ...overrides,
  };
}

class ListSink implements TraceSink {
  readonly seen: { seq: number; json: string }[] = [];
  closed = false;
  push(seq: number, json: string): void {
    this.seen.push({ seq, json });
  }
  close(): void {
    this.closed = true;
  }
}

describe('trace recorder', () => {
  it('records the basic fields with increasing sequence numbers', () => {
    const recorder = new TraceRecorder();
    recorder.record(input());
    recorder.record(input({ status: 502, error: 'upstream_refused' }));
    const [first, second] = recorder.recent();
    expect(first).toEqual({
      seq: 1,
      id: expect.stringMatching(/^[0-9a-f-]{36}$/),
      time: '2026-01-01T00:00:00.000Z',
      method: 'GET',
      host: 'shop.example.com',
      path: '/cart',
      status: 200,
      durationMs: 1.235,
      bytesIn: 0,
      bytesOut: 5,
      listenerId: 'L',
      routeId: 'R',
      target: 'http://127.0.0.1:3000',
      clientIp: '127.0.0.1',
      error: null,
    });
    expect(second).toMatchObject({ seq: 2, status: 502, error: 'upstream_refused' });
    expect(first!.id).not.toBe(second!.id);
    expect(first!.id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    // Made once, when first read: a later read gives the same id.
    expect(recorder.recent()[0]!.id).toBe(first!.id);
    expect(recorder.counters()).toEqual({ subscribers: 0, emittedEvents: 2, droppedEvents: 0 });
  });

  it('writes event times exactly as Date#toISOString, across seconds, days and years', () => {
    const times = [0, 5, 50, 999, 1000, 1001, Date.UTC(2026, 11, 31, 23, 59, 59, 999), Date.UTC(2027, 0, 1)];
    for (let t = Date.UTC(2026, 5, 1, 12, 0, 58, 990); t < Date.UTC(2026, 5, 1, 12, 1, 0, 20); t += 7)
      times.push(t);
    times.push(Date.UTC(2026, 0, 1), 1.5, -1, 8.64e15);
    for (const t of times) expect(isoTime(t)).toBe(new Date(t).toISOString());
    const recorder = new TraceRecorder();
    recorder.record(input({ startedAt: Date.UTC(2026, 2, 3, 4, 5, 6, 78) }));
    expect(recorder.recent()[0]!.time).toBe('2026-03-03T04:05:06.078Z');
  });

  it('keeps only the newest events of its ring, newest last', () => {
    const recorder = new TraceRecorder({ capacity: 1000 });
    for (let i = 0; i < 1234; i++) recorder.record(input());
    const all = recorder.recent();
    expect(all).toHaveLength(1000);
    expect(all[0]!.seq).toBe(235);
    expect(all.at(-1)!.seq).toBe(1234);
    expect(recorder.recent(3).map((e) => e.seq)).toEqual([1232, 1233, 1234]);
    expect(recorder.recent(0)).toEqual([]);
  });

  it('keeps the id the proxy assigned (a template showed it) and streams events with their ids', () => {
    const recorder = new TraceRecorder();
    const sink = new ListSink();
    recorder.subscribe(sink);
    recorder.record(input({ assignedId: 'shown-to-the-client' }));
    recorder.record(input());
    expect(recorder.recent().map((e) => e.id)[0]).toBe('shown-to-the-client');
    const streamed = sink.seen.map((s) => JSON.parse(s.json).id as string);
    expect(streamed[0]).toBe('shown-to-the-client');
    expect(streamed[1]).toMatch(/^[0-9a-f-]{36}$/);
    expect(recorder.recent()[1]!.id).toBe(streamed[1]);
  });

  it('records nothing while disabled', () => {
    const recorder = new TraceRecorder({ enabled: false });
    recorder.record(input());
    expect(recorder.recent()).toEqual([]);
    recorder.configure({ enabled: true, level: 'basic' });
    recorder.record(input());
    expect(recorder.recent().map((e) => e.seq)).toEqual([1]);
  });

  it('replays retained events after a sequence number, then follows live ones', () => {
    const recorder = new TraceRecorder({ capacity: 10 });
    for (let i = 0; i < 15; i++) recorder.record(input());
    const fromMiddle = new ListSink();
    const unsubscribe = recorder.subscribe(fromMiddle, 12);
    expect(fromMiddle.seen.map((e) => e.seq)).toEqual([13, 14, 15]);
    const fromTooOld = new ListSink();
    recorder.subscribe(fromTooOld, 0);
    expect(fromTooOld.seen.map((e) => e.seq)).toEqual([6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
    const liveOnly = new ListSink();
    recorder.subscribe(liveOnly);
    expect(recorder.subscriberCount).toBe(3);
    recorder.record(input());
    expect(fromMiddle.seen.at(-1)!.seq).toBe(16);
    expect(liveOnly.seen.map((e) => e.seq)).toEqual([16]);
    expect(JSON.parse(liveOnly.seen[0]!.json)).toMatchObject({ seq: 16, path: '/cart' });
    unsubscribe();
    expect(recorder.subscriberCount).toBe(2);
    recorder.closeSubscribers();
    expect(fromTooOld.closed && liveOnly.closed).toBe(true);
    expect(recorder.subscriberCount).toBe(0);
  });

  it('adds query and protocol details at level detailed, redacting sensitive parameters', () => {
    const recorder = new TraceRecorder({ level: 'detailed' });
    recorder.record(input());
    const [event] = recorder.recent();
    expect(event).toMatchObject({
      query: `page=2&api_key=${REDACTED}&token=${REDACTED}`,
      httpVersion: '1.1',
      userAgent: 'test',
      upstreamMs: 0.5,
    });
    expect(event).not.toHaveProperty('requestHeaders');
  });

  it('adds headers at level headers with secret values redacted', () => {
    const recorder = new TraceRecorder({ level: 'headers' });
    recorder.record(input());
    const [event] = recorder.recent();
    expect(event!.requestHeaders).toEqual({
      host: 'shop.example.com',
      authorization: REDACTED,
      cookie: REDACTED,
      'x-api-key': REDACTED,
      'x-request-id': 'abc',
      accept: ['a', 'b'],
    });
    expect(event!.responseHeaders).toEqual({
      'set-cookie': REDACTED,
      'content-type': 'text/plain',
      'x-upstream-password': REDACTED,
    });
    expect(JSON.stringify(event)).not.toContain('secret-value');
  });
});

describe('redaction', () => {
  it('treats authorization, cookies and names with token/secret/password/key as sensitive', () => {
    for (const name of [
      'Authorization',
      'Proxy-Authorization',
      'Cookie',
      'Set-Cookie',
      'X-Auth-Token',
      'X-Client-Secret',
      'X-Password',
      'X-API-Key',
      'apikey',
    ]) {
      expect(isSensitiveName(name), name).toBe(true);
    }
    for (const name of ['Accept', 'Content-Type', 'X-Request-Id', 'Host', 'Keep-Alive', 'Authority-Hint']) {
      expect(isSensitiveName(name), name).toBe(false);
    }
  });

  it('redacts header lists and query strings without touching the rest', () => {
    expect(redactHeaderList(['A', '1', 'Cookie', 'c'])).toEqual({ a: '1', cookie: REDACTED });
    expect(redactQuery('')).toBe('');
    expect(redactQuery('a=1&Access%5FToken=x&flag&password')).toBe(
      `a=1&Access%5FToken=${REDACTED}&flag&password`,
    );
    expect(redactQuery('bad=%E0%A4%A&secret=1')).toBe(`bad=%E0%A4%A&secret=${REDACTED}`);
  });
});
