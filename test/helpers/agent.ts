/**
 * Agents for tests: create one through the API of a test server, start an
 * in-process agent daemon against it (real WebSocket over TLS, the server's
 * certificate pinned by fingerprint), and wait for its events. Also a bare
 * WebSocket client speaking the envelopes by hand, for tests that need to
 * misbehave on purpose (wrong credentials, malformed frames).
 */
import { X509Certificate } from 'node:crypto';
import { Writable } from 'node:stream';
import WebSocket from 'ws';
import { type AgentEvent, type RunningAgent, type StartAgentOptions, startAgent } from '../../agent/agent.js';
import { createAgentExecutor } from '../../agent/main.js';
import { createLogger } from '../../src/logger.js';
import { decodeEnvelope, encodeEnvelope } from '../../src/relay/codec.js';
import { type Envelope, PROTOCOL_VERSION } from '../../src/relay/envelope.js';
import type { Cleanups } from './cleanup.js';
import type { TestServer } from './server.js';
import { eventually } from './wait.js';

export interface CreatedAgent {
  id: string;
  token: string;
}

/** Creates an agent through the API (session cookie of the admin). */
export async function createTestAgent(
  server: TestServer,
  cookie: string,
  name = `agent-${Math.random().toString(36).slice(2)}`,
): Promise<CreatedAgent> {
  const res = await server.request('POST', '/api/v1/agents', { cookie, body: { name } });
  if (res.status !== 201) throw new Error(`agent create failed: ${res.status} ${res.text}`);
  return { id: res.json.agent.id, token: res.json.token };
}

export interface TestAgent {
  agent: RunningAgent;
  /** Every event so far, oldest first. */
  events: AgentEvent[];
  /** Everything the agent logged (JSON lines). */
  logs: string[];
  /** Resolves with the first event (from now on, or already seen after `since`) matching `predicate`. */
  waitFor(
    predicate: (event: AgentEvent) => boolean,
    options?: { timeoutMs?: number; since?: number },
  ): Promise<AgentEvent>;
  /** Waits for the next `connected` event (or the current connection when already connected). */
  connected(timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

export interface TestAgentOptions extends Partial<Omit<StartAgentOptions, 'logger'>> {
  /** Defaults to the test server's URL. */
  url?: string;
}

/** The SHA-256 fingerprint of the test server's management certificate. */
export function serverFingerprint(server: TestServer): string {
  return new X509Certificate(server.server.certificate).fingerprint256;
}

/**
 * Starts an in-process agent against `server` with the given credentials.
 * Fast retries (50 ms → 500 ms, 401 after 200 ms) keep tests short.
 */
export function startTestAgent(
  server: TestServer,
  credentials: CreatedAgent,
  options: TestAgentOptions = {},
): TestAgent {
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      logs.push(...String(chunk).split('\n').filter(Boolean));
      cb();
    },
  });
  const { url, ...rest } = options;
  const ca = rest.ca ?? null;
  const agent = startAgent({
    managementUrl: url ?? server.url,
    agentId: credentials.id,
    agentToken: credentials.token,
    fingerprint: ca === null ? serverFingerprint(server) : null,
    createExecutor: createAgentExecutor,
    backoff: { initialMs: 50, maxMs: 500 },
    unauthorizedRetryMs: 200,
    handshakeTimeoutMs: 5000,
    logger: createLogger('debug', sink),
    ...rest,
  });
  const events: AgentEvent[] = [];
  const waiters = new Set<(event: AgentEvent) => void>();
  agent.onEvent((event) => {
    events.push(event);
    for (const waiter of [...waiters]) waiter(event);
  });

  const waitFor: TestAgent['waitFor'] = (predicate, opts = {}) => {
    if (opts.since !== undefined) {
      const seen = events.slice(opts.since).find(predicate);
      if (seen) return Promise.resolve(seen);
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        waiters.delete(waiter);
        reject(new Error(`agent event not seen in time; events: ${JSON.stringify(events.slice(-10))}`));
      }, opts.timeoutMs ?? 5000);
      const waiter = (event: AgentEvent) => {
        if (!predicate(event)) return;
        clearTimeout(timer);
        waiters.delete(waiter);
        resolve(event);
      };
      waiters.add(waiter);
    });
  };

  return {
    agent,
    events,
    logs,
    waitFor,
    async connected(timeoutMs = 5000) {
      if (agent.state === 'connected') return;
      await waitFor((e) => e.type === 'connected', { timeoutMs });
    },
    close: () => agent.close(),
  };
}

export interface TunnelAgentOptions extends TestAgentOptions {
  /** The agent's labels, as created. */
  labels?: Record<string, string>;
}

/**
 * Creates an agent through the API (admin API token), starts it and resolves
 * once it is connected and the hub has its tunnel. Given `cleanups`, the
 * agent is closed after the test.
 */
