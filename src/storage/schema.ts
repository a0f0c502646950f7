/**
 * The persisted shape of an instance's data (one JSON document), its schema
 * version and the migrations that bring older documents up to date.
 */

export const SCHEMA_VERSION = 1;

export interface UserRecord {
  id: string;
  username: string;
  /** `scrypt$N$r$p$saltB64$hashB64` */
  passwordHash: string;
  createdAt: string;
  updatedAt: string;
}

export interface SessionRecord {
  id: string;
  userId: string;
  /** SHA-256 (hex) of the cookie value; the value itself is never stored. */
  tokenHash: string;
  createdAt: string;
  expiresAt: string;
}

export interface ApiTokenRecord {
  id: string;
  name: string;
  /** SHA-256 (hex) of the full `p2pat_…` token. */
  tokenHash: string;
  enabled: boolean;
  expiresAt: string | null;
  lastUsedAt: string | null;
  createdAt: string;
}

export interface AgentConnectionRecord {
  id: string;
  startedAt: string;
  endedAt: string | null;
  remoteAddress: string | null;
  version: string | null;
  /** Why the session ended (`closed`, `replaced`, `disabled`, `rotated`, `deleted`, `restart`, …). */
  endReason: string | null;
  /** The control-plane replica that held the session (absent in records of older builds). */
  replicaId?: string | null;
  /** Streams closed as leaked by stream reconciliation, on either side (absent = 0). */
  leakedStreams?: number;
}

/** The relay protocol as last negotiated with an agent (or refused). */
export interface AgentProtocolRecord {
  /** The version in use, or null when the last handshake was refused. */
  version: number | null;
  /** The range the agent speaks. */
  agentVersions: { min: number; max: number };
  /** The range the control plane spoke then. */
  controlPlaneVersions: { min: number; max: number };
  /** Why the last handshake was refused; null once a session starts. */
  refusal: string | null;
  at: string;
}

export interface AgentRecord {
  id: string;
  name: string;
  enabled: boolean;
  labels: Record<string, string>;
  /** SHA-256 (hex) of the `p2pag_…` token. */
  tokenHash: string;
  /** Bumped on rotate: a session authenticated with an older generation is refused. */
  tokenGeneration: number;
  lastSeenAt: string | null;
  remoteAddress: string | null;
  version: string | null;
  /** Absent in records of older builds (read as null). */
  protocol?: AgentProtocolRecord | null;
  connections: AgentConnectionRecord[];
  createdAt: string;
  updatedAt: string;
}

export interface StoredCertificate {
  fingerprintSha256: string;
  subject: string;
  issuer: string;
  subjectAltNames: string[];
  validFrom: string;
  validTo: string;
  serialNumber: string;
  /** Base64 DER of the leaf. */
  der: string;
}

export interface EnvironmentRecord {
  id: string;
  name: string;
  url: string;
  transport: 'direct' | 'agent';
  agentId: string | null;
  enabled: boolean;
  timeoutMs: number;
  /** The access token sealed by the secrets box (bound to the environment id). */
  accessTokenSealed: string;
  certificate: StoredCertificate | null;
  discoveredCertificate: StoredCertificate | null;
  /**
   * When a certificate other than the trusted one was first seen (discovery or
   * a refused call); the environment stays CHANGED until an admin trusts
   * again, even if the trusted certificate shows up later. Absent = never.
   */
  certificateChangedAt?: string | null;
  lastTest: {
    ok: boolean;
    at: string;
    latencyMs: number | null;
    error: { code: string; message: string } | null;
  } | null;
  lastError: { code: string; message: string; at: string } | null;
  createdAt: string;
  updatedAt: string;
}

export type RouteTarget =
  | { type: 'upstream'; url: string; timeoutMs?: number }
  | { type: 'redirect'; location: string; status: number }
  | { type: 'backend'; backendId: string }
  | {
      type: 'static';
      status: number;
      contentType: string;
      body: string;
      /** When set, the body (and, unless given, the content type) come from this template. */
      templateId?: string | null;
    };

/** How a backend picks a member (docs/pipeline.md "Backend targets"). */
export type BackendAlgorithm = 'round_robin' | 'weighted_round_robin' | 'least_active' | 'consistent_hash';

