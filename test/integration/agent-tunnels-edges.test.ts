/**
 * Agent tunnels at their edges: the data plane's timeouts (a stalled body, a
 * silent app), the agent's failure reported in the trace event (refused
 * connection, a target outside its policy, a TLS failure) and WebSocket
 * upgrades on an https listener with real TLS. One control plane, one agent
 * over a real WebSocket and the apps are shared by the file's tests; a data
 * plane of the test's own (short upstream timeout, an https listener with a
 * certificate of the test's CA) tunnels through the control plane's hub.
 */
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { connect as netConnect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { DataPlane } from '../../src/dataplane/data-plane.js';
import { createLogger } from '../../src/logger.js';
import type { BackendRecord, ListenerRecord, RouteRecord } from '../../src/storage/schema.js';
import { createCertificate, type GeneratedCertificate } from '../../src/tls/certificates.js';
import { startTestAgent, type TestAgent } from '../helpers/agent.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { configureProxy, eventually, freePort, proxyClient } from './proxy-helpers.js';

const NOW = new Date().toISOString();
/** The test data plane's upstream timeout: bounds the response head and each wait for body bytes. */
const UPSTREAM_TIMEOUT_MS = 400;

let s: TestServer;
let token: string;
let agentId: string;
let agent: TestAgent;
let plane: DataPlane;
let ca: GeneratedCertificate;
let client: ReturnType<typeof proxyClient>;
const closers: (() => Promise<void>)[] = [];
/** Requests the app is holding (stalled, silent), to see them cancelled. */
const held: IncomingMessage[] = [];
let appPort = 0;
let refusedPort = 0;
let deniedPort = 0;
let tlsAppPort = 0;
let wss: WebSocketServer;
let plainPort = 0;
let httpsPort = 0;

/** Starts `server` on loopback; it is closed (every socket destroyed) after the file. */
async function serve(server: ReturnType<typeof createHttpServer>): Promise<number> {
  const sockets = new Set<Socket>();
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  closers.push(async () => {
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const socket of sockets) socket.destroy();
    await closed;
  });
  return (server.address() as { port: number }).port;
}

function app(req: IncomingMessage, res: ServerResponse): void {
  if (req.url === '/app/stall') {
    held.push(req);
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.write('first part\n');
    // …and nothing more.
    return;
  }
  if (req.url === '/app/silent') {
    held.push(req);
    return;
  }
  res.end(`app ${req.url}`);
}

function backend(id: string, upstreamUrl: string): BackendRecord {
  return {
    id,
    name: id,
    algorithm: 'round_robin',
    hashKey: 'ip',
    members: [{ id: `${id}-m`, type: 'agent', agentId, agentLabels: null, upstreamUrl, weight: 1 }],
    healthCheck: null,
    passive: { failures: 0, ejectSeconds: 1 },
    createdAt: NOW,
    updatedAt: NOW,
  } as BackendRecord;
}

function route(listenerId: string, pathPrefix: string, backendId: string): RouteRecord {
  return {
    id: `${listenerId}${pathPrefix.replace(/\//g, '-')}`,
    listenerId,
    host: null,
    pathPrefix,
    priority: 0,
    target: { type: 'backend', backendId },
    createdAt: NOW,
    updatedAt: NOW,
  };
}

