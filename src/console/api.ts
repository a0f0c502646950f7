/**
 * The console's one HTTP client: JSON in and out, same-origin session cookie,
 * errors as {@link ApiError} (the server's `{error: {code, message, field?}}`).
 * Operational calls carry `X-P2PStream-Environment`; local ones never do.
 * A 401 on any call except login/setup hands over to the registered
 * unauthenticated handler (back to the login page, keeping the current page).
 */

export const ENVIRONMENT_HEADER = 'X-P2PStream-Environment';
export const LOCAL = 'local';

/** A failed call: HTTP status (0 when the server could not be reached), stable code, message, field. */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly field: string | undefined;

  constructor(status: number, code: string, message: string, field?: string) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
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
  const headers: Record<string, string> = { accept: 'application/json' };
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
      signal: options.signal,
    });
  } catch (err) {
    if ((err as { name?: string }).name === 'AbortError') throw err;
    throw new ApiError(0, 'NETWORK', 'The server cannot be reached.');
  }
  const text = await response.text();
  let json: unknown;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  if (response.ok) return json as T;
  const error = (json as { error?: { code?: unknown; message?: unknown; field?: unknown } } | undefined)
    ?.error;
  const failure = new ApiError(
    response.status,
    typeof error?.code === 'string' ? error.code : `HTTP_${response.status}`,
    typeof error?.message === 'string' ? error.message : `HTTP ${response.status}`,
    typeof error?.field === 'string' ? error.field : undefined,
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
