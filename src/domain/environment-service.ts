/**
 * The environment registry (docs/architecture.md "Local and operational
 * routes"): the other p2pstream instances this control plane operates, their
 * sealed access tokens and the certificates they are pinned to.
 *
 * - The access token is sealed with the secrets box (purpose
 *   {@link ACCESS_TOKEN_PURPOSE}, bound to the environment id); it is never
 *   returned and never logged.
 * - The trust state is derived on every read from the trusted and the last
 *   discovered certificates and the clock (see {@link deriveTrustState}).
 * - Discovery and the connection test go through the environment's transport
 *   (in-process or through its agent); a relayed call that meets another
 *   certificate is recorded with {@link EnvironmentService.recordCallFailure}.
 *
 * Errors: VALIDATION_FAILED (bad field, `details.field`), CONFLICT (name
 * taken; trust of a fingerprint that is not the last discovered one),
 * ENVIRONMENT_NOT_FOUND, AGENT_NOT_FOUND (agent transport naming an unknown
 * agent), and for discover/trust/test/relay: ENVIRONMENT_DISABLED,
 * ENVIRONMENT_UNTRUSTED, CERTIFICATE_CHANGED, CERTIFICATE_EXPIRED,
 * CERTIFICATE_HOSTNAME_MISMATCH, AGENT_OFFLINE, ENVIRONMENT_UNREACHABLE,
 * ENVIRONMENT_TIMEOUT, REMOTE_UNAUTHORIZED.
 */
import { X509Certificate } from 'node:crypto';
import { AppError, type ErrorCode, toAppError } from '../errors.js';
import { type PathTiming, pathTiming } from '../relay/timing.js';
import {
  DEFAULT_TIMEOUT_MS,
  MAX_TIMEOUT_MS,
  type RelayResponse,
  type Transport,
  type TrustMetadata,
} from '../relay/transport.js';
import type { EnvironmentRecord, StoredCertificate } from '../storage/schema.js';
import type { SecretsBox } from '../storage/secrets-box.js';
import type { Store } from '../storage/store.js';
import {
  type CertificateInfo,
  isCurrentlyValid,
  matchesHostname,
  normalizeFingerprint,
} from '../tls/certificates.js';
import { isId, newId } from './ids.js';
import {
  invalid,
  optionalBoolean,
  rejectUnknownFields,
  requireBoolean,
  requireInteger,
  requireName,
  requireObject,
} from './validate.js';

/** The secrets-box purpose of sealed access tokens (bound to the environment id). */
export const ACCESS_TOKEN_PURPOSE = 'environment-access-token';
/** An environment's `timeoutMs` when none is given: the transports' default. */
export const DEFAULT_ENVIRONMENT_TIMEOUT_MS = DEFAULT_TIMEOUT_MS;
export const MIN_ENVIRONMENT_TIMEOUT_MS = 1_000;
/** The most an environment's `timeoutMs` may be: the most a transport carries. */
export const MAX_ENVIRONMENT_TIMEOUT_MS = MAX_TIMEOUT_MS;
export const MAX_ENVIRONMENT_URL_LENGTH = 2048;
export const MAX_ACCESS_TOKEN_LENGTH = 4096;
/** The id of the virtual environment that stands for this instance (the API's `environment=local`). */
export const LOCAL_ENVIRONMENT_ID = 'local';
/** The id and name of the virtual environment that stands for this instance. */
export const LOCAL_ENVIRONMENT = Object.freeze({
  id: LOCAL_ENVIRONMENT_ID,
  name: 'Local',
  virtual: true as const,
});
/** The path the connection test calls on the target. */
export const SYSTEM_INFO_PATH = '/api/v1/system/info';
/** Largest system-info answer the connection test reads. */
const MAX_TEST_BODY_BYTES = 64 * 1024;

export type TrustState = 'UNTRUSTED' | 'TRUSTED' | 'CHANGED' | 'EXPIRED';
export type EnvironmentTransportKind = 'direct' | 'agent';

