/**
 * The allowed-targets policy of an executor (an agent's AGENT_ALLOWED_TARGETS):
 * `host:port` patterns a target must match before any connection is opened.
 *
 * Pattern grammar: `HOST[:PORT]`, where HOST is `*` (any host), `*.example.com`
 * (any name below example.com, not example.com itself), a DNS name, an IPv4
 * address or a bracketed IPv6 address; PORT is a number or `*`, and defaults
 * to 443. Names compare case-insensitively, without a trailing dot.
 */
import { isIP } from 'node:net';
import { AppError } from '../errors.js';

/** Decides whether a target may be reached. */
export interface TargetPolicy {
  /** `host` as in a URL's hostname (IPv6 with or without brackets). */
  allows(host: string, port: number): boolean;
}

interface Pattern {
  /** null = any host; a leading `.` = that suffix. */
  host: string | null;
  /** null = any port. */
  port: number | null;
}

/** A policy that allows everything (no patterns configured). */
export const ALLOW_ALL_TARGETS: TargetPolicy = { allows: () => true };

/**
 * Builds the policy from patterns; null or undefined allows every target, an
 * empty list allows none. Throws VALIDATION_FAILED for a malformed pattern.
 */
export function createTargetPolicy(patterns: readonly string[] | null | undefined): TargetPolicy {
  if (patterns === null || patterns === undefined) return ALLOW_ALL_TARGETS;
  const parsed = patterns.map(parseTargetPattern);
  return {
    allows(host, port) {
      const name = normalizeHost(host);
      return parsed.some((pattern) => matches(pattern, name, port));
    },
  };
}

function matches(pattern: Pattern, host: string, port: number): boolean {
  if (pattern.port !== null && pattern.port !== port) return false;
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
