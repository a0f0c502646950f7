/**
 * Helpers for the proxy and traffic tests: plain-HTTP upstreams
 * whose close() waits for every socket, a proxy client, and an SSE reader
 * over real HTTPS that can be paused.
 */
import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { createServer as createNetServer, type Socket } from 'node:net';
import { Agent, request } from 'undici';
import type { Cleanups } from '../helpers/cleanup.js';
import { freePort } from '../helpers/processes.js';
import { startTestServer, type TestServer, type TestServerOptions } from '../helpers/server.js';
import { eventually } from '../helpers/wait.js';

/** The one free-port probe, here too for the tests that import their helpers from this file. */
export { freePort };

/** True when 127.0.0.1:port can be bound right now. */
export async function canBind(port: number): Promise<boolean> {
  const server = createNetServer();
  return new Promise((resolve) => {
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

export interface Upstream {
  server: Server;
  port: number;
  url: string;
  /** Requests seen, in order. */
  seen: IncomingMessage[];
  close(): Promise<void>;
}

/**
 * A plain-HTTP upstream on 127.0.0.1:0; close() destroys every socket and
 * waits. Given `cleanups`, it is closed after the test, after everything else.
 */
export async function startUpstream(
  handler: (req: IncomingMessage, res: ServerResponse) => void,
  cleanups?: Cleanups,
): Promise<Upstream> {
  const seen: IncomingMessage[] = [];
  const sockets = new Set<Socket>();
  const server = createServer((req, res) => {
    seen.push(req);
    handler(req, res);
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  const upstream: Upstream = {
    server,
    port,
    url: `http://127.0.0.1:${port}`,
    seen,
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const socket of sockets) socket.destroy();
      await closed;
    },
  };
  cleanups?.unshift(() => upstream.close());
  return upstream;
}

export interface ProxyResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
}

/**
 * A client for the public proxy (own keep-alive pool). Given `cleanups`, it
 * is closed after the test; else close it yourself.
 */
export function proxyClient(cleanups?: Pick<Cleanups, 'push'>) {
  const dispatcher = new Agent({ keepAliveTimeout: 1000 });
  let closing: Promise<void> | undefined;
  const close = () => {
    closing ??= dispatcher.close();
    return closing;
  };
  cleanups?.push(close);
  return {
    dispatcher,
    async send(
      port: number,
      path: string,
      options: { method?: string; headers?: Record<string, string>; body?: string } = {},
    ): Promise<ProxyResponse> {
      const res = await request(`http://127.0.0.1:${port}${path}`, {
        method: (options.method ?? 'GET') as 'GET',
        headers: options.headers,
        body: options.body,
        dispatcher,
      });
      return {
        status: res.statusCode,
        headers: res.headers as Record<string, string | string[] | undefined>,
        text: await res.body.text(),
      };
    },
    /** Closes the pool (once; a second call waits for the first). */
    close,
  };
}

export type ProxyClient = ReturnType<typeof proxyClient>;

export interface ProxyTest {
  server: TestServer;
  /** An API token of the server's admin. */
  token: string;
  client: ProxyClient;
}

/**
 * What most proxy tests start with: a server with an admin API token and a
 * proxy client, closed after the test (client first, then the server).
 */
export async function startProxyTest(
  cleanups: Cleanups,
  options: TestServerOptions = {},
): Promise<ProxyTest> {
  const server = await startTestServer(options, cleanups);
  const token = await server.createToken(await server.setupAdmin());
  const client = proxyClient(cleanups);
  return { server, token, client };
}

/** Creates a listener and an upstream route through the API; returns both. */
export async function configureProxy(
  server: TestServer,
  token: string,
  target: Record<string, unknown>,
  options: { port?: number; host?: string | null; pathPrefix?: string } = {},
): Promise<{ listenerId: string; routeId: string; port: number }> {
  const port = options.port ?? (await freePort());
  const listener = await server.request('POST', '/api/v1/proxy/listeners', {
    token,
    body: { name: `public-${port}`, bindAddress: '127.0.0.1', port },
  });
  if (listener.status !== 201) throw new Error(`listener: ${listener.status} ${listener.text}`);
  const route = await server.request('POST', '/api/v1/proxy/routes', {
    token,
    body: {
      listenerId: listener.json.listener.id,
      host: options.host ?? null,
      pathPrefix: options.pathPrefix ?? '/',
      target,
    },
  });
  if (route.status !== 201) throw new Error(`route: ${route.status} ${route.text}`);
  return { listenerId: listener.json.listener.id, routeId: route.json.route.id, port };
}

export interface SseMessage {
  event: string;
  id: string | null;
  data: string;
}

export interface SseReader {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  /** Messages parsed so far (comments are counted in `comments`). */
  messages: SseMessage[];
  comments: string[];
  /** Resolves once `predicate` holds for the messages (checked on each chunk), or rejects after `timeoutMs`. */
  until(predicate: (messages: SseMessage[]) => boolean, timeoutMs?: number): Promise<void>;
  pause(): void;
  resume(): void;
  close(): void;
  /** Resolves when the response has ended or the socket closed. */
  ended: Promise<void>;
}

/** Opens `GET pathname` on the management server as an event stream reader. */
export async function openSse(server: TestServer, pathname: string, token: string): Promise<SseReader> {
  const url = new URL(pathname, server.url);
  const req = httpsRequest(url, {
    method: 'GET',
    ca: server.server.certificate,
    servername: 'localhost',
    agent: false,
    headers: { authorization: `Bearer ${token}`, accept: 'text/event-stream' },
  });
  req.end();
  const [res] = (await once(req, 'response')) as [IncomingMessage];
  const messages: SseMessage[] = [];
  const comments: string[] = [];
  const waiters = new Set<() => void>();
  let buffer = '';
  res.setEncoding('utf8');
  res.on('data', (chunk: string) => {
    buffer += chunk;
    let end = buffer.indexOf('\n\n');
    while (end >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const message: SseMessage = { event: 'message', id: null, data: '' };
      let hasData = false;
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) comments.push(line.slice(1).trim());
        else if (line.startsWith('event: ')) message.event = line.slice(7);
        else if (line.startsWith('id: ')) message.id = line.slice(4);
        else if (line.startsWith('data: ')) {
          message.data += line.slice(6);
          hasData = true;
        }
      }
      if (hasData) messages.push(message);
      end = buffer.indexOf('\n\n');
    }
    for (const wake of [...waiters]) wake();
  });
  const ended = new Promise<void>((resolve) => {
    res.once('end', resolve);
    res.once('close', resolve);
    res.once('error', () => resolve());
  });
  return {
    status: res.statusCode ?? 0,
    headers: res.headers,
    messages,
    comments,
    until(predicate, timeoutMs = 5000) {
      if (predicate(messages)) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`timed out waiting; got ${messages.length} messages`));
        }, timeoutMs);
        const check = () => {
          if (!predicate(messages)) return;
          clearTimeout(timer);
          waiters.delete(check);
          resolve();
        };
        waiters.add(check);
      });
    },
    pause: () => res.pause(),
    resume: () => res.resume(),
    close: () => req.destroy(),
    ended,
  };
}

/** The suite's one condition wait (test/helpers/wait.ts), here for the files that import it from here. */
export { eventually };