/** The public view of an environment: never the access token. */
export interface Environment {
  id: string;
  name: string;
  url: string;
  transport: EnvironmentTransportKind;
  agentId: string | null;
  enabled: boolean;
  timeoutMs: number;
  trustState: TrustState;
  /** The trusted certificate, or null. */
  certificate: CertificateInfo | null;
  /** The certificate last seen (discovery or a refused call), or null. */
  discoveredCertificate: CertificateInfo | null;
  hasAccessToken: boolean;
  lastTest: EnvironmentRecord['lastTest'];
  lastError: EnvironmentRecord['lastError'];
  createdAt: string;
  updatedAt: string;
}

/** What `POST …/discover` answers. */
export interface DiscoverOutcome {
  certificate: CertificateInfo;
  trustState: TrustState;
  /** The certificate is outside its validity period now (trust would refuse it). */
  expired: boolean;
  /** The certificate is valid for the URL's hostname (trust refuses it otherwise). */
  hostnameMatches: boolean;
}

/** What `POST …/test` answers on success. */
export interface TestOutcome {
  ok: true;
  latencyMs: number;
  remote: { version: string; instanceId: string };
  /** Agent transport with several replicas: the replica that held the agent for this test. */
  replicaId?: string | null;
  /**
   * Where the time went up to the response head (docs/protocol.md "Timing"),
   * as in relayed responses' Server-Timing.
   */
  timing: PathTiming;
}

/** Everything a relayed call needs, resolved once the environment passed every check. */
/** The relay inputs of a record (compared on each call) and what prepareRelay derives from them. */
interface RelayDerived {
  url: string;
  sealed: string;
  fingerprint: string;
  der: string;
  origin: string;
  accessToken: string;
  trust: Readonly<TrustMetadata>;
}

export interface RelayTarget {
  environmentId: string;
  /** The environment's normalized URL (origin plus optional base path, no trailing slash). */
  baseUrl: string;
  /** `scheme://host:port`: the only origin the access token may go to. */
  origin: string;
  accessToken: string;
  timeoutMs: number;
  trust: TrustMetadata;
  transport: Transport;
  /** Which transport that is (`agent` adds the hub to the timing). */
  transportKind: EnvironmentTransportKind;
}

/** How an environment's target is reached; implemented next to the hub (src/http/environment-relay.ts). */
export interface EnvironmentTransports {
  /**
   * The transport for an environment. For agent transport it throws
   * AGENT_OFFLINE when the agent has no live session (nothing is sent), and
   * AGENT_NOT_FOUND when the agent no longer exists.
   */
  select(target: { transport: EnvironmentTransportKind; agentId: string | null }): Transport;
  /** The control-plane replica holding an agent, when several replicas share the instance. */
  agentReplica?(agentId: string): string | null;
}

export interface EnvironmentServiceOptions {
  store: Store;
  secrets: SecretsBox;
  /** Whether an agent id names an existing agent (agent transport validation). */
  agentExists(agentId: string): boolean;
  transports: EnvironmentTransports;
  now?: () => number;
}

const FIELDS = ['name', 'url', 'transport', 'agentId', 'accessToken', 'enabled', 'timeoutMs'] as const;
const CERTIFICATE_CODES: ReadonlySet<ErrorCode> = new Set([
  'CERTIFICATE_CHANGED',
  'CERTIFICATE_EXPIRED',
  'CERTIFICATE_HOSTNAME_MISMATCH',
]);

/**
 * The trust state of a record at `now`:
 * UNTRUSTED — no trusted certificate; CHANGED — the last discovered
 * certificate differs from the trusted one, or one did since the last trust
 * (`certificateChangedAt`: seeing the trusted certificate again does not
 * lift it, only trusting again does); EXPIRED — the trusted certificate
 * is past its validTo (or not yet valid); TRUSTED otherwise.
 */
export function deriveTrustState(
  record: Pick<EnvironmentRecord, 'certificate' | 'discoveredCertificate' | 'certificateChangedAt'>,
  now = Date.now(),
): TrustState {
  const trusted = record.certificate;
  if (!trusted) return 'UNTRUSTED';
  if (record.certificateChangedAt) return 'CHANGED';
  const discovered = record.discoveredCertificate;
  if (discovered && discovered.fingerprintSha256 !== trusted.fingerprintSha256) return 'CHANGED';
  if (!isCurrentlyValid(trusted, now)) return 'EXPIRED';
  return 'TRUSTED';
}

/**
 * Validates and normalizes an environment URL: absolute `https://`, no
 * userinfo, query or fragment, no control characters; the host is lower-cased,
 * the default port dropped and trailing slashes removed
 * (`https://Example.com:443/` → `https://example.com`). VALIDATION_FAILED.
 */
