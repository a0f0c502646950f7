/**
 * The agent's settings (docs/operations.md "Configuration"), read once from the
 * environment by `loadAgentConfig(env)`:
 *
 * - `MANAGEMENT_URL` (required): the control plane, `https://` only — an
 *   `http://` URL is refused, the agent token must never travel in clear;
 *   several comma-separated URLs (replicas of one control plane): the agent
 *   keeps two connections, to two different replicas, and is reachable through
 *   either (one URL behind a load balancer does the same, docs/cluster.md);
 * - `AGENT_ID`, `AGENT_TOKEN` (required): the credentials issued by the
 *   control plane;
 * - `MANAGEMENT_CA_FILE` or `MANAGEMENT_FINGERPRINT` (exactly one): how the
 *   control plane's certificate is verified (a CA bundle with hostname
 *   check, or the SHA-256 fingerprint of its certificate);
 * - `AGENT_ALLOWED_TARGETS` (optional): comma-separated `host[:port]`
 *   patterns (port 443 when omitted; `*` any host or port; `*.example.com`
 *   any name below it; `10.0.0.0/8:8081` any address in the range, a name
 *   resolved once and that address dialled); any other target is refused;
 * - `AGENT_RECONCILE_SECONDS` (default 60; 0 = never, else 1–86400): how
 *   often the agent sends the ids of its live streams (docs/protocol.md
 *   "Reconciliation");
 * - `LOG_LEVEL` (default `info`).
 *
 * Errors: AppError VALIDATION_FAILED naming the variable.
 */
import { readFileSync } from 'node:fs';
import { AppError } from '../src/errors.js';
import { parseReconcileSeconds } from '../src/relay/protocol.js';
import { parseTargetList } from '../src/relay/target-policy.js';
import { normalizeFingerprint } from '../src/tls/certificates.js';

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type AgentLogLevel = (typeof LOG_LEVELS)[number];

export interface AgentConfig {
  /** The control plane's base URL, normalised without a trailing slash (the first of several). */
  managementUrl: string;
  /** Every URL given (replicas of one control plane), normalised; at least one. */
  managementUrls: string[];
  agentId: string;
  agentToken: string;
  /** PEM bundle from MANAGEMENT_CA_FILE, or null. */
  ca: string | null;
  /** `AB:CD:…` from MANAGEMENT_FINGERPRINT, or null. */
  fingerprint: string | null;
  /** Null = every target the control plane asks for. */
  allowedTargets: string[] | null;
  logLevel: AgentLogLevel;
  /** `AGENT_RECONCILE_SECONDS`, in ms: how often the agent sends its live stream ids; 0 = never. */
  reconcileIntervalMs: number;
}

function fail(message: string): never {
  throw new AppError('VALIDATION_FAILED', message);
}

function nonEmpty(value: string | undefined): string | null {
  return value === undefined || value.trim() === '' ? null : value.trim();
}

/** Checks and normalises MANAGEMENT_URL: absolute https://, no query, fragment or credentials. */
export function parseManagementUrl(value: string | null): string {
  if (value === null) fail('MANAGEMENT_URL is required (the https:// URL of the control plane)');
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    fail('MANAGEMENT_URL is not a valid URL');
  }
  if (url.protocol === 'http:') {
    fail(
      'MANAGEMENT_URL must use https://; http:// is refused because the agent token would travel in clear',
    );
  }
  if (url.protocol !== 'https:') fail('MANAGEMENT_URL must be an https:// URL');
  if (url.username || url.password) fail('MANAGEMENT_URL must not contain credentials');
  if (url.search || url.hash) fail('MANAGEMENT_URL must not have a query or a fragment');
  return `${url.origin}${url.pathname.replace(/\/+$/, '')}`;
}

/**
 * Parses AGENT_ALLOWED_TARGETS: `host[:port]` patterns, comma or space
 * separated, in the relay's grammar (port 443 when omitted, `*` for any host
 * or port, `*.example.com` for any name below example.com, `10.0.0.0/8` for
 * an address range).
 */
export function parseAllowedTargets(value: string | null): string[] | null {
  return parseTargetList(value, 'AGENT_ALLOWED_TARGETS');
}

/** Reads the agent settings; `readFile` is for tests. */
export function loadAgentConfig(
  env: NodeJS.ProcessEnv,
  readFile: (file: string) => string = (file) => readFileSync(file, 'utf8'),
): Readonly<AgentConfig> {
  const urlList = nonEmpty(env.MANAGEMENT_URL);
  const managementUrls = (urlList ?? '')
    .split(',')
    .map((entry) => entry.trim())
    .filter((entry) => entry !== '')
    .map((entry) => parseManagementUrl(entry));
  if (managementUrls.length === 0) parseManagementUrl(null);
  if (new Set(managementUrls).size !== managementUrls.length) fail('MANAGEMENT_URL lists the same URL twice');
  const managementUrl = managementUrls[0]!;
  const agentId = nonEmpty(env.AGENT_ID);
  if (agentId === null) fail('AGENT_ID is required (shown by the control plane when the agent was created)');
  const agentToken = nonEmpty(env.AGENT_TOKEN);
  if (agentToken === null) fail('AGENT_TOKEN is required (shown once when the agent was created or rotated)');
  if (!/^p2pag_[A-Za-z0-9_-]{43}$/.test(agentToken)) {
    fail('AGENT_TOKEN is not an agent token (p2pag_ followed by 43 characters)');
  }
  const caFile = nonEmpty(env.MANAGEMENT_CA_FILE);
  const fingerprintText = nonEmpty(env.MANAGEMENT_FINGERPRINT);
  if (caFile !== null && fingerprintText !== null) {
    fail('set either MANAGEMENT_CA_FILE or MANAGEMENT_FINGERPRINT, not both');
  }
  if (caFile === null && fingerprintText === null) {
    fail(
      'MANAGEMENT_CA_FILE or MANAGEMENT_FINGERPRINT is required: the agent never connects to an unverified control plane',
    );
  }
  let ca: string | null = null;
  if (caFile !== null) {
    try {
      ca = readFile(caFile);
    } catch (err) {
      fail(`MANAGEMENT_CA_FILE cannot be read: ${(err as Error).message}`);
    }
    if (!ca.includes('-----BEGIN CERTIFICATE-----')) fail('MANAGEMENT_CA_FILE holds no PEM certificate');
  }
  let fingerprint: string | null = null;
  if (fingerprintText !== null) {
    fingerprint = normalizeFingerprint(fingerprintText);
    if (fingerprint === null) fail('MANAGEMENT_FINGERPRINT must be a SHA-256 fingerprint (64 hex digits)');
  }
  const logLevel = (nonEmpty(env.LOG_LEVEL) ?? 'info') as AgentLogLevel;
  if (!LOG_LEVELS.includes(logLevel)) fail(`LOG_LEVEL must be one of ${LOG_LEVELS.join(', ')}`);
  return Object.freeze({
    managementUrl,
    managementUrls,
    agentId,
    agentToken,
    ca,
    fingerprint,
    allowedTargets: parseAllowedTargets(nonEmpty(env.AGENT_ALLOWED_TARGETS)),
    logLevel,
    reconcileIntervalMs: parseReconcileSeconds(env.AGENT_RECONCILE_SECONDS, 'AGENT_RECONCILE_SECONDS'),
  });
}
