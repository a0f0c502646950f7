/**
 * The relay protocol's shared constants and tables, used by both ends of a
 * link (the hub and the agent, or the two halves of the direct transport):
 * the connect path and header names, the version window and how a version
 * is chosen, the capabilities, the close-code table and the end reasons a
 * connection records. Pure: no I/O.
 */
import { AppError } from '../errors.js';
import { MIN_PROTOCOL_VERSION, PROTOCOL_VERSION } from './envelope.js';

/** Where agents open their WebSocket on the control plane (docs/protocol.md). */
export const AGENT_CONNECT_PATH = '/api/v1/agent/connect';
/** The upgrade header naming the agent (its token goes in `Authorization: Bearer`). */
export const AGENT_ID_HEADER = 'x-p2pstream-agent-id';
/**
 * The upgrade header of an agent keeping two connections: the replica ids it
 * is already connected to. A replica named there refuses the upgrade (409
 * CONFLICT) instead of replacing the agent's session (docs/cluster.md).
 */
export const AGENT_ELSEWHERE_HEADER = 'x-p2pstream-agent-elsewhere';

/** An inclusive range of protocol versions. */
export interface VersionRange {
  min: number;
  max: number;
}

/** The versions this build speaks. */
export const SUPPORTED_VERSIONS: VersionRange = Object.freeze({
  min: MIN_PROTOCOL_VERSION,
  max: PROTOCOL_VERSION,
});

/**
 * Capabilities announced in hello and welcome. A feature that puts a new
 * envelope on the wire is used only when both sides announced it; the others
 * describe what a peer does and are informative.
 */
export const CAPABILITY = {
  DISCOVER: 'discover',
  REQUEST: 'request',
  FLOW_CONTROL: 'flow-control',
  CANCEL: 'cancel',
  /** Stream reconciliation: `stream_set` on stream 0. */
  RECONCILE: 'reconcile',
  /** Drain: `drain` on stream 0 before a side goes away (a replica stopping). */
  DRAIN: 'drain',
  /** Tunnel streams: `tunnel_request` (public requests an agent makes in its network). */
  TUNNEL: 'tunnel',
  /**
   * Agent-run health checks: `health_watch` / `health_report` (the agent
   * checks the backend members it serves, in its network, and reports).
   */
  HEALTH: 'health',
  /** Batch frames: several envelopes of one turn in one frame (`batch`). */
  BATCH: 'batch',
  /**
   * A check-only connection (`p2pstream agent check`): in a hello, the
   * initiator only tests its link and credentials; the acceptor authenticates
   * it, welcomes it and closes it (1000) without starting a session, so the
   * agent's live session stays. In a welcome: the acceptor understands it.
   */
  CHECK: 'check',
  /**
   * A pinned certificate crosses a connection once: later request heads name
   * it by fingerprint (`keep_certificate`, `use_kept_certificate`). A side
   * that forwards heads unchanged to another connection must not announce it.
   */
  PIN_ONCE: 'pin-once',
} as const;

/**
 * What this build announces by default: every capability but `check`, which
 * an initiator announces only on a check-only connection (the acceptor adds
 * it to say it understands one).
 */
export const DEFAULT_CAPABILITIES: readonly string[] = Object.freeze(
  Object.values(CAPABILITY).filter((capability) => capability !== CAPABILITY.CHECK),
);

/** Seconds between stream lists (capability `reconcile`) unless a variable says otherwise. */
export const DEFAULT_RECONCILE_SECONDS = 60;
/** The shortest accepted interval: a list is a few bytes per live stream. */
export const MIN_RECONCILE_SECONDS = 1;
/** The longest accepted interval (a day). */
export const MAX_RECONCILE_SECONDS = 86_400;

/**
 * Reads a reconciliation interval variable (`P2PSTREAM_RECONCILE_SECONDS` on
 * the control plane, `AGENT_RECONCILE_SECONDS` on the agent): whole seconds
 * from {@link MIN_RECONCILE_SECONDS} to {@link MAX_RECONCILE_SECONDS}, or 0
 * for none from this side. Unset or empty: the default. Returns milliseconds;
 * throws VALIDATION_FAILED naming the variable.
 */
