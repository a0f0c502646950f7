/**
 * Route schemas: every route declares one (body, params, query, reply), input
 * that breaks it is VALIDATION_FAILED naming the field path, and replies are
 * serialized through it, so a field the schema does not list never leaves.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { FastifyInstance, FastifyPluginAsync, RouteOptions } from 'fastify';
import { Type } from 'typebox';
import { afterEach, describe, expect, it } from 'vitest';
import { buildApp } from '../../src/app.js';
import { AuthService } from '../../src/domain/auth-service.js';
import { createSystemService } from '../../src/domain/system-service.js';
import { TokenService } from '../../src/domain/token-service.js';
import { errorResponses } from '../../src/http/schemas/common.js';
import { createLogger } from '../../src/logger.js';
import { LowdbStore } from '../../src/storage/lowdb-store.js';
import { startTestServer, type TestServer } from '../helpers/server.js';

/** What a route's schema lacks: a reply schema always, params with `:x`, a body for PUT/PATCH. */
function schemaGaps(route: RouteOptions): string[] {
  const schema = route.schema as Record<string, unknown> | undefined;
  if (!schema) return ['schema'];
  const gaps: string[] = [];
  if (!schema.response) gaps.push('response');
  if (route.url.includes(':') && !schema.params) gaps.push('params');
  const methods = ([] as string[]).concat(route.method);
  if (methods.some((m) => m === 'PUT' || m === 'PATCH') && !schema.body) gaps.push('body');
  return gaps;
}

let server: TestServer | undefined;
let app: FastifyInstance | undefined;
let dataDir: string | undefined;

afterEach(async () => {
  await server?.close();
  await app?.close();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
  server = undefined;
  app = undefined;
  dataDir = undefined;
});

describe('route schemas', () => {
  it('are declared by every route of the server', async () => {
    const routes: RouteOptions[] = [];
    server = await startTestServer({ onRoute: (route) => routes.push(route) });
    const names = new Set<string>();
    const missing: string[] = [];
    for (const route of routes) {
      for (const method of ([] as string[]).concat(route.method)) {
        if (method === 'HEAD') continue; // fastify's automatic HEAD twin shares the GET's schema
        const name = `${method} ${route.url}`;
        names.add(name);
        const gaps = schemaGaps(route);
        if (gaps.length > 0) missing.push(`${name}: no ${gaps.join(', ')}`);
      }
    }
    expect(names.size).toBeGreaterThan(20);
    expect(missing).toEqual([]);
  });

  it('answers input that breaks a real route schema with VALIDATION_FAILED naming the field', async () => {
    server = await startTestServer();
    const cookie = await server.setupAdmin();
    const wrongType = await server.request('POST', '/api/v1/tokens', { cookie, body: { name: 5 } });
    expect(wrongType.status).toBe(400);
    expect(wrongType.json.error).toMatchObject({
      code: 'VALIDATION_FAILED',
      field: 'name',
      details: { field: 'name' },
    });
    const unknown = await server.request('POST', '/api/v1/tokens', {
      cookie,
      body: { name: 'ci', scope: 'all' },
    });
    expect(unknown.json.error).toMatchObject({ code: 'VALIDATION_FAILED', field: 'scope' });
    const good = await server.request('POST', '/api/v1/tokens', { cookie, body: { name: 'ci' } });
    expect(good.status).toBe(201);
    expect(Object.keys(good.json).sort()).toEqual(['apiToken', 'token']);
  });
});

describe('the schema plumbing of buildApp', () => {
  const Member = Type.Object({ url: Type.String({ format: 'uri' }), weight: Type.Integer({ minimum: 1 }) });
  const probe: FastifyPluginAsync = async (scope) => {
    scope.post(
      '/probe',
      {
        schema: {
          body: Type.Object(
            { name: Type.String(), members: Type.Array(Member) },
            { additionalProperties: false },
          ),
          querystring: Type.Object({ limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 10 })) }),
          response: { 200: Type.Object({ name: Type.String(), limit: Type.Integer() }), ...errorResponses },
        },
      },
      async (request) => {
        const body = request.body as { name: string };
        const query = request.query as { limit?: number };
        // The extra field stands for a sealed secret a service forgot to strip.
        return { name: body.name, limit: query.limit ?? 0, sealedToken: 'v1:secret' };
      },
    );
  };

  async function probeApp(): Promise<FastifyInstance> {
    dataDir = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-schemas-'));
    const store = await LowdbStore.open(dataDir);
    const built = await buildApp({
      logger: createLogger('silent'),
      auth: new AuthService({ store, setupToken: 'x'.repeat(20) }),
      tokens: new TokenService({ store }),
      system: createSystemService({ store }),
      localPlugins: [probe],
    });
    built.addHook('onClose', async () => store.close());
    return built;
  }

  const post = (target: FastifyInstance, url: string, body: unknown) =>
    target.inject({ method: 'POST', url, payload: body as object });

  it('names the field path of a nested failure, a missing field and an unknown field', async () => {
    app = await probeApp();
    const nested = await post(app, '/probe', { name: 'a', members: [{ url: 'not a url', weight: 1 }] });
    expect(nested.statusCode).toBe(400);
    expect(nested.json().error).toMatchObject({
      code: 'VALIDATION_FAILED',
      field: 'members.0.url',
      details: { field: 'members.0.url' },
    });
    const missing = await post(app, '/probe', { name: 'a', members: [{ url: 'https://a.example' }] });
    expect(missing.json().error).toMatchObject({ code: 'VALIDATION_FAILED', field: 'members.0.weight' });
    const unknown = await post(app, '/probe', { name: 'a', members: [], extra: true });
    expect(unknown.json().error).toMatchObject({ field: 'extra', message: 'extra: is not a known field' });
    // Bodies are not coerced: a number where a string belongs is refused, not turned into "5".
    const coerced = await post(app, '/probe', { name: 5, members: [] });
    expect(coerced.json().error).toMatchObject({ code: 'VALIDATION_FAILED', field: 'name' });
    const notObject = await post(app, '/probe', [1, 2]);
    expect(notObject.json().error.code).toBe('VALIDATION_FAILED');
  });

  it('coerces and checks query strings, naming the parameter', async () => {
    app = await probeApp();
    const ok = await post(app, '/probe?limit=5', { name: 'a', members: [] });
    expect(ok.statusCode).toBe(200);
    expect(ok.json()).toEqual({ name: 'a', limit: 5 });
    const bad = await post(app, '/probe?limit=50', { name: 'a', members: [] });
    expect(bad.statusCode).toBe(400);
    expect(bad.json().error).toMatchObject({ code: 'VALIDATION_FAILED', field: 'limit' });
  });

  it('serializes a reply through its schema, so a field it does not list never leaves', async () => {
    app = await probeApp();
    const res = await post(app, '/probe', { name: 'a', members: [] });
    expect(res.statusCode).toBe(200);
    expect(res.body).not.toContain('sealedToken');
    expect(res.body).not.toContain('v1:secret');
  });
});
