/** Identifier and secret generation shared by the services. */
import { createHash, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';

/** A new record id (UUID v4). */
export function newId(): string {
  return randomUUID();
}

/** `prefix` + 43 base64url characters (32 random bytes). */
export function newSecret(prefix: string): string {
  return prefix + randomBytes(32).toString('base64url');
}

/** SHA-256 hex of a high-entropy secret (tokens, session ids). */
export function hashSecret(secret: string): string {
  return createHash('sha256').update(secret, 'utf8').digest('hex');
}

/** Compares two strings in time independent of where they differ. */
export function constantTimeEqual(a: string, b: string): boolean {
  // Hash first so that lengths never leak and the buffers are equal length.
  const ha = createHash('sha256').update(a, 'utf8').digest();
  const hb = createHash('sha256').update(b, 'utf8').digest();
  return timingSafeEqual(ha, hb);
}

/** True when `id` has the shape of a record id (guards lookups against odd input). */
export function isId(id: unknown): id is string {
  return typeof id === 'string' && /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(id);
}
