/**
 * ACME accounts and DNS providers (docs/tls.md): `POST /tls/acme/accounts
 * {name, directoryUrl, email?, directoryCaPem?, eab?: {kid, hmacKey}}` and
 * `POST /tls/dns-providers {name, type: "cloudflare", apiToken, apiBaseUrl?}`.
 *
 * `directoryUrl` is any https URL, or one of the presets
 * {@link ACME_DIRECTORY_PRESETS} (`letsencrypt`, `letsencrypt-staging`). An
 * account gets its own P-256 key and is registered at its directory when
 * created, so an unreachable or failing directory is a 400 naming
 * `directoryUrl` with the cause. Account keys, EAB HMAC keys and provider
 * tokens are sealed by the secrets box and never returned.
 *
 * PATCH changes an account's `name`, `email` (updated at the directory
 * first: a refusal is a 400 naming `email`), `directoryCaPem`, and `eab`
 * while it is not registered yet; its `directoryUrl` cannot change (another
 * directory is another account). A provider's `name`, `apiToken` (omitted:
 * the stored one is kept) and `apiBaseUrl`; a new `apiBaseUrl` origin needs
 * `apiToken` in the same request, so a stored token never travels to a host
 * the admin did not name it for.
 *
 * Errors: VALIDATION_FAILED, CONFLICT (name taken; deleting one a
 * certificate uses, with `details.usedBy`), NOT_FOUND.
 */
import { generateKeyPairSync, X509Certificate } from 'node:crypto';
import { AppError } from '../errors.js';
import type { AcmeAccountRecord, Database, DnsProviderRecord } from '../storage/schema.js';
import type { SecretsBox } from '../storage/secrets-box.js';
import type { Store } from '../storage/store.js';
import { newId } from './ids.js';
import type { AcmeAccountSecrets, AcmeIssuer, DnsProviderSecrets } from './tls-types.js';
import { invalid, rejectUnknownFields, requireName, requireObject } from './validate.js';

export const ACME_DIRECTORY_PRESETS: Readonly<Record<string, string>> = {
  letsencrypt: 'https://acme-v02.api.letsencrypt.org/directory',
  'letsencrypt-staging': 'https://acme-staging-v02.api.letsencrypt.org/directory',
};

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]']);
const SEAL_ACCOUNT_KEY = 'acme-account-key';
const SEAL_EAB = 'acme-eab';
const SEAL_DNS_TOKEN = 'dns-provider-token';

/** An ACME account as the API shows it. */
export interface AcmeAccount {
  id: string;
  name: string;
  directoryUrl: string;
  email: string | null;
  hasDirectoryCa: boolean;
  eabKid: string | null;
  accountUrl: string | null;
  createdAt: string;
  updatedAt: string;
}

/** A DNS provider as the API shows it (never its token). */
export interface DnsProvider {
  id: string;
  name: string;
  type: 'cloudflare';
  apiBaseUrl: string | null;
  hasApiToken: boolean;
  createdAt: string;
  updatedAt: string;
}

export interface AcmeAccountServiceOptions {
  store: Store;
  secrets: SecretsBox;
  /** Registers accounts at their directory; without one, accounts are only stored. */
  issuer?: AcmeIssuer;
  now?: () => number;
}

const ACCOUNT_FIELDS = ['name', 'directoryUrl', 'email', 'directoryCaPem', 'eab'];
const PROVIDER_FIELDS = ['name', 'type', 'apiToken', 'apiBaseUrl'];
const READ_ONLY = ['id', 'createdAt', 'updatedAt', 'accountUrl', 'hasDirectoryCa', 'eabKid', 'hasApiToken'];

export class AcmeAccountService {
  readonly #store: Store;
  readonly #secrets: SecretsBox;
  readonly #issuer: AcmeIssuer | undefined;
  readonly #now: () => number;

  constructor(options: AcmeAccountServiceOptions) {
    this.#store = options.store;
    this.#secrets = options.secrets;
    this.#issuer = options.issuer;
    this.#now = options.now ?? Date.now;
  }