export function normalizeEnvironmentUrl(value: unknown): string {
  if (typeof value !== 'string' || value.trim() === '') throw invalid('url', 'must be an https:// URL');
  const text = value.trim();
  if (text.length > MAX_ENVIRONMENT_URL_LENGTH)
    throw invalid('url', `must be at most ${MAX_ENVIRONMENT_URL_LENGTH} characters`);
  // The URL parser silently drops tabs and newlines: refuse them rather than guess.
  // biome-ignore lint/suspicious/noControlCharactersInRegex: refusing them is the point
  if (/[\s\u0000-\u001f\u007f-\u009f]/.test(text))
    throw invalid('url', 'must not contain spaces or control characters');
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw invalid('url', 'must be an absolute https:// URL');
  }
  if (url.protocol === 'http:')
    throw invalid('url', 'http:// is refused: the management API is https:// only');
  if (url.protocol !== 'https:') throw invalid('url', 'must be an https:// URL');
  if (!/^https:\/\//i.test(text)) throw invalid('url', 'must be an absolute https:// URL');
  if (url.username !== '' || url.password !== '' || /^https:\/\/[^/]*@/i.test(text))
    throw invalid('url', 'must not contain a user name or password');
  if (text.includes('?')) throw invalid('url', 'must not contain a query');
  if (text.includes('#')) throw invalid('url', 'must not contain a fragment');
  if (url.hostname === '') throw invalid('url', 'must name a host');
  const pathname = url.pathname.replace(/\/+$/, '');
  return `https://${url.host}${pathname}`;
}

function requireAccessToken(value: unknown): string {
  if (typeof value !== 'string' || value.length === 0)
    throw invalid('accessToken', 'must be a non-empty string');
  if (value.length > MAX_ACCESS_TOKEN_LENGTH)
    throw invalid('accessToken', `must be at most ${MAX_ACCESS_TOKEN_LENGTH} characters`);
  // It travels in an Authorization header: visible ASCII only.
  if (!/^[\x21-\x7e]+$/.test(value)) throw invalid('accessToken', 'must be printable ASCII without spaces');
  return value;
}

function requireTransport(value: unknown): EnvironmentTransportKind {
  if (value !== 'direct' && value !== 'agent') throw invalid('transport', 'must be "direct" or "agent"');
  return value;
}

function publicCertificate(stored: StoredCertificate | null): CertificateInfo | null {
  if (!stored) return null;
  const { der: _der, ...info } = stored;
  return info;
}

function storedCertificate(info: CertificateInfo, der: Uint8Array | undefined): StoredCertificate {
  return {
    fingerprintSha256: info.fingerprintSha256,
    subject: info.subject,
    issuer: info.issuer,
    subjectAltNames: [...info.subjectAltNames],
    validFrom: info.validFrom,
    validTo: info.validTo,
    serialNumber: info.serialNumber,
    der: der ? Buffer.from(der).toString('base64') : '',
  };
}

function isCertificateInfo(value: unknown): value is CertificateInfo {
  const v = value as Partial<CertificateInfo> | null;
  return (
    typeof v === 'object' &&
    v !== null &&
    typeof v.fingerprintSha256 === 'string' &&
    typeof v.validFrom === 'string' &&
    typeof v.validTo === 'string' &&
    Array.isArray(v.subjectAltNames)
  );
}

/**
 * The observed leaf's DER from an error's details (base64 or bytes), kept only
 * when it is the certificate described (so a trust decision reads the real one).
 */
function observedDerOf(value: unknown, observed: unknown): Uint8Array | undefined {
  let der: Uint8Array | undefined;
  if (value instanceof Uint8Array) der = value;
  else if (typeof value === 'string' && value !== '') der = Buffer.from(value, 'base64');
  if (!der || !isCertificateInfo(observed)) return undefined;
  try {
    return new X509Certificate(Buffer.from(der)).fingerprint256 === observed.fingerprintSha256
      ? der
      : undefined;
  } catch {
    return undefined;
  }
}