/** A member of a backend: an upstream origin the proxy reaches itself, or an app behind an agent. */
export type BackendMemberRecord =
  | { id: string; type: 'upstream'; url: string; weight: number; draining?: boolean }
  | {
      id: string;
      type: 'agent';
      agentId: string | null;
      agentLabels: Record<string, string> | null;
      upstreamUrl: string;
      weight: number;
      /** Takes no new requests, lets those in flight finish (absent = false). */
      draining?: boolean;
    };

export interface BackendHealthCheckRecord {
  path: string;
  intervalSeconds: number;
  timeoutMs: number;
  healthyThreshold: number;
  unhealthyThreshold: number;
  expectStatus: number;
}

/** A named pool of members a route can target (docs/pipeline.md "Backend targets"). */
export interface BackendRecord {
  id: string;
  name: string;
  algorithm: BackendAlgorithm;
  /** For `consistent_hash`: `ip`, `path` or `header:NAME`. */
  hashKey: string;
  members: BackendMemberRecord[];
  /** Null: no active checks. */
  healthCheck: BackendHealthCheckRecord | null;
  /** A member failing `failures` times in a row is left out for `ejectSeconds`. */
  passive: { failures: number; ejectSeconds: number };
  createdAt: string;
  updatedAt: string;
}

export interface ListenerRecord {
  id: string;
  name: string;
  bindAddress: string;
  port: number;
  enabled: boolean;
  /** Template for 502/503/504 answers of this listener's routes (a route's own wins); absent = null. */
  errorTemplateId?: string | null;
  /** Absent in records of older builds: `http`. */
  protocol?: 'http' | 'https';
  /** https: the certificate served when no certificate's hosts match the SNI name (or none sent). */
  defaultCertificateId?: string | null;
  /** http: answer every request (but ACME challenges) with a 308 to the same URL on https. */
  redirectHttps?: boolean;
  /** https: send `Strict-Transport-Security` on every answer. */
  hsts?: boolean;
  /** CIDR ranges whose `Forwarded` / `X-Forwarded-*` / `X-Real-IP` are kept; absent = none. */
  trustedProxies?: string[];
  createdAt: string;
  updatedAt: string;
}

export interface RouteRecord {
  id: string;
  listenerId: string;
  host: string | null;
  pathPrefix: string;
  priority: number;
  target: RouteTarget;
  /** Template for 502/503/504 answers of this route; absent = null (the listener's, if any). */
  errorTemplateId?: string | null;
  createdAt: string;
  updatedAt: string;
}

/** What a response template is for (docs/pipeline.md "Response templates"). */
export type TemplateKind = 'generic' | 'block' | 'rate_limit' | 'error' | 'challenge';

export interface TemplateRecord {
  id: string;
  name: string;
  kind: TemplateKind;
  /** Status used when the referrer sets none (a static target without status, a preview). */
  status: number;
  contentType: string;
  body: string;
  createdAt: string;
  updatedAt: string;
}

/** Cache settings (docs/pipeline.md "The cache stage"). */
export interface CacheSettingsRecord {
  enabled: boolean;
  memoryMiB: number;
  diskMiB: number;
  hotObjectKiB: number;
  maxEntries: number;
  cleanupSeconds: number;
}

export interface CacheRuleRecord {
  id: string;
  name: string;
  priority: number;
  /** CEL match expression; '' matches every request. */
  expression: string;
  ttl: { mode: 'origin' | 'fixed'; seconds: number };
  queryMode: 'include' | 'ignore' | 'allowlist';
  queryAllowlist: string[];
  varyHeaders: string[];
  maxObjectBytes: number;
  enabled: boolean;
  createdAt: string;
  updatedAt: string;
}

/** Where a stored certificate comes from (docs/tls.md). */
export type CertificateSource = 'upload' | 'file' | 'self-signed' | 'acme';
export type CertificateStatus = 'pending' | 'issuing' | 'ready' | 'renewing' | 'error';
export type AcmeChallengeType = 'http-01' | 'tls-alpn-01' | 'dns-01';

