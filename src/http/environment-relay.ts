/**
 * The environment relay (docs/architecture.md "Local and operational routes"):
 * an operational request whose caller selected a remote environment is relayed
 * to that environment's management API through its transport, and the answer
 * streams back.
 *
 * - Blocked states answer before anything leaves the process
 *   (ENVIRONMENT_NOT_FOUND, ENVIRONMENT_DISABLED, ENVIRONMENT_UNTRUSTED,
 *   CERTIFICATE_CHANGED, CERTIFICATE_EXPIRED, AGENT_NOT_FOUND, AGENT_OFFLINE).
 * - Relayed: method, raw path, query without `environment`, the raw body
 *   (at most 1 MiB, else PAYLOAD_TOO_LARGE) and an allow-list of content
 *   headers, with `Authorization: Bearer <access token>` in place of the
 *   caller's credentials. Cookies, the caller's Authorization, the
 *   environment header and hop-by-hop headers never cross; neither do
 *   `Set-Cookie`, CSP, `Clear-Site-Data`, `Access-Control-*`, HSTS or
 *   `Refresh` on the way back, and every answer is marked inert
 *   (`nosniff`, `Content-Security-Policy: sandbox`). A status outside
 *   100–599 from the relay is a PROTOCOL_ERROR (502).
 * - The token is only sent to the environment's own origin; redirects come
 *   back unfollowed (or, when the caller sends `X-P2PStream-Redirects:
 *   report` as the console does, as 502 REMOTE_REDIRECT naming the target); a remote 401 becomes 502 REMOTE_UNAUTHORIZED; any other
 *   status and body passes through, streamed chunk by chunk with each chunk
 *   written at once (an event stream arrives event by event).
 * - The caller disconnecting aborts the transport request (AbortSignal) and
 *   cancels the response body: the remote request ends too.
 * - A call refused for another certificate is recorded on the environment
 *   (CHANGED at once) before the error is answered.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { EnvironmentRelay } from '../app.js';
import { DEFAULT_BODY_LIMIT_BYTES } from '../config.js';
import type {
  EnvironmentService,
  EnvironmentTransportKind,
  EnvironmentTransports,
} from '../domain/environment-service.js';
import { AppError, toAppError } from '../errors.js';
import { hopByHopAnd } from '../http-headers.js';
import type { Logger } from '../logger.js';
import { pathTiming, serverTimingHeader } from '../relay/timing.js';
import { Cancellation, type HeaderList, type RelayResponse, type Transport } from '../relay/transport.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** The environment a completed relayed call went to (its log line says so); null otherwise. */
    relayedTo: string | null;
  }
}

/** Request headers relayed to the environment (everything else stays here). */
export const RELAYED_REQUEST_HEADERS: ReadonlySet<string> = new Set([
  'accept',
  'accept-language',
  'cache-control',
  'content-encoding',
  'content-language',
  'content-type',
  'if-match',
  'if-modified-since',
  'if-none-match',
  'if-unmodified-since',
  'last-event-id',
]);

/**
 * Response bytes the relay lets wait in the caller's socket before it stops
 * taking chunks from the environment (and so holds back the environment's
 * window): 256 KiB, one default window.
 */
const RELAY_WRITE_AHEAD_BYTES = 256 * 1024;

/** Response headers that never come back from the environment. */
const DROPPED_RESPONSE_HEADERS: ReadonlySet<string> = hopByHopAnd(
  'set-cookie',
  'set-cookie2',
  // What would act in this origin rather than the remote's: policies, storage wipes, refreshes.
  'content-security-policy',
  'content-security-policy-report-only',
  'clear-site-data',
  'strict-transport-security',
  'refresh',
  'x-content-type-options',
);

/**
 * Added to every relayed answer: the remote's bytes are data in this origin,
 * never a document that could run or be sniffed into one.
 */
const INERT_RESPONSE_HEADERS: Readonly<Record<string, string>> = {
  'x-content-type-options': 'nosniff',
  'content-security-policy': 'sandbox',
};

