/**
 * AES-256-GCM sealing of secrets at rest (environment access tokens). The
 * 32-byte key lives in `secrets.key` in the data dir, created with mode 0600;
 * a key file that group or others can read is refused. Each ciphertext is
 * bound to its purpose and record id (additional authenticated data), so a
 * sealed value copied onto another record does not open.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { constants, promises as fs } from 'node:fs';
import path from 'node:path';

export const SECRETS_KEY_FILE_NAME = 'secrets.key';
const VERSION_PREFIX = 'v1';

export interface SecretsBox {
  /** Seals `plaintext` for (`purpose`, `recordId`); returns `v1.<iv>.<tag>.<ciphertext>` (base64url). */
  seal(purpose: string, recordId: string, plaintext: string): string;
  /** Opens a sealed value; throws when it was tampered with or bound to another record. */
  open(purpose: string, recordId: string, sealed: string): string;
}

/** Thrown when the key file is unusable; start-up must stop. */
export class SecretsKeyError extends Error {
  override readonly name = 'SecretsKeyError';
}

/** Builds a box around a raw 32-byte key. */
export function createSecretsBox(key: Buffer): SecretsBox {
  if (key.length !== 32) throw new SecretsKeyError('the secrets key must be 32 bytes');
  const aad = (purpose: string, recordId: string) => Buffer.from(`p2pstream:${purpose}:${recordId}`, 'utf8');
  return {
    seal(purpose, recordId, plaintext) {
      const iv = randomBytes(12);
      const cipher = createCipheriv('aes-256-gcm', key, iv);
      cipher.setAAD(aad(purpose, recordId));
      const ciphertext = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final()]);
      const tag = cipher.getAuthTag();
      return [VERSION_PREFIX, iv, tag, ciphertext]
        .map((p) => (typeof p === 'string' ? p : p.toString('base64url')))
        .join('.');
    },
    open(purpose, recordId, sealed) {
      const [version, iv, tag, ciphertext] = sealed.split('.');
      if (version !== VERSION_PREFIX || !iv || !tag || ciphertext === undefined) {
        throw new SecretsKeyError('the sealed value is malformed');
      }
      const decipher = createDecipheriv('aes-256-gcm', key, Buffer.from(iv, 'base64url'));
      decipher.setAAD(aad(purpose, recordId));
      decipher.setAuthTag(Buffer.from(tag, 'base64url'));
      return Buffer.concat([
        decipher.update(Buffer.from(ciphertext, 'base64url')),
        decipher.final(),
      ]).toString('utf8');
    },
  };
}

/**
 * Loads `secrets.key` from `dataDir`, creating it (mode 0600) on first start.
 * Refuses a key file readable by group or others, or of the wrong size.
 */
export async function loadSecretsBox(dataDir: string): Promise<SecretsBox> {
  const file = path.join(dataDir, SECRETS_KEY_FILE_NAME);
  try {
    const handle = await fs.open(file, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
    try {
      await handle.writeFile(randomBytes(32));
      await handle.sync();
    } finally {
      await handle.close();
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  const stat = await fs.stat(file);
  if ((stat.mode & 0o077) !== 0) {
    throw new SecretsKeyError(
      `the secrets key ${file} is readable by other users (mode ${(stat.mode & 0o777).toString(8)}); run chmod 600 on it`,
    );
  }
  const key = await fs.readFile(file);
  if (key.length !== 32) throw new SecretsKeyError(`the secrets key ${file} must hold exactly 32 bytes`);
  return createSecretsBox(key);
}
