/**
 * Loaded settings. `loadConfig(env)` is the only reader of environment
 * variables for the server (docs/operations.md "Configuration"); everything
 * else receives a Config.
 */
import path from 'node:path';
import { AppError } from './errors.js';
import { parseReconcileSeconds } from './relay/protocol.js';
import { parseTargetList } from './relay/target-policy.js';

export const DEFAULT_DATA_DIR = './data';
export const DEFAULT_MANAGEMENT_ADDR = '0.0.0.0';
export const DEFAULT_MANAGEMENT_PORT = 8081;
export const DEFAULT_LOG_LEVEL = 'info';
/** Largest accepted request body (413 PAYLOAD_TOO_LARGE above). */
export const DEFAULT_BODY_LIMIT_BYTES = 1024 * 1024;
/** A management client has this long for its TLS handshake, then for its request head. */
export const DEFAULT_HEADERS_TIMEOUT_MS = 10_000;

/** The shortest accepted P2PSTREAM_SETUP_TOKEN: guessing it must be out of reach even without the attempt limit. */
export const MIN_SETUP_TOKEN_LENGTH = 16;

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export interface ServerConfig {
  dataDir: string;
  managementAddr: string;
  managementPort: number;
  tlsCertFile: string | null;
  tlsKeyFile: string | null;
  setupToken: string | null;
  logLevel: LogLevel;
  bodyLimitBytes: number;
  /** Slow or silent management clients are cut after this (handshake, then request head). */
  headersTimeoutMs: number;
  /** Certificate store timings (no variables; tests shorten them): see CertificateService. */
  tls?: {
    checkIntervalMs?: number;
    retryBaseMs?: number;
    filePollMs?: number;
    dnsPropagationMs?: number;
  };
  /**
   * `P2PSTREAM_DATABASE_URL`: a `postgres://` URL selects the PostgreSQL store
   * shared by several replicas; null keeps the lowdb file in the data dir.
   */
  databaseUrl: string | null;
  /**
   * `P2PSTREAM_NATS_URL`: the NATS server(s) replicas use for agent presence
   * and relayed calls between them (`nats://host:4222`, comma-separated for
   * several); needs P2PSTREAM_DATABASE_URL. Null: one process, no cluster.
   */
  natsUrl: string | null;
  /**
   * `DIRECT_ALLOWED_TARGETS`: target patterns the direct transport may reach,
   * in the grammar of AGENT_ALLOWED_TARGETS (see relay/target-policy.ts);
   * null/absent = any.
   */
  directAllowedTargets?: string[] | null;
  /**
   * `P2PSTREAM_RECONCILE_SECONDS`: how often the hub sends each agent the ids
   * of its live streams (docs/protocol.md "Reconciliation"), in ms; 0 = never
   * from this side. Default 60 s.
   */
  reconcileIntervalMs?: number;
  /** scrypt cost of new password hashes (no variable; tests lower it); default N=2^17, r=8, p=1. */
  passwordCost?: { N: number; r: number; p: number };
  /** Cluster timings (no variables; tests shorten them). */
  cluster?: {
    /** How long the bus may be away before this replica stops taking agents (default 3 s). */
    busLossGraceMs?: number;
    heartbeatMs?: number;
    replicaTtlMs?: number;
    /** How long a stopping replica lets the streams through its agents finish (default 10 s). */
    drainGraceMs?: number;
  };
  /** Agent tunnels (no variables; tests and benches set them): see Hub's options. */
  tunnels?: {
    /** Response window per tunnel stream, the hub's memory per stalled client (default 256 KiB; see Hub's options). */
    windowBytes?: number;
    /** Tunnel streams per agent (default 1024). */
    maxStreamsPerAgent?: number;
  };
}

