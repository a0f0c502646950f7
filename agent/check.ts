/**
 * `p2pstream agent check`: tests, with the agent's own settings, every step
 * the agent takes to reach the control plane and its allowed targets, and
 * says in words which one fails and why. For each control-plane URL:
 *
 * 1. `dns`   the host name resolves (an address needs no lookup);
 * 2. `tcp`   a TCP connection to the first address;
 * 3. `tls`   the TLS handshake, verified as the agent verifies it
 *            (MANAGEMENT_FINGERPRINT or MANAGEMENT_CA_FILE, through
 *            control-plane-tls.ts and the relay's one probe and classifier);
 * 4. `auth`  the WebSocket upgrade with AGENT_ID/AGENT_TOKEN and a check-only
 *            hello (capability `check`, docs/protocol.md): the control plane
 *            authenticates and welcomes it, then closes it without touching
 *            the agent's live session;
 * 5. `clock` the agent's clock against the control plane's time in the welcome;
 *
 * then, for each AGENT_ALLOWED_TARGETS entry naming one host and port, a
 * `target` check: TCP + TLS handshake (the relay's discovery probe: no
 * application byte is written) and the certificate presented (subject,
 * issuer, expiry, fingerprint). A step that cannot run because an earlier
 * one failed is reported as not checked, and failed. The command exits 0 only
 * when every check passed.
 */
import dns from 'node:dns';
import net from 'node:net';
import type { TLSSocket } from 'node:tls';
import type WebSocket from 'ws';
import { AppError, toAppError } from '../src/errors.js';
import { createLogger } from '../src/logger.js';
import { DEFAULT_MAX_FRAME_BYTES } from '../src/relay/envelope.js';
import { connectVerified, probeCertificate, serverNameFor } from '../src/relay/pinned-tls.js';
import {
  CAPABILITY,
  CLOSE_CODE,
  DEFAULT_CAPABILITIES,
  END_REASON,
  formatVersionRange,
  type VersionRange,
} from '../src/relay/protocol.js';
import { type NegotiatedSession, type PeerClosed, RelayPeer } from '../src/relay/relay-peer.js';
import { namedTargetOf } from '../src/relay/target-policy.js';
import { createWebSocketFrameTransport } from '../src/relay/websocket-frame-transport.js';
import { describeCertificate, isCurrentlyValid, matchesHostname } from '../src/tls/certificates.js';
import { VERSION } from '../src/version.js';
import type { AgentConfig } from './config.js';
import { createControlPlaneSocket } from './control-plane-socket.js';
import {
  type ControlPlaneTlsOptions,
  controlPlaneError,
  controlPlaneTlsOptions,
} from './control-plane-tls.js';

/** Each network step gets this long (connect, handshake, upgrade, welcome). */
export const DEFAULT_CHECK_TIMEOUT_MS = 10_000;
/**
 * The largest clock difference with the control plane that passes: 30 s, half
 * the minute by which the certificates p2pstream makes are backdated, so a
 * certificate issued a moment ago is never "not yet valid" on the agent.
 */
export const DEFAULT_MAX_CLOCK_SKEW_MS = 30_000;

/** The checks, in the order they run; `config` only when the settings do not load. */
export type CheckName = 'config' | 'dns' | 'tcp' | 'tls' | 'auth' | 'clock' | 'target';

/** A certificate as the check shows it. */
export interface CheckedCertificate {
  subject: string;
  issuer: string;
  validFrom: string;
  validTo: string;
  fingerprintSha256: string;
}

/** The outcome of one check (one line of output, one element of `--json`). */
export interface CheckResult {
  check: CheckName;
  /** What was checked: the control plane's `host:port`, or the target's. */
  subject: string;
  ok: boolean;
  /** What was seen, or why it failed, in words. */
  message: string;
  /** A stable code when it failed (an AppError code, or the system's socket error code). */
  code?: string;
  /** The certificate presented (tls, target), also when it was refused. */
  certificate?: CheckedCertificate;
  /** clock: how far the agent's clock is ahead of the control plane's (negative: behind), and the round trip. */
  clock?: { skewMs: number; roundTripMs: number };
  /** auth: the negotiated protocol. */
  protocol?: { version: number; agentVersions: VersionRange; controlPlaneVersions: VersionRange };
}

