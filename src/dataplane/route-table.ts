/**
 * Route selection for the public proxy, compiled once per configuration
 * change so that a request does a few map lookups and prefix checks.
 *
 * Order (first that matches wins):
 * 1. host tier: a route for the exact host, then a `*.suffix` route (the
 *    longest suffix first: `*.a.example.com` before `*.example.com`), then a
 *    route without host. A lower tier is tried only when no route of the
 *    higher one matches the path.
 * 2. within a tier: the longest `pathPrefix`;
 * 3. then the higher `priority` (higher wins);
 * 4. then the older route (creation time, then id), so the choice is stable.
 *
 * A prefix matches whole path segments: `/api` matches `/api`, `/api/` and
 * `/api/users` but not `/apix`; a prefix ending in `/` matches anything that
 * starts with it.
 *
 * Prefixes match the normalized path ({@link normalizeRequestPath}). A path
 * that a target could read as another route is refused instead of routed
 * ({@link matchRouteStrictly}): one whose dot segments, encoded separators
 * (`%2F`, `%5C`) or `;` parameters would select a different route once
 * resolved, decoded or stripped.
 */
import type { RouteRecord } from '../storage/schema.js';

/** A route with everything the proxy needs precomputed. */
export interface CompiledRoute {
  readonly id: string;
  readonly listenerId: string;
  readonly pathPrefix: string;
  readonly priority: number;
  /** What trace events show as `target`. */
  readonly label: string;
  readonly target: CompiledTarget;
  readonly record: Readonly<RouteRecord>;
}

export type CompiledTarget =
  | {
      readonly type: 'upstream';
      /** `scheme://host:port`. */
      readonly origin: string;
      /** Prepended to the request path; '' for none. */
      readonly basePath: string;
      readonly timeoutMs: number | null;
    }
  | { readonly type: 'redirect'; readonly status: number; readonly location: string }
  | { readonly type: 'backend'; readonly backendId: string }
  | {
      readonly type: 'static';
      readonly status: number;
      readonly contentType: string;
      readonly body: Buffer;
      /** Rendered per request when set (body and content type come from the template). */
      readonly templateId: string | null;
    };

interface WildcardGroup {
  /** `.example.com` for `*.example.com`. */
  readonly suffix: string;
  readonly routes: CompiledRoute[];
}

/** The routes of one listener, grouped by host tier. */
export interface ListenerRoutes {
  readonly exact: Map<string, CompiledRoute[]>;
  readonly wildcard: WildcardGroup[];
  readonly any: CompiledRoute[];
}

const EMPTY: ListenerRoutes = { exact: new Map(), wildcard: [], any: [] };

/** Compiles routes into per-listener tables. */
export function compileRoutes(routes: readonly Readonly<RouteRecord>[]): Map<string, ListenerRoutes> {
  const tables = new Map<
    string,
    { exact: Map<string, CompiledRoute[]>; wildcard: Map<string, CompiledRoute[]>; any: CompiledRoute[] }
  >();
  for (const record of routes) {
    let table = tables.get(record.listenerId);
    if (!table) {
      table = { exact: new Map(), wildcard: new Map(), any: [] };
      tables.set(record.listenerId, table);
    }
    const compiled = compileRoute(record);
    if (compiled === null) continue;
    if (record.host === null) table.any.push(compiled);
    else if (record.host.startsWith('*.')) pushTo(table.wildcard, record.host.slice(1), compiled);
    else pushTo(table.exact, record.host, compiled);
  }
  const result = new Map<string, ListenerRoutes>();
  for (const [listenerId, table] of tables) {
    for (const list of table.exact.values()) list.sort(byPrecedence);
    const wildcard = [...table.wildcard].map(([suffix, list]) => ({
      suffix,
      routes: list.sort(byPrecedence),
    }));
    wildcard.sort((a, b) => b.suffix.length - a.suffix.length || (a.suffix < b.suffix ? -1 : 1));
    result.set(listenerId, { exact: table.exact, wildcard, any: table.any.sort(byPrecedence) });
  }
  return result;
}

/** The routes of `listenerId` in `tables`, or an empty table. */
export function routesOf(tables: Map<string, ListenerRoutes>, listenerId: string): ListenerRoutes {
  return tables.get(listenerId) ?? EMPTY;
}

/** The route for a request, or null. `host` is normalised (see {@link normalizeHost}). */
export function matchRoute(table: ListenerRoutes, host: string | null, path: string): CompiledRoute | null {
  if (host !== null) {
    const exact = table.exact.get(host);
    if (exact) {
      const found = firstMatch(exact, path);
      if (found) return found;
    }
    for (const group of table.wildcard) {
      if (host.length > group.suffix.length && host.endsWith(group.suffix)) {
        const found = firstMatch(group.routes, path);
        if (found) return found;
      }
    }
  }
  return firstMatch(table.any, path);
}

/** The answer of {@link matchRouteStrictly} for a path that reads as different routes. */
export const AMBIGUOUS_PATH = Symbol('ambiguous path');

/**
 * The route for `rawPath` (query stripped, as the client sent it), matched on
 * its normalized form `path`, or AMBIGUOUS_PATH when a reading a target might
 * make of it selects another route: the path with its dot segments left
 * unresolved, or with `%2F` / `%5C` / `\` taken as separators and `;`
 * parameters stripped (then normalized).
 */
