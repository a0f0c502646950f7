/**
 * The console's one HTTP client: JSON in and out, same-origin session cookie,
 * errors as {@link ApiError} (the server's `{error: {code, message, field?}}`).
 * Operational calls carry `X-P2PStream-Environment`; local ones never do.
 * Redirects are never followed: a relayed one arrives as REMOTE_REDIRECT with
 * its target in the message, any other as a REDIRECT error.
 * A 401 on any call except login/setup hands over to the registered
 * unauthenticated handler (back to the login page, keeping the current page).
 */

import type { LocalEnvironmentId } from './types';
export const ENVIRONMENT_HEADER = 'X-P2PStream-Environment';
/** The virtual environment of the instance serving the console (its type ties it to the API's). */
export const LOCAL: LocalEnvironmentId = 'local';

/**
 * A failed call: HTTP status (0 when the server could not be reached), stable
 * code, message, field, and the error's `details` object when it has one
 * (`usedBy` of a CONFLICT).
 */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly field: string | undefined;
  readonly details: Readonly<Record<string, unknown>> | undefined;

  constructor(
    status: number,
    code: string,
    message: string,
    field?: string,
    details?: Readonly<Record<string, unknown>>,
  ) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
    this.details = details;
  }
}

let unauthenticated: (() => void) | null = null;

/** Registers what happens when a call answers 401 (the session expired or was revoked). */
export function onUnauthenticated(handler: (() => void) | null): void {
  unauthenticated = handler;
}

export interface CallOptions {
  body?: unknown;
  /** The environment to operate on; omitted or `local` sends no header. */
  environment?: string;
  /** A 401 is the expected answer (login with bad credentials): do not leave the page. */
  allow401?: boolean;
  signal?: AbortSignal;
}

/** Calls the management API; resolves to the parsed JSON body (undefined for 204). */
export async function call<T>(method: string, path: string, options: CallOptions = {}): Promise<T> {
  // A relayed redirect comes back as an error naming its target (REMOTE_REDIRECT), never followed.
  const headers: Record<string, string> = { accept: 'application/json', 'x-p2pstream-redirects': 'report' };
  if (options.environment && options.environment !== LOCAL) headers[ENVIRONMENT_HEADER] = options.environment;
  let body: string | undefined;
  if (options.body !== undefined) {
    headers['content-type'] = 'application/json';
    body = JSON.stringify(options.body);
  }
  let response: Response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body,
      credentials: 'same-origin',
      cache: 'no-store',
      // Never follow a redirect with the admin's cookie and method (it could point at a local route).
      redirect: 'manual',
      signal: options.signal,
    });
  } catch (err) {
    if ((err as { name?: string }).name === 'AbortError') throw err;
    throw new ApiError(0, 'NETWORK', 'The server cannot be reached.');
  }
  if (response.type === 'opaqueredirect') {
    throw new ApiError(
      0,
      'REDIRECT',
      'The server answered with a redirect, which the console does not follow.',
    );
  }
  const text = await response.text();
  let json: unknown;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  if (response.ok) return json as T;
  const error = (
    json as { error?: { code?: unknown; message?: unknown; field?: unknown; details?: unknown } } | undefined
  )?.error;
  const details = error?.details;
  const failure = new ApiError(
    response.status,
    typeof error?.code === 'string' ? error.code : `HTTP_${response.status}`,
    typeof error?.message === 'string' ? error.message : `HTTP ${response.status}`,
    typeof error?.field === 'string' ? error.field : undefined,
    details !== null && typeof details === 'object' && !Array.isArray(details)
      ? (details as Record<string, unknown>)
      : undefined,
  );
  if (response.status === 401 && failure.code === 'UNAUTHENTICATED' && !options.allow401) unauthenticated?.();
  throw failure;
}

/** A client bound to one environment: what operational pages use. */
export interface Client {
  readonly environment: string;
  get<T>(path: string): Promise<T>;
  post<T>(path: string, body?: unknown): Promise<T>;
  put<T>(path: string, body: unknown): Promise<T>;
  patch<T>(path: string, body: unknown): Promise<T>;
  del(path: string): Promise<void>;
}

/** A {@link Client} for `environment` (`local` for this instance). */
export function clientFor(environment: string): Client {
  return {
    environment,
    get: (path) => call('GET', path, { environment }),
    post: (path, body) => call('POST', path, { environment, body: body ?? {} }),
    put: (path, body) => call('PUT', path, { environment, body }),
    patch: (path, body) => call('PATCH', path, { environment, body }),
    del: (path) => call('DELETE', path, { environment }),
  };
}

/** The client for this instance's own routes (setup, auth, environments registry). */
export const local: Client = clientFor(LOCAL);

/** A readable message for anything thrown by a call. */
export function messageOf(err: unknown): string {
  if (err instanceof ApiError)
    return err.code.startsWith('HTTP_') ? err.message : `${err.message} (${err.code})`;
  return err instanceof Error ? err.message : String(err);
}
