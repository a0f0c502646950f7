/**
 * The allowed-targets policy of an executor (an agent's AGENT_ALLOWED_TARGETS,
 * the control plane's DIRECT_ALLOWED_TARGETS): `host:port` patterns a target
 * must match before any connection is opened.
 *
 * Pattern grammar: `HOST[:PORT]`, where HOST is `*` (any host), `*.example.com`
 * (any name below example.com, not example.com itself), a DNS name, an IPv4
 * address, a bracketed IPv6 address, or an address range in CIDR notation
 * (`10.0.0.0/8`, `[fd00::/8]`); PORT is a number or `*`, and defaults to 443.
 * Names compare case-insensitively, without a trailing dot.
 *
 * A name that no name pattern allows may still be reached through an address
 * range: it is then resolved once, by {@link TargetPolicy.lookupFor}'s lookup,
 * which hands the connection only the resolved addresses the ranges allow. The
 * connection dials that very address (no second lookup for DNS rebinding to
 * swap), while SNI and certificate checks stay on the name.
 */
import dns, { type LookupAddress } from 'node:dns';
import { BlockList, isIP, type LookupFunction } from 'node:net';
import { AppError } from '../errors.js';

/** Resolves a name the way dns.lookup does (`all: true`); replaceable in tests. */
export type Resolver = (hostname: string) => Promise<LookupAddress[]>;

/** Decides whether a target may be reached. */
export interface TargetPolicy {
  /**
   * `host` as in a URL's hostname (IPv6 with or without brackets). True when a
   * name or address pattern allows it as it is, or when it is a name that an
   * address range might allow once resolved (then dial it with `lookupFor`).
   */
  allows(host: string, port: number): boolean;
  /**
   * The lookup to dial `host` with: undefined when the name is allowed as it is;
   * otherwise one that resolves once and keeps only the addresses an address
   * range allows on `port` (none left: TARGET_NOT_ALLOWED).
   */
  lookupFor(host: string, port: number): LookupFunction | undefined;
}

interface Pattern {
  /** null = any host; a leading `.` = that suffix. */
  host: string | null;
  /** An address range instead of a host. */
  range?: BlockList;
  /** null = any port. */
  port: number | null;
}

/** A policy that allows everything (no patterns configured). */
export const ALLOW_ALL_TARGETS: TargetPolicy = { allows: () => true, lookupFor: () => undefined };

const systemResolver: Resolver = (hostname) => dns.promises.lookup(hostname, { all: true, verbatim: true });

/**
 * Builds the policy from patterns; null or undefined allows every target, an
 * empty list allows none. Throws VALIDATION_FAILED for a malformed pattern.
 */
export function createTargetPolicy(
  patterns: readonly string[] | null | undefined,
  resolver: Resolver = systemResolver,
): TargetPolicy {
  if (patterns === null || patterns === undefined) return ALLOW_ALL_TARGETS;
  const parsed = patterns.map(parseTargetPattern);
  const ranges = parsed.filter((pattern) => pattern.range !== undefined);
  const allowsAsIs = (name: string, port: number) => parsed.some((pattern) => matches(pattern, name, port));
  const rangeAllows = (address: string, port: number) => {
    const family = isIP(address);
    return (
      family !== 0 &&
      ranges.some(
        (pattern) =>
          (pattern.port === null || pattern.port === port) &&
          (pattern.range as BlockList).check(address, family === 6 ? 'ipv6' : 'ipv4'),
      )
    );
  };
  const mayResolve = (name: string, port: number) =>
    isIP(name) === 0 && ranges.some((pattern) => pattern.port === null || pattern.port === port);
  return {
    allows(host, port) {
      const name = normalizeHost(host);
      return allowsAsIs(name, port) || mayResolve(name, port);
    },
    lookupFor(host, port) {
      const name = normalizeHost(host);
      if (allowsAsIs(name, port) || !mayResolve(name, port)) return undefined;
      return ((hostname: string, options: { all?: boolean }, callback: LookupCallback) => {
        resolver(hostname).then(
          (addresses) => {
            const allowed = addresses.filter((entry) => rangeAllows(entry.address, port));
            const first = allowed[0];
            if (first === undefined) {
              callback(
                new AppError(
                  'TARGET_NOT_ALLOWED',
                  `${hostname} resolves to no address among the allowed targets on port ${port}`,
                ),
                '',
                0,
              );
            } else if (options.all === true) {
              (callback as unknown as (err: null, all: LookupAddress[]) => void)(null, allowed);
            } else {
              callback(null, first.address, first.family);
            }
          },
          (err: unknown) => callback(err as NodeJS.ErrnoException, '', 0),
        );
      }) as unknown as LookupFunction;
    },
  };
}

