/**
 * The certificate store (docs/tls.md) and its renewals. Sources:
 *
 * - `upload` — `certificatePem` (chain, leaf first) + `privateKeyPem`,
 *   checked (key matches, order, not expired, hosts covered; each failure a
 *   400 naming the field and the reason); replaced with PATCH.
 * - `file` — `certificateFile` + `privateKeyFile`, read at create (same
 *   checks) and again whenever they change (another tool renews them); a
 *   change that does not check out puts the certificate in `error` and the
 *   previous material keeps serving.
 * - `self-signed` — made here for `hosts`, `validDays` (default 90).
 * - `acme` — ordered from the account's directory with the chosen challenge.
 *
 * ACME and self-signed certificates renew when a third of their lifetime
 * remains (or at the directory's suggestion, ACME Renewal Information, when
 * it gives one). A failed order sets `error` with `lastError`, and
 * `nextRenewalAt` names the next attempt: exponential backoff from
 * {@link DEFAULT_RETRY_BASE_MS} to {@link DEFAULT_RETRY_MAX_MS} with ±20 %
 * jitter. Statuses go `pending → issuing → ready → renewing → ready`. State
 * lives in the store, so an order interrupted by a restart is taken up again
 * at start; one certificate never has two orders running at once. Through
 * every failure the last good certificate keeps serving.
 *
 * Replicas sharing the database (docs/cluster.md) serve every certificate
 * any of them stored: `syncExternal` follows the other replicas' writes. An
 * order takes a lease on its certificate in the store first (refreshed while
 * it runs, {@link DEFAULT_ORDER_LEASE_MS}), so only one replica orders a
 * certificate at a time, and publishes its HTTP-01 and TLS-ALPN-01 answers
 * in the store (`acmeChallenges`), so whichever replica the CA reaches
 * answers the validation.
 *
 * Private keys are sealed by the secrets box (file sources keep theirs in
 * their file) and never returned. A certificate that is a listener's
 * default cannot be deleted (409 CONFLICT, `details.usedBy`).
 */
import { promises as fs } from 'node:fs';
import { AppError } from '../errors.js';
import type { Logger } from '../logger.js';
import type {
  AcmeChallengeRecord,
  AcmeChallengeType,
  CertificateRecord,
  CertificateSource,
  Database,
} from '../storage/schema.js';
import type { SecretsBox } from '../storage/secrets-box.js';
import type { Store } from '../storage/store.js';
import { type CertificateMaterial, checkMaterial, MaterialError } from '../tls/certificate-material.js';
import { createCertificate } from '../tls/certificates.js';
import type { AcmeAccountService } from './acme-account-service.js';
import { newId } from './ids.js';
import { requireHostPattern } from './proxy-config-service.js';
import type { AcmeIssuer, ServingCertificate, TlsRuntime } from './tls-types.js';
import { invalid, rejectUnknownFields, requireInteger, requireName, requireObject } from './validate.js';

export const DEFAULT_SELF_SIGNED_DAYS = 90;
export const MAX_HOSTS = 100;
/** First retry of a failed order; doubles per failure up to {@link DEFAULT_RETRY_MAX_MS}. */
export const DEFAULT_RETRY_BASE_MS = 60_000;
export const DEFAULT_RETRY_MAX_MS = 6 * 3600_000;
/** How often due renewals are looked for. */
export const DEFAULT_CHECK_INTERVAL_MS = 60_000;
/** How often `file` certificates are checked for changes. */
export const DEFAULT_FILE_POLL_MS = 5000;
/**
 * How long an order's lease on its certificate lasts without being refreshed
 * (it is refreshed every third of this while the order runs): a replica that
 * died mid-order holds up the others this long at most.
 */
export const DEFAULT_ORDER_LEASE_MS = 5 * 60_000;
/** Challenge answers published by another replica longer ago than this are ignored (it died mid-order). */
const CHALLENGE_TTL_MS = 3600_000;
const ALPN_SEAL_KEY = 'acme-alpn-key';

const SEAL_KEY = 'tls-key';
const SOURCES: readonly CertificateSource[] = ['upload', 'file', 'self-signed', 'acme'];
const CHALLENGES: readonly AcmeChallengeType[] = ['http-01', 'tls-alpn-01', 'dns-01'];

/** A certificate as the API shows it. */
export interface Certificate {
  id: string;
  name: string;
  hosts: string[];
  source: CertificateSource;
  status: CertificateRecord['status'];
  fingerprintSha256: string | null;
  subject: string | null;
  issuer: string | null;
  notBefore: string | null;
  notAfter: string | null;
  lastError: string | null;
  nextRenewalAt: string | null;
  certificateFile: string | null;
  privateKeyFile: string | null;
  validDays: number | null;
  acmeAccountId: string | null;
  challenge: AcmeChallengeType | null;
  dnsProviderId: string | null;
  usedBy: { type: 'listener'; id: string; name: string }[];
  createdAt: string;
  updatedAt: string;
}