/** The settings the check uses (the agent's own). */
export type AgentCheckConfig = Pick<
  AgentConfig,
  'managementUrls' | 'agentId' | 'agentToken' | 'ca' | 'fingerprint' | 'allowedTargets'
>;

/** Options of {@link checkAgent}. */
export interface AgentCheckOptions {
  /** Default {@link DEFAULT_CHECK_TIMEOUT_MS}. */
  timeoutMs?: number;
  /** Default {@link DEFAULT_MAX_CLOCK_SKEW_MS}. */
  maxClockSkewMs?: number;
}

/** Runs every check; never throws for a failed one (it is a result). */
export async function checkAgent(
  config: AgentCheckConfig,
  options: AgentCheckOptions = {},
): Promise<CheckResult[]> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_CHECK_TIMEOUT_MS;
  const maxSkewMs = options.maxClockSkewMs ?? DEFAULT_MAX_CLOCK_SKEW_MS;
  const results: CheckResult[] = [];
  for (const url of config.managementUrls) {
    results.push(...(await checkControlPlane(url, config, timeoutMs, maxSkewMs)));
  }
  for (const pattern of config.allowedTargets ?? []) {
    const target = namedTargetOf(pattern);
    if (target !== null) results.push(await checkTarget(target.host, target.port, timeoutMs));
  }
  return results;
}

/** One line per result: `✓ TLS    host:port  message`. */
export function formatCheckResults(results: readonly CheckResult[]): string {
  const labels: Record<CheckName, string> = {
    config: 'Config',
    dns: 'DNS',
    tcp: 'TCP',
    tls: 'TLS',
    auth: 'Auth',
    clock: 'Clock',
    target: 'Target',
  };
  return results
    .map((r) => `${r.ok ? '✓' : '✗'} ${labels[r.check].padEnd(6)} ${r.subject}  ${r.message}\n`)
    .join('');
}