beforeAll(async () => {
  ca = await createCertificate({ commonName: 'tunnel edges CA', altNames: ['edges-ca'], isCa: true });
  const site = await createCertificate({ altNames: ['site.test', '127.0.0.1'], issuer: ca });

  const appServer = createHttpServer(app);
  wss = new WebSocketServer({ server: appServer });
  wss.on('connection', (socket, req) => {
    socket.send(`proto ${req.headers['x-forwarded-proto']}`);
    socket.on('message', (data, isBinary) =>
      socket.send(isBinary ? data : `echo ${data}`, { binary: isBinary }),
    );
  });
  appPort = await serve(appServer);
  // An https app whose certificate the agent does not trust (default CAs only).
  tlsAppPort = await serve(
    createHttpsServer({ key: site.key, cert: site.cert }, (_req, res) => res.end('secret')) as never,
  );
  refusedPort = await freePort();
  deniedPort = await freePort();

  s = await startTestServer();
  const cookie = await s.setupAdmin();
  token = await s.createToken(cookie);
  const created = await s.request('POST', '/api/v1/agents', { token, body: { name: 'edges' } });
  agentId = created.json.agent.id;
  agent = startTestAgent(
    s,
    { id: agentId, token: created.json.token },
    {
      allowedTargets: [`127.0.0.1:${appPort}`, `127.0.0.1:${refusedPort}`, `127.0.0.1:${tlsAppPort}`],
    },
  );
  await agent.connected();
  await eventually(() => s.server.hub.tunnelAgents().some((a) => a.agentId === agentId));

  plane = new DataPlane({
    logger: createLogger('silent'),
    upstreamTimeoutMs: UPSTREAM_TIMEOUT_MS,
    closeGraceMs: 500,
    agents: s.server.hub,
  });
  plane.setCertificates([
    {
      id: 'c1',
      hosts: ['site.test'],
      certificatePem: site.cert,
      privateKeyPem: site.key,
      fingerprintSha256: site.fingerprintSha256,
    },
  ]);
  plane.backends.setBackends([backend('b-app', `http://127.0.0.1:${appPort}`)]);
  const listeners: ListenerRecord[] = [
    {
      id: 'plain',
      name: 'plain',
      bindAddress: '127.0.0.1',
      port: 0,
      enabled: true,
      createdAt: NOW,
      updatedAt: NOW,
    },
    {
      id: 'secure',
      name: 'secure',
      bindAddress: '127.0.0.1',
      port: 0,
      enabled: true,
      protocol: 'https',
      defaultCertificateId: 'c1',
      createdAt: NOW,
      updatedAt: NOW,
    },
  ];
  await plane.start({
    listeners,
    routes: [route('plain', '/app', 'b-app'), route('secure', '/app', 'b-app')],
  });
  plainPort = plane.boundPort('plain')!;
  httpsPort = plane.boundPort('secure')!;
  client = proxyClient();
});

afterAll(async () => {
  await client?.close();
  await plane?.close();
  wss?.close();
  await agent?.close();
  await s?.close();
  for (const close of closers.splice(0)) await close();
});

/** One raw HTTP/1.1 GET on the plain listener: everything received until the connection ends, and how it ended. */
async function rawGet(path: string): Promise<{ text: string; error: string | null }> {
  const socket = netConnect(plainPort, '127.0.0.1');
  await once(socket, 'connect');
  socket.write(`GET ${path} HTTP/1.1\r\nHost: public.example\r\nConnection: close\r\n\r\n`);
  let text = '';
  let error: string | null = null;
  socket.setEncoding('utf8');
  socket.on('data', (chunk: string) => {
    text += chunk;
  });
  socket.on('error', (err: NodeJS.ErrnoException) => {
    error = err.code ?? 'error';
  });
  await once(socket, 'close');
  return { text, error };
}

function lastEvent() {
  return plane.recorder.recent(1)[0];
}

describe('agent tunnels: the data plane timeouts', () => {
  it('an app that stalls mid-body is cut after the body timeout: the trace says upstream_body_timeout, the app request is cancelled', async () => {
    const before = held.length;
    const res = await rawGet('/app/stall');
    // The head and the first part came, then the connection was cut: never a truncated "success".
    expect(res.text).toMatch(/^HTTP\/1\.1 200/);
    expect(res.text).toContain('first part\n');
    expect(res.text).not.toMatch(/\r\n0\r\n\r\n$/);
    await eventually(() => lastEvent()?.path === '/app/stall');
    expect(lastEvent()).toMatchObject({
      status: 200,
      error: 'upstream_body_timeout',
      backend: { backendId: 'b-app', agentId, agentError: { code: 'ENVIRONMENT_TIMEOUT', cause: null } },
    });
    const appRequest = held[before]!;
    await eventually(() => appRequest.socket.destroyed);
    await eventually(() => s.server.hub.tunnelStats(agentId)?.activeStreams === 0);
  });

  it('an app that never answers gets 504 upstream_timeout after the same timeout', async () => {
    const res = await client.send(plainPort, '/app/silent');
    expect(res.status).toBe(504);
    expect(lastEvent()).toMatchObject({
      error: 'upstream_timeout',
      backend: { agentId, agentError: { code: 'ENVIRONMENT_TIMEOUT', cause: null } },
    });
    // A body that flows is not cut, however long the whole answer takes.
    const ok = await client.send(plainPort, '/app/fine');
    expect(ok.status).toBe(200);
    expect(ok.text).toBe('app /app/fine');
  });
});