export interface CertificateServiceOptions {
  store: Store;
  secrets: SecretsBox;
  accounts: AcmeAccountService;
  runtime?: TlsRuntime;
  issuer?: AcmeIssuer;
  logger?: Logger;
  now?: () => number;
  random?: () => number;
  retryBaseMs?: number;
  retryMaxMs?: number;
  checkIntervalMs?: number;
  filePollMs?: number;
  /** This replica's id (order leases and published challenges); default `local`. */
  replicaId?: string;
  orderLeaseMs?: number;
}

/** The fields that belong to one source or another: the material, or where it comes from. */
const SOURCE_FIELDS = [
  'certificatePem',
  'privateKeyPem',
  'certificateFile',
  'privateKeyFile',
  'validDays',
  'acmeAccountId',
  'challenge',
  'dnsProviderId',
];
const FIELDS = ['name', 'hosts', 'source', ...SOURCE_FIELDS];
const READ_ONLY = [
  'id',
  'status',
  'fingerprintSha256',
  'subject',
  'issuer',
  'notBefore',
  'notAfter',
  'lastError',
  'nextRenewalAt',
  'usedBy',
  'createdAt',
  'updatedAt',
];

interface Live {
  certificatePem: string;
  privateKeyPem: string;
  fingerprintSha256: string;
}

export class CertificateService {
  readonly #store: Store;
  readonly #secrets: SecretsBox;
  readonly #accounts: AcmeAccountService;
  readonly #runtime: TlsRuntime | undefined;
  readonly #issuer: AcmeIssuer | undefined;
  readonly #logger: Logger | undefined;
  readonly #now: () => number;
  readonly #random: () => number;
  readonly #retryBaseMs: number;
  readonly #retryMaxMs: number;
  readonly #checkIntervalMs: number;
  readonly #filePollMs: number;
  readonly #replicaId: string;
  readonly #orderLeaseMs: number;
  /** Challenge answers of other replicas applied to this data plane, by record id. */
  readonly #remoteChallenges = new Map<string, AcmeChallengeRecord>();
  /** The material each certificate serves now (the last good one). */
  readonly #live = new Map<string, Live>();
  /** Orders running, per certificate: never two at once. */
  readonly #orders = new Map<string, Promise<void>>();
  /** Last seen (mtime, size) of file sources. */
  readonly #fileStamps = new Map<string, string>();
  #checkTimer: ReturnType<typeof setInterval> | null = null;
  #fileTimer: ReturnType<typeof setInterval> | null = null;
  #closed = false;

  constructor(options: CertificateServiceOptions) {
    this.#store = options.store;
    this.#secrets = options.secrets;
    this.#accounts = options.accounts;
    this.#runtime = options.runtime;
    this.#issuer = options.issuer;
    this.#logger = options.logger;
    this.#now = options.now ?? Date.now;
    this.#random = options.random ?? Math.random;
    this.#retryBaseMs = options.retryBaseMs ?? DEFAULT_RETRY_BASE_MS;
    this.#retryMaxMs = options.retryMaxMs ?? DEFAULT_RETRY_MAX_MS;
    this.#checkIntervalMs = options.checkIntervalMs ?? DEFAULT_CHECK_INTERVAL_MS;
    this.#filePollMs = options.filePollMs ?? DEFAULT_FILE_POLL_MS;
    this.#replicaId = options.replicaId ?? 'local';
    this.#orderLeaseMs = options.orderLeaseMs ?? DEFAULT_ORDER_LEASE_MS;
  }

