/**
 * Redaction of traced headers and query strings: the value of any header or
 * parameter whose name is sensitive becomes `[redacted]`. Sensitive names:
 * those containing `authorization`, `cookie` (so `cookie` and `set-cookie`),
 * `token`, `secret`, `password`, `passwd`, `credential`, `session` or `key`
 * (case-insensitive; e.g. `x-api-key`, `x-auth-token`). Query parameters
 * are also redacted when named `sig`, `signature` (or ending in it, as
 * `X-Amz-Signature`) or `code` (OAuth codes, presigned URLs).
 */
import type { TracedHeaders } from '../domain/traffic-types.js';

export const REDACTED = '[redacted]';

const SENSITIVE = /authorization|cookie|token|secret|password|passwd|credential|session|key/i;

const SENSITIVE_QUERY = /^(sig|code)$|signature$/i;

/** True when a header or parameter name carries a secret. */
export function isSensitiveName(name: string): boolean {
  return SENSITIVE.test(name);
}

/**
 * Headers from a flat `[name, value, name, value…]` list (Node's rawHeaders
 * or what the proxy sent) as a traced object: names lower-cased, repeated
 * names collected into arrays, sensitive values redacted.
 */
export function redactHeaderList(list: readonly (string | Buffer)[]): TracedHeaders {
  const out: TracedHeaders = Object.create(null);
  for (let i = 0; i + 1 < list.length; i += 2) {
    const name = String(list[i]).toLowerCase();
    const value = isSensitiveName(name) ? REDACTED : String(list[i + 1]);
    const existing = out[name];
    if (existing === undefined) out[name] = value;
    else if (Array.isArray(existing)) existing.push(value);
    else out[name] = [existing, value];
  }
  return { ...out };
}

/** A query string (without `?`) with the values of sensitive parameters redacted. */
export function redactQuery(query: string): string {
  if (query === '') return '';
  return query
    .split('&')
    .map((pair) => {
      const eq = pair.indexOf('=');
      const rawName = eq < 0 ? pair : pair.slice(0, eq);
      let name = rawName;
      try {
        name = decodeURIComponent(rawName.replace(/\+/g, ' '));
      } catch {
        // A malformed escape: judge the name as it is.
      }
      return eq >= 0 && (isSensitiveName(name) || SENSITIVE_QUERY.test(name))
        ? `${rawName}=${REDACTED}`
        : pair;
    })
    .join('&');
}