async function checkControlPlane(
  managementUrl: string,
  config: AgentCheckConfig,
  timeoutMs: number,
  maxSkewMs: number,
): Promise<CheckResult[]> {
  const url = new URL(managementUrl);
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const port = Number(url.port || 443);
  const subject = url.host;
  const results: CheckResult[] = [];
  const pass = (check: CheckName, message: string, extra: Partial<CheckResult> = {}) =>
    results.push({ check, subject, ok: true, message, ...extra });
  const fail = (check: CheckName, message: string, extra: Partial<CheckResult> = {}) =>
    results.push({ check, subject, ok: false, message, ...extra });
  const notChecked = (checks: CheckName[], why: string) => {
    for (const check of checks) fail(check, `not checked: ${why}`, { code: 'NOT_CHECKED' });
    return results;
  };

  // 1. DNS
  let address: string;
  if (net.isIP(host) !== 0) {
    address = host;
    pass('dns', `${host} is an address: nothing to resolve`);
  } else {
    try {
      const addresses = await dns.promises.lookup(host, { all: true, verbatim: true });
      address = addresses[0]!.address;
      pass('dns', `${host} resolves to ${addresses.map((a) => a.address).join(', ')}`);
    } catch (err) {
      fail('dns', `${host} does not resolve: ${socketErrorInWords(err, host, timeoutMs)}`, {
        code: errorCode(err),
      });
      return notChecked(['tcp', 'tls', 'auth', 'clock'], 'the control plane’s name does not resolve');
    }
  }

  // 2. TCP
  const started = performance.now();
  try {
    await tcpConnect(address, port, timeoutMs);
    pass(
      'tcp',
      `connected to ${formatHostPort(address, port)} in ${Math.round(performance.now() - started)} ms`,
    );
  } catch (err) {
    fail(
      'tcp',
      `no TCP connection to ${formatHostPort(address, port)}: ${socketErrorInWords(err, host, timeoutMs)}`,
      {
        code: errorCode(err),
      },
    );
    return notChecked(['tls', 'auth', 'clock'], 'no TCP connection to the control plane');
  }

  // 3. TLS, verified as the agent verifies it.
  const mode = config.ca !== null ? 'ca-file' : 'fingerprint';
  const against = mode === 'ca-file' ? 'MANAGEMENT_CA_FILE' : 'MANAGEMENT_FINGERPRINT';
  let tls: ControlPlaneTlsOptions;
  try {
    tls = await controlPlaneTlsOptions({
      managementUrl,
      ca: config.ca,
      fingerprint: config.fingerprint,
      timeoutMs,
    });
    const certificate = await verifiedHandshake(host, port, tls, mode, timeoutMs);
    pass('tls', `verified against ${against}: ${formatCertificate(certificate)}`, { certificate });
  } catch (err) {
    const { error, certificate } = err as { error: AppError; certificate?: CheckedCertificate };
    const failure = error instanceof AppError ? error : controlPlaneError(err, mode);
    fail(
      'tls',
      `${failure.message}${certificate ? `; it presented ${formatCertificate(certificate)}` : ''}`,
      {
        code: failure.code,
        ...(certificate ? { certificate } : {}),
      },
    );
    return notChecked(['auth', 'clock'], 'the control plane’s certificate did not verify');
  }

  // 4. WebSocket upgrade, authentication and a check-only handshake.
  const outcome = await checkOnlyHandshake(managementUrl, config, tls, timeoutMs);
  if (outcome.kind !== 'welcomed') {
    fail('auth', outcome.message, { code: outcome.code });
    return notChecked(['clock'], 'no welcome from the control plane');
  }
  const { session, sentAt, receivedAt } = outcome;
  const protocol = {
    version: session.version,
    agentVersions: session.local,
    controlPlaneVersions: session.remote.versions,
  };
  const software = session.remote.software ? ` ${session.remote.software}` : '';
  if (!session.capabilities.has(CAPABILITY.CHECK)) {
    fail(
      'auth',
      `authenticated as agent ${config.agentId}, but the control plane${software} does not know check-only connections (it is older than this agent): it took this one as the agent’s session, and a running agent reconnects on its own`,
      { code: 'CHECK_UNSUPPORTED', protocol },
    );
  } else {
    pass(
      'auth',
      `WebSocket upgraded, authenticated as agent ${config.agentId}; protocol v${session.version} (agent ${formatVersionRange(session.local)}, control plane ${formatVersionRange(session.remote.versions)})${session.remote.software ? `; control plane ${session.remote.software}` : ''}`,
      { protocol },
    );
  }

  // 5. Clock skew against the time in the welcome.
  const serverTime = session.remote.timeMs;
  if (serverTime <= 0) {
    fail('clock', 'the control plane sent no time in its welcome (it is older than this agent)', {
      code: 'NOT_CHECKED',
    });
    return results;
  }
  const roundTripMs = Math.max(0, receivedAt - sentAt);
  const skewMs = Math.round((sentAt + receivedAt) / 2 - serverTime);
  const clock = { skewMs, roundTripMs };
  const direction = skewMs >= 0 ? 'ahead of' : 'behind';
  const measured = `the agent’s clock is ${formatSeconds(Math.abs(skewMs))} ${direction} the control plane’s (± ${formatSeconds(roundTripMs / 2)})`;
  if (Math.abs(skewMs) - roundTripMs / 2 > maxSkewMs) {
    fail(
      'clock',
      `${measured}: more than ${formatSeconds(maxSkewMs)}; certificates may look expired or not yet valid to one side. Synchronise the clocks (NTP)`,
      { code: 'CLOCK_SKEW', clock },
    );
  } else {
    pass('clock', measured, { clock });
  }
  return results;
}

type HandshakeOutcome =
  | { kind: 'welcomed'; session: NegotiatedSession; sentAt: number; receivedAt: number }
  | { kind: 'failed'; code: string; message: string };