  /**
   * Loads every stored certificate into the data plane, takes up orders a
   * restart interrupted, and starts the renewal and file-change checks.
   */
  async start(): Promise<void> {
    for (const record of this.#records()) {
      try {
        if (record.source === 'file') await this.#loadFile(record, false);
        else this.#serveStored(record);
      } catch (err) {
        this.#notLoaded(record, err);
      }
    }
    this.#publish();
    // Answers this replica published before it stopped mid-order are stale.
    if (this.#store.read().acmeChallenges.some((c) => c.replicaId === this.#replicaId)) {
      await this.#store.update((db) => {
        db.acmeChallenges = db.acmeChallenges.filter((c) => c.replicaId !== this.#replicaId);
      });
    }
    this.#applyChallenges();
    this.#checkTimer = setInterval(() => this.checkRenewals(), this.#checkIntervalMs);
    this.#checkTimer.unref();
    this.#fileTimer = setInterval(() => void this.#pollFiles(), this.#filePollMs);
    this.#fileTimer.unref();
    this.checkRenewals();
  }

  /** Stops the timers and waits for running orders. */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#checkTimer) clearInterval(this.#checkTimer);
    if (this.#fileTimer) clearInterval(this.#fileTimer);
    await Promise.allSettled([...this.#orders.values()]);
  }

  list(): Certificate[] {
    const db = this.#store.read();
    return this.#records().map((r) => this.#toCertificate(r, db));
  }

  get(id: string): Certificate {
    return this.#toCertificate(this.#find(id), this.#store.read());
  }

  /** Creates a certificate; upload, file and self-signed are ready at once, acme starts its order. */
  async create(body: unknown): Promise<Certificate> {
    const input = requireObject(body);
    rejectUnknownFields(input, [...FIELDS, ...READ_ONLY]);
    const at = new Date(this.#now()).toISOString();
    const source = requireSource(input.source);
    const record: CertificateRecord = {
      id: newId(),
      name: requireName(input.name),
      hosts: [],
      source,
      status: 'pending',
      certificatePem: null,
      privateKeySealed: null,
      certificateFile: null,
      privateKeyFile: null,
      validDays: null,
      acmeAccountId: null,
      challenge: null,
      dnsProviderId: null,
      fingerprintSha256: null,
      subject: null,
      issuer: null,
      notBefore: null,
      notAfter: null,
      lastError: null,
      nextRenewalAt: null,
      failures: 0,
      createdAt: at,
      updatedAt: at,
    };
    const live = await this.#prepare(record, input, true);
    this.#assertNameFree(record);
    await this.#store.update((db) => {
      if (db.tls.certificates.some((c) => c.name === record.name && c.id !== record.id))
        throw nameTaken(record.name);
      db.tls.certificates.push(record);
    });
    if (live) this.#live.set(record.id, live);
    this.#publish();
    if (record.source === 'acme') this.#startOrder(record.id);
    return this.get(record.id);
  }

  /**
   * Changes a certificate: `name`; `hosts`; the material of its source
   * (upload: both PEMs; file: both paths; self-signed: `validDays`, made
   * again; acme: account, challenge, provider — a new order starts). The
   * source itself cannot change.
   */
  async update(id: string, body: unknown): Promise<Certificate> {
    const input = requireObject(body);
    rejectUnknownFields(input, [...FIELDS, ...READ_ONLY]);
    const current = this.#find(id);
    if (input.source !== undefined && input.source !== current.source)
      throw invalid('source', 'cannot change; create another certificate');
    const next: CertificateRecord = { ...current, hosts: [...current.hosts] };
    if (input.name !== undefined) next.name = requireName(input.name);
    const merged: Record<string, unknown> = { ...input };
    if (merged.hosts === undefined) merged.hosts = current.hosts;
    const materialChanged = Object.keys(input).some(
      (k) => k !== 'name' && FIELDS.includes(k) && k !== 'source',
    );
    let live: Live | null = null;
    if (materialChanged) {
      if (
        current.source === 'upload' &&
        (input.certificatePem === undefined || input.privateKeyPem === undefined)
      )
        throw invalid(
          input.certificatePem === undefined ? 'certificatePem' : 'privateKeyPem',
          'is required to replace an uploaded certificate',
        );
      if (current.source === 'file') {
        merged.certificateFile ??= current.certificateFile;
        merged.privateKeyFile ??= current.privateKeyFile;
      }
      if (current.source === 'self-signed') merged.validDays ??= current.validDays;
      if (current.source === 'acme') {
        merged.acmeAccountId ??= current.acmeAccountId;
        merged.challenge ??= current.challenge;
        if (merged.dnsProviderId === undefined) merged.dnsProviderId = current.dnsProviderId;
      }
      live = await this.#prepare(next, merged, false);
    }
    next.updatedAt = new Date(this.#now()).toISOString();
    this.#assertNameFree(next);
    await this.#store.update((db) => {
      const index = db.tls.certificates.findIndex((c) => c.id === id);
      if (index < 0) throw new AppError('NOT_FOUND', 'no such certificate');
      next.orderLease = db.tls.certificates[index]!.orderLease ?? null;
      db.tls.certificates[index] = next;
    });
    if (live) this.#live.set(id, live);
    this.#publish();
    if (materialChanged && next.source === 'acme') this.#startOrder(id);
    return this.get(id);
  }

  /** Deletes a certificate no listener uses as its default (409 CONFLICT with `details.usedBy`). */
  async remove(id: string): Promise<void> {
    this.#find(id);
    await this.#store.update((db) => {
      const usedBy = usersOf(db, id);
      if (usedBy.length > 0)
        throw new AppError('CONFLICT', `the certificate is the default of listener "${usedBy[0]!.name}"`, {
          details: { usedBy },
        });
      db.tls.certificates = db.tls.certificates.filter((c) => c.id !== id);
    });
    this.#live.delete(id);
    this.#fileStamps.delete(id);
    this.#publish();
  }

  /**
   * Issues again now (acme: a new order, answered at once with status
   * `renewing`/`issuing`; self-signed: made again; file: read again).
   * Upload certificates are replaced with PATCH (400).
   */
  async renew(id: string): Promise<Certificate> {
    const record = this.#find(id);
    switch (record.source) {
      case 'upload':
        throw invalid('source', 'an uploaded certificate is renewed by uploading a new one (PATCH)');
      case 'file':
        await this.#loadFile(record, true);
        break;
      case 'self-signed':
        this.#startOrder(id);
        await this.#orders.get(id);
        break;
      case 'acme':
        this.#startOrder(id);
        break;
    }
    return this.get(id);
  }

  /** Resolves when no order is running (tests, shutdown). */
  async settled(): Promise<void> {
    while (this.#orders.size > 0) await Promise.allSettled([...this.#orders.values()]);
  }

  /** Starts the orders that are due: new, failed (after their backoff), or at their renewal time. */
  checkRenewals(): void {
    if (this.#closed) return;
    const now = this.#now();
    for (const record of this.#records()) {
      if (record.source !== 'acme' && record.source !== 'self-signed') continue;
      if (this.#orders.has(record.id)) continue;
      if (isDue(record, now)) this.#startOrder(record.id, false);
    }
  }

  /** Serves the certificate stored in `record`, its key opened (nothing when it has none yet). */
  #serveStored(record: CertificateRecord): void {
    if (record.certificatePem === null || record.privateKeySealed === null) return;
    this.#live.set(record.id, {
      certificatePem: record.certificatePem,
      privateKeyPem: this.#secrets.open(SEAL_KEY, record.id, record.privateKeySealed),
      fingerprintSha256: record.fingerprintSha256 ?? '',
    });
  }

  /** A certificate that cannot be loaded is logged and left out; the others are served. */
  #notLoaded(record: CertificateRecord, err: unknown): void {
    this.#logger?.warn({ certificateId: record.id, err }, `certificate "${record.name}" could not be loaded`);
  }

  /**
   * Follows what other replicas wrote (`tls`, `acmeChallenges`): serves the
   * certificates they stored, issued or renewed, drops deleted ones, and
   * answers the challenges of their orders. File sources are read from this
   * replica's own disk.
   */
  async syncExternal(): Promise<void> {
    const present = new Set<string>();
    for (const record of this.#records()) {
      present.add(record.id);
      // An order running here serves its result before writing it.
      if (this.#orders.has(record.id)) continue;
      const live = this.#live.get(record.id);
      if (record.source === 'file') {
        if (!live || live.fingerprintSha256 !== record.fingerprintSha256) await this.#readFileQuietly(record);
        continue;
      }
      if (record.certificatePem === null || record.privateKeySealed === null) continue;
      if (live && live.fingerprintSha256 === record.fingerprintSha256) continue;
      try {
        this.#serveStored(record);
      } catch (err) {
        this.#notLoaded(record, err);
      }
    }
    for (const id of [...this.#live.keys()]) {
      if (present.has(id)) continue;
      this.#live.delete(id);
      this.#fileStamps.delete(id);
    }
    this.#publish();
    this.#applyChallenges();
  }

  // --- internals ---------------------------------------------------------------

  #records(): readonly CertificateRecord[] {
    return this.#store.read().tls.certificates;
  }

  #find(id: string): Readonly<CertificateRecord> {
    const record = this.#records().find((c) => c.id === id);
    if (!record) throw new AppError('NOT_FOUND', 'no such certificate');
    return record;
  }

  #assertNameFree(record: CertificateRecord): void {
    if (this.#records().some((c) => c.name === record.name && c.id !== record.id))
      throw nameTaken(record.name);
  }

  /**
   * Validates the source's fields into `record` (hosts, material fields,
   * status); returns the material to serve now, or null (acme: ordered later).
   */
  async #prepare(
    record: CertificateRecord,
    input: Record<string, unknown>,
    creating: boolean,
  ): Promise<Live | null> {
    const hostsGiven = input.hosts !== undefined;
    if (hostsGiven) record.hosts = requireHosts(input.hosts);
    const now = this.#now();
    switch (record.source) {
      case 'upload': {
        onlyFields(input, ['certificatePem', 'privateKeyPem']);
        const material = checked(() =>
          checkMaterial(
            { certificatePem: input.certificatePem, privateKeyPem: input.privateKeyPem, hosts: record.hosts },
            { now },
          ),
        );
        if (!hostsGiven && creating) record.hosts = hostsFromMaterial(material);
        this.#applyMaterial(record, material, null);
        record.privateKeySealed = this.#secrets.seal(SEAL_KEY, record.id, material.privateKeyPem);
        return liveOf(material);
      }
      case 'file': {
        onlyFields(input, ['certificateFile', 'privateKeyFile']);
        record.certificateFile = requirePath(input.certificateFile, 'certificateFile');
        record.privateKeyFile = requirePath(input.privateKeyFile, 'privateKeyFile');
        const files = await this.#readFiles(record);
        const fields = { now, certificateField: 'certificateFile', keyField: 'privateKeyFile' };
        let material = checked(() => checkMaterial({ ...files, hosts: record.hosts }, fields));
        if (!hostsGiven && creating) {
          record.hosts = hostsFromMaterial(material);
          material = checked(() => checkMaterial({ ...files, hosts: record.hosts }, fields));
        }
        this.#applyMaterial(record, material, null);
        this.#fileStamps.set(record.id, await stampOf(record));
        return liveOf(material);
      }
      case 'self-signed': {
        onlyFields(input, ['validDays']);
        if (record.hosts.length === 0) throw invalid('hosts', 'is required');
        record.validDays =
          input.validDays === undefined || input.validDays === null
            ? DEFAULT_SELF_SIGNED_DAYS
            : requireInteger(input.validDays, 'validDays', 1, 3650);
        return this.#selfSign(record);
      }
      case 'acme': {
        onlyFields(input, ['acmeAccountId', 'challenge', 'dnsProviderId']);
        if (record.hosts.length === 0) throw invalid('hosts', 'is required');
        if (typeof input.acmeAccountId !== 'string' || !this.#accounts.hasAccount(input.acmeAccountId))
          throw invalid('acmeAccountId', 'no such ACME account');
        record.acmeAccountId = input.acmeAccountId;
        if (!CHALLENGES.includes(input.challenge as AcmeChallengeType))
          throw invalid('challenge', 'must be http-01, tls-alpn-01 or dns-01');
        record.challenge = input.challenge as AcmeChallengeType;
        if (record.challenge === 'dns-01') {
          if (typeof input.dnsProviderId !== 'string' || !this.#accounts.hasProvider(input.dnsProviderId))
            throw invalid('dnsProviderId', 'no such DNS provider (dns-01 needs one)');
          record.dnsProviderId = input.dnsProviderId;
        } else {
          if (input.dnsProviderId !== undefined && input.dnsProviderId !== null)
            throw invalid('dnsProviderId', 'applies to the dns-01 challenge only');
          record.dnsProviderId = null;
          const wildcard = record.hosts.find((h) => h.startsWith('*.'));
          if (wildcard) throw invalid('hosts', `${wildcard}: wildcard names need the dns-01 challenge`);
        }
        record.status = record.certificatePem === null ? 'pending' : 'renewing';
        record.lastError = null;
        record.failures = 0;
        return null;
      }
    }
  }

  async #selfSign(record: CertificateRecord): Promise<Live> {
    const days = record.validDays ?? DEFAULT_SELF_SIGNED_DAYS;
    const notBefore = new Date(this.#now() - 60_000);
    const made = await createCertificate({
      commonName: record.hosts[0] ?? 'p2pstream',
      altNames: [...record.hosts],
      notBefore,
      notAfter: new Date(notBefore.getTime() + days * 86_400_000),
    });
    const material = checkMaterial(
      { certificatePem: made.cert, privateKeyPem: made.key, hosts: [] },
      { now: this.#now() },
    );
    this.#applyMaterial(record, material, null);
    record.privateKeySealed = this.#secrets.seal(SEAL_KEY, record.id, material.privateKeyPem);
    return liveOf(material);
  }

  /** Fills the descriptive fields, status `ready` and the renewal time (acme and self-signed). */
  #applyMaterial(record: CertificateRecord, material: CertificateMaterial, suggested: Date | null): void {
    record.certificatePem = record.source === 'file' ? null : material.certificatePem;
    record.fingerprintSha256 = material.fingerprintSha256;
    record.subject = material.subject;
    record.issuer = material.issuer;
    record.notBefore = material.notBefore;
    record.notAfter = material.notAfter;
    record.status = 'ready';
    record.lastError = null;
    record.failures = 0;
    if (record.source === 'acme' || record.source === 'self-signed') {
      const start = Date.parse(material.notBefore);
      const end = Date.parse(material.notAfter);
      const at = suggested ? suggested.getTime() : start + ((end - start) * 2) / 3;
      record.nextRenewalAt = new Date(at).toISOString();
    } else record.nextRenewalAt = null;
  }

  /**
   * Starts an order unless one runs here or on another replica. `forced`
   * (create, change, renew) orders whatever the schedule says; otherwise the
   * order starts only if the certificate is still due once its lease is
   * taken (another replica may have renewed it meanwhile).
   */
  #startOrder(id: string, forced = true): void {
    if (this.#orders.has(id) || this.#closed) return;
    if (this.#leasedElsewhere(this.#records().find((c) => c.id === id))) return;
    const run = this.#runOrder(id, forced).finally(() => this.#orders.delete(id));
    this.#orders.set(id, run);
  }

  /** Whether another replica holds a live order lease on the certificate. */
  #leasedElsewhere(record: Readonly<CertificateRecord> | undefined): boolean {
    const lease = record?.orderLease;
    return (
      lease !== undefined &&
      lease !== null &&
      lease.replicaId !== this.#replicaId &&
      Date.parse(lease.until) > this.#now()
    );
  }

  /** One issuance (acme) or regeneration (self-signed); failures become status `error`. */
  async #runOrder(id: string, forced: boolean): Promise<void> {
    const start = this.#records().find((c) => c.id === id);
    if (!start) return;
    // The lease, taken in one store transaction: no other replica is ordering this certificate.
    const claimed = await this.#store.update((db) => {
      const r = db.tls.certificates.find((c) => c.id === id);
      const now = this.#now();
      if (!r || this.#leasedElsewhere(r) || (!forced && !isDue(r, now))) return false;
      r.orderLease = { replicaId: this.#replicaId, until: new Date(now + this.#orderLeaseMs).toISOString() };
      if (r.source === 'acme') {
        r.status = r.certificatePem === null ? 'issuing' : 'renewing';
        r.updatedAt = new Date(now).toISOString();
      }
      return true;
    });
    if (!claimed) return;
    const refresh = setInterval(() => {
      void this.#store
        .update((db) => {
          const r = db.tls.certificates.find((c) => c.id === id);
          if (r?.orderLease?.replicaId === this.#replicaId)
            r.orderLease = {
              replicaId: this.#replicaId,
              until: new Date(this.#now() + this.#orderLeaseMs).toISOString(),
            };
        })
        .catch(() => {});
    }, this.#orderLeaseMs / 3);
    refresh.unref();
    try {
      await this.#order(id, start.name);
    } finally {
      clearInterval(refresh);
    }
  }

  async #order(id: string, name: string): Promise<void> {
    try {
      const record = { ...this.#find(id), hosts: [...this.#find(id).hosts] };
      let live: Live;
      if (record.source === 'self-signed') live = await this.#selfSign(record);
      else {
        if (!this.#issuer) throw new Error('ACME is not available in this process');
        const account = this.#accounts.accountSecrets(record.acmeAccountId ?? '');
        const result = await this.#issuer.issue(
          {
            certificateId: id,
            hosts: record.hosts,
            challenge: record.challenge ?? 'http-01',
            account,
            dnsProvider: record.dnsProviderId ? this.#accounts.providerSecrets(record.dnsProviderId) : null,
          },
          this.#challengeRuntime(id),
        );
        const material = checkMaterial({ ...result, hosts: record.hosts }, { now: this.#now() });
        let suggested: Date | null = null;
        if (this.#issuer.suggestedRenewal) {
          suggested = await this.#issuer.suggestedRenewal(account, material.certificatePem).catch(() => null);
        }
        this.#applyMaterial(record, material, suggested);
        record.privateKeySealed = this.#secrets.seal(SEAL_KEY, id, material.privateKeyPem);
        live = liveOf(material);
      }
      // Serve first, then record: whoever sees `ready` gets the new certificate on the next handshake.
      this.#live.set(id, live);
      this.#publish();
      const saved = await this.#patch(id, (r) => {
        Object.assign(r, {
          certificatePem: record.certificatePem,
          privateKeySealed: record.privateKeySealed,
          fingerprintSha256: record.fingerprintSha256,
          subject: record.subject,
          issuer: record.issuer,
          notBefore: record.notBefore,
          notAfter: record.notAfter,
          status: 'ready',
          lastError: null,
          failures: 0,
          nextRenewalAt: record.nextRenewalAt,
          orderLease: null,
        });
      });
      if (!saved) {
        this.#live.delete(id);
        this.#publish();
      } else {
        this.#logger?.info(
          { certificateId: id },
          `certificate "${record.name}" issued, valid until ${record.notAfter}`,
        );
      }
    } catch (err) {
      const message = err instanceof MaterialError || err instanceof Error ? err.message : String(err);
      await this.#patch(id, (r) => {
        r.failures += 1;
        r.status = 'error';
        r.lastError = message;
        const backoff = Math.min(this.#retryMaxMs, this.#retryBaseMs * 2 ** (r.failures - 1));
        const jittered = backoff * (0.8 + this.#random() * 0.4);
        r.nextRenewalAt = new Date(this.#now() + jittered).toISOString();
        r.orderLease = null;
      });
      this.#logger?.warn({ certificateId: id, err }, `certificate "${name}": ${message}`);
    }
  }

  /**
   * The runtime an order publishes its challenges through: this data plane
   * at once, and the store for the other replicas (resolved once written, so
   * the CA is asked to validate only after every replica can answer).
   */
  #challengeRuntime(certificateId: string): TlsRuntime {
    const local = this.#runtime ?? NO_RUNTIME;
    return {
      setCertificates: (certificates) => local.setCertificates(certificates),
      setHttp01Challenge: async (token, keyAuthorization) => {
        local.setHttp01Challenge(token, keyAuthorization);
        await this.#shareChallenge(certificateId, 'http-01', token, (record) => {
          if (keyAuthorization === null) return false;
          record.keyAuthorization = keyAuthorization;
          return true;
        });
      },
      setTlsAlpn01Challenge: async (host, pair) => {
        local.setTlsAlpn01Challenge(host, pair);
        await this.#shareChallenge(certificateId, 'tls-alpn-01', host, (record) => {
          if (pair === null) return false;
          record.certificatePem = pair.cert;
          record.privateKeySealed = this.#secrets.seal(ALPN_SEAL_KEY, record.id, pair.key);
          return true;
        });
      },
    };
  }

  /** Replaces this replica's published answer for (`type`, `name`); `fill` returns false to withdraw it. */
  async #shareChallenge(
    certificateId: string,
    type: AcmeChallengeRecord['type'],
    name: string,
    fill: (record: AcmeChallengeRecord) => boolean,
  ): Promise<void> {
    const record: AcmeChallengeRecord = {
      id: newId(),
      replicaId: this.#replicaId,
      certificateId,
      type,
      name,
      keyAuthorization: null,
      certificatePem: null,
      privateKeySealed: null,
      createdAt: new Date(this.#now()).toISOString(),
    };
    const publish = fill(record);
    await this.#store.update((db) => {
      db.acmeChallenges = db.acmeChallenges.filter(
        (c) => !(c.replicaId === this.#replicaId && c.type === type && c.name === name),
      );
      if (publish) db.acmeChallenges.push(record);
    });
  }

  /** Answers the challenges other replicas published (and withdraws those they took back). */
  #applyChallenges(): void {
    if (!this.#runtime) return;
    const now = this.#now();
    const wanted = new Map<string, AcmeChallengeRecord>();
    for (const c of this.#store.read().acmeChallenges) {
      if (c.replicaId !== this.#replicaId && now - Date.parse(c.createdAt) < CHALLENGE_TTL_MS)
        wanted.set(c.id, c);
    }
    for (const [id, c] of this.#remoteChallenges) {
      if (wanted.has(id)) continue;
      this.#remoteChallenges.delete(id);
      if (c.type === 'http-01') this.#runtime.setHttp01Challenge(c.name, null);
      else this.#runtime.setTlsAlpn01Challenge(c.name, null);
    }
    for (const [id, c] of wanted) {
      if (this.#remoteChallenges.has(id)) continue;
      try {
        if (c.type === 'http-01') this.#runtime.setHttp01Challenge(c.name, c.keyAuthorization);
        else if (c.certificatePem !== null && c.privateKeySealed !== null)
          this.#runtime.setTlsAlpn01Challenge(c.name, {
            cert: c.certificatePem,
            key: this.#secrets.open(ALPN_SEAL_KEY, c.id, c.privateKeySealed),
          });
        this.#remoteChallenges.set(id, c);
      } catch (err) {
        this.#logger?.warn({ certificateId: c.certificateId, err }, 'a challenge answer could not be opened');
      }
    }
  }

  /** Applies `mutate` to the stored record (if it still exists); returns whether it did. */
  async #patch(id: string, mutate: (record: CertificateRecord) => void): Promise<boolean> {
    return this.#store.update((db) => {
      const record = db.tls.certificates.find((c) => c.id === id);
      if (!record) return false;
      mutate(record);
      record.updatedAt = new Date(this.#now()).toISOString();
      return true;
    });
  }

  async #readFiles(
    record: Pick<CertificateRecord, 'certificateFile' | 'privateKeyFile'>,
  ): Promise<{ certificatePem: string; privateKeyPem: string }> {
    const read = async (file: string | null, field: string) => {
      try {
        return await fs.readFile(file ?? '', 'utf8');
      } catch (err) {
        throw invalid(field, `cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'}): ${file}`);
      }
    };
    return {
      certificatePem: await read(record.certificateFile, 'certificateFile'),
      privateKeyPem: await read(record.privateKeyFile, 'privateKeyFile'),
    };
  }

  /** Reads a file certificate again; a failure is `error` with the previous material still served. */
  async #loadFile(record: Readonly<CertificateRecord>, report: boolean): Promise<void> {
    let material: CertificateMaterial;
    try {
      const files = await this.#readFiles(record);
      material = checkMaterial(
        { ...files, hosts: record.hosts },
        { now: this.#now(), certificateField: 'certificateFile', keyField: 'privateKeyFile' },
      );
      this.#fileStamps.set(record.id, await stampOf(record));
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      await this.#patch(record.id, (r) => {
        r.status = 'error';
        r.lastError = message;
      });
      if (report) throw err instanceof AppError ? err : new AppError('VALIDATION_FAILED', message);
      return;
    }
    const changed = this.#live.get(record.id)?.fingerprintSha256 !== material.fingerprintSha256;
    this.#live.set(record.id, liveOf(material));
    if (changed) this.#publish();
    await this.#patch(record.id, (r) => this.#applyMaterial(r, material, null));
  }

  /** Reads a file certificate another replica stored or changed; only this replica's serving changes. */
  async #readFileQuietly(record: Readonly<CertificateRecord>): Promise<void> {
    try {
      const files = await this.#readFiles(record);
      const material = checkMaterial(
        { ...files, hosts: record.hosts },
        { now: this.#now(), certificateField: 'certificateFile', keyField: 'privateKeyFile' },
      );
      this.#fileStamps.set(record.id, await stampOf(record));
      this.#live.set(record.id, liveOf(material));
    } catch (err) {
      this.#logger?.warn(
        { certificateId: record.id, err },
        `certificate "${record.name}" could not be read on this replica`,
      );
    }
  }

  async #pollFiles(): Promise<void> {
    for (const record of this.#records()) {
      if (record.source !== 'file' || this.#closed) continue;
      const stamp = await stampOf(record).catch(() => 'missing');
      if (stamp === this.#fileStamps.get(record.id)) continue;
      this.#fileStamps.set(record.id, stamp);
      await this.#loadFile(record, false).catch(() => {});
    }
  }

  /** Pushes the serving set to the data plane: newest certificate first (it wins a shared host). */
  #publish(): void {
    if (!this.#runtime) return;
    const serving: ServingCertificate[] = [];
    const records = [...this.#records()].sort((a, b) =>
      a.createdAt < b.createdAt ? 1 : a.createdAt > b.createdAt ? -1 : 0,
    );
    for (const record of records) {
      const live = this.#live.get(record.id);
      if (!live) continue;
      serving.push({ id: record.id, hosts: record.hosts, ...live });
    }
    this.#runtime.setCertificates(serving);
  }

  #toCertificate(record: Readonly<CertificateRecord>, db: Readonly<Database>): Certificate {
    return {
      id: record.id,
      name: record.name,
      hosts: [...record.hosts],
      source: record.source,
      status: record.status,
      fingerprintSha256: record.fingerprintSha256,
      subject: record.subject,
      issuer: record.issuer,
      notBefore: record.notBefore,
      notAfter: record.notAfter,
      lastError: record.lastError,
      nextRenewalAt: record.nextRenewalAt,
      certificateFile: record.certificateFile,
      privateKeyFile: record.privateKeyFile,
      validDays: record.validDays,
      acmeAccountId: record.acmeAccountId,
      challenge: record.challenge,
      dnsProviderId: record.dnsProviderId,
      usedBy: usersOf(db, record.id),
      createdAt: record.createdAt,
      updatedAt: record.updatedAt,
    };
  }
}

