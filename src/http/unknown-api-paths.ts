/**
 * Version skew between instances (docs/architecture.md "Local and operational
 * routes"): which API paths this instance does not know may be relayed to a
 * selected environment (a newer remote's routes), and which stay a local 404
 * because they lie under this instance's local routes.
 */
import { Type } from 'typebox';
import { errorResponses } from './schemas/common.js';

/** Where the management API's routes live. */
export const API_PREFIX = '/api/v1/';
/** The methods an unknown API path is relayed for: without a body, and with one. */
export const UNKNOWN_ROUTE_METHODS = [
  { method: ['GET', 'HEAD'], body: false },
  { method: ['POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'], body: true },
] as const;
/**
 * The catch-all's schema: not part of the API description, it names no route
 * of this instance. Whatever body it is given goes to the remote as it came;
 * the remote's answer is relayed untouched, so only the local errors have a
 * reply schema here.
 */
export function unknownApiRouteSchema(withBody: boolean) {
  const schema = { hide: true, params: Type.Object({ '*': Type.String() }), response: errorResponses };
  return withBody ? { ...schema, body: Type.Unknown() } : schema;
}

/**
 * The first path segments under `/api/v1/` that belong to local routes
 * (`setup`, `auth`, `environments`, `agent`, `openapi.json`…): every
 * registered API route that is not operational names one, unless an
 * operational route shares it.
 */
export function localApiSegments(all: Iterable<string>, operational: ReadonlySet<string>): Set<string> {
  const local = new Set<string>();
  const shared = new Set<string>();
  for (const url of all) {
    if (!url.startsWith(API_PREFIX)) continue;
    const segment = url.slice(API_PREFIX.length).split('/')[0] ?? '';
    if (segment === '' || segment.includes('*') || segment.startsWith(':')) continue;
    (operational.has(url) ? shared : local).add(segment);
  }
  for (const segment of shared) local.delete(segment);
  return local;
}

/**
 * Whether an unknown API path may be relayed: under `/api/v1/`, not under a
 * local segment, and free of dot segments (plain or percent-encoded) that
 * would make it name another path once resolved.
 */
export function isRelayableUnknownPath(rawUrl: string, localSegments: ReadonlySet<string>): boolean {
  const q = rawUrl.indexOf('?');
  const path = q === -1 ? rawUrl : rawUrl.slice(0, q);
  if (!path.startsWith(API_PREFIX)) return false;
  const segments = path.slice(API_PREFIX.length).split('/');
  const first = segments[0] ?? '';
  if (first === '' || localSegments.has(first)) return false;
  return !segments.some((segment) => /^(?:\.|%2e){1,2}$/i.test(segment) || segment.includes('\\'));
}
