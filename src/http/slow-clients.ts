/**
 * Limits on clients that hold a management connection without finishing a
 * request (slowloris): the TLS handshake, and then the request head, must
 * each complete within the headers timeout. Node's header timeout runs from
 * the moment the connection is up (a client that sends nothing is cut too,
 * with a 408) until the head of each request is in; long answers (event
 * streams, relayed calls, agent WebSockets) and idle keep-alive connections
 * are not affected.
 */
import { DEFAULT_HEADERS_TIMEOUT_MS } from '../config.js';

/**
 * Options for `https.createServer` (through fastify's `https`): the
 * handshake and header timeouts, checked often enough that a slow client
 * goes within about a quarter of the timeout after it (Node checks every
 * 30 s by default, so a 10 s limit could mean 40 s).
 */
export function slowClientServerOptions(timeoutMs: number = DEFAULT_HEADERS_TIMEOUT_MS) {
  return {
    handshakeTimeout: timeoutMs,
    headersTimeout: timeoutMs,
    connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor(timeoutMs / 4))),
  };
}
