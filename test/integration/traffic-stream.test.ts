import { once } from 'node:events';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { AddressInfo } from 'node:net';
import Fastify from 'fastify';
import { describe, expect, it } from 'vitest';
import { TraceRecorder } from '../../src/dataplane/trace-recorder.js';
import { TrafficSettingsService } from '../../src/domain/traffic-settings-service.js';
import { createTrafficPlugin } from '../../src/http/routes/traffic.js';
import { emptyDatabase } from '../../src/storage/schema.js';
import { MemoryStore } from '../../src/storage/store.js';
import { useCleanups } from '../helpers/cleanup.js';
import type { TestServer } from '../helpers/server.js';
import {
  configureProxy,
  eventually,
  openSse,
  type SseReader,
  startProxyTest,
  startUpstream,
} from './proxy-helpers.js';

const cleanups = useCleanups();

async function setup() {
  const { server, token, client } = await startProxyTest(cleanups);
  const { port } = await configureProxy(server, token, {
    type: 'static',
    status: 200,
    contentType: 'text/plain',
    body: 'ok',
  });
  return { server, token, port, client };
}

async function open(s: TestServer, path: string, token: string): Promise<SseReader> {
  const reader = await openSse(s, path, token);
  cleanups.push(() => reader.close());
  return reader;
}

async function settings(s: TestServer, token: string) {
  return (await s.request('GET', '/api/v1/traffic/settings', { token })).json;
}

const seqs = (reader: SseReader) =>
  reader.messages.filter((m) => m.event === 'message').map((m) => JSON.parse(m.data).seq as number);

