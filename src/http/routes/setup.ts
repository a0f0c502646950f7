/** First-admin setup and login/logout/me: local routes, never relayed. */
import type { FastifyInstance } from 'fastify';
import type { AuthService } from '../../domain/auth-service.js';
import type { TokenService } from '../../domain/token-service.js';
import { requireAuth } from '../auth.js';
import { clearedSessionCookie, sessionCookie } from '../cookies.js';

export function registerAuthRoutes(
  app: FastifyInstance,
  deps: { auth: AuthService; tokens: TokenService },
): void {
  const { auth, tokens } = deps;

  app.get('/api/v1/setup', async () => ({ setupRequired: auth.setupRequired }));

  app.post('/api/v1/setup', async (request, reply) => {
    const grant = await auth.setup(request.body);
    reply.header('set-cookie', sessionCookie(grant.sessionToken, grant.expiresAt));
    return reply.code(201).send({ user: grant.user });
  });

  app.post('/api/v1/auth/login', async (request, reply) => {
    const grant = await auth.login(request.body, request.ip);
    reply.header('set-cookie', sessionCookie(grant.sessionToken, grant.expiresAt));
    return { user: grant.user };
  });

  app.post('/api/v1/auth/logout', { onRequest: requireAuth(auth, tokens) }, async (request, reply) => {
    if (request.principal?.sessionToken) await auth.logout(request.principal.sessionToken);
    reply.header('set-cookie', clearedSessionCookie());
    return reply.code(204).send();
  });

  app.get('/api/v1/auth/me', { onRequest: requireAuth(auth, tokens) }, async (request) => ({
    user: request.principal?.user ?? null,
    authMethod: request.principal?.authMethod,
  }));
}