export interface CertificateRecord {
  id: string;
  name: string;
  /** Lower-case DNS names or `*.suffix`, as the SNI index matches them. */
  hosts: string[];
  source: CertificateSource;
  status: CertificateStatus;
  /** The chain served (leaf first), PEM; null until there is one. */
  certificatePem: string | null;
  /** The private key (PEM) sealed by the secrets box (purpose `tls-key`, the certificate id). */
  privateKeySealed: string | null;
  certificateFile: string | null;
  privateKeyFile: string | null;
  validDays: number | null;
  acmeAccountId: string | null;
  challenge: AcmeChallengeType | null;
  dnsProviderId: string | null;
  fingerprintSha256: string | null;
  subject: string | null;
  issuer: string | null;
  notBefore: string | null;
  notAfter: string | null;
  lastError: string | null;
  nextRenewalAt: string | null;
  /** Failed attempts since the last success (drives the retry backoff). */
  failures: number;
  /**
   * The replica running an order for this certificate, until when (refreshed
   * while it runs); absent or null when none is. Replicas sharing the
   * database never run two orders for one certificate at once.
   */
  orderLease?: { replicaId: string; until: string } | null;
  createdAt: string;
  updatedAt: string;
}

/**
 * An ACME challenge answer published by the replica running the order, so
 * every replica's listeners answer the CA's validation (docs/tls.md).
 */
export interface AcmeChallengeRecord {
  id: string;
  /** The replica that published it (it withdraws it). */
  replicaId: string;
  certificateId: string;
  type: 'http-01' | 'tls-alpn-01';
  /** The HTTP-01 token, or the TLS-ALPN-01 host name. */
  name: string;
  /** HTTP-01: the key authorization answered. */
  keyAuthorization: string | null;
  /** TLS-ALPN-01: the challenge certificate and its key, sealed (purpose `acme-alpn-key`). */
  certificatePem: string | null;
  privateKeySealed: string | null;
  createdAt: string;
}

export interface AcmeAccountRecord {
  id: string;
  name: string;
  directoryUrl: string;
  email: string | null;
  /** PEM of a CA to trust for the directory's own TLS (a private or test CA), or null. */
  directoryCaPem: string | null;
  eabKid: string | null;
  /** EAB HMAC key, sealed (purpose `acme-eab`). */
  eabHmacKeySealed: string | null;
  /** Account key (PEM), sealed (purpose `acme-account-key`). */
  accountKeySealed: string;
  /** The account URL once registered, else null. */
  accountUrl: string | null;
  createdAt: string;
  updatedAt: string;
}

export interface DnsProviderRecord {
  id: string;
  name: string;
  type: 'cloudflare';
  /** API token, sealed (purpose `dns-provider-token`). */
  apiTokenSealed: string;
  apiBaseUrl: string | null;
  createdAt: string;
  updatedAt: string;
}

export interface TrafficSettingsRecord {
  enabled: boolean;
  level: 'basic' | 'detailed' | 'headers';
}

/** Thresholds of a WAF rule in `auto` mode (null: that signal is not watched). */
export interface WafAutoRecord {
  requestsPerSecond: number | null;
  errorRatio: number | null;
  forSeconds: number;
  coolDownSeconds: number;
}

/** A WAF rule (docs/pipeline.md "The policy stages"). */
export interface WafRuleRecord {
  id: string;
  name: string;
  priority: number;
  expression: string;
  action: 'block' | 'allow' | 'log' | 'challenge';
  status: number;
  templateId: string | null;
  mode: 'always' | 'auto';
  auto: WafAutoRecord | null;
  passTtlSeconds: number;
  enabled: boolean;
  createdAt: string;
  updatedAt: string;
}

/**
 * A rate-limit rule (docs/pipeline.md "The policy stages"); windows use
 * `limit` + `windowSeconds`, the bucket `ratePerSecond` + `burst`.
 */
export interface RateLimitRuleRecord {
  id: string;
  name: string;
  priority: number;
  expression: string;
  key: string[];
  algorithm: 'fixed_window' | 'sliding_window' | 'token_bucket';
  limit: number | null;
  windowSeconds: number | null;
  ratePerSecond: number | null;
  burst: number | null;
  status: number;
  templateId: string | null;
  enabled: boolean;
  createdAt: string;
  updatedAt: string;
}

/** A traffic shaper (docs/pipeline.md "The policy stages"); a null rate leaves that direction unshaped. */
export interface ShaperRecord {
  id: string;
  name: string;
  priority: number;
  expression: string;
  key: string[];
  downloadBytesPerSecond: number | null;
  uploadBytesPerSecond: number | null;
  burstBytes: number;
  exemptBytes: number;
  enabled: boolean;
  createdAt: string;
  updatedAt: string;
}

