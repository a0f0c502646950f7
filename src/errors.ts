/**
 * The one error model of p2pstream: every failure that reaches a caller is an
 * {@link AppError} whose `code` comes from the closed table {@link ERROR_CODES}
 * (the public codes of docs/architecture.md "Errors", plus a few internal
 * ones). HTTP routes, the hub and the relay envelopes all carry these codes
 * unchanged.
 */

/** Per code: the HTTP status it answers with and whether a retry may succeed. */
export const ERROR_CODES = {
  UNAUTHENTICATED: { status: 401, retryable: false },
  FORBIDDEN: { status: 403, retryable: false },
  NOT_FOUND: { status: 404, retryable: false },
  VALIDATION_FAILED: { status: 400, retryable: false },
  CONFLICT: { status: 409, retryable: false },
  SETUP_DONE: { status: 409, retryable: false },
  INVALID_CREDENTIALS: { status: 401, retryable: false },
  LOGIN_THROTTLED: { status: 429, retryable: true },
  ENVIRONMENT_NOT_FOUND: { status: 404, retryable: false },
  ENVIRONMENT_DISABLED: { status: 409, retryable: false },
  ENVIRONMENT_UNTRUSTED: { status: 412, retryable: false },
  CERTIFICATE_CHANGED: { status: 412, retryable: false },
  CERTIFICATE_EXPIRED: { status: 412, retryable: false },
  CERTIFICATE_HOSTNAME_MISMATCH: { status: 412, retryable: false },
  AGENT_NOT_FOUND: { status: 404, retryable: false },
  AGENT_OFFLINE: { status: 503, retryable: true },
  ENVIRONMENT_UNREACHABLE: { status: 502, retryable: true },
  ENVIRONMENT_TIMEOUT: { status: 504, retryable: true },
  REMOTE_UNAUTHORIZED: { status: 502, retryable: false },
  PAYLOAD_TOO_LARGE: { status: 413, retryable: false },
  // Internal codes: not in the public table, but stable all the same.
  /** A relay peer broke the envelope protocol (bad frame, unknown stream, wrong version). */
  PROTOCOL_ERROR: { status: 502, retryable: false },
  /** Too many concurrent streams on one agent connection. */
  TOO_MANY_STREAMS: { status: 503, retryable: true },
  /** The request was cancelled by its caller. */
  CANCELLED: { status: 499, retryable: false },
  /** A target refused by the agent's AGENT_ALLOWED_TARGETS policy. */
  TARGET_NOT_ALLOWED: { status: 403, retryable: false },
  /** This control-plane replica takes no agents right now (it lost the cluster bus, or it is stopping). */
  REPLICA_UNAVAILABLE: { status: 503, retryable: true },
  /**
   * A relayed answer was a redirect and the caller (the console) asked for
   * redirects to be reported, not passed on: `details` has `status` and `location`.
   */
  REMOTE_REDIRECT: { status: 502, retryable: false },
  /** Too many requests from one client (agent authentication floods, etc.). */
  RATE_LIMITED: { status: 429, retryable: true },
  INTERNAL: { status: 500, retryable: false },
} as const satisfies Record<string, { status: number; retryable: boolean }>;

export type ErrorCode = keyof typeof ERROR_CODES;

/** True when `code` is one of the closed table's codes. */
export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.hasOwn(ERROR_CODES, code);
}

/** An error with a stable code; `details` is safe to send to the caller (e.g. the failing field). */
export class AppError extends Error {
  override readonly name = 'AppError';
  readonly code: ErrorCode;
  readonly details: Record<string, unknown> | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    options: { cause?: unknown; details?: Record<string, unknown> } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.details = options.details;
  }

  get status(): number {
    return ERROR_CODES[this.code].status;
  }

  get retryable(): boolean {
    return ERROR_CODES[this.code].retryable;
  }
}

const SOCKET_ERROR_CODES: Record<string, ErrorCode> = {
  ECONNREFUSED: 'ENVIRONMENT_UNREACHABLE',
  ECONNRESET: 'ENVIRONMENT_UNREACHABLE',
  EPIPE: 'ENVIRONMENT_UNREACHABLE',
  EHOSTUNREACH: 'ENVIRONMENT_UNREACHABLE',
  ENETUNREACH: 'ENVIRONMENT_UNREACHABLE',
  ENOTFOUND: 'ENVIRONMENT_UNREACHABLE',
  EAI_AGAIN: 'ENVIRONMENT_UNREACHABLE',
  EADDRNOTAVAIL: 'ENVIRONMENT_UNREACHABLE',
  ERR_SOCKET_CLOSED: 'ENVIRONMENT_UNREACHABLE',
  ERR_STREAM_PREMATURE_CLOSE: 'ENVIRONMENT_UNREACHABLE',
  ETIMEDOUT: 'ENVIRONMENT_TIMEOUT',
  ESOCKETTIMEDOUT: 'ENVIRONMENT_TIMEOUT',
  ABORT_ERR: 'CANCELLED',
};

/**
 * Normalises anything thrown into an AppError, keeping the original as `cause`.
 * Node socket errors map by their `code`; everything else becomes `INTERNAL`.
 */
export function toAppError(err: unknown, fallback: ErrorCode = 'INTERNAL'): AppError {
  if (err instanceof AppError) return err;
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string') {
    const mapped = SOCKET_ERROR_CODES[code];
    if (mapped) return new AppError(mapped, describeSocketError(mapped), { cause: err });
    if (isErrorCode(code)) {
      const message = err instanceof Error ? err.message : code;
      return new AppError(code, message, { cause: err });
    }
  }
  return new AppError(fallback, fallback === 'INTERNAL' ? 'internal error' : String(fallback), {
    cause: err,
  });
}

function describeSocketError(code: ErrorCode): string {
  switch (code) {
    case 'ENVIRONMENT_TIMEOUT':
      return 'the target did not answer in time';
    case 'CANCELLED':
      return 'the request was cancelled';
    default:
      return 'the target could not be reached';
  }
}