describe('agent tunnels: the agent failure in the trace', () => {
  it('names the agent error code and its cause for a refused app, a target outside the policy and a TLS failure', async () => {
    const c = proxyClient();
    try {
      const cases = [
        {
          url: `http://127.0.0.1:${refusedPort}`,
          error: 'upstream_refused',
          code: 'ENVIRONMENT_UNREACHABLE',
        },
        { url: `http://127.0.0.1:${deniedPort}`, error: 'upstream_error', code: 'TARGET_NOT_ALLOWED' },
        { url: `https://127.0.0.1:${tlsAppPort}`, error: 'upstream_tls', code: 'ENVIRONMENT_UNREACHABLE' },
      ];
      for (const expected of cases) {
        const created = await s.request('POST', '/api/v1/proxy/backends', {
          token,
          body: {
            name: `edge-${expected.error}-${Math.random().toString(36).slice(2)}`,
            members: [{ type: 'agent', agentId, upstreamUrl: expected.url }],
            passive: { failures: 0, ejectSeconds: 1 },
          },
        });
        expect(created.status).toBe(201);
        const { port } = await configureProxy(s, token, {
          type: 'backend',
          backendId: created.json.backend.id,
        });
        const res = await c.send(port, '/x');
        expect(res.status).toBe(502);
        // Through the API, as the console reads it.
        const event = (await s.request('GET', '/api/v1/traffic/recent?limit=1', { token })).json.events[0];
        expect(event.error).toBe(expected.error);
        expect(event.backend.agentId).toBe(agentId);
        expect(event.backend.agentError.code).toBe(expected.code);
        if (expected.error === 'upstream_refused')
          expect(event.backend.agentError.cause).toBe('ECONNREFUSED');
        if (expected.error === 'upstream_error') expect(event.backend.agentError.cause).toBeNull();
        if (expected.error === 'upstream_tls')
          expect(event.backend.agentError.cause).toMatch(/CERT|SIGNATURE|ISSUER/);
      }
    } finally {
      await c.close();
    }
  });
});

describe('agent tunnels: WebSocket upgrades on an https listener', () => {
  it('passes a WebSocket through the tunnel over real TLS: frames both ways, X-Forwarded-Proto https, trace 101', async () => {
    const ws = new WebSocket(`wss://127.0.0.1:${httpsPort}/app/socket`, {
      // The listener's default certificate (no SNI for an IP address), valid for 127.0.0.1.
      ca: ca.cert,
      headers: { host: 'site.test' },
    });
    const messages: string[] = [];
    ws.on('message', (data, isBinary) => {
      if (!isBinary) messages.push(String(data));
    });
    await once(ws, 'open');
    expect((ws as unknown as { _socket: { encrypted?: boolean } })._socket.encrypted).toBe(true);
    ws.send('hello');
    const big = randomBytes(512 * 1024);
    const echoed = new Promise<Buffer>((resolve) =>
      ws.on('message', (data, isBinary) => {
        if (isBinary) resolve(data as Buffer);
      }),
    );
    ws.send(big);
    const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
    expect(sha(await echoed)).toBe(sha(big));
    await eventually(() => messages.includes('proto https') && messages.includes('echo hello'));
    ws.close(1000, 'bye');
    await once(ws, 'close');
    await eventually(() => s.server.hub.tunnelStats(agentId)?.activeStreams === 0);
    await eventually(() => lastEvent()?.path === '/app/socket');
    expect(lastEvent()).toMatchObject({ status: 101, backend: { agentId } });
  });
});