  listAccounts(): AcmeAccount[] {
    return tlsOf(this.#store.read()).acmeAccounts.map(toAccount);
  }

  /** Creates the account and registers it at the directory (400 `directoryUrl` when that fails). */
  async createAccount(body: unknown): Promise<AcmeAccount> {
    const input = requireObject(body);
    rejectUnknownFields(input, [...ACCOUNT_FIELDS, ...READ_ONLY]);
    const name = requireName(input.name);
    const directoryUrl = requireDirectoryUrl(input.directoryUrl);
    const email = requireEmail(input.email);
    const directoryCaPem = requireCaPem(input.directoryCaPem);
    const eab = requireEab(input.eab);
    this.#assertNameFree(name);
    const id = newId();
    const at = new Date(this.#now()).toISOString();
    const accountKeyPem = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
      .privateKey.export({ format: 'pem', type: 'pkcs8' })
      .toString();
    const record: AcmeAccountRecord = {
      id,
      name,
      directoryUrl,
      email,
      directoryCaPem,
      eabKid: eab?.kid ?? null,
      eabHmacKeySealed: eab ? this.#secrets.seal(SEAL_EAB, id, eab.hmacKey) : null,
      accountKeySealed: this.#secrets.seal(SEAL_ACCOUNT_KEY, id, accountKeyPem),
      accountUrl: null,
      createdAt: at,
      updatedAt: at,
    };
    if (this.#issuer) {
      try {
        record.accountUrl = await this.#issuer.register(this.#open(record));
      } catch (err) {
        throw new AppError(
          'VALIDATION_FAILED',
          `directoryUrl: the ACME directory refused or could not be reached: ${messageOf(err)}`,
          { details: { field: 'directoryUrl' }, cause: err },
        );
      }
    }
    await this.#store.update((db) => {
      if (tlsOf(db).acmeAccounts.some((a) => a.name === name)) throw nameTaken('account', name);
      tlsOf(db).acmeAccounts.push(record);
    });
    return toAccount(record);
  }

  /** Changes an account (see the module comment); answers it as stored. */
  async updateAccount(id: string, body: unknown): Promise<AcmeAccount> {
    const input = requireObject(body);
    rejectUnknownFields(input, [...ACCOUNT_FIELDS, ...READ_ONLY]);
    const current = this.#findAccount(id);
    const next: AcmeAccountRecord = { ...current };
    if (input.name !== undefined) next.name = requireName(input.name);
    if (input.directoryUrl !== undefined && requireDirectoryUrl(input.directoryUrl) !== current.directoryUrl)
      throw invalid('directoryUrl', 'cannot change: another directory is another account; create one');
    if (input.directoryCaPem !== undefined) next.directoryCaPem = requireCaPem(input.directoryCaPem);
    if (input.eab !== undefined) {
      const eab = requireEab(input.eab);
      if (current.accountUrl !== null)
        throw invalid(
          'eab',
          'applies when the account is registered, and this one is; create another account',
        );
      next.eabKid = eab?.kid ?? null;
      next.eabHmacKeySealed = eab ? this.#secrets.seal(SEAL_EAB, id, eab.hmacKey) : null;
    }
    if (input.email !== undefined) next.email = requireEmail(input.email);
    if (next.name !== current.name && this.#accountNameTaken(next.name, id))
      throw nameTaken('account', next.name);
    if (next.email !== current.email && this.#issuer?.updateContact && next.accountUrl !== null) {
      try {
        await this.#issuer.updateContact(this.#open(next), next.email);
      } catch (err) {
        throw new AppError(
          'VALIDATION_FAILED',
          `email: the ACME directory refused the new contact or could not be reached: ${messageOf(err)}`,
          { details: { field: 'email' }, cause: err },
        );
      }
    }
    next.updatedAt = new Date(this.#now()).toISOString();
    await this.#store.update((db) => {
      const accounts = tlsOf(db).acmeAccounts;
      const index = accounts.findIndex((a) => a.id === id);
      if (index < 0) throw new AppError('NOT_FOUND', 'no such ACME account');
      if (accounts.some((a) => a.name === next.name && a.id !== id)) throw nameTaken('account', next.name);
      // Registered meanwhile (an order): keep the URL the directory gave.
      next.accountUrl = accounts[index]!.accountUrl;
      accounts[index] = next;
    });
    return toAccount(next);
  }