describe('traffic stream', () => {
  it('replays retained events after a sequence, then streams each new event as it happens', async () => {
    const { server, token, port, client } = await setup();
    for (const path of ['/a', '/b', '/c']) await client.send(port, path);
    const reader = await open(server, '/api/v1/traffic/stream?after=1', token);
    expect(reader.status).toBe(200);
    expect(reader.headers['content-type']).toMatch(/^text\/event-stream/);
    await reader.until(() => seqs(reader).length === 2);
    expect(seqs(reader)).toEqual([2, 3]);
    expect(reader.messages.map((m) => m.id)).toEqual(['2', '3']);
    expect(JSON.parse(reader.messages[1]!.data)).toMatchObject({ path: '/c', status: 200 });
    expect((await settings(server, token)).subscribers).toBe(1);

    // Each live event is flushed on its own: it arrives while the stream stays open.
    await client.send(port, '/live');
    await reader.until(() => seqs(reader).includes(4));
    expect(JSON.parse(reader.messages.at(-1)!.data)).toMatchObject({ seq: 4, path: '/live' });
    await client.send(port, '/live2');
    await reader.until(() => seqs(reader).includes(5));

    // Without a resume point a stream starts with live events only.
    const liveOnly = await open(server, '/api/v1/traffic/stream', token);
    await client.send(port, '/live3');
    await liveOnly.until(() => seqs(liveOnly).length > 0);
    expect(seqs(liveOnly)).toEqual([6]);
  });

  it('resumes from a Last-Event-ID header and refuses a bad resume point', async () => {
    const { server, token, port, client } = await setup();
    for (const path of ['/a', '/b']) await client.send(port, path);
    const req = httpsRequest(new URL('/api/v1/traffic/stream', server.url), {
      ca: server.server.certificate,
      servername: 'localhost',
      agent: false,
      headers: { authorization: `Bearer ${token}`, 'last-event-id': '1' },
    });
    req.end();
    const [res] = (await once(req, 'response')) as [IncomingMessage];
    let text = '';
    res.setEncoding('utf8');
    res.on('data', (c: string) => {
      text += c;
    });
    await eventually(() => text.includes('id: 2'));
    expect(text).not.toContain('id: 1\n');
    req.destroy();

    for (const query of ['after=-1', 'after=abc', 'after=1.5']) {
      const bad = await server.request('GET', `/api/v1/traffic/stream?${query}`, { token });
      expect(bad.status, query).toBe(400);
      expect(bad.json.error.code).toBe('VALIDATION_FAILED');
    }
    for (const query of ['limit=0', 'limit=1001', 'limit=x']) {
      const bad = await server.request('GET', `/api/v1/traffic/recent?${query}`, { token });
      expect(bad.status, query).toBe(400);
    }
    expect((await server.request('GET', '/api/v1/traffic/stream')).status).toBe(401);
  });

  it('brings the subscriber count back to 0 when the client closes the stream', async () => {
    const { server, token } = await setup();
    const one = await open(server, '/api/v1/traffic/stream', token);
    const two = await open(server, '/api/v1/traffic/stream', token);
    await eventually(async () => (await settings(server, token)).subscribers === 2);
    one.close();
    two.close();
    await eventually(async () => (await settings(server, token)).subscribers === 0);
    const overview = await server.request('GET', '/api/v1/overview', { token });
    expect(overview.json.traceSubscribers).toBe(0);
  });

  it('ends open streams when the server shuts down', async () => {
    const { server: running, token } = await setup();
    const reader = await open(running, '/api/v1/traffic/stream', token);
    await eventually(async () => (await settings(running, token)).subscribers === 1);
    await running.close();
    await reader.ended;
  });

  it('lets a slow subscriber lose events, counted and reported, while the proxy keeps serving', async () => {
    const { server, token, port, client } = await setup();
    // Large events fill the socket buffers quickly.
    await server.request('PUT', '/api/v1/traffic/settings', { token, body: { level: 'headers' } });
    const padding = 'p'.repeat(12_000);
    const slow = await open(server, '/api/v1/traffic/stream', token);
    slow.pause();
    let served = 0;
    let dropped = 0;
    for (let batch = 0; batch < 100 && dropped === 0; batch++) {
      const answers = await Promise.all(
        Array.from({ length: 50 }, (_, i) =>
          client.send(port, `/req/${batch}/${i}`, { headers: { 'x-padding': padding } }),
        ),
      );
      for (const answer of answers) expect(answer.status).toBe(200);
      served += answers.length;
      dropped = (await settings(server, token)).droppedEvents;
    }
    expect(dropped).toBeGreaterThan(0);
    const counters = await settings(server, token);
    expect(counters.emittedEvents).toBe(served);
    expect(counters.subscribers).toBe(1);

    // Once it reads again it gets what was queued, then the report, then live events.
    slow.resume();
    await slow.until((messages) => messages.some((m) => m.event === 'dropped'), 10_000);
    const report = JSON.parse(slow.messages.find((m) => m.event === 'dropped')!.data);
    expect(report.dropped).toBeGreaterThan(0);
    await client.send(port, '/after');
    await slow.until(
      () => slow.messages.some((m) => m.event === 'message' && JSON.parse(m.data).path === '/after'),
      10_000,
    );
    const received = seqs(slow).length;
    const finalDropped = (await settings(server, token)).droppedEvents;
    expect(received + finalDropped).toBe(served + 1);
  });

  it('redacts secret header values at level headers', async () => {
    const { server, token, client } = await startProxyTest(cleanups);
    const upstream = await startUpstream((_req, res) => {
      res.setHeader('set-cookie', 'session=upstream-secret-1');
      res.setHeader('x-request-id', 'visible-1');
      res.end('ok');
    }, cleanups);
    const { port } = await configureProxy(server, token, { type: 'upstream', url: upstream.url });
    const put = await server.request('PUT', '/api/v1/traffic/settings', {
      token,
      body: { level: 'headers' },
    });
    expect(put.json).toMatchObject({ enabled: true, level: 'headers' });
    const reader = await open(server, '/api/v1/traffic/stream', token);
    await client.send(port, '/login?user=ann&password=query-secret-1', {
      headers: {
        authorization: 'Bearer client-secret-1',
        cookie: 'sid=client-secret-2',
        'x-api-key': 'client-secret-3',
        'x-auth-token': 'client-secret-4',
        'x-trace': 'visible-2',
      },
    });
    await reader.until(() => seqs(reader).length === 1);
    const recent = await server.request('GET', '/api/v1/traffic/recent', { token });
    const event = recent.json.events[0];
    expect(event.requestHeaders).toMatchObject({
      authorization: '[redacted]',
      cookie: '[redacted]',
      'x-api-key': '[redacted]',
      'x-auth-token': '[redacted]',
      'x-trace': 'visible-2',
    });
    expect(event.responseHeaders).toMatchObject({ 'set-cookie': '[redacted]', 'x-request-id': 'visible-1' });
    expect(event.query).toBe('user=ann&password=[redacted]');
    for (const text of [recent.text, reader.messages[0]!.data]) {
      expect(text).not.toMatch(/client-secret|upstream-secret|query-secret/);
    }
  });

  it('records nothing while tracing is off, but the overview still counts requests', async () => {
    const { server, token, port, client } = await setup();
    const off = await server.request('PUT', '/api/v1/traffic/settings', { token, body: { enabled: false } });
    expect(off.json).toMatchObject({ enabled: false, level: 'basic', emittedEvents: 0 });
    const bad = await server.request('PUT', '/api/v1/traffic/settings', {
      token,
      body: { level: 'everything' },
    });
    expect(bad.status).toBe(400);
    for (let i = 0; i < 3; i++) expect((await client.send(port, '/')).status).toBe(200);
    expect((await server.request('GET', '/api/v1/traffic/recent', { token })).json.events).toEqual([]);
    const overview = (await server.request('GET', '/api/v1/overview', { token })).json;
    expect(overview).toMatchObject({
      requests: { last5m: 3, last1h: 3 },
      errors: { last5m: 0, last1h: 0 },
      listeners: { running: 1, configured: 1 },
      agentsConnected: 0,
      traceSubscribers: 0,
    });
    expect(overview.latencyMs.last5m.p50).toBeGreaterThan(0);
    await server.request('PUT', '/api/v1/traffic/settings', { token, body: { enabled: true } });
    await client.send(port, '/on');
    const events = (await server.request('GET', '/api/v1/traffic/recent', { token })).json.events;
    expect(events.map((e: { path: string }) => e.path)).toEqual(['/on']);
  });

  it('sends heartbeat comments on an idle stream at the configured interval', async () => {
    const recorder = new TraceRecorder();
    const settingsService = new TrafficSettingsService({
      store: new MemoryStore(emptyDatabase('instance')),
      counters: () => recorder.counters(),
    });
    const app = Fastify();
    await app.register(
      createTrafficPlugin({ settings: settingsService, recorder, stream: { heartbeatMs: 50 } }),
    );
    await app.listen({ host: '127.0.0.1', port: 0 });
    try {
      const req = httpRequest({
        host: '127.0.0.1',
        port: (app.server.address() as AddressInfo).port,
        path: '/api/v1/traffic/stream',
        agent: false,
      });
      req.end();
      const [res] = (await once(req, 'response')) as [IncomingMessage];
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        text += chunk;
      });
      await eventually(() => text.split(': heartbeat\n\n').length > 3);
      expect(recorder.subscriberCount).toBe(1);
      req.destroy();
      await eventually(() => recorder.subscriberCount === 0);
    } finally {
      await app.close();
    }
  });
});
