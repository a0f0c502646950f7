/**
 * Light simulated agents for the scale benches (hub-scale, cluster): one
 * WebSocket each that speaks the envelopes an idle agent needs (hello, pong,
 * discover results) and nothing else, so that thousands fit in one process
 * beside the servers measured.
 *
 * - {@link openLightConnection}: one connection, resolved at the welcome (at
 *   the open, for a bare `ws` server).
 * - {@link LightAgent}: an agent of a control plane of several replicas that
 *   reconnects the way agent/agent.ts does: two connections to different
 *   URLs, each with its own reconnect loop, the agent's Backoff (jittered,
 *   reset after a connection that stayed up `stableAfterMs`) and its choice of
 *   URL (firstManagementUrl, pickManagementUrl), naming the replica of its other connection in
 *   `X-P2PStream-Agent-Elsewhere`. Unlike the real agent it does not wait
 *   longer after a 401 or 429 (the benches give it valid credentials).
 * - {@link newAgentRecords}: agents to write into a store in one update, with
 *   their tokens (creating thousands through the API would measure the
 *   registry, not the hub).
 */
import { type ConnectionOptions, createSecureContext, type SecureContext } from 'node:tls';
import WebSocket from 'ws';
import {
  DEFAULT_STABLE_AFTER_MS,
  firstManagementUrl,
  isConnectionRefused,
  pickManagementUrl,
  recentlyRefused,
} from '../agent/agent.js';
import { Backoff, type BackoffOptions } from '../agent/backoff.js';
import { AGENT_TOKEN_PREFIX, newAgentRecord } from '../src/domain/agent-service.js';
import { newId, newSecret } from '../src/domain/ids.js';
import { decodeEnvelope, encodeEnvelope } from '../src/relay/codec.js';
import { PROTOCOL_VERSION } from '../src/relay/envelope.js';
import { AGENT_CONNECT_PATH, AGENT_ELSEWHERE_HEADER, AGENT_ID_HEADER } from '../src/relay/protocol.js';
import { DEFAULT_HANDSHAKE_TIMEOUT_MS } from '../src/relay/relay-peer.js';
import type { AgentRecord } from '../src/storage/schema.js';

export interface LightCredentials {
  id: string;
  token: string;
}

/** `count` enabled agents as store records, and the id and token of each. */
export function newAgentRecords(count: number): { records: AgentRecord[]; credentials: LightCredentials[] } {
  const now = new Date().toISOString();
  const credentials = Array.from({ length: count }, () => ({
    id: newId(),
    token: newSecret(AGENT_TOKEN_PREFIX),
  }));
  const records = credentials.map((a, i) =>
    newAgentRecord({ id: a.id, name: `scale-${i}`, enabled: true, labels: {}, token: a.token, at: now }),
  );
  return { records, credentials };
}

export interface LightConnectionOptions {
  /** `https://` base URL of the control plane (or of the bare server). */
  url: string;
  /** PEM the server's certificate chains to. */
  ca: string;
  /** A hub: the agent's credentials; absent for a bare `ws` server. */
  agent?: LightCredentials;
  /** DER of a certificate the agent hands back to discoveries. */
  der: Uint8Array;
  /** Replica ids of the agent's other connections. */
  elsewhere?: string[];
  /** Bounds the handshake and the wait for the welcome (default the agent's). */
  handshakeTimeoutMs?: number;
}

export interface LightConnection {
  ws: WebSocket;
  /** The replica named by the welcome ('' for a single process or a bare server). */
  replicaId: string;
}

const secureContexts = new Map<string, SecureContext>();

/**
 * One TLS context per CA for every connection of this process: a context of
 * its own per connection (what passing `ca` does) costs a millisecond of CPU
 * each, which thousands of agents reconnecting at once in one process would
 * spend as seconds of a blocked event loop (their handshakes then time out:
 * the bench's own doing, not the server's). A real agent is one process.
 */
function secureContextFor(ca: string): SecureContext {
  let context = secureContexts.get(ca);
  if (!context) {
    context = createSecureContext({ ca });
    secureContexts.set(ca, context);
  }
  return context;
}

/**
 * Opens one connection; with credentials, an agent that says hello and answers
 * pings and discoveries. Rejects on a refused upgrade, an error or no welcome
 * within the handshake timeout (the socket is then terminated).
 */
export function openLightConnection(options: LightConnectionOptions): Promise<LightConnection> {
  const { agent, der } = options;
  const timeoutMs = options.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
  const url = agent
    ? `${options.url.replace(/^https/, 'wss')}${AGENT_CONNECT_PATH}`
    : options.url.replace(/^https/, 'wss');
  // Not in ws's option types, but handed to tls.connect with the rest.
  const tlsOptions: ConnectionOptions = { secureContext: secureContextFor(options.ca) };
  const ws = new WebSocket(url, {
    ...tlsOptions,
    perMessageDeflate: false,
    handshakeTimeout: timeoutMs,
    ...(agent
      ? {
          headers: {
            [AGENT_ID_HEADER]: agent.id,
            authorization: `Bearer ${agent.token}`,
            ...(options.elsewhere?.length ? { [AGENT_ELSEWHERE_HEADER]: options.elsewhere.join(',') } : {}),
          },
        }
      : {}),
  });
  return new Promise((resolve, reject) => {
    let done = false;
    const timer = setTimeout(() => fail(new Error(`no welcome within ${timeoutMs} ms`)), timeoutMs);
    const fail = (err: Error) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      ws.terminate();
      reject(err);
    };
    const succeed = (replicaId: string) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve({ ws, replicaId });
    };
    ws.on('error', (err) => fail(err));
    ws.once('close', () => fail(new Error('closed before the welcome')));
    ws.once('unexpected-response', (_req, res) => fail(new Error(`upgrade refused with ${res.statusCode}`)));
    if (!agent) {
      ws.once('open', () => succeed(''));
      return;
    }
    ws.once('open', () => {
      ws.send(
        encodeEnvelope({
          streamId: 0,
          payload: { case: 'hello', value: { protocolVersion: PROTOCOL_VERSION, agentVersion: 'bench' } },
        }),
      );
    });
    ws.on('message', (data: Buffer) => {
      const envelope = decodeEnvelope(data);
      switch (envelope.payload.case) {
        case 'welcome':
          succeed(envelope.payload.value.replicaId ?? '');
          break;
        case 'ping':
          ws.send(
            encodeEnvelope({
              streamId: 0,
              payload: { case: 'pong', value: { nonce: envelope.payload.value.nonce ?? 0 } },
            }),
          );
          break;
        case 'discoverRequest':
          ws.send(
            encodeEnvelope({
              streamId: envelope.streamId,
              payload: {
                case: 'discoverResult',
                value: { chain: [der], expired: false, hostnameMatches: true },
              },
            }),
          );
          break;
        default:
      }
    });
  });
}

