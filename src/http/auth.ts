/**
 * Request authentication: an API token (`Authorization: Bearer p2pat_…`) or
 * the session cookie. A bearer value is only ever checked as an API token;
 * an agent token (`p2pag_…`) never authenticates the API. Cookie-authenticated
 * writes must come from the same origin (Origin header).
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { AuthService, User } from '../domain/auth-service.js';
import type { TokenService } from '../domain/token-service.js';
import { AppError } from '../errors.js';
import { readCookie, SESSION_COOKIE } from './cookies.js';

export interface Principal {
  user: User | null;
  authMethod: 'session' | 'apiToken';
  sessionToken?: string;
  apiTokenId?: string;
}

declare module 'fastify' {
  interface FastifyRequest {
    principal: Principal | null;
  }
}

const UNSAFE_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

/** Reads the bearer value of an Authorization header, or null. */
export function bearerOf(request: FastifyRequest): string | null {
  const header = request.headers.authorization;
  if (typeof header !== 'string') return null;
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return match ? match[1]! : '';
}

/** True when the request's Origin (if any) is this server's own origin. */
export function isSameOrigin(request: FastifyRequest): boolean {
  const origin = request.headers.origin;
  if (origin === undefined) return false;
  const host = request.headers.host;
  return typeof host === 'string' && origin === `https://${host}`;
}

/** Resolves the caller, or throws UNAUTHENTICATED / FORBIDDEN. */
export function authenticateRequest(
  request: FastifyRequest,
  auth: AuthService,
  tokens: TokenService,
): Principal {
  const bearer = bearerOf(request);
  if (bearer !== null) {
    const token = tokens.authenticate(bearer);
    if (!token) throw new AppError('UNAUTHENTICATED', 'the API token is not valid');
    const admin = auth.firstUser();
    return { user: admin, authMethod: 'apiToken', apiTokenId: token.id };
  }
  const cookie = readCookie(request.headers.cookie, SESSION_COOKIE);
  const session = cookie ? auth.authenticateSession(cookie) : null;
  if (!session || !cookie) throw new AppError('UNAUTHENTICATED', 'log in or send an API token');
  if (UNSAFE_METHODS.has(request.method) && !isSameOrigin(request)) {
    throw new AppError('FORBIDDEN', 'cross-origin request refused');
  }
  return { user: session.user, authMethod: 'session', sessionToken: cookie };
}

/** A fastify onRequest hook requiring an authenticated caller. */
export function requireAuth(auth: AuthService, tokens: TokenService) {
  return async (request: FastifyRequest, _reply: FastifyReply): Promise<void> => {
    request.principal = authenticateRequest(request, auth, tokens);
  };
}