export interface Database {
  schemaVersion: number;
  instance: {
    id: string;
    createdAt: string;
    /** A value sealed with the secrets key, so a replica with another key refuses to start (shared database). */
    secretsCheck?: string;
  };
  users: UserRecord[];
  sessions: SessionRecord[];
  apiTokens: ApiTokenRecord[];
  agents: AgentRecord[];
  environments: EnvironmentRecord[];
  proxy: { listeners: ListenerRecord[]; routes: RouteRecord[] };
  backends: BackendRecord[];
  traffic: TrafficSettingsRecord;
  templates: TemplateRecord[];
  cache: { settings: CacheSettingsRecord; rules: CacheRuleRecord[] };
  policies: { waf: WafRuleRecord[]; rateLimits: RateLimitRuleRecord[]; shapers: ShaperRecord[] };
  tls: {
    certificates: CertificateRecord[];
    acmeAccounts: AcmeAccountRecord[];
    dnsProviders: DnsProviderRecord[];
  };
  acmeChallenges: AcmeChallengeRecord[];
}

/** Cache settings of a new instance: on (nothing is cached until a rule matches), 64 MiB memory, 1 GiB disk. */
export const DEFAULT_CACHE_SETTINGS: Readonly<CacheSettingsRecord> = Object.freeze({
  enabled: true,
  memoryMiB: 64,
  diskMiB: 1024,
  hotObjectKiB: 256,
  maxEntries: 100_000,
  cleanupSeconds: 60,
});

/** A fresh database for a new instance. */
export function emptyDatabase(instanceId: string, now = new Date()): Database {
  return {
    schemaVersion: SCHEMA_VERSION,
    instance: { id: instanceId, createdAt: now.toISOString() },
    users: [],
    sessions: [],
    apiTokens: [],
    agents: [],
    environments: [],
    proxy: { listeners: [], routes: [] },
    backends: [],
    traffic: { enabled: true, level: 'basic' },
    templates: [],
    cache: { settings: { ...DEFAULT_CACHE_SETTINGS }, rules: [] },
    policies: { waf: [], rateLimits: [], shapers: [] },
    tls: { certificates: [], acmeAccounts: [], dnsProviders: [] },
    acmeChallenges: [],
  };
}

/**
 * Migrations keyed by the version they upgrade *from*. Version 0 is the
 * unversioned document of early builds: every collection may be missing.
 */
const MIGRATIONS: Record<number, (doc: Record<string, unknown>) => void> = {
  0: (doc) => {
    const fresh = emptyDatabase(String((doc.instance as { id?: string } | undefined)?.id ?? ''));
    for (const [key, value] of Object.entries(fresh)) {
      if (doc[key] === undefined) doc[key] = value;
    }
    doc.schemaVersion = 1;
  },
};

/**
 * Brings a parsed document up to SCHEMA_VERSION in place. Throws when the
 * document is not an object or comes from a newer p2pstream.
 */
export function migrate(doc: unknown, newInstanceId: () => string): { db: Database; migrated: boolean } {
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) {
    throw new Error('the database is not a JSON object');
  }
  const record = doc as Record<string, unknown>;
  let version = typeof record.schemaVersion === 'number' ? record.schemaVersion : 0;
  if (version > SCHEMA_VERSION) {
    throw new Error(
      `the database has schema version ${version}, newer than this p2pstream (${SCHEMA_VERSION})`,
    );
  }
  const migrated = version < SCHEMA_VERSION;
  while (version < SCHEMA_VERSION) {
    const step = MIGRATIONS[version];
    if (!step) throw new Error(`no migration from schema version ${version}`);
    step(record);
    version = record.schemaVersion as number;
  }
  // Additive changes need no version: a top-level collection this build knows
  // and the document lacks (written by an older build) starts empty.
  for (const [key, value] of Object.entries(emptyDatabase(''))) {
    if (key !== 'instance' && record[key] === undefined) record[key] = value;
  }
  const instance = record.instance as { id?: string } | undefined;
  if (!instance || typeof instance.id !== 'string' || instance.id === '') {
    record.instance = { id: newInstanceId(), createdAt: new Date().toISOString() };
  }
  return { db: record as unknown as Database, migrated };
}