/** Reads the server settings; throws AppError VALIDATION_FAILED naming the bad variable. */
export function loadConfig(env: NodeJS.ProcessEnv): Readonly<ServerConfig> {
  const port = parsePort(env.MANAGEMENT_PORT, 'MANAGEMENT_PORT', DEFAULT_MANAGEMENT_PORT);
  const certFile = nonEmpty(env.MANAGEMENT_TLS_CERT_FILE);
  const keyFile = nonEmpty(env.MANAGEMENT_TLS_KEY_FILE);
  if ((certFile === null) !== (keyFile === null)) {
    throw new AppError(
      'VALIDATION_FAILED',
      'MANAGEMENT_TLS_CERT_FILE and MANAGEMENT_TLS_KEY_FILE must be set together',
    );
  }
  const logLevel = (nonEmpty(env.LOG_LEVEL) ?? DEFAULT_LOG_LEVEL) as LogLevel;
  if (!LOG_LEVELS.includes(logLevel)) {
    throw new AppError('VALIDATION_FAILED', `LOG_LEVEL must be one of ${LOG_LEVELS.join(', ')}`);
  }
  const setupToken = nonEmpty(env.P2PSTREAM_SETUP_TOKEN);
  if (setupToken !== null && setupToken.length < MIN_SETUP_TOKEN_LENGTH) {
    throw new AppError(
      'VALIDATION_FAILED',
      `P2PSTREAM_SETUP_TOKEN must be at least ${MIN_SETUP_TOKEN_LENGTH} characters`,
    );
  }
  const databaseUrl = nonEmpty(env.P2PSTREAM_DATABASE_URL);
  if (databaseUrl !== null && !isPostgresUrl(databaseUrl)) {
    // The value may hold a password: never echo it.
    throw new AppError(
      'VALIDATION_FAILED',
      'P2PSTREAM_DATABASE_URL must be a postgres:// or postgresql:// URL',
      {
        details: { field: 'P2PSTREAM_DATABASE_URL' },
      },
    );
  }
  const natsUrl = nonEmpty(env.P2PSTREAM_NATS_URL);
  if (natsUrl !== null) {
    if (!natsUrl.split(',').every((entry) => isNatsUrl(entry.trim()))) {
      throw new AppError(
        'VALIDATION_FAILED',
        'P2PSTREAM_NATS_URL must be nats:// or tls:// URLs, comma-separated',
        {
          details: { field: 'P2PSTREAM_NATS_URL' },
        },
      );
    }
    if (databaseUrl === null) {
      throw new AppError(
        'VALIDATION_FAILED',
        'P2PSTREAM_NATS_URL joins replicas, which share one database: set P2PSTREAM_DATABASE_URL too',
        { details: { field: 'P2PSTREAM_DATABASE_URL' } },
      );
    }
  }
  return Object.freeze({
    dataDir: path.resolve(nonEmpty(env.P2PSTREAM_DATA_DIR) ?? DEFAULT_DATA_DIR),
    managementAddr: nonEmpty(env.MANAGEMENT_ADDR) ?? DEFAULT_MANAGEMENT_ADDR,
    managementPort: port,
    tlsCertFile: certFile,
    tlsKeyFile: keyFile,
    setupToken,
    logLevel,
    bodyLimitBytes: DEFAULT_BODY_LIMIT_BYTES,
    headersTimeoutMs: DEFAULT_HEADERS_TIMEOUT_MS,
    databaseUrl,
    natsUrl,
    directAllowedTargets: parseTargetList(nonEmpty(env.DIRECT_ALLOWED_TARGETS), 'DIRECT_ALLOWED_TARGETS'),
    reconcileIntervalMs: parseReconcileSeconds(
      env.P2PSTREAM_RECONCILE_SECONDS,
      'P2PSTREAM_RECONCILE_SECONDS',
    ),
  });
}

function isNatsUrl(value: string): boolean {
  try {
    const url = new URL(value);
    return (url.protocol === 'nats:' || url.protocol === 'tls:') && url.hostname !== '';
  } catch {
    return false;
  }
}

function isPostgresUrl(value: string): boolean {
  try {
    const url = new URL(value);
    return url.protocol === 'postgres:' || url.protocol === 'postgresql:';
  } catch {
    return false;
  }
}

function nonEmpty(value: string | undefined): string | null {
  return value === undefined || value.trim() === '' ? null : value.trim();
}

/** Parses a TCP port (0 = any free port). */
export function parsePort(value: string | undefined, name: string, fallback: number): number {
  const text = nonEmpty(value);
  if (text === null) return fallback;
  const port = Number(text);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new AppError('VALIDATION_FAILED', `${name} must be a port number between 0 and 65535`);
  }
  return port;
}