type LookupCallback = (err: NodeJS.ErrnoException | null, address: string, family: number) => void;

function matches(pattern: Pattern, host: string, port: number): boolean {
  if (pattern.port !== null && pattern.port !== port) return false;
  if (pattern.range !== undefined) {
    const family = isIP(host);
    return family !== 0 && pattern.range.check(host, family === 6 ? 'ipv6' : 'ipv4');
  }
  if (pattern.host === null) return true;
  if (pattern.host.startsWith('.')) return host.endsWith(pattern.host) && host.length > pattern.host.length;
  return pattern.host === host;
}

function normalizeHost(host: string): string {
  return host
    .replace(/^\[(.*)\]$/, '$1')
    .replace(/\.$/, '')
    .toLowerCase();
}

function parseTargetPattern(input: string): Pattern {
  const fail = () => new AppError('VALIDATION_FAILED', `invalid target pattern: ${JSON.stringify(input)}`);
  const text = input.trim();
  const match = /^(\[[^\]]+\]|[^:[\]]+)(?::(\d{1,5}|\*))?$/.exec(text);
  if (!match) throw fail();
  const [, rawHost = '', rawPort] = match;
  let port: number | null = 443;
  if (rawPort === '*') port = null;
  else if (rawPort !== undefined) {
    port = Number(rawPort);
    if (port < 1 || port > 65_535) throw fail();
  }
  if (rawHost === '*') return { host: null, port };
  const cidr = /^\[?([^\]/]+)\/(\d{1,3})\]?$/.exec(rawHost);
  if (cidr) {
    const [, address = '', prefixText = ''] = cidr;
    const family = isIP(address);
    const prefix = Number(prefixText);
    if (family === 0 || prefix > (family === 4 ? 32 : 128)) throw fail();
    if ((family === 6) !== rawHost.startsWith('[')) throw fail();
    const range = new BlockList();
    range.addSubnet(address, prefix, family === 6 ? 'ipv6' : 'ipv4');
    return { host: `${address}/${prefix}`, range, port };
  }
  if (rawHost.startsWith('[')) {
    const address = rawHost.slice(1, -1);
    if (isIP(address) !== 6) throw fail();
    return { host: normalizeHost(address), port };
  }
  const host = normalizeHost(rawHost);
  const wildcard = host.startsWith('*.');
  const name = wildcard ? host.slice(2) : host;
  if (!/^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$/.test(name)) throw fail();
  return { host: wildcard ? `.${name}` : name, port };
}

/**
 * Parses a variable holding target patterns (AGENT_ALLOWED_TARGETS,
 * DIRECT_ALLOWED_TARGETS): comma or space separated; null when unset or
 * empty (every target allowed). Throws VALIDATION_FAILED naming the variable
 * and the bad pattern.
 */
export function parseTargetList(value: string | null | undefined, variable: string): string[] | null {
  if (value === null || value === undefined) return null;
  const patterns = value
    .split(/[\s,]+/)
    .map((p) => p.trim())
    .filter(Boolean);
  if (patterns.length === 0) return null;
  for (const pattern of patterns) {
    try {
      parseTargetPattern(pattern);
    } catch {
      throw new AppError(
        'VALIDATION_FAILED',
        `${variable}: "${pattern}" is not a host[:port] pattern (e.g. app.internal:8081, *.lan:*, 10.0.0.0/8:8081)`,
      );
    }
  }
  return patterns;
}

/**
 * The one host and port a pattern names (`app.lan:8081`, `10.0.0.5`,
 * `[fd00::1]:8443`), or null for a pattern that names none: any host (`*`),
 * a name suffix (`*.lan`), an address range, or any port (`app.lan:*`).
 * Throws VALIDATION_FAILED for a malformed pattern. `p2pstream agent check`
 * dials these.
 */
export function namedTargetOf(pattern: string): { host: string; port: number } | null {
  const parsed = parseTargetPattern(pattern);
  if (parsed.host === null || parsed.port === null || parsed.range !== undefined) return null;
  if (parsed.host.startsWith('.')) return null;
  return { host: parsed.host, port: parsed.port };
}
