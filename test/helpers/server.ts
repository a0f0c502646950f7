/**
 * Starts a real p2pstream server on 127.0.0.1 (port 0) with its own temp data
 * dir, and an HTTPS client that trusts exactly its generated certificate.
 * Given the file's `useCleanups()`, the server is closed after the test.
 * `restart()` starts it again on the same data dir.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { Agent, fetch } from 'undici';
import { loadConfig, type ServerConfig } from '../../src/config.js';
import { createLogger } from '../../src/logger.js';
import { type RunningServer, type StartServerOptions, startServer } from '../../src/server.js';
import type { Cleanup, Cleanups } from './cleanup.js';

export const TEST_SETUP_TOKEN = 'test-setup-code-123';
export const TEST_USERNAME = 'admin';
/** scrypt cost of passwords in test servers: N=2^12 (the default stays OWASP's N=2^17). */
export const TEST_PASSWORD_COST = { N: 2 ** 12, r: 8, p: 1 } as const;
export const TEST_PASSWORD = 'correct horse battery';

export interface TestServerOptions {
  dataDir?: string;
  env?: Record<string, string>;
  /** Keep the data dir on close (to restart on it). */
  keepDataDir?: boolean;
  /** Settings that have no variable (e.g. a short `headersTimeoutMs`), over the loaded ones. */
  config?: Partial<ServerConfig>;
  /** Sees every route as it is added. */
  onRoute?: StartServerOptions['onRoute'];
  /** Operational routes beyond the built-in ones (a newer version's, say). */
  extraOperationalPlugins?: StartServerOptions['extraOperationalPlugins'];
}

export interface TestResponse {
  status: number;
  headers: Headers;
  text: string;
  // biome-ignore lint/suspicious/noExplicitAny: test responses are inspected freely
  json: any;
}

export interface RequestOptions {
  body?: unknown;
  rawBody?: string | Buffer;
  headers?: Record<string, string>;
  cookie?: string;
  token?: string;
  /** `manual`: a redirect is answered as it came instead of followed (default `follow`). */
  redirect?: 'follow' | 'manual';
}

export interface TestServer {
  server: RunningServer;
  url: string;
  dataDir: string;
  /** Everything the server logged (JSON lines). */
  logs: string[];
  dispatcher: Agent;
  request(method: string, pathname: string, options?: RequestOptions): Promise<TestResponse>;
  /** Runs setup and returns the session cookie (`__Host-p2pstream_session=…`). */
  setupAdmin(): Promise<string>;
  /** Creates an API token as the admin and returns its raw value. */
  createToken(cookie: string, name?: string): Promise<string>;
  /**
   * Closes the server and keeps its data dir, for a test that changes what is
   * on disk (or takes a port) before `restart()`.
   */
  stop(): Promise<void>;
  /**
   * Stops the server (unless `stop()` did) and starts a new one on the same
   * data dir, with the same options and `options` over them. The new server
   * goes to the same cleanups, and takes the data dir with it: it is removed
   * when the new server closes, as it would have been with this one.
   */
  restart(options?: Omit<TestServerOptions, 'dataDir'>): Promise<TestServer>;
  /** Stops the server and removes its data dir if the helper made it (and `keepDataDir` is not set). */
  close(): Promise<void>;
}

type CleanupList = Pick<Cleanups, 'push'> | Cleanup[];

export async function startTestServer(
  options: TestServerOptions = {},
  cleanups?: CleanupList,
): Promise<TestServer> {
  return launch(options, cleanups, !options.dataDir && !options.keepDataDir);
}

