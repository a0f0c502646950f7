/**
 * Agent tunnels end to end: a real control plane, real agents over real
 * WebSockets (TLS, pinned), and an app on loopback reached through the agent
 * member of a backend — public client → proxy listener → hub → agent → app.
 */
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import type { IncomingMessage } from 'node:http';
import net from 'node:net';
import { Readable } from 'node:stream';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { startTunnelAgent } from '../helpers/agent.js';
import { useCleanups } from '../helpers/cleanup.js';
import type { TestServer } from '../helpers/server.js';
import { configureProxy, eventually, startProxyTest, startUpstream } from './proxy-helpers.js';

const cleanups = useCleanups();

async function setup() {
  const { server: s, token, client: c } = await startProxyTest(cleanups);
  return { s, token, c };
}

/** Creates an agent with `labels` and starts it, allowed to reach `allowed` only. */
const agentWith = (s: TestServer, token: string, labels: Record<string, string>, allowed: string[]) =>
  startTunnelAgent(s, token, { labels, allowedTargets: allowed }, cleanups);

async function backendTo(
  s: TestServer,
  token: string,
  members: Record<string, unknown>[],
): Promise<{ backendId: string; memberIds: string[] }> {
  const res = await s.request('POST', '/api/v1/proxy/backends', {
    token,
    body: { name: `b-${Math.random().toString(36).slice(2)}`, members },
  });
  expect(res.status).toBe(201);
  return {
    backendId: res.json.backend.id,
    memberIds: res.json.backend.members.map((m: { id: string }) => m.id),
  };
}

const app = (handler: Parameters<typeof startUpstream>[0]) => startUpstream(handler, cleanups);

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

async function lastEvent(s: TestServer, token: string) {
  const recent = await s.request('GET', '/api/v1/traffic/recent?limit=1', { token });
  return recent.json.events[0];
}

/** One raw HTTP/1.1 request with exactly these header lines; the response's status, headers and body. */
async function raw(
  port: number,
  target: string,
  headers: string[],
): Promise<{ status: number; headers: Record<string, string | string[]>; body: string }> {
  const socket = net.connect(port, '127.0.0.1');
  await once(socket, 'connect');
  socket.write(`GET ${target} HTTP/1.1\r\n${headers.map((h) => `${h}\r\n`).join('')}\r\n`);
  let text = '';
  socket.setEncoding('utf8');
  for await (const chunk of socket) text += chunk;
  const [head = '', body = ''] = text.split('\r\n\r\n', 2);
  const lines = head.split('\r\n');
  const parsed: Record<string, string | string[]> = {};
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    const name = line.slice(0, colon).toLowerCase();
    const value = line.slice(colon + 1).trim();
    const existing = parsed[name];
    parsed[name] =
      existing === undefined ? value : [...(Array.isArray(existing) ? existing : [existing]), value];
  }
  return { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(lines[0] ?? '')?.[1]), headers: parsed, body };
}

function waitForClose(req: IncomingMessage): Promise<void> {
  return new Promise((resolve) => {
    if (req.socket.destroyed) resolve();
    else req.socket.once('close', () => resolve());
  });
}

