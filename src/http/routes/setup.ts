/** First-admin setup and login/logout/me: local routes, never relayed. */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { AuthService } from '../../domain/auth-service.js';
import type { TokenService } from '../../domain/token-service.js';
import { AppError } from '../../errors.js';
import { requireAuth } from '../auth.js';
import { clearedSessionCookie, sessionCookie } from '../cookies.js';
import {
  changePasswordSchema,
  loginSchema,
  logoutSchema,
  meSchema,
  setupSchema,
  setupStatusSchema,
} from '../schemas/auth.js';

export interface AuthPluginDeps {
  auth: AuthService;
  tokens: TokenService;
  /** Told of each password login's outcome (the Prometheus metrics count them). */
  onLogin?: (outcome: 'success' | 'invalid' | 'throttled') => void;
}

/** The setup and auth routes as a plugin to register at the root. */
export function createAuthPlugin(deps: AuthPluginDeps): FastifyPluginAsyncTypebox {
  const { auth, tokens } = deps;
  const onLogin = deps.onLogin ?? (() => {});
  return async (app) => {
    app.get('/api/v1/setup', { schema: setupStatusSchema }, async () => ({
      setupRequired: auth.setupRequired,
    }));

    app.post('/api/v1/setup', { schema: setupSchema }, async (request, reply) => {
      const grant = await auth.setup(request.body, request.ip);
      reply.header('set-cookie', sessionCookie(grant.sessionToken, grant.expiresAt));
      return reply.code(201).send({ user: grant.user });
    });

    app.post('/api/v1/auth/login', { schema: loginSchema }, async (request, reply) => {
      const grant = await auth.login(request.body, request.ip).catch((err: unknown) => {
        if (err instanceof AppError && err.code === 'INVALID_CREDENTIALS') onLogin('invalid');
        if (err instanceof AppError && err.code === 'LOGIN_THROTTLED') onLogin('throttled');
        throw err;
      });
      onLogin('success');
      reply.header('set-cookie', sessionCookie(grant.sessionToken, grant.expiresAt));
      return { user: grant.user };
    });

    app.post(
      '/api/v1/auth/logout',
      { schema: logoutSchema, onRequest: requireAuth(auth, tokens) },
      async (request, reply) => {
        if (request.principal?.sessionToken) await auth.logout(request.principal.sessionToken);
        reply.header('set-cookie', clearedSessionCookie());
        return reply.code(204).send(null);
      },
    );

    app.post(
      '/api/v1/auth/password',
      { schema: changePasswordSchema, onRequest: requireAuth(auth, tokens) },
      async (request, reply) => {
        const user = request.principal?.user;
        if (!user) throw new AppError('UNAUTHENTICATED', 'authentication required');
        await auth.changePassword(user.id, request.body, request.ip, request.principal?.sessionToken);
        return reply.code(204).send(null);
      },
    );

    app.get(
      '/api/v1/auth/me',
      { schema: meSchema, onRequest: requireAuth(auth, tokens) },
      async (request) => ({
        user: request.principal?.user ?? null,
        authMethod: request.principal?.authMethod ?? 'session',
      }),
    );
  };
}