async function launch(
  options: TestServerOptions,
  cleanups: CleanupList | undefined,
  removeDataDir: boolean,
): Promise<TestServer> {
  const dataDir = options.dataDir ?? (await mkdtemp(path.join(os.tmpdir(), 'p2pstream-test-')));
  const loaded = loadConfig({
    P2PSTREAM_DATA_DIR: dataDir,
    MANAGEMENT_ADDR: '127.0.0.1',
    MANAGEMENT_PORT: '0',
    P2PSTREAM_SETUP_TOKEN: TEST_SETUP_TOKEN,
    LOG_LEVEL: 'info',
    ...options.env,
  });
  // Tests hash passwords at a low scrypt cost (the default, N=2^17, costs 128 MiB and a noticeable
  // fraction of a second per hash); a test that checks the cost sets its own.
  const config: ServerConfig = { ...loaded, passwordCost: TEST_PASSWORD_COST, ...options.config };
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      logs.push(...String(chunk).split('\n').filter(Boolean));
      cb();
    },
  });
  const server = await startServer(config, createLogger(config.logLevel, sink), {
    ...(options.onRoute ? { onRoute: options.onRoute } : {}),
    ...(options.extraOperationalPlugins ? { extraOperationalPlugins: options.extraOperationalPlugins } : {}),
  });
  const dispatcher = new Agent({ connect: { ca: server.certificate, servername: 'localhost' } });

  const request = async (
    method: string,
    pathname: string,
    opts: RequestOptions = {},
  ): Promise<TestResponse> => {
    const headers: Record<string, string> = { origin: server.url, ...opts.headers };
    if (opts.cookie) headers.cookie = opts.cookie;
    if (opts.token) headers.authorization = `Bearer ${opts.token}`;
    let body: string | Buffer | undefined;
    if (opts.rawBody !== undefined) body = opts.rawBody;
    else if (opts.body !== undefined) {
      body = JSON.stringify(opts.body);
      headers['content-type'] ??= 'application/json';
    }
    const res = await fetch(`${server.url}${pathname}`, {
      method,
      headers,
      body,
      dispatcher,
      redirect: opts.redirect ?? 'follow',
    });
    const text = await res.text();
    let json: unknown = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = null;
    }
    return { status: res.status, headers: res.headers as unknown as Headers, text, json };
  };

  let stopping: Promise<void> | undefined;
  let handedOn = false;
  const stop = () => {
    stopping ??= (async () => {
      await server.close();
      await dispatcher.close();
    })();
    return stopping;
  };
  const testServer: TestServer = {
    server,
    url: server.url,
    dataDir,
    logs,
    dispatcher,
    request,
    async setupAdmin() {
      const res = await request('POST', '/api/v1/setup', {
        body: { username: TEST_USERNAME, password: TEST_PASSWORD, setupToken: TEST_SETUP_TOKEN },
      });
      if (res.status !== 201) throw new Error(`setup failed: ${res.status} ${res.text}`);
      return cookieOf(res);
    },
    async createToken(cookie, name = `token-${Math.random().toString(36).slice(2)}`) {
      const res = await request('POST', '/api/v1/tokens', { cookie, body: { name } });
      if (res.status !== 201) throw new Error(`token create failed: ${res.status} ${res.text}`);
      return res.json.token as string;
    },
    stop,
    async restart(more = {}) {
      await stop();
      handedOn = true;
      return launch({ ...options, ...more, dataDir }, cleanups, removeDataDir);
    },
    async close() {
      await stop();
      if (removeDataDir && !handedOn) await rm(dataDir, { recursive: true, force: true });
    },
  };
  cleanups?.push(() => testServer.close());
  return testServer;
}

/** The JSON of a 2xx answer; anything else fails the test with the answer. */
// biome-ignore lint/suspicious/noExplicitAny: test responses are inspected freely
export async function ok(response: Promise<{ status: number; text: string; json: any }>): Promise<any> {
  const res = await response;
  if (res.status < 200 || res.status > 299) throw new Error(`${res.status} ${res.text}`);
  return res.json;
}

/** The `name=value` part of a response's Set-Cookie header. */
export function cookieOf(res: TestResponse): string {
  const header = res.headers.get('set-cookie');
  if (!header) throw new Error('no set-cookie header');
  return header.split(';')[0]!;
}