/**
 * Request header with which a caller (the console) asks that a relayed
 * redirect be answered as 502 REMOTE_REDIRECT naming its target, instead of
 * passed on for a browser to follow with the caller's cookie. Value `report`.
 */
export const REDIRECTS_HEADER = 'x-p2pstream-redirects';

/** The hub as the relay sees it (structural: src/hub stays out of http's imports). */
export interface AgentTransportSource {
  isConnected(agentId: string): boolean;
  /** Connected here or held by another live replica (calls are forwarded); default isConnected. */
  isReachable?(agentId: string): boolean;
  transportFor(agentId: string): Transport;
}

export interface EnvironmentTransportsOptions {
  /** The one shared in-process transport. */
  direct: Transport;
  /** The hub; without it, agent environments answer AGENT_OFFLINE. */
  hub?: AgentTransportSource;
  /** Whether the agent still exists (AGENT_NOT_FOUND otherwise). */
  agentExists(agentId: string): boolean;
  /** The control-plane replica holding the agent (several replicas), or null. */
  agentReplica?(agentId: string): string | null;
}

/**
 * Transport selection: direct → the shared in-process transport; agent → the
 * hub's transport for the agent, refused at once with AGENT_NOT_FOUND (no such
 * agent) or AGENT_OFFLINE (no live session) so that nothing is sent.
 */
export function createEnvironmentTransports(options: EnvironmentTransportsOptions): EnvironmentTransports {
  return {
    select(target: { transport: EnvironmentTransportKind; agentId: string | null }): Transport {
      if (target.transport === 'direct') return options.direct;
      const agentId = target.agentId;
      if (agentId === null || !options.agentExists(agentId))
        throw new AppError('AGENT_NOT_FOUND', "the environment's agent no longer exists");
      const hub = options.hub;
      if (!hub || !(hub.isReachable ? hub.isReachable(agentId) : hub.isConnected(agentId)))
        throw new AppError('AGENT_OFFLINE', "the environment's agent is not connected");
      return hub.transportFor(agentId);
    },
    ...(options.agentReplica ? { agentReplica: options.agentReplica } : {}),
  };
}

export interface EnvironmentRelayOptions {
  environments: EnvironmentService;
  logger: Logger;
  /** Largest relayed request body; default {@link DEFAULT_BODY_LIMIT_BYTES} (1 MiB). */
  maxBodyBytes?: number;
  /**
   * Told of every relayed request when it ends (the Prometheus metrics count
   * them): `outcome` is `complete`, `cut` (the answer did not finish: the
   * caller left or the environment failed midway) or the error code answered.
   */
  observe?: (sample: { environment: string; outcome: string; durationMs: number }) => void;
}

/** Removes every `environment` parameter from a raw query string, keeping the rest byte for byte. */
export function stripEnvironmentParam(rawQuery: string): string {
  if (rawQuery === '') return '';
  const kept = rawQuery.split('&').filter((part) => {
    if (part === '') return false;
    const rawKey = part.split('=', 1)[0]!;
    let key: string;
    try {
      key = decodeURIComponent(rawKey.replace(/\+/g, ' '));
    } catch {
      key = rawKey;
    }
    return key !== 'environment';
  });
  return kept.join('&');
}

/** The caller's request headers that may cross, lower-case names. */
export function relayedRequestHeaders(headers: FastifyRequest['headers']): HeaderList {
  const list: HeaderList = [];
  for (const [name, value] of Object.entries(headers)) {
    const lower = name.toLowerCase();
    if (!RELAYED_REQUEST_HEADERS.has(lower) || value === undefined) continue;
    for (const v of Array.isArray(value) ? value : [value]) list.push([lower, v]);
  }
  return list;
}

/**
 * The environment's response headers that may come back, grouped for
 * writeHead: hop-by-hop, cookies, `Content-Security-Policy*`,
 * `Clear-Site-Data`, `Access-Control-*`, `Strict-Transport-Security` and
 * `Refresh` dropped; `X-Content-Type-Options: nosniff` and
 * `Content-Security-Policy: sandbox` added.
 */
