/**
 * API tokens (docs/security.md "API tokens and agent credentials"): `p2pat_` +
 * 43 base64url characters, shown once, stored as a SHA-256 hash. Errors:
 * VALIDATION_FAILED, CONFLICT (name taken, whatever its case, as environment
 * names), NOT_FOUND.
 */
import { AppError } from '../errors.js';
import type { ApiTokenRecord } from '../storage/schema.js';
import type { Store } from '../storage/store.js';
import { hashSecret, newId, newSecret } from './ids.js';
import {
  invalid,
  optionalBoolean,
  optionalDate,
  rejectUnknownFields,
  requireBoolean,
  requireName,
  requireObject,
} from './validate.js';

export const API_TOKEN_PREFIX = 'p2pat_';
const API_TOKEN_SHAPE = /^p2pat_[A-Za-z0-9_-]{43}$/;
/** The public view of an API token (never the token or its hash). */
export interface ApiToken {
  id: string;
  name: string;
  enabled: boolean;
  expiresAt: string | null;
  lastUsedAt: string | null;
  createdAt: string;
}

export function toApiToken(record: ApiTokenRecord): ApiToken {
  const { tokenHash: _hash, ...rest } = record;
  return rest;
}

/** True when the value has the shape of an API token. */
export function looksLikeApiToken(value: string): boolean {
  return API_TOKEN_SHAPE.test(value);
}

export class TokenService {
  readonly #store: Store;
  readonly #now: () => number;
  readonly #byHash = new Map<string, string>();
  #indexedFrom: readonly ApiTokenRecord[] | null = null;

  constructor(options: { store: Store; now?: () => number }) {
    this.#store = options.store;
    this.#now = options.now ?? Date.now;
  }

  list(): ApiToken[] {
    return this.#store.read().apiTokens.map(toApiToken);
  }

  get(id: string): ApiToken {
    return toApiToken(this.#find(id));
  }

  /**
   * Creates a token; the raw value is returned once and never stored. When an
   * API token makes the request (`issuer`), the new one cannot outlive it: an
   * omitted `expiresAt` takes the issuer's, a later one (or none, for an
   * issuer that expires) is VALIDATION_FAILED on `expiresAt`.
   */
  async create(
    body: unknown,
    issuer?: { expiresAt: string | null },
  ): Promise<{ token: string; apiToken: ApiToken }> {
    const input = requireObject(body);
    rejectUnknownFields(input, ['name', 'expiresAt', 'enabled']);
    const name = requireName(input.name);
    const ceiling = issuer?.expiresAt ?? null;
    const expiresAt =
      input.expiresAt === undefined && ceiling !== null
        ? ceiling
        : optionalDate(input.expiresAt, 'expiresAt');
    if (expiresAt !== null && Date.parse(expiresAt) <= this.#now())
      throw invalid('expiresAt', 'must be in the future');
    if (ceiling !== null && (expiresAt === null || Date.parse(expiresAt) > Date.parse(ceiling))) {
      throw invalid(
        'expiresAt',
        `must not be later than the expiry of the token making the request (${ceiling})`,
      );
    }
    const enabled = optionalBoolean(input.enabled, 'enabled', true);
    const token = newSecret(API_TOKEN_PREFIX);
    const record: ApiTokenRecord = {
      id: newId(),
      name,
      tokenHash: hashSecret(token),
      enabled,
      expiresAt,
      lastUsedAt: null,
      createdAt: new Date(this.#now()).toISOString(),
    };
    await this.#store.update((db) => {
      this.#assertNameFree(db.apiTokens, name, null);
      db.apiTokens.push(record);
    });
    return { token, apiToken: toApiToken(record) };
  }

  /** Changes `name` and/or `enabled`. */
  async update(id: string, body: unknown): Promise<ApiToken> {
    const input = requireObject(body);
    rejectUnknownFields(input, ['name', 'enabled']);
    const name = input.name === undefined ? undefined : requireName(input.name);
    const enabled = input.enabled === undefined ? undefined : requireBoolean(input.enabled, 'enabled');
    this.#find(id);
    return this.#store.update((db) => {
      const record = db.apiTokens.find((t) => t.id === id);
      if (!record) throw new AppError('NOT_FOUND', 'no such API token');
      if (name !== undefined) this.#assertNameFree(db.apiTokens, name, id);
      if (name !== undefined) record.name = name;
      if (enabled !== undefined) record.enabled = enabled;
      return toApiToken(record);
    });
  }

  /** Deletes a token; it stops working at once. */
  async remove(id: string): Promise<void> {
    this.#find(id);
    await this.#store.update((db) => {
      db.apiTokens = db.apiTokens.filter((t) => t.id !== id);
    });
  }

  /**
   * The token record for a bearer value, or null when it is malformed,
   * unknown, disabled or expired. Sets `lastUsedAt` on every success: in
   * memory at once (readable by the next request), on disk with the store's
   * deferred bookkeeping write (within DEFERRED_WRITE_MS, one write per burst).
   */
  authenticate(bearer: string): ApiToken | null {
    if (!looksLikeApiToken(bearer)) return null;
    const hash = hashSecret(bearer);
    const id = this.#index().get(hash);
    const record = id === undefined ? undefined : this.#store.read().apiTokens.find((t) => t.id === id);
    const now = this.#now();
    if (!record || record.tokenHash !== hash || !record.enabled) return null;
    if (record.expiresAt !== null && Date.parse(record.expiresAt) <= now) return null;
    const at = new Date(now).toISOString();
    // Bookkeeping: a crash may lose the last second of it, never the request.
    this.#store.updateSoon(
      (db) => {
        const live = db.apiTokens.find((t) => t.id === record.id);
        if (live) live.lastUsedAt = at;
      },
      { collection: 'apiTokens', id: record.id },
    );
    return toApiToken(record);
  }

  #index(): Map<string, string> {
    const tokens = this.#store.read().apiTokens;
    // Rebuilt only when the collection changed identity or size (create/delete).
    if (this.#indexedFrom !== tokens || this.#byHash.size !== tokens.length) {
      this.#byHash.clear();
      for (const t of tokens) this.#byHash.set(t.tokenHash, t.id);
      this.#indexedFrom = tokens;
    }
    return this.#byHash;
  }

  #find(id: string): ApiTokenRecord {
    const record = this.#store.read().apiTokens.find((t) => t.id === id);
    if (!record) throw new AppError('NOT_FOUND', 'no such API token');
    return record;
  }

  #assertNameFree(tokens: ApiTokenRecord[], name: string, exceptId: string | null): void {
    const key = name.toLowerCase();
    if (tokens.some((t) => t.id !== exceptId && t.name.toLowerCase() === key)) {
      throw new AppError('CONFLICT', `an API token named "${name}" already exists`, {
        details: { field: 'name' },
      });
    }
  }
}
