/**
 * Header names shared by everything that passes HTTP messages on: the proxy
 * exchange, the response cache, the relay executor and the environment relay.
 */

/**
 * Hop-by-hop headers (RFC 9110 §7.6.1, plus the non-standard
 * `proxy-connection` and HTTP/2's `http2-settings`): they belong to one
 * connection and are never forwarded, stored or replayed. Lower case. Headers
 * named in a message's `Connection` header are hop-by-hop too; each user drops
 * those as well.
 */
export const HOP_BY_HOP_HEADERS: ReadonlySet<string> = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'http2-settings',
]);

/** The hop-by-hop headers and `more`, as one set. */
export function hopByHopAnd(...more: string[]): ReadonlySet<string> {
  return new Set([...HOP_BY_HOP_HEADERS, ...more]);
}