export interface LightAgentOptions {
  /** The replicas' URLs, in the order the agent's MANAGEMENT_URL lists them. */
  urls: string[];
  ca: string;
  der: Uint8Array;
  agent: LightCredentials;
  /** Default the agent's (1 s → 30 s). */
  backoff?: BackoffOptions;
  /** Default the agent's {@link DEFAULT_STABLE_AFTER_MS}. */
  stableAfterMs?: number;
  /** Each attempt, as it starts (for counting). */
  onAttempt?: (url: string) => void;
  /** Each attempt that failed (refused, unreachable, no welcome), and why. */
  onFailure?: (url: string, err: unknown) => void;
}

/** One of a light agent's connections: its own URL, backoff and reconnect loop. */
class Link {
  url: string;
  replicaId: string | null = null;
  ws: WebSocket | null = null;
  readonly backoff: Backoff;
  #wake: (() => void) | null = null;

  constructor(url: string, backoff: BackoffOptions | undefined) {
    this.url = url;
    this.backoff = new Backoff(backoff);
  }

  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.#wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  wake(): void {
    this.#wake?.();
  }
}

/** See the module comment: two connections to different replicas, reconnecting like the agent. */
export class LightAgent {
  readonly options: LightAgentOptions;
  readonly #links: Link[] = [];
  /** As the agent's: when a connect to each URL was last refused outright. */
  readonly #refusedAt = new Map<string, number>();
  #stopped = false;
  #loops: Promise<void>[] = [];

  constructor(options: LightAgentOptions) {
    this.options = options;
    // As the agent's connections start: the first at the place its id draws, the second on the next free one.
    const first = firstManagementUrl(options.urls, options.agent.id);
    for (let i = 0; i < Math.min(2, options.urls.length); i++) {
      const url = pickManagementUrl({
        urls: options.urls,
        current: first,
        failed: false,
        taken: this.#links.map((l) => l.url),
        draining: [],
      });
      this.#links.push(new Link(url, options.backoff));
    }
  }

  start(): void {
    this.#loops = this.#links.map((link) => this.#run(link));
  }

  /** The URLs of its live connections (welcomed), and of the other connection of each. */
  connections(): Array<{ url: string; replicaId: string | null; otherUrl: string | null }> {
    return this.#links.map((link) => ({
      url: link.url,
      replicaId: link.replicaId,
      otherUrl: this.#links.find((l) => l !== link)?.url ?? null,
    }));
  }

  /** Both connections up, on two different replicas. */
  get settled(): boolean {
    const ids = this.#links.map((l) => l.replicaId);
    return ids.every((id) => id !== null) && new Set(ids).size === ids.length;
  }

  async close(): Promise<void> {
    this.#stopped = true;
    for (const link of this.#links) {
      link.wake();
      link.ws?.terminate();
    }
    await Promise.all(this.#loops);
  }

  async #run(link: Link): Promise<void> {
    const options = this.options;
    let failed = false;
    while (!this.#stopped) {
      const others = this.#links.filter((l) => l !== link);
      link.url = pickManagementUrl({
        urls: options.urls,
        current: link.url,
        failed,
        taken: others.map((l) => l.url),
        draining: [],
        refused: recentlyRefused(this.#refusedAt, Date.now()),
      });
      options.onAttempt?.(link.url);
      try {
        const { ws, replicaId } = await openLightConnection({
          url: link.url,
          ca: options.ca,
          der: options.der,
          agent: options.agent,
          elsewhere: others.flatMap((l) => (l.replicaId ? [l.replicaId] : [])),
        });
        const connectedAt = Date.now();
        this.#refusedAt.delete(link.url);
        link.ws = ws;
        link.replicaId = replicaId;
        if (this.#stopped) ws.terminate();
        await new Promise<void>((resolve) => {
          if (ws.readyState === WebSocket.CLOSED) resolve();
          else ws.once('close', () => resolve());
        });
        link.ws = null;
        link.replicaId = null;
        if (Date.now() - connectedAt >= (options.stableAfterMs ?? DEFAULT_STABLE_AFTER_MS))
          link.backoff.reset();
        failed = false;
      } catch (err) {
        options.onFailure?.(link.url, err);
        if (isConnectionRefused(err)) this.#refusedAt.set(link.url, Date.now());
        failed = true;
      }
      if (this.#stopped) break;
      await link.sleep(link.backoff.next());
    }
  }
}