export function matchRouteStrictly(
  table: ListenerRoutes,
  host: string | null,
  rawPath: string,
  path: string,
): CompiledRoute | null | typeof AMBIGUOUS_PATH {
  const route = matchRoute(table, host, path);
  for (const reading of otherReadings(rawPath, path)) {
    if (matchRoute(table, host, reading) !== route) return AMBIGUOUS_PATH;
  }
  return route;
}

/** How else a target might read the path (only those that differ from `path`). */
function otherReadings(rawPath: string, path: string): string[] {
  const readings: string[] = [];
  const unresolved = decodeUnreserved(rawPath);
  if (unresolved !== path) readings.push(unresolved);
  if (/%2f|%5c|\\|;/i.test(rawPath)) {
    const split = unresolved
      .replace(/%2f|%5c|\\/gi, '/')
      .split('/')
      .map((segment) => {
        const semicolon = segment.indexOf(';');
        return semicolon < 0 ? segment : segment.slice(0, semicolon);
      })
      .join('/');
    const resolved = normalizeRequestPath(split);
    for (const reading of [split, resolved]) {
      if (reading !== null && reading !== path && !readings.includes(reading)) readings.push(reading);
    }
  }
  return readings;
}

// RFC 3986 §2.3: percent-encoded unreserved characters are the same URI decoded.
function decodeUnreserved(path: string): string {
  if (!path.includes('%')) return path;
  return path.replace(/%([0-9a-fA-F]{2})/g, (whole, hex: string) => {
    const char = String.fromCharCode(Number.parseInt(hex, 16));
    return /[A-Za-z0-9\-._~]/.test(char) ? char : whole.toUpperCase();
  });
}

/**
 * The path requests are routed on and forwarded with: percent-encoded
 * unreserved characters decoded (so `%61dmin` is `admin`, `%2e` a dot) and
 * dot segments resolved; `%2F` and `%5C` stay encoded. Null when it cannot
 * be a path.
 */
export function normalizeRequestPath(rawPath: string): string | null {
  const path = decodeUnreserved(rawPath);
  if (!path.includes('/.') && !path.includes('\\')) return path;
  try {
    // Appended, not resolved against the base: `//host/…` must stay a path.
    return new URL(`http://p2pstream.invalid${path}`).pathname;
  } catch {
    return null;
  }
}

/** True when `prefix` matches `path` on a segment boundary. */
export function prefixMatches(prefix: string, path: string): boolean {
  if (!path.startsWith(prefix)) return false;
  if (path.length === prefix.length || prefix.charCodeAt(prefix.length - 1) === 47) return true;
  return path.charCodeAt(prefix.length) === 47;
}

/**
 * The host name of a Host header: lower case, without port or trailing dot;
 * IPv6 literals keep their brackets. Null when absent or empty.
 */
export function normalizeHost(header: string | undefined): string | null {
  if (header === undefined) return null;
  let host = header.trim().toLowerCase();
  if (host.startsWith('[')) {
    const end = host.indexOf(']');
    host = end < 0 ? host : host.slice(0, end + 1);
  } else {
    const colon = host.indexOf(':');
    if (colon >= 0) host = host.slice(0, colon);
  }
  if (host.endsWith('.')) host = host.slice(0, -1);
  return host === '' ? null : host;
}

function firstMatch(routes: readonly CompiledRoute[], path: string): CompiledRoute | null {
  for (const route of routes) {
    if (prefixMatches(route.pathPrefix, path)) return route;
  }
  return null;
}

function byPrecedence(a: CompiledRoute, b: CompiledRoute): number {
  return (
    b.pathPrefix.length - a.pathPrefix.length ||
    b.priority - a.priority ||
    (a.record.createdAt < b.record.createdAt ? -1 : a.record.createdAt > b.record.createdAt ? 1 : 0) ||
    (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)
  );
}

function pushTo(map: Map<string, CompiledRoute[]>, key: string, route: CompiledRoute): void {
  const list = map.get(key);
  if (list) list.push(route);
  else map.set(key, [route]);
}

/** Null for a record that cannot serve (only possible in a hand-edited database): it is skipped. */
function compileRoute(record: Readonly<RouteRecord>): CompiledRoute | null {
  const target = record.target;
  if (typeof record.pathPrefix !== 'string' || !record.pathPrefix.startsWith('/')) return null;
  let compiled: CompiledTarget;
  let label: string;
  switch (target.type) {
    case 'upstream': {
      if (!URL.canParse(target.url)) return null;
      const url = new URL(target.url);
      compiled = {
        type: 'upstream',
        origin: url.origin,
        basePath: url.pathname === '/' ? '' : url.pathname.replace(/\/+$/, ''),
        timeoutMs: target.timeoutMs ?? null,
      };
      label = target.url;
      break;
    }
    case 'backend':
      compiled = { type: 'backend', backendId: target.backendId };
      label = `backend ${target.backendId}`;
      break;
    case 'redirect':
      compiled = { type: 'redirect', status: target.status, location: target.location };
      label = `redirect ${target.status} ${target.location}`;
      break;
    case 'static':
      compiled = {
        type: 'static',
        status: target.status,
        contentType: target.contentType,
        body: Buffer.from(target.body, 'utf8'),
        templateId: target.templateId ?? null,
      };
      label = `static ${target.status}`;
      break;
    default:
      return null;
  }
  return {
    id: record.id,
    listenerId: record.listenerId,
    pathPrefix: record.pathPrefix,
    priority: record.priority,
    label,
    target: compiled,
    record,
  };
}