export function relayedResponseHeaders(headers: HeaderList): Record<string, string | string[]> {
  const connectionTokens = new Set<string>();
  for (const [name, value] of headers) {
    if (name.toLowerCase() === 'connection') {
      for (const token of value.split(',')) connectionTokens.add(token.trim().toLowerCase());
    }
  }
  const out: Record<string, string | string[]> = {};
  for (const [rawName, value] of headers) {
    const name = rawName.toLowerCase();
    if (
      DROPPED_RESPONSE_HEADERS.has(name) ||
      name.startsWith('access-control-') ||
      connectionTokens.has(name)
    )
      continue;
    const existing = out[name];
    if (existing === undefined) out[name] = value;
    else out[name] = Array.isArray(existing) ? [...existing, value] : [existing, value];
  }
  return { ...out, ...INERT_RESPONSE_HEADERS };
}

/** Builds the EnvironmentRelay passed to buildApp as `environmentRelay`. */
export function createEnvironmentRelay(options: EnvironmentRelayOptions): EnvironmentRelay {
  const maxBodyBytes = options.maxBodyBytes ?? DEFAULT_BODY_LIMIT_BYTES;
  const { environments } = options;

  const relayer: EnvironmentRelay = {
    async relay(request: FastifyRequest, reply: FastifyReply, environmentId: string): Promise<void> {
      const started = performance.now();
      // Every check (and the token unsealing) happens before a byte leaves.
      const target = environments.prepareRelay(environmentId);
      const rawUrl = request.raw.url ?? request.url;
      const q = rawUrl.indexOf('?');
      const path = q === -1 ? rawUrl : rawUrl.slice(0, q);
      const query = q === -1 ? '' : stripEnvironmentParam(rawUrl.slice(q + 1));
      if (!path.startsWith('/')) throw new AppError('VALIDATION_FAILED', 'the request path is malformed');
      const url = `${target.baseUrl}${path}${query === '' ? '' : `?${query}`}`;
      // The access token goes to the environment's own origin and nowhere else.
      if (new URL(url).origin !== target.origin)
        throw new AppError('VALIDATION_FAILED', 'the request path is malformed');

      const res = reply.raw;
      const cancellation = new Cancellation();
      let response: RelayResponse | null = null;
      const onClose = () => {
        if (res.writableFinished) return;
        cancellation.abort();
        response?.cancel();
      };
      res.once('close', onClose);
      const callerGone = () => cancellation.aborted || res.destroyed;

      let body: Buffer | undefined;
      try {
        body = await readRequestBody(request, maxBodyBytes);
        const headers = relayedRequestHeaders(request.headers);
        headers.push(['authorization', `Bearer ${target.accessToken}`]);
        response = await target.transport.request({
          url,
          method: request.method,
          headers,
          ...(body !== undefined
            ? { body: new Uint8Array(body.buffer, body.byteOffset, body.byteLength) }
            : {}),
          timeoutMs: target.timeoutMs,
          trust: target.trust,
          signal: cancellation,
        });
      } catch (err) {
        res.off('close', onClose);
        if (callerGone()) {
          // Nobody is left to answer.
          reply.hijack();
          res.destroy();
          return;
        }
        const error = toAppError(err, 'ENVIRONMENT_UNREACHABLE');
        await environments.recordCallFailure(target.environmentId, error);
        throw error;
      }

      if (response.status === 401) {
        res.off('close', onClose);
        response.cancel();
        throw new AppError('REMOTE_UNAUTHORIZED', 'the environment refused the stored access token');
      }

      const location = response.headers.find(([name]) => name.toLowerCase() === 'location')?.[1];
      if (
        response.status >= 300 &&
        response.status < 400 &&
        location !== undefined &&
        request.headers[REDIRECTS_HEADER] === 'report'
      ) {
        res.off('close', onClose);
        response.cancel();
        const shown = location.length > 2048 ? `${location.slice(0, 2048)}…` : location;
        throw new AppError(
          'REMOTE_REDIRECT',
          `the environment answered ${response.status} with a redirect to ${shown}; it was not followed`,
          { details: { status: response.status, location: shown } },
        );
      }

      const timing = pathTiming(
        performance.now() - started,
        response.timing,
        target.transportKind === 'agent',
      );
      reply.hijack();
      if (callerGone()) {
        response.cancel();
        res.destroy();
        return;
      }
      let outcome = 'complete';
      try {
        const headers = relayedResponseHeaders(response.headers);
        const remoteTiming = headers['server-timing'];
        // The remote's own Server-Timing stays, after ours.
        headers['server-timing'] =
          remoteTiming === undefined
            ? serverTimingHeader(timing)
            : [serverTimingHeader(timing), ...(Array.isArray(remoteTiming) ? remoteTiming : [remoteTiming])];
        // The head leaves with the first chunk, and with what the relay already holds (a small
        // answer whole) in the same socket write: the socket stays corked to the end of this
        // turn (or the end). Each chunk still leaves in the turn it came: an event stream
        // never waits in a buffer.
        res.cork();
        let corked = true;
        const uncork = () => {
          if (!corked) return;
          corked = false;
          res.uncork();
        };
        process.nextTick(uncork);
        res.writeHead(response.status, headers);
        for await (const chunk of response.body) {
          if (callerGone()) break;
          // Chunks that arrived together (one agent frame holds several) join one write, up to
          // RELAY_WRITE_AHEAD_BYTES held for a slow caller; past it the relay waits for the socket.
          if (!res.write(chunk) && res.writableLength >= RELAY_WRITE_AHEAD_BYTES) {
            uncork();
            await drained(res);
          } else if (!corked) {
            res.cork();
            corked = true;
            process.nextTick(uncork);
          }
        }
        if (callerGone()) {
          uncork();
          outcome = 'cancelled';
          response.cancel();
        } else {
          // end() uncorks: the last chunk and the end leave together.
          corked = false;
          res.end();
        }
      } catch (err) {
        // The head is gone: the only honest signal left is a cut connection.
        outcome = callerGone() ? 'cancelled' : 'failed';
        response.cancel();
        res.destroy();
        if (outcome === 'failed')
          request.log.warn({ err: toAppError(err), environmentId }, 'relayed response failed midway');
      } finally {
        res.off('close', onClose);
      }
      if (outcome === 'complete') {
        // The request's one log line (the app's, when the response is finished) names the environment.
        request.relayedTo = environmentId;
        return;
      }
      // A response cut short never finishes: no other line would tell of it.
      request.log.info(
        {
          environmentId,
          method: request.method,
          route: request.routeOptions.url ?? 'unmatched',
          status: response.status,
          outcome,
          ms: Math.round(performance.now() - started),
        },
        'relayed request',
      );
    },
  };
  const { observe } = options;
  if (!observe) return relayer;
  return {
    async relay(request, reply, environmentId) {
      const started = performance.now();
      let environment = environmentId;
      let outcome = 'cut';
      try {
        await relayer.relay(request, reply, environmentId);
        if (reply.raw.writableEnded) outcome = 'complete';
      } catch (err) {
        outcome = toAppError(err).code;
        // An id that names no environment is the caller's text: keep it out of the label set.
        if (outcome === 'ENVIRONMENT_NOT_FOUND') environment = 'unknown';
        throw err;
      } finally {
        observe({ environment, outcome, durationMs: performance.now() - started });
      }
    },
  };
}

/**
 * Reads the caller's raw body (not parsed: it crosses as it came), or
 * undefined when the request has none. PAYLOAD_TOO_LARGE above `limit`.
 */
async function readRequestBody(request: FastifyRequest, limit: number): Promise<Buffer | undefined> {
  const raw = request.raw;
  const length = raw.headers['content-length'];
  const chunked = raw.headers['transfer-encoding'] !== undefined;
  if (length === undefined && !chunked) return undefined;
  if (length !== undefined && Number(length) > limit)
    throw new AppError('PAYLOAD_TOO_LARGE', 'the request body is too large');
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of raw) {
    const buffer = chunk as Buffer;
    size += buffer.byteLength;
    if (size > limit) throw new AppError('PAYLOAD_TOO_LARGE', 'the request body is too large');
    chunks.push(buffer);
  }
  return Buffer.concat(chunks);
}

function drained(res: NodeJS.WritableStream & { destroyed: boolean }): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}