describe('agent tunnels', () => {
  it('serves an app through the agent member: GET, headers, trace with backend, member and agent', async () => {
    const { s, token } = await setup();
    const u = await app((req, res) => {
      res.setHeader('x-app-saw', JSON.stringify(req.headers));
      res.setHeader('connection', 'keep-alive, x-private');
      res.setHeader('x-private', 'hop');
      res.setHeader('set-cookie', ['a=1', 'b=2']);
      res.end(`app ${req.method} ${req.url}`);
    });
    const { id } = await agentWith(s, token, { site: 'lab' }, [`127.0.0.1:${u.port}`]);
    const { backendId, memberIds } = await backendTo(s, token, [
      { type: 'agent', agentId: id, upstreamUrl: u.url },
    ]);
    const { port } = await configureProxy(s, token, { type: 'backend', backendId });

    const res = await raw(port, '/hello?x=1', [
      'Host: public.example',
      'X-Forwarded-For: 203.0.113.9',
      'Connection: close, x-drop-me',
      'X-Drop-Me: secret',
      'Keep-Alive: timeout=5',
      'X-Keep: yes',
    ]);
    expect(res.status).toBe(200);
    expect(res.body).toBe('app GET /hello?x=1');
    const saw = JSON.parse(res.headers['x-app-saw'] as string);
    expect(saw.host).toBe(`127.0.0.1:${u.port}`);
    expect(saw['x-forwarded-for']).toBe('127.0.0.1');
    expect(saw['x-forwarded-host']).toBe('public.example');
    expect(saw['x-forwarded-proto']).toBe('http');
    expect(saw['x-keep']).toBe('yes');
    expect(saw['x-drop-me']).toBeUndefined();
    expect(saw['keep-alive']).toBeUndefined();
    expect(res.headers['x-private']).toBeUndefined();
    expect(res.headers['set-cookie']).toEqual(['a=1', 'b=2']);

    const event = await lastEvent(s, token);
    expect(event.backend).toEqual({ backendId, memberId: memberIds[0], agentId: id });
    expect(event.status).toBe(200);
    await eventually(() => s.server.hub.tunnelStats(id)?.activeStreams === 0);
  });

  it('streams a large upload and a large download both ways, checked by hash', async () => {
    const { s, token, c } = await setup();
    const download = randomBytes(6 * 1024 * 1024);
    const u = await app(async (req, res) => {
      if (req.url === '/download') {
        res.setHeader('x-sha', sha256(download));
        // Written in pieces with backpressure, as a real app would stream a file.
        let offset = 0;
        const next = () => {
          while (offset < download.length) {
            const piece = download.subarray(offset, offset + 100_000);
            offset += piece.length;
            if (!res.write(piece)) {
              res.once('drain', next);
              return;
            }
          }
          res.end();
        };
        next();
        return;
      }
      const hash = createHash('sha256');
      let bytes = 0;
      for await (const chunk of req) {
        hash.update(chunk as Buffer);
        bytes += (chunk as Buffer).length;
      }
      res.end(
        JSON.stringify({ bytes, sha: hash.digest('hex'), te: req.headers['transfer-encoding'] ?? null }),
      );
    });
    const { id } = await agentWith(s, token, {}, [`127.0.0.1:${u.port}`]);
    const { backendId } = await backendTo(s, token, [{ type: 'agent', agentId: id, upstreamUrl: u.url }]);
    const { port } = await configureProxy(s, token, { type: 'backend', backendId });

    const upload = randomBytes(5 * 1024 * 1024 + 123);
    async function* pieces() {
      for (let i = 0; i < upload.length; i += 300_000) yield upload.subarray(i, i + 300_000);
    }
    const up = await request(`http://127.0.0.1:${port}/upload`, {
      method: 'POST',
      body: Readable.from(pieces()),
      dispatcher: c.dispatcher,
    });
    expect(up.statusCode).toBe(200);
    expect(await up.body.json()).toEqual({ bytes: upload.length, sha: sha256(upload), te: 'chunked' });

    const down = await request(`http://127.0.0.1:${port}/download`, { dispatcher: c.dispatcher });
    expect(down.statusCode).toBe(200);
    const received = Buffer.from(await down.body.arrayBuffer());
    expect(received.length).toBe(download.length);
    expect(sha256(received)).toBe(down.headers['x-sha']);

    // A window per stream at most was ever held on the hub (a large one: the budget had room), and it is back.
    const stats = s.server.hub.tunnelStats(id);
    expect(stats?.activeStreams).toBe(0);
    expect(stats?.bufferedBytes).toBe(0);
    expect(stats?.peakBufferedBytes).toBeLessThanOrEqual(stats?.largeWindowBytes ?? 0);
    expect(stats?.largeWindowsInUse).toBe(0);
  });

  it('the client leaving cancels the request at the app', async () => {
    const { s, token, c } = await setup();
    let appRequest: IncomingMessage | null = null;
    const u = await app((req, res) => {
      appRequest = req;
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first part\n');
      // …and never ends.
    });
    const { id, agent } = await agentWith(s, token, {}, [`127.0.0.1:${u.port}`]);
    const { backendId } = await backendTo(s, token, [{ type: 'agent', agentId: id, upstreamUrl: u.url }]);
    const { port } = await configureProxy(s, token, { type: 'backend', backendId });

    const controller = new AbortController();
    const res = await request(`http://127.0.0.1:${port}/stream`, {
      dispatcher: c.dispatcher,
      signal: controller.signal,
    });
    expect(res.statusCode).toBe(200);
    const reader = res.body[Symbol.asyncIterator]();
    expect(String((await reader.next()).value)).toBe('first part\n');
    expect(s.server.hub.tunnelStats(id)?.activeStreams).toBe(1);
    controller.abort();
    await reader.return?.().catch(() => {});
    await waitForClose(appRequest as unknown as IncomingMessage);
    await eventually(() => s.server.hub.tunnelStats(id)?.activeStreams === 0);
    await eventually(() => agent.agent.stats()?.tunnels.activeStreams === 0);
    await eventually(async () => (await lastEvent(s, token))?.error === 'client_aborted');
  });

  it('an agent stopping mid-request answers 502 at once and frees the streams', async () => {
    const { s, token, c } = await setup();
    let appRequest: IncomingMessage | null = null;
    const u = await app((req) => {
      appRequest = req;
      // Holds the answer: the request is in flight at the app when the agent goes.
    });
    const { id, agent } = await agentWith(s, token, {}, [`127.0.0.1:${u.port}`]);
    const { backendId } = await backendTo(s, token, [{ type: 'agent', agentId: id, upstreamUrl: u.url }]);
    const { port } = await configureProxy(s, token, { type: 'backend', backendId });

    const pending = c.send(port, '/slow');
    await eventually(() => appRequest !== null);
    expect(s.server.hub.tunnelStats(id)?.activeStreams).toBe(1);
    await agent.close();
    const res = await pending;
    expect(res.status).toBe(502);
    await waitForClose(appRequest as unknown as IncomingMessage);
    expect(s.server.hub.tunnelStats(id)).toBeNull();
    expect(s.server.hub.tunnelAgents()).toEqual([]);
    const event = await lastEvent(s, token);
    expect(event.status).toBe(502);
    expect(event.backend.agentId).toBe(id);
    // With the agent gone the member has nothing to go through: 503.
    expect((await c.send(port, '/after')).status).toBe(503);
  });

  it('a target outside the agent allowed targets is refused: 502, the cause in the log', async () => {
    const { s, token, c } = await setup();
    const u = await app((_req, res) => res.end('should not be reached'));
    const { id } = await agentWith(s, token, {}, ['127.0.0.1:1']);
    const { backendId } = await backendTo(s, token, [{ type: 'agent', agentId: id, upstreamUrl: u.url }]);
    const { port } = await configureProxy(s, token, { type: 'backend', backendId });

    const res = await c.send(port, '/x');
    expect(res.status).toBe(502);
    expect(u.seen).toHaveLength(0);
    await eventually(() =>
      s.logs.some((line) => {
        const entry = JSON.parse(line);
        return entry.code === 'TARGET_NOT_ALLOWED' && entry.agentId === id && /tunnel/.test(entry.msg);
      }),
    );
  });

  it('an app refusing connections: 502 with ECONNREFUSED as the cause', async () => {
    const { s, token, c } = await setup();
    const u = await app((_req, res) => res.end());
    const deadUrl = u.url;
    const port0 = u.port;
    await u.close();
    const { id } = await agentWith(s, token, {}, [`127.0.0.1:${port0}`]);
    const { backendId } = await backendTo(s, token, [{ type: 'agent', agentId: id, upstreamUrl: deadUrl }]);
    const { port } = await configureProxy(s, token, { type: 'backend', backendId });
    const res = await c.send(port, '/x');
    expect(res.status).toBe(502);
    expect((await lastEvent(s, token)).error).toBe('upstream_refused');
    expect(
      s.logs.some((line) => {
        const entry = JSON.parse(line);
        return entry.cause === 'ECONNREFUSED' && entry.agentId === id;
      }),
    ).toBe(true);
  });

  it('a label selector picks the connected agent carrying the labels', async () => {
    const { s, token, c } = await setup();
    const u = await app((req, res) => res.end(`via ${req.headers['x-forwarded-host'] ?? ''}`));
    const lab = await agentWith(s, token, { site: 'lab', tier: 'edge' }, [`127.0.0.1:${u.port}`]);
    const office = await agentWith(s, token, { site: 'office' }, [`127.0.0.1:${u.port}`]);
    const { backendId } = await backendTo(s, token, [
      { type: 'agent', agentLabels: { site: 'office' }, upstreamUrl: u.url },
    ]);
    const { port } = await configureProxy(s, token, { type: 'backend', backendId });
    for (let i = 0; i < 3; i++) {
      expect((await c.send(port, '/')).status).toBe(200);
      expect((await lastEvent(s, token)).backend.agentId).toBe(office.id);
    }
    const other = await backendTo(s, token, [
      { type: 'agent', agentLabels: { site: 'lab', tier: 'edge' }, upstreamUrl: u.url },
    ]);
    const second = await configureProxy(s, token, { type: 'backend', backendId: other.backendId });
    expect((await c.send(second.port, '/')).status).toBe(200);
    expect((await lastEvent(s, token)).backend.agentId).toBe(lab.id);
  });

  it('passes a WebSocket upgrade through the tunnel: frames both ways, then both sides close', async () => {
    const { s, token } = await setup();
    const u = await app((_req, res) => res.end('plain'));
    const wss = new WebSocketServer({ server: u.server });
    let appSocketClosed = false;
    let sawForwardedHost: string | undefined;
    wss.on('connection', (socket, req) => {
      sawForwardedHost = req.headers['x-forwarded-host'] as string | undefined;
      socket.on('message', (data, isBinary) =>
        socket.send(isBinary ? data : `echo ${data}`, { binary: isBinary }),
      );
      socket.on('close', () => {
        appSocketClosed = true;
      });
    });
    const { id } = await agentWith(s, token, {}, [`127.0.0.1:${u.port}`]);
    const { backendId } = await backendTo(s, token, [{ type: 'agent', agentId: id, upstreamUrl: u.url }]);
    const { port } = await configureProxy(s, token, { type: 'backend', backendId });

    const ws = new WebSocket(`ws://127.0.0.1:${port}/socket`, { headers: { host: 'chat.example' } });
    const messages: string[] = [];
    ws.on('message', (data) => messages.push(String(data)));
    await once(ws, 'open');
    expect(sawForwardedHost).toBe('chat.example');
    ws.send('hello');
    ws.send('world');
    // A larger binary frame crosses several tunnel windows both ways.
    const big = randomBytes(1024 * 1024);
    const echoed = new Promise<Buffer>((resolve) =>
      ws.on('message', (data, isBinary) => {
        if (isBinary) resolve(data as Buffer);
      }),
    );
    ws.send(big);
    expect(sha256(await echoed)).toBe(sha256(big));
    await eventually(() => messages.includes('echo hello') && messages.includes('echo world'));
    expect(s.server.hub.tunnelStats(id)?.activeStreams).toBe(1);
    ws.close(1000, 'bye');
    await once(ws, 'close');
    await eventually(() => appSocketClosed);
    await eventually(() => s.server.hub.tunnelStats(id)?.activeStreams === 0);
    const event = await lastEvent(s, token);
    expect(event.status).toBe(101);
    expect(event.backend.agentId).toBe(id);
    wss.close();
  });
});