  /** Deletes an account no certificate uses (409 CONFLICT with `details.usedBy` otherwise). */
  async removeAccount(id: string): Promise<void> {
    this.#findAccount(id);
    await this.#store.update((db) => {
      const usedBy = tlsOf(db)
        .certificates.filter((c) => c.acmeAccountId === id)
        .map((c) => ({ type: 'certificate', id: c.id, name: c.name }));
      if (usedBy.length > 0)
        throw new AppError('CONFLICT', 'the account is used by a certificate', { details: { usedBy } });
      tlsOf(db).acmeAccounts = tlsOf(db).acmeAccounts.filter((a) => a.id !== id);
    });
  }

  listProviders(): DnsProvider[] {
    return tlsOf(this.#store.read()).dnsProviders.map(toProvider);
  }

  async createProvider(body: unknown): Promise<DnsProvider> {
    const input = requireObject(body);
    rejectUnknownFields(input, [...PROVIDER_FIELDS, ...READ_ONLY]);
    const name = requireName(input.name);
    if (input.type !== 'cloudflare') throw invalid('type', 'must be cloudflare');
    const apiToken = requireApiToken(input.apiToken);
    const apiBaseUrl = requireApiBaseUrl(input.apiBaseUrl);
    const id = newId();
    const at = new Date(this.#now()).toISOString();
    const record: DnsProviderRecord = {
      id,
      name,
      type: 'cloudflare',
      apiTokenSealed: this.#secrets.seal(SEAL_DNS_TOKEN, id, apiToken),
      apiBaseUrl,
      createdAt: at,
      updatedAt: at,
    };
    await this.#store.update((db) => {
      if (tlsOf(db).dnsProviders.some((p) => p.name === name)) throw nameTaken('DNS provider', name);
      tlsOf(db).dnsProviders.push(record);
    });
    return toProvider(record);
  }

  /** Changes a provider (see the module comment); answers it as stored, never its token. */
  async updateProvider(id: string, body: unknown): Promise<DnsProvider> {
    const input = requireObject(body);
    rejectUnknownFields(input, [...PROVIDER_FIELDS, ...READ_ONLY]);
    const current = tlsOf(this.#store.read()).dnsProviders.find((p) => p.id === id);
    if (!current) throw new AppError('NOT_FOUND', 'no such DNS provider');
    const next: DnsProviderRecord = { ...current };
    if (input.name !== undefined) next.name = requireName(input.name);
    if (input.type !== undefined && input.type !== current.type)
      throw invalid('type', `cannot change (${current.type}); create another provider`);
    if (input.apiBaseUrl !== undefined) next.apiBaseUrl = requireApiBaseUrl(input.apiBaseUrl);
    if (input.apiToken !== undefined) {
      next.apiTokenSealed = this.#secrets.seal(SEAL_DNS_TOKEN, id, requireApiToken(input.apiToken));
    } else if (originOf(next.apiBaseUrl) !== originOf(current.apiBaseUrl)) {
      throw invalid(
        'apiToken',
        'is required with a new apiBaseUrl: the stored token is not sent to another host',
      );
    }
    if (
      next.name !== current.name &&
      tlsOf(this.#store.read()).dnsProviders.some((p) => p.name === next.name && p.id !== id)
    )
      throw nameTaken('DNS provider', next.name);
    next.updatedAt = new Date(this.#now()).toISOString();
    await this.#store.update((db) => {
      const providers = tlsOf(db).dnsProviders;
      const index = providers.findIndex((p) => p.id === id);
      if (index < 0) throw new AppError('NOT_FOUND', 'no such DNS provider');
      if (providers.some((p) => p.name === next.name && p.id !== id))
        throw nameTaken('DNS provider', next.name);
      providers[index] = next;
    });
    return toProvider(next);
  }

  async removeProvider(id: string): Promise<void> {
    if (!tlsOf(this.#store.read()).dnsProviders.some((p) => p.id === id))
      throw new AppError('NOT_FOUND', 'no such DNS provider');
    await this.#store.update((db) => {
      const usedBy = tlsOf(db)
        .certificates.filter((c) => c.dnsProviderId === id)
        .map((c) => ({ type: 'certificate', id: c.id, name: c.name }));
      if (usedBy.length > 0)
        throw new AppError('CONFLICT', 'the DNS provider is used by a certificate', { details: { usedBy } });
      tlsOf(db).dnsProviders = tlsOf(db).dnsProviders.filter((p) => p.id !== id);
    });
  }

  /** True when an account with this id exists. */
  hasAccount(id: string): boolean {
    return tlsOf(this.#store.read()).acmeAccounts.some((a) => a.id === id);
  }

  hasProvider(id: string): boolean {
    return tlsOf(this.#store.read()).dnsProviders.some((p) => p.id === id);
  }

  /** The account with its secrets opened (for the issuer). */
  accountSecrets(id: string): AcmeAccountSecrets {
    return this.#open(this.#findAccount(id));
  }

  providerSecrets(id: string): DnsProviderSecrets {
    const record = tlsOf(this.#store.read()).dnsProviders.find((p) => p.id === id);
    if (!record) throw new AppError('NOT_FOUND', 'no such DNS provider');
    return {
      id: record.id,
      type: record.type,
      apiToken: this.#secrets.open(SEAL_DNS_TOKEN, record.id, record.apiTokenSealed),
      apiBaseUrl: record.apiBaseUrl,
    };
  }

  /** Remembers the account URL the directory gave (after a registration during an order). */
  async setAccountUrl(id: string, accountUrl: string): Promise<void> {
    await this.#store.update((db) => {
      const record = tlsOf(db).acmeAccounts.find((a) => a.id === id);
      if (record && record.accountUrl !== accountUrl) record.accountUrl = accountUrl;
    });
  }

  #open(record: Readonly<AcmeAccountRecord>): AcmeAccountSecrets {
    return {
      id: record.id,
      directoryUrl: record.directoryUrl,
      email: record.email,
      directoryCaPem: record.directoryCaPem,
      eab:
        record.eabKid !== null && record.eabHmacKeySealed !== null
          ? { kid: record.eabKid, hmacKey: this.#secrets.open(SEAL_EAB, record.id, record.eabHmacKeySealed) }
          : null,
      accountKeyPem: this.#secrets.open(SEAL_ACCOUNT_KEY, record.id, record.accountKeySealed),
      accountUrl: record.accountUrl,
    };
  }

  #findAccount(id: string): Readonly<AcmeAccountRecord> {
    const record = tlsOf(this.#store.read()).acmeAccounts.find((a) => a.id === id);
    if (!record) throw new AppError('NOT_FOUND', 'no such ACME account');
    return record;
  }

  #assertNameFree(name: string): void {
    if (this.#accountNameTaken(name, null)) throw nameTaken('account', name);
  }

  #accountNameTaken(name: string, exceptId: string | null): boolean {
    return tlsOf(this.#store.read()).acmeAccounts.some((a) => a.name === name && a.id !== exceptId);
  }
}

/** The TLS collections of a document (present in every current one; filled at load otherwise). */
export function tlsOf<T extends Readonly<Database> | Database>(db: T): T['tls'] {
  return db.tls;
}

function nameTaken(what: string, name: string): AppError {
  return new AppError('CONFLICT', `an ${what} named "${name}" already exists`, {
    details: { field: 'name' },
  });
}

function toAccount(record: Readonly<AcmeAccountRecord>): AcmeAccount {
  return {
    id: record.id,
    name: record.name,
    directoryUrl: record.directoryUrl,
    email: record.email,
    hasDirectoryCa: record.directoryCaPem !== null,
    eabKid: record.eabKid,
    accountUrl: record.accountUrl,
    createdAt: record.createdAt,
    updatedAt: record.updatedAt,
  };
}

function toProvider(record: Readonly<DnsProviderRecord>): DnsProvider {
  return {
    id: record.id,
    name: record.name,
    type: record.type,
    apiBaseUrl: record.apiBaseUrl,
    hasApiToken: true,
    createdAt: record.createdAt,
    updatedAt: record.updatedAt,
  };
}

function requireHttpsUrl(value: unknown, field: string): string {
  if (typeof value !== 'string' || !URL.canParse(value.trim()))
    throw invalid(field, 'must be an https:// URL');
  const url = new URL(value.trim());
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw invalid(field, 'must be an https:// URL');
  if (url.username !== '' || url.password !== '') throw invalid(field, 'must not contain credentials');
  return url.toString().replace(/\/$/, '');
}

function requireApiToken(value: unknown): string {
  if (typeof value !== 'string' || value.trim() === '' || value.length > 1024)
    throw invalid('apiToken', 'is required');
  return value.trim();
}

/** The provider API's base URL, or null for the provider's own. */
function requireApiBaseUrl(value: unknown): string | null {
  if (value === undefined || value === null || value === '') return null;
  const apiBaseUrl = requireHttpsUrl(value, 'apiBaseUrl');
  // The token may travel in the clear only to this host (a local stand-in or tunnel).
  if (apiBaseUrl.startsWith('http://') && !LOOPBACK.has(new URL(apiBaseUrl).hostname))
    throw invalid('apiBaseUrl', 'must be https:// (http:// only on a loopback address)');
  return apiBaseUrl;
}

/** Scheme, host and port of a provider API URL (null: the provider's default). */
function originOf(url: string | null): string | null {
  return url === null ? null : new URL(url).origin;
}

function requireDirectoryUrl(value: unknown): string {
  if (typeof value === 'string' && ACME_DIRECTORY_PRESETS[value.trim()])
    return ACME_DIRECTORY_PRESETS[value.trim()]!;
  const url = requireHttpsUrl(value, 'directoryUrl');
  if (!url.startsWith('https://'))
    throw invalid('directoryUrl', 'must be an https:// URL or a preset (letsencrypt, letsencrypt-staging)');
  return url;
}

function requireEmail(value: unknown): string | null {
  if (value === undefined || value === null || value === '') return null;
  if (
    typeof value !== 'string' ||
    !/^[^\s@,<>]+@[^\s@,<>]+\.[^\s@,<>]+$/.test(value.trim()) ||
    value.length > 254
  )
    throw invalid('email', 'must be an e-mail address');
  return value.trim();
}

function requireCaPem(value: unknown): string | null {
  if (value === undefined || value === null || value === '') return null;
  if (typeof value !== 'string') throw invalid('directoryCaPem', 'must be PEM');
  try {
    new X509Certificate(value);
  } catch {
    throw invalid('directoryCaPem', 'is not a PEM certificate');
  }
  return value;
}

function requireEab(value: unknown): { kid: string; hmacKey: string } | null {
  if (value === undefined || value === null) return null;
  const eab = requireObject(value, 'eab');
  rejectUnknownFields(eab, ['kid', 'hmacKey']);
  if (typeof eab.kid !== 'string' || eab.kid.trim() === '') throw invalid('eab.kid', 'is required');
  if (typeof eab.hmacKey !== 'string' || !/^[A-Za-z0-9_-]+={0,2}$/.test(eab.hmacKey.trim()))
    throw invalid('eab.hmacKey', 'must be the base64url HMAC key the CA gave');
  return { kid: eab.kid.trim(), hmacKey: eab.hmacKey.trim() };
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