/** Upgrades with the agent's credentials and runs a check-only handshake (hello with `check`). */
function checkOnlyHandshake(
  managementUrl: string,
  config: AgentCheckConfig,
  tls: ControlPlaneTlsOptions,
  timeoutMs: number,
): Promise<HandshakeOutcome> {
  const mode = config.ca !== null ? 'ca-file' : 'fingerprint';
  const socket: WebSocket = createControlPlaneSocket({
    managementUrl,
    agentId: config.agentId,
    agentToken: config.agentToken,
    tls,
    handshakeTimeoutMs: timeoutMs,
    maxFrameBytes: DEFAULT_MAX_FRAME_BYTES,
  });
  return new Promise((resolve) => {
    let lastError: unknown = null;
    socket.on('error', (err) => {
      lastError = err;
    });
    socket.on('unexpected-response', (request, response) => {
      const status = response.statusCode ?? 0;
      response.resume();
      request.destroy();
      socket.terminate();
      resolve({ kind: 'failed', ...refusalInWords(status) });
    });
    const beforeOpen = () => {
      const error = controlPlaneError(lastError ?? new Error('the connection closed'), mode);
      resolve({ kind: 'failed', code: error.code, message: `no WebSocket upgrade: ${error.message}` });
    };
    socket.once('close', beforeOpen);
    socket.once('open', () => {
      socket.off('close', beforeOpen);
      let welcomed: { session: NegotiatedSession; receivedAt: number } | null = null;
      let remoteError: AppError | null = null;
      const sentAt = Date.now();
      const peer: RelayPeer = new RelayPeer({
        transport: createWebSocketFrameTransport(socket),
        role: 'initiator',
        logger: createLogger('silent'),
        software: VERSION,
        capabilities: [...DEFAULT_CAPABILITIES, CAPABILITY.CHECK],
        handshakeTimeoutMs: timeoutMs,
        keepalive: { intervalMs: 0 },
        reconcileIntervalMs: 0,
        streams: () => [],
        onReady: (session) => {
          welcomed = { session, receivedAt: Date.now() };
          peer.close(CLOSE_CODE.NORMAL, 'check done', END_REASON.CLOSED);
        },
        onRemoteError: (error) => {
          remoteError = error;
        },
      });
      void peer.done.then(() => {
        if (welcomed !== null) {
          resolve({
            kind: 'welcomed',
            sentAt,
            ...(welcomed as { session: NegotiatedSession; receivedAt: number }),
          });
          return;
        }
        resolve({ kind: 'failed', ...handshakeFailureInWords(peer.closedEvent, remoteError) });
      });
    });
  });
}

function refusalInWords(status: number): { code: string; message: string } {
  switch (status) {
    case 401:
      return {
        code: 'UNAUTHENTICATED',
        message:
          'authentication refused (401): check AGENT_ID and AGENT_TOKEN (was the token rotated, or the agent disabled or deleted?)',
      };
    case 429:
      return {
        code: 'RATE_LIMITED',
        message: 'authentication not tried (429): too many failed attempts from this address; wait a minute',
      };
    case 503:
      return {
        code: 'REPLICA_UNAVAILABLE',
        message:
          'upgrade refused (503): this control-plane replica takes no agents now (stopping or cut off)',
      };
    default:
      return {
        code: `HTTP_${status}`,
        message: `upgrade refused (${status}): is MANAGEMENT_URL the control plane’s address?`,
      };
  }
}

function handshakeFailureInWords(
  closed: PeerClosed | null,
  remoteError: AppError | null,
): { code: string; message: string } {
  if (closed?.endReason === END_REASON.VERSION && closed.error) {
    return { code: 'PROTOCOL_ERROR', message: `handshake refused: ${closed.error.message}` };
  }
  if (remoteError !== null)
    return { code: remoteError.code, message: `handshake refused: ${remoteError.message}` };
  if (closed?.code === CLOSE_CODE.POLICY) {
    return {
      code: 'UNAUTHENTICATED',
      message: `authentication refused after the upgrade (${closed.reason || 'policy'})`,
    };
  }
  return {
    code: closed?.error?.code ?? 'PROTOCOL_ERROR',
    message: `the control plane closed the connection before its welcome (${closed?.code ?? CLOSE_CODE.CUT}${closed?.reason ? `: ${closed.reason}` : ''})`,
  };
}

/**
 * The verified handshake the agent's connection makes, with the certificate
 * read; rejects with `{ error, certificate }` (the presented certificate when
 * the handshake got that far).
 */
function verifiedHandshake(
  host: string,
  port: number,
  tls: ControlPlaneTlsOptions,
  mode: 'ca-file' | 'fingerprint',
  timeoutMs: number,
): Promise<CheckedCertificate> {
  return new Promise((resolve, reject) => {
    let presented: CheckedCertificate | undefined;
    connectVerified(
      {
        host,
        port,
        servername: serverNameFor(host),
        ca: tls.ca,
        ...(tls.checkServerIdentity ? { checkServerIdentity: tls.checkServerIdentity } : {}),
        handshakeTimeoutMs: timeoutMs,
      },
      (err, socket) => {
        socket?.destroy();
        if (err === null && presented !== undefined) resolve(presented);
        else
          reject({
            error: controlPlaneError(err ?? new Error('no certificate presented'), mode),
            certificate: presented,
          });
      },
      (secured: TLSSocket) => {
        const raw = secured.getPeerCertificate()?.raw;
        if (raw && raw.length > 0) presented = checkedCertificate(raw);
      },
    );
  });
}

