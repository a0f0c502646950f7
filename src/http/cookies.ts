/**
 * The session cookie: `__Host-p2pstream_session`, HttpOnly, Secure,
 * SameSite=Strict, Path=/ and no Domain. The `__Host-` prefix makes browsers
 * refuse it unless it is exactly that: no other host or path can set or
 * shadow it.
 */

export const SESSION_COOKIE = '__Host-p2pstream_session';

/** Reads one cookie from a Cookie header. */
export function readCookie(header: string | undefined, name: string): string | null {
  if (!header) return null;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return null;
}

export function sessionCookie(value: string, expiresAt: string): string {
  return `${SESSION_COOKIE}=${value}; Path=/; Expires=${new Date(expiresAt).toUTCString()}; HttpOnly; Secure; SameSite=Strict`;
}

export function clearedSessionCookie(): string {
  return `${SESSION_COOKIE}=; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; Secure; SameSite=Strict`;
}