/** Reads a relayed response body, at most `limit` bytes (more → ENVIRONMENT_UNREACHABLE). */
async function readBody(response: RelayResponse, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of response.body) {
    size += chunk.byteLength;
    if (size > limit) {
      response.cancel();
      throw new AppError('ENVIRONMENT_UNREACHABLE', 'the target answered more than expected');
    }
    chunks.push(Buffer.from(chunk));
  }
  return Buffer.concat(chunks);
}

export class EnvironmentService {
  readonly #store: Store;
  readonly #secrets: SecretsBox;
  readonly #relayMemo = new Map<string, RelayDerived>();
  readonly #agentExists: (agentId: string) => boolean;
  readonly #transports: EnvironmentTransports;
  readonly #now: () => number;

  constructor(options: EnvironmentServiceOptions) {
    this.#store = options.store;
    this.#secrets = options.secrets;
    this.#agentExists = options.agentExists;
    this.#transports = options.transports;
    this.#now = options.now ?? Date.now;
  }

  /** The stored environments (without the virtual Local one), trust states derived now. */
  list(): Environment[] {
    const now = this.#now();
    return this.#store.read().environments.map((record) => this.#toEnvironment(record, now));
  }

  /** One environment; ENVIRONMENT_NOT_FOUND. */
  get(id: string): Environment {
    return this.#toEnvironment(this.#find(id), this.#now());
  }