export async function startTunnelAgent(
  server: TestServer,
  token: string,
  options: TunnelAgentOptions = {},
  cleanups?: Pick<Cleanups, 'push'>,
): Promise<CreatedAgent & { agent: TestAgent }> {
  const { labels, ...agentOptions } = options;
  const res = await server.request('POST', '/api/v1/agents', {
    token,
    body: { name: `agent-${Math.random().toString(36).slice(2)}`, ...(labels ? { labels } : {}) },
  });
  if (res.status !== 201) throw new Error(`agent create failed: ${res.status} ${res.text}`);
  const credentials: CreatedAgent = { id: res.json.agent.id, token: res.json.token };
  const agent = startTestAgent(server, credentials, agentOptions);
  cleanups?.push(() => agent.close());
  await agent.connected();
  await eventually(() => server.server.hub.tunnelAgents().some((a) => a.agentId === credentials.id));
  return { ...credentials, agent };
}

export type UpgradeResult = { ok: true; socket: RawAgent } | { ok: false; status: number; body: string };

export interface RawAgent {
  ws: WebSocket;
  /** Envelopes received so far. */
  received: Envelope[];
  /** Resolves with the close code and reason. */
  closed: Promise<{ code: number; reason: string }>;
  send(envelope: Envelope): void;
  /** Sends hello and resolves at the welcome. */
  handshake(): Promise<Envelope>;
  /**
   * Sends a ping on stream 0 and resolves at its pong: the peer has handled
   * everything sent before it (frames are handled in order), so a test can
   * check that something did *not* happen without waiting for a time.
   */
  roundTrip(): Promise<void>;
  close(): Promise<void>;
}

/** Attempts the upgrade with the given headers; resolves with the HTTP refusal or the open socket. */
export function upgradeAgent(
  target: TestServer | { url: string; ca: string },
  headers: Record<string, string>,
  options: { answerPings?: boolean; localAddress?: string } = {},
): Promise<UpgradeResult> {
  const ca = 'server' in target ? target.server.certificate : target.ca;
  const url = `${target.url.replace(/^https/, 'wss')}/api/v1/agent/connect`;
  const ws = new WebSocket(url, {
    headers,
    ca,
    ...(options.localAddress ? { localAddress: options.localAddress } : {}),
  });
  const received: Envelope[] = [];
  const listeners = new Set<() => void>();
  let pings = 0;
  ws.on('message', (data) => {
    const envelope = decodeEnvelope(data as Buffer, { maxFrameBytes: 64 * 1024 * 1024 });
    received.push(envelope);
    if (options.answerPings && envelope.payload.case === 'ping') {
      const nonce = envelope.payload.value.nonce ?? 0;
      ws.send(encodeEnvelope({ streamId: 0, payload: { case: 'pong', value: { nonce } } }));
    }
    for (const l of [...listeners]) l();
  });
  const closed = new Promise<{ code: number; reason: string }>((resolve) => {
    ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() }));
  });
  ws.on('error', () => {});
  return new Promise((resolve) => {
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        body += chunk;
      });
      res.on('end', () => {
        resolve({ ok: false, status: res.statusCode ?? 0, body });
        ws.terminate();
      });
    });
    ws.on('open', () => {
      const socket: RawAgent = {
        ws,
        received,
        closed,
        send: (envelope) => ws.send(encodeEnvelope(envelope), { binary: true }),
        handshake: () =>
          new Promise((resolveWelcome, rejectWelcome) => {
            const check = () => {
              const welcome = received.find((e) => e.payload.case === 'welcome');
              if (welcome) {
                listeners.delete(check);
                resolveWelcome(welcome);
              }
            };
            listeners.add(check);
            closed.then((c) => rejectWelcome(new Error(`closed before welcome: ${c.code} ${c.reason}`)));
            socket.send({
              streamId: 0,
              payload: {
                case: 'hello',
                value: { protocolVersion: PROTOCOL_VERSION, agentVersion: 'raw-test' },
              },
            });
          }),
        roundTrip: () =>
          new Promise((resolvePong, rejectPong) => {
            const nonce = ++pings;
            const check = () => {
              const pong = received.some((e) => e.payload.case === 'pong' && e.payload.value.nonce === nonce);
              if (pong) {
                listeners.delete(check);
                resolvePong();
              }
            };
            listeners.add(check);
            closed.then((c) => rejectPong(new Error(`closed before pong: ${c.code} ${c.reason}`)));
            socket.send({ streamId: 0, payload: { case: 'ping', value: { nonce } } });
          }),
        close: async () => {
          if (ws.readyState !== WebSocket.CLOSED) ws.terminate();
          await closed;
        },
      };
      resolve({ ok: true, socket });
    });
  });
}

/** Headers of an agent upgrade. */
export function agentHeaders(agentId: string, token: string): Record<string, string> {
  return { 'x-p2pstream-agent-id': agentId, authorization: `Bearer ${token}` };
}