async function checkTarget(host: string, port: number, timeoutMs: number): Promise<CheckResult> {
  const subject = formatHostPort(host, port);
  let chain: Buffer[];
  try {
    chain = await probeCertificate({ host, port, servername: serverNameFor(host), timeoutMs });
  } catch (err) {
    return {
      check: 'target',
      subject,
      ok: false,
      message: `no TLS handshake: ${socketErrorInWords(err, host, timeoutMs)}`,
      code: errorCode(err),
    };
  }
  const leaf = chain[0]!;
  const certificate = checkedCertificate(leaf);
  const shown = formatCertificate(certificate);
  if (!isCurrentlyValid(certificate)) {
    const expired = Date.parse(certificate.validTo) < Date.now();
    return {
      check: 'target',
      subject,
      ok: false,
      message: `the certificate is ${expired ? 'expired' : 'not yet valid'}: ${shown}`,
      code: 'CERTIFICATE_EXPIRED',
      certificate,
    };
  }
  if (!matchesHostname(leaf, host)) {
    return {
      check: 'target',
      subject,
      ok: false,
      message: `the certificate is not valid for ${host}: ${shown}`,
      code: 'CERTIFICATE_HOSTNAME_MISMATCH',
      certificate,
    };
  }
  return { check: 'target', subject, ok: true, message: `TLS handshake done: ${shown}`, certificate };
}

function checkedCertificate(der: Uint8Array): CheckedCertificate {
  const info = describeCertificate(der);
  return {
    subject: info.subject,
    issuer: info.issuer,
    validFrom: info.validFrom,
    validTo: info.validTo,
    fingerprintSha256: info.fingerprintSha256,
  };
}

function formatCertificate(certificate: CheckedCertificate): string {
  const validTo = Date.parse(certificate.validTo);
  const days = Math.round((validTo - Date.now()) / 86_400_000);
  const when =
    days >= 0
      ? `expires ${certificate.validTo.slice(0, 10)} (in ${days} days)`
      : `expired ${certificate.validTo.slice(0, 10)}`;
  return `${certificate.subject}, issued by ${certificate.issuer}, ${when}, SHA-256 ${certificate.fingerprintSha256}`;
}

function tcpConnect(host: string, port: number, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(Object.assign(new Error('connect timeout'), { code: 'ETIMEDOUT' }));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.destroy();
      resolve();
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      socket.destroy();
      reject(err);
    });
  });
}

/** The system error code behind an error (its cause's when it is an AppError), else its AppError code. */
function errorCode(err: unknown): string {
  const cause = err instanceof AppError ? (err.cause ?? err) : err;
  const code = (cause as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : toAppError(err).code;
}

/** A socket or resolver failure in words. */
function socketErrorInWords(err: unknown, host: string, timeoutMs: number): string {
  const code = errorCode(err);
  switch (code) {
    case 'ENOTFOUND':
      return `no such name (ENOTFOUND): is ${host} spelt right, and known to this host’s resolver?`;
    case 'EAI_AGAIN':
      return 'the resolver did not answer (EAI_AGAIN): check this host’s DNS settings';
    case 'ECONNREFUSED':
      return 'connection refused (ECONNREFUSED): nothing listens on that port, or a firewall rejects';
    case 'ETIMEDOUT':
    case 'ENVIRONMENT_TIMEOUT':
      return `no answer within ${formatSeconds(timeoutMs)} (${code}): a firewall dropping packets, or a wrong address`;
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return `no route to the host (${code})`;
    case 'ECONNRESET':
      return 'the connection was reset (ECONNRESET): does that port speak TLS?';
    case 'EPROTO':
    case 'ERR_SSL_WRONG_VERSION_NUMBER':
      return `the peer does not speak TLS 1.2 or later there (${code})`;
    default: {
      const message = err instanceof Error ? err.message : String(err);
      return `${message} (${code})`;
    }
  }
}

function formatHostPort(host: string, port: number): string {
  return `${net.isIP(host) === 6 ? `[${host}]` : host}:${port}`;
}

function formatSeconds(ms: number): string {
  return ms >= 10_000 ? `${Math.round(ms / 1000)} s` : `${(ms / 1000).toFixed(3)} s`;
}