/** New, interrupted (after a restart), failed past its backoff, or at its renewal time. */
function isDue(record: Readonly<CertificateRecord>, now: number): boolean {
  return (
    record.status === 'pending' ||
    record.status === 'issuing' ||
    record.status === 'renewing' ||
    (record.nextRenewalAt !== null && Date.parse(record.nextRenewalAt) <= now)
  );
}

const NO_RUNTIME: TlsRuntime = {
  setCertificates: () => {},
  setHttp01Challenge: () => {},
  setTlsAlpn01Challenge: () => {},
};

function usersOf(db: Readonly<Database>, id: string): Certificate['usedBy'] {
  return db.proxy.listeners
    .filter((l) => l.defaultCertificateId === id)
    .map((l) => ({ type: 'listener' as const, id: l.id, name: l.name }));
}

function nameTaken(name: string): AppError {
  return new AppError('CONFLICT', `a certificate named "${name}" already exists`, {
    details: { field: 'name' },
  });
}

function requireSource(value: unknown): CertificateSource {
  if (!SOURCES.includes(value as CertificateSource))
    throw invalid('source', 'must be upload, file, self-signed or acme');
  return value as CertificateSource;
}

/** 1–100 host names or `*.suffix`, lower-cased, without duplicates; the failing entry is named. */
export function requireHosts(value: unknown): string[] {
  if (!Array.isArray(value) || value.length === 0)
    throw invalid('hosts', 'must be a non-empty list of host names');
  if (value.length > MAX_HOSTS) throw invalid('hosts', `must hold at most ${MAX_HOSTS} names`);
  const hosts: string[] = [];
  value.forEach((entry, index) => {
    let host: string | null;
    try {
      host = typeof entry === 'string' ? requireHostPattern(entry) : null;
    } catch {
      host = null;
    }
    if (host === null || host.includes('_'))
      throw invalid(`hosts[${index}]`, `${JSON.stringify(entry)} is not a host name or *.suffix`);
    if (!hosts.includes(host)) hosts.push(host);
  });
  return hosts;
}