export function parseReconcileSeconds(value: string | undefined, variable: string): number {
  const text = value?.trim() ?? '';
  if (text === '') return DEFAULT_RECONCILE_SECONDS * 1000;
  const seconds = /^\d+$/.test(text) ? Number(text) : Number.NaN;
  if (seconds !== 0 && !(seconds >= MIN_RECONCILE_SECONDS && seconds <= MAX_RECONCILE_SECONDS)) {
    throw new AppError(
      'VALIDATION_FAILED',
      `${variable} must be 0 (off) or whole seconds from ${MIN_RECONCILE_SECONDS} to ${MAX_RECONCILE_SECONDS}`,
      { details: { field: variable } },
    );
  }
  return seconds * 1000;
}

/** `v1–v2` (a single version reads `v1–v1`). */
export function formatVersionRange(range: VersionRange): string {
  return `v${range.min}–v${range.max}`;
}

/** The range a hello or welcome announces: `min` 0 means the single version `max`. */
export function announcedRange(max: number, min: number | undefined): VersionRange {
  const top = Number.isInteger(max) && max > 0 ? max : 0;
  const bottom = min !== undefined && min > 0 && min <= top ? min : top;
  return { min: bottom, max: top };
}

/** The highest version in both ranges, or null when they do not meet. */
export function chooseVersion(own: VersionRange, theirs: VersionRange): number | null {
  const version = Math.min(own.max, theirs.max);
  return version >= Math.max(own.min, theirs.min) && version > 0 ? version : null;
}

/**
 * The refusal of a connection whose ranges do not meet: PROTOCOL_ERROR with
 * both ranges named ("the agent speaks v1–v1, the control plane v2–v3") and
 * in `details` (`agentVersions`, `controlPlaneVersions`).
 */
export function versionMismatch(agent: VersionRange, controlPlane: VersionRange): AppError {
  return new AppError(
    'PROTOCOL_ERROR',
    `protocol versions do not meet: the agent speaks ${formatVersionRange(agent)}, the control plane ${formatVersionRange(controlPlane)}`,
    { details: { agentVersions: { ...agent }, controlPlaneVersions: { ...controlPlane } } },
  );
}

/**
 * WebSocket close statuses (RFC 6455 §7.4.1) as the relay uses them. A frame
 * transport that is not a WebSocket carries the same numbers.
 */
export const CLOSE_CODE = {
  /** Orderly end (either side), or after the peer reported a connection error. */
  NORMAL: 1000,
  /** The sender is shutting down (agent stop, control plane stop). */
  GOING_AWAY: 1001,
  /** A malformed or unexpected frame, a handshake timeout, versions that do not meet. */
  PROTOCOL_ERROR: 1002,
  /** Never sent: the connection was cut without a close frame (dead keepalive, a peer not reading). */
  CUT: 1006,
  /** Policy: credentials revoked, agent disabled or deleted, replaced by a newer connection. */
  POLICY: 1008,
  /** A frame over the receiver's limit. */
  TOO_LARGE: 1009,
} as const;

/** The close status for a protocol failure: 1009 for PAYLOAD_TOO_LARGE, 1008 for credentials, else 1002. */
export function closeCodeFor(error: AppError): number {
  switch (error.code) {
    case 'PAYLOAD_TOO_LARGE':
      return CLOSE_CODE.TOO_LARGE;
    case 'UNAUTHENTICATED':
    case 'FORBIDDEN':
      return CLOSE_CODE.POLICY;
    default:
      return CLOSE_CODE.PROTOCOL_ERROR;
  }
}

/**
 * Why a connection ended, as recorded in an agent's `connections`
 * (`endReason`). Owners may add their own (`revoked`, `replaced`, …).
 */
export const END_REASON = {
  /** The peer closed, or the transport went away. */
  CLOSED: 'closed',
  /** Keepalive: nothing heard for too long. */
  TIMEOUT: 'timeout',
  /** The peer broke the protocol (bad frame, unexpected envelope, no hello or welcome in time). */
  PROTOCOL_ERROR: 'protocol-error',
  /** A frame over the limit. */
  FRAME_TOO_LARGE: 'frame-too-large',
  /** The versions of the two sides do not meet. */
  VERSION: 'version',
  /** A socket error. */
  CONNECTION_ERROR: 'connection-error',
  /** The peer left too much unread on its connection. */
  NOT_READING: 'not-reading',
  /** The peer reported a connection-level error on stream 0. */
  PEER_ERROR: 'peer-error',
  /** This side shut down. */
  SHUTDOWN: 'shutdown',
  /** This side shut down after telling the peer to move (drain). */
  DRAINED: 'drained',
} as const;