  /**
   * Registers an environment `{name, url, transport, agentId?, accessToken,
   * enabled? (true), timeoutMs? (10000)}`. It starts UNTRUSTED.
   * VALIDATION_FAILED, CONFLICT (name taken), AGENT_NOT_FOUND.
   */
  async create(body: unknown): Promise<Environment> {
    const input = requireObject(body);
    rejectUnknownFields(input, FIELDS);
    const name = requireName(input.name);
    const url = normalizeEnvironmentUrl(input.url);
    const transport = requireTransport(input.transport);
    const agentId = this.#checkAgent(transport, input.agentId);
    if (input.accessToken === undefined) throw invalid('accessToken', 'is required');
    const accessToken = requireAccessToken(input.accessToken);
    const enabled = optionalBoolean(input.enabled, 'enabled', true);
    const timeoutMs =
      input.timeoutMs === undefined
        ? DEFAULT_ENVIRONMENT_TIMEOUT_MS
        : requireInteger(
            input.timeoutMs,
            'timeoutMs',
            MIN_ENVIRONMENT_TIMEOUT_MS,
            MAX_ENVIRONMENT_TIMEOUT_MS,
          );
    const id = newId();
    const now = new Date(this.#now()).toISOString();
    const record: EnvironmentRecord = {
      id,
      name,
      url,
      transport,
      agentId,
      enabled,
      timeoutMs,
      accessTokenSealed: this.#secrets.seal(ACCESS_TOKEN_PURPOSE, id, accessToken),
      certificate: null,
      discoveredCertificate: null,
      lastTest: null,
      lastError: null,
      createdAt: now,
      updatedAt: now,
    };
    await this.#store.update((db) => {
      assertNameFree(db.environments, name, null);
      db.environments.push(record);
    });
    return this.#toEnvironment(record, this.#now());
  }

  /**
   * Changes any of the create fields. An omitted `accessToken` keeps the
   * stored one; a changed `url` clears both certificates, the last test and
   * the last error (back to UNTRUSTED); switching to `direct` clears `agentId`.
   * Token custody: a change of origin (scheme, host, port), `transport` or
   * `agentId` needs `accessToken` in the same request (VALIDATION_FAILED with
   * `details.field = "accessToken"` otherwise), so a stored token never goes
   * to a place the admin did not name it for, and resets trust to UNTRUSTED
   * (the certificate was seen over another path).
   * VALIDATION_FAILED, CONFLICT, ENVIRONMENT_NOT_FOUND, AGENT_NOT_FOUND.
   */
  async update(id: string, body: unknown): Promise<Environment> {
    const input = requireObject(body);
    rejectUnknownFields(input, FIELDS);
    const current = this.#find(id);
    const name = input.name === undefined ? undefined : requireName(input.name);
    const url = input.url === undefined ? undefined : normalizeEnvironmentUrl(input.url);
    const transport = input.transport === undefined ? current.transport : requireTransport(input.transport);
    let agentId: string | null;
    if (input.agentId !== undefined) agentId = this.#checkAgent(transport, input.agentId);
    else if (transport === 'direct') agentId = null;
    else agentId = this.#checkAgent(transport, current.agentId);
    const accessToken = input.accessToken === undefined ? undefined : requireAccessToken(input.accessToken);
    const enabled = input.enabled === undefined ? undefined : requireBoolean(input.enabled, 'enabled');
    const timeoutMs =
      input.timeoutMs === undefined
        ? undefined
        : requireInteger(
            input.timeoutMs,
            'timeoutMs',
            MIN_ENVIRONMENT_TIMEOUT_MS,
            MAX_ENVIRONMENT_TIMEOUT_MS,
          );
    const sealed =
      accessToken === undefined ? undefined : this.#secrets.seal(ACCESS_TOKEN_PURPOSE, id, accessToken);
    const now = new Date(this.#now()).toISOString();
    const record = await this.#store.update((db) => {
      const live = db.environments.find((e) => e.id === id);
      if (!live) throw new AppError('ENVIRONMENT_NOT_FOUND', 'no such environment');
      if (name !== undefined) assertNameFree(db.environments, name, id);
      if (name !== undefined) live.name = name;
      const moved =
        (url !== undefined && new URL(url).origin !== new URL(live.url).origin) ||
        transport !== live.transport ||
        agentId !== live.agentId;
      if (moved && sealed === undefined) {
        throw invalid(
          'accessToken',
          'is required when the origin, transport or agent changes: the stored token stays with the old one',
        );
      }
      if (moved || (url !== undefined && url !== live.url)) {
        if (url !== undefined) live.url = url;
        live.certificate = null;
        live.discoveredCertificate = null;
        live.certificateChangedAt = null;
        live.lastTest = null;
        live.lastError = null;
      }
      live.transport = transport;
      live.agentId = agentId;
      if (sealed !== undefined) live.accessTokenSealed = sealed;
      if (enabled !== undefined) live.enabled = enabled;
      if (timeoutMs !== undefined) live.timeoutMs = timeoutMs;
      live.updatedAt = now;
      return live;
    });
    return this.#toEnvironment(record, this.#now());
  }

  /** Deletes an environment with its sealed token and certificates. ENVIRONMENT_NOT_FOUND. */
  async remove(id: string): Promise<void> {
    this.#find(id);
    await this.#store.update((db) => {
      db.environments = db.environments.filter((e) => e.id !== id);
    });
  }

  /**
   * TLS handshake with the target through the environment's transport (no
   * HTTP byte, no token); stores the peer certificate as
   * `discoveredCertificate`. Failures are recorded in `lastError` and thrown:
   * AGENT_OFFLINE, AGENT_NOT_FOUND, ENVIRONMENT_UNREACHABLE, ENVIRONMENT_TIMEOUT.
   */
  async discover(id: string, signal?: AbortSignal): Promise<DiscoverOutcome> {
    const record = this.#find(id);
    const origin = new URL(record.url).origin;
    let result: Awaited<ReturnType<Transport['discover']>>;
    try {
      const transport = this.#transports.select(record);
      result = await transport.discover({
        url: origin,
        timeoutMs: record.timeoutMs,
        ...(signal ? { signal } : {}),
      });
    } catch (err) {
      const error = toAppError(err, 'ENVIRONMENT_UNREACHABLE');
      await this.#recordError(id, record.url, error);
      throw error;
    }
    const discovered = storedCertificate(result.certificate, result.chain[0]);
    const updated = await this.#store.update((db) => {
      const live = db.environments.find((e) => e.id === id);
      if (!live) throw new AppError('ENVIRONMENT_NOT_FOUND', 'no such environment');
      // The URL changed while the handshake ran: this certificate belongs to the old one.
      if (live.url !== record.url)
        throw new AppError('CONFLICT', 'the environment URL changed; discover again');
      live.discoveredCertificate = discovered;
      markIfChanged(live, discovered, new Date(this.#now()).toISOString());
      live.lastError = null;
      return live;
    });
    return {
      certificate: publicCertificate(discovered)!,
      trustState: deriveTrustState(updated, this.#now()),
      expired: result.expired,
      hostnameMatches: result.hostnameMatches,
    };
  }

  /**
   * Trusts the last discovered certificate: `{fingerprintSha256}` (any case,
   * colons optional) must equal it. VALIDATION_FAILED (not a fingerprint),
   * CONFLICT (nothing discovered, or another fingerprint), 412
   * CERTIFICATE_EXPIRED (outside its validity period) and
   * CERTIFICATE_HOSTNAME_MISMATCH (not valid for the URL's hostname).
   */
  async trust(id: string, body: unknown): Promise<Environment> {
    const input = requireObject(body);
    rejectUnknownFields(input, ['fingerprintSha256']);
    const fingerprint = normalizeFingerprint(input.fingerprintSha256);
    if (!fingerprint) throw invalid('fingerprintSha256', 'must be a SHA-256 fingerprint (32 hex bytes)');
    const record = this.#find(id);
    const discovered = record.discoveredCertificate;
    if (!discovered || discovered.der === '')
      throw new AppError('CONFLICT', 'discover the certificate first', {
        details: { field: 'fingerprintSha256' },
      });
    if (discovered.fingerprintSha256 !== fingerprint) {
      throw new AppError(
        'CONFLICT',
        'the fingerprint is not the one last discovered; discover again and compare',
        {
          details: { field: 'fingerprintSha256' },
        },
      );
    }
    const now = this.#now();
    if (!isCurrentlyValid(discovered, now)) {
      const notYet = Date.parse(discovered.validFrom) > now;
      throw new AppError(
        'CERTIFICATE_EXPIRED',
        notYet
          ? `the certificate is not valid before ${discovered.validFrom}`
          : `the certificate expired on ${discovered.validTo}`,
      );
    }
    const hostname = new URL(record.url).hostname;
    if (!matchesHostname(new X509Certificate(Buffer.from(discovered.der, 'base64')), hostname)) {
      throw new AppError('CERTIFICATE_HOSTNAME_MISMATCH', `the certificate is not valid for ${hostname}`);
    }
    const updatedAt = new Date(now).toISOString();
    const updated = await this.#store.update((db) => {
      const live = db.environments.find((e) => e.id === id);
      if (!live) throw new AppError('ENVIRONMENT_NOT_FOUND', 'no such environment');
      if (live.discoveredCertificate?.fingerprintSha256 !== fingerprint || live.url !== record.url) {
        throw new AppError('CONFLICT', 'the environment changed meanwhile; discover again');
      }
      live.certificate = { ...live.discoveredCertificate };
      live.certificateChangedAt = null;
      live.lastError = null;
      live.updatedAt = updatedAt;
      return live;
    });
    return this.#toEnvironment(updated, this.#now());
  }

  /**
   * Everything needed to relay a call to the environment, or the reason it is
   * blocked, checked before anything leaves the process (in this order):
   * ENVIRONMENT_NOT_FOUND, ENVIRONMENT_DISABLED, ENVIRONMENT_UNTRUSTED,
   * CERTIFICATE_CHANGED, CERTIFICATE_EXPIRED, then the transport's
   * AGENT_NOT_FOUND / AGENT_OFFLINE.
   */
  prepareRelay(id: string): RelayTarget {
    const record = this.#find(id);
    if (!record.enabled)
      throw new AppError('ENVIRONMENT_DISABLED', `the environment "${record.name}" is disabled`);
    const state = deriveTrustState(record, this.#now());
    switch (state) {
      case 'UNTRUSTED':
        throw new AppError('ENVIRONMENT_UNTRUSTED', 'no certificate is trusted for this environment yet');
      case 'CHANGED':
        throw new AppError(
          'CERTIFICATE_CHANGED',
          'the environment presented another certificate than the trusted one; review it before trusting',
        );
      case 'EXPIRED':
        throw new AppError(
          'CERTIFICATE_EXPIRED',
          'the trusted certificate has expired; discover and trust the new one',
        );
      case 'TRUSTED':
        break;
    }
    const transport = this.#transports.select(record);
    const derived = this.#relayDerived(record);
    return {
      environmentId: record.id,
      baseUrl: record.url,
      origin: derived.origin,
      accessToken: derived.accessToken,
      timeoutMs: record.timeoutMs,
      trust: derived.trust,
      transport,
      transportKind: record.transport,
    };
  }

  /**
   * What a relayed call needs from the record's URL, certificate and sealed
   * token, derived once and reused while those stay the same: opening the
   * token (an AES-GCM decipher), parsing the URL and decoding the DER on
   * every call cost each relayed request 8–12 µs of the control plane's CPU.
   */
  #relayDerived(record: EnvironmentRecord): RelayDerived {
    const certificate = record.certificate!;
    const kept = this.#relayMemo.get(record.id);
    if (
      kept !== undefined &&
      kept.url === record.url &&
      kept.sealed === record.accessTokenSealed &&
      kept.fingerprint === certificate.fingerprintSha256 &&
      kept.der === certificate.der
    )
      return kept;
    const url = new URL(record.url);
    const trust: TrustMetadata = {
      fingerprintSha256: certificate.fingerprintSha256,
      expectedHostname: url.hostname.replace(/^\[|\]$/g, ''),
    };
    if (certificate.der !== '') trust.certificateDer = new Uint8Array(Buffer.from(certificate.der, 'base64'));
    const derived: RelayDerived = {
      url: record.url,
      sealed: record.accessTokenSealed,
      fingerprint: certificate.fingerprintSha256,
      der: certificate.der,
      origin: url.origin,
      accessToken: this.#secrets.open(ACCESS_TOKEN_PURPOSE, record.id, record.accessTokenSealed),
      trust: Object.freeze(trust),
    };
    // Ids of removed environments are dropped with the next change of the set.
    if (this.#relayMemo.size >= this.#store.read().environments.length) {
      const live = new Set(this.#store.read().environments.map((e) => e.id));
      for (const id of this.#relayMemo.keys()) if (!live.has(id)) this.#relayMemo.delete(id);
    }
    this.#relayMemo.set(record.id, derived);
    return derived;
  }

  /**
   * Records what a relayed call to the environment met. A certificate failure
   * (CERTIFICATE_CHANGED/EXPIRED/HOSTNAME_MISMATCH carrying
   * `details.observedCertificate`, and `details.observedCertificateDer` in
   * base64) keeps the observed certificate as
   * `discoveredCertificate`, so the state reads CHANGED at once, and sets
   * `lastError`; other errors are not recorded. Resolves once persisted.
   */
  async recordCallFailure(id: string, err: unknown): Promise<void> {
    const error = toAppError(err);
    if (!CERTIFICATE_CODES.has(error.code)) return;
    const observed = error.details?.observedCertificate;
    const der = observedDerOf(error.details?.observedCertificateDer, observed);
    const at = new Date(this.#now()).toISOString();
    await this.#store.update((db) => {
      const live = db.environments.find((e) => e.id === id);
      if (!live) return;
      if (isCertificateInfo(observed)) {
        live.discoveredCertificate = storedCertificate(observed, der);
        markIfChanged(live, live.discoveredCertificate, at);
      }
      live.lastError = { code: error.code, message: error.message, at };
    });
  }

  /**
   * The connection test: a relayed `GET /api/v1/system/info` with the access
   * token, after the same checks as any relayed call. Records `lastTest` (and
   * `lastError` on failure). Errors: those of {@link prepareRelay}, the
   * transport's, REMOTE_UNAUTHORIZED (the target refused the token),
   * ENVIRONMENT_UNREACHABLE (any other answer than a system-info document).
   */
  async test(id: string): Promise<TestOutcome> {
    const record = this.#find(id);
    const started = performance.now();
    let target: RelayTarget | null = null;
    try {
      target = this.prepareRelay(id);
      const response = await target.transport.request({
        url: `${target.baseUrl}${SYSTEM_INFO_PATH}`,
        method: 'GET',
        headers: [
          ['accept', 'application/json'],
          ['authorization', `Bearer ${target.accessToken}`],
        ],
        timeoutMs: target.timeoutMs,
        trust: target.trust,
      });
      const timing = pathTiming(
        performance.now() - started,
        response.timing,
        target.transportKind === 'agent',
      );
      if (response.status === 401) {
        response.cancel();
        throw new AppError('REMOTE_UNAUTHORIZED', 'the target refused the stored access token');
      }
      const body = await readBody(response, MAX_TEST_BODY_BYTES);
      if (response.status !== 200)
        throw new AppError('ENVIRONMENT_UNREACHABLE', `the target answered HTTP ${response.status}`);
      let info: { version?: unknown; instanceId?: unknown };
      try {
        info = JSON.parse(body.toString('utf8')) as typeof info;
      } catch {
        throw new AppError('ENVIRONMENT_UNREACHABLE', 'the target did not answer like a p2pstream instance');
      }
      if (typeof info?.version !== 'string' || typeof info.instanceId !== 'string')
        throw new AppError('ENVIRONMENT_UNREACHABLE', 'the target did not answer like a p2pstream instance');
      const latencyMs = Math.max(0, Math.round(performance.now() - started));
      await this.#recordTest(id, record.url, { ok: true, latencyMs, error: null });
      const outcome: TestOutcome = {
        ok: true,
        latencyMs,
        remote: { version: info.version, instanceId: info.instanceId },
        timing,
      };
      if (record.transport === 'agent' && record.agentId && this.#transports.agentReplica) {
        outcome.replicaId = this.#transports.agentReplica(record.agentId);
      }
      return outcome;
    } catch (err) {
      const error = toAppError(err, 'ENVIRONMENT_UNREACHABLE');
      if (target !== null) await this.recordCallFailure(id, error);
      await this.#recordTest(id, record.url, {
        ok: false,
        latencyMs: null,
        error: { code: error.code, message: error.message },
      });
      throw error;
    }
  }

  async #recordTest(
    id: string,
    url: string,
    result: { ok: boolean; latencyMs: number | null; error: { code: string; message: string } | null },
  ): Promise<void> {
    const at = new Date(this.#now()).toISOString();
    await this.#store.update((db) => {
      const live = db.environments.find((e) => e.id === id);
      if (!live || live.url !== url) return;
      live.lastTest = { ok: result.ok, at, latencyMs: result.latencyMs, error: result.error };
      // A passing test went through every check: no earlier failure still applies.
      live.lastError = result.error ? { ...result.error, at } : null;
    });
  }

  async #recordError(id: string, url: string, error: AppError): Promise<void> {
    const at = new Date(this.#now()).toISOString();
    await this.#store.update((db) => {
      const live = db.environments.find((e) => e.id === id);
      if (live && live.url === url) live.lastError = { code: error.code, message: error.message, at };
    });
  }

  #checkAgent(transport: EnvironmentTransportKind, value: unknown): string | null {
    if (transport === 'direct') {
      if (value !== undefined && value !== null)
        throw invalid('agentId', 'must be null for direct transport');
      return null;
    }
    if (typeof value !== 'string' || value === '')
      throw invalid('agentId', 'is required for agent transport');
    if (!isId(value) || !this.#agentExists(value)) {
      throw new AppError('AGENT_NOT_FOUND', 'no such agent', { details: { field: 'agentId' } });
    }
    return value;
  }

  #find(id: string): EnvironmentRecord {
    const record = isId(id) ? this.#store.read().environments.find((e) => e.id === id) : undefined;
    if (!record) throw new AppError('ENVIRONMENT_NOT_FOUND', 'no such environment');
    return record;
  }

  #toEnvironment(record: EnvironmentRecord, now: number): Environment {
    return {
      id: record.id,
      name: record.name,
      url: record.url,
      transport: record.transport,
      agentId: record.agentId,
      enabled: record.enabled,
      timeoutMs: record.timeoutMs,
      trustState: deriveTrustState(record, now),
      certificate: publicCertificate(record.certificate),
      discoveredCertificate: publicCertificate(record.discoveredCertificate),
      hasAccessToken: record.accessTokenSealed !== '',
      lastTest: record.lastTest,
      lastError: record.lastError,
      createdAt: record.createdAt,
      updatedAt: record.updatedAt,
    };
  }
}

/** Notes the first sighting of a certificate other than the trusted one (kept until trust). */
function markIfChanged(live: EnvironmentRecord, seen: StoredCertificate, at: string): void {
  if (!live.certificate || live.certificateChangedAt) return;
  if (seen.fingerprintSha256 !== live.certificate.fingerprintSha256) live.certificateChangedAt = at;
}

function assertNameFree(environments: EnvironmentRecord[], name: string, exceptId: string | null): void {
  const key = name.toLowerCase();
  if (
    key === LOCAL_ENVIRONMENT.name.toLowerCase() ||
    environments.some((e) => e.id !== exceptId && e.name.toLowerCase() === key)
  ) {
    throw new AppError('CONFLICT', `an environment named "${name}" already exists`, {
      details: { field: 'name' },
    });
  }
}