/** Refuses fields of other sources (e.g. `privateKeyPem` on an acme certificate). */
function onlyFields(input: Record<string, unknown>, allowed: readonly string[]): void {
  for (const key of SOURCE_FIELDS) {
    if (input[key] !== undefined && input[key] !== null && !allowed.includes(key))
      throw invalid(key, `does not apply to source ${String(input.source ?? 'of this certificate')}`);
  }
}

function requirePath(value: unknown, field: string): string {
  if (typeof value !== 'string' || value.trim() === '' || !value.trim().startsWith('/'))
    throw invalid(field, 'must be an absolute file path');
  return value.trim();
}

function checked<T>(run: () => T): T {
  try {
    return run();
  } catch (err) {
    if (err instanceof MaterialError) throw invalid(err.field, err.message.slice(err.field.length + 2));
    throw err;
  }
}

function hostsFromMaterial(material: CertificateMaterial): string[] {
  if (material.dnsNames.length === 0)
    throw invalid('hosts', 'is required: the certificate names no DNS host');
  return material.dnsNames.slice(0, MAX_HOSTS);
}

function liveOf(material: CertificateMaterial): Live {
  return {
    certificatePem: material.certificatePem,
    privateKeyPem: material.privateKeyPem,
    fingerprintSha256: material.fingerprintSha256,
  };
}

async function stampOf(
  record: Pick<CertificateRecord, 'certificateFile' | 'privateKeyFile'>,
): Promise<string> {
  const [a, b] = await Promise.all([
    fs.stat(record.certificateFile ?? ''),
    fs.stat(record.privateKeyFile ?? ''),
  ]);
  return `${a.mtimeMs}:${a.size}:${b.mtimeMs}:${b.size}`;
}
