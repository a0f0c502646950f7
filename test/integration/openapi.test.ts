/**
 * `GET /api/v1/openapi.json`: the OpenAPI 3.1 description generated from the
 * route schemas, readable without credentials, naming every route of the
 * server and every error code of the closed table.
 */
import type { RouteOptions } from 'fastify';
import { afterEach, describe, expect, it } from 'vitest';
import { ERROR_CODES } from '../../src/errors.js';
import { startTestServer, type TestServer } from '../helpers/server.js';

/** The error codes of docs/architecture.md "Errors", written out: the document must name each. */
const PUBLIC_ERROR_CODES = [
  'UNAUTHENTICATED',
  'FORBIDDEN',
  'NOT_FOUND',
  'VALIDATION_FAILED',
  'CONFLICT',
  'SETUP_DONE',
  'INVALID_CREDENTIALS',
  'LOGIN_THROTTLED',
  'ENVIRONMENT_NOT_FOUND',
  'ENVIRONMENT_DISABLED',
  'ENVIRONMENT_UNTRUSTED',
  'CERTIFICATE_CHANGED',
  'CERTIFICATE_EXPIRED',
  'CERTIFICATE_HOSTNAME_MISMATCH',
  'AGENT_NOT_FOUND',
  'AGENT_OFFLINE',
  'ENVIRONMENT_UNREACHABLE',
  'ENVIRONMENT_TIMEOUT',
  'REMOTE_UNAUTHORIZED',
  'PAYLOAD_TOO_LARGE',
];

let server: TestServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

// fastify's `/a/:id` is OpenAPI's `/a/{id}`.
const openApiPath = (url: string) => url.replace(/:([A-Za-z0-9_]+)/g, '{$1}');

describe('GET /api/v1/openapi.json', () => {
  it('describes every route and every error code, without credentials', async () => {
    const routes: RouteOptions[] = [];
    server = await startTestServer({ onRoute: (route) => routes.push(route) });
    const res = await server.request('GET', '/api/v1/openapi.json');
    expect(res.status).toBe(200);
    const doc = res.json as {
      openapi: string;
      info: { version: string };
      paths: Record<string, Record<string, { responses?: Record<string, unknown> }>>;
    };
    expect(doc.openapi).toBe('3.1.0');

    const missing: string[] = [];
    let described = 0;
    for (const route of routes) {
      if ((route.schema as { hide?: boolean } | undefined)?.hide) continue;
      for (const method of ([] as string[]).concat(route.method)) {
        if (method === 'HEAD') continue;
        const operation = doc.paths[openApiPath(route.url)]?.[method.toLowerCase()];
        if (!operation?.responses) missing.push(`${method} ${route.url}`);
        else described += 1;
      }
    }
    expect(missing).toEqual([]);
    expect(described).toBeGreaterThan(20);
    expect(doc.paths['/api/v1/tokens/{id}']?.patch).toBeDefined();
    expect(doc.paths['/metrics']?.get).toBeDefined();
    // The console's files are served but are not API.
    expect(doc.paths['/assets/*']).toBeUndefined();

    for (const code of [...PUBLIC_ERROR_CODES, ...Object.keys(ERROR_CODES)]) expect(res.text).toContain(code);
  });

  it('documents request bodies, replies and the environment selector from the schemas', async () => {
    server = await startTestServer();
    const doc = (await server.request('GET', '/api/v1/openapi.json')).json;
    const create = doc.paths['/api/v1/tokens'].post;
    const body = create.requestBody.content['application/json'].schema;
    expect(body.required).toEqual(['name']);
    expect(body.additionalProperties).toBe(false);
    const created = create.responses['201'].content['application/json'].schema;
    expect(Object.keys(created.properties).sort()).toEqual(['apiToken', 'token']);
    expect(create.responses['4XX']).toBeDefined();
    const parameters = create.parameters.map((p: { in: string; name: string }) => `${p.in}:${p.name}`);
    expect(parameters).toEqual(
      expect.arrayContaining(['query:environment', 'header:x-p2pstream-environment']),
    );
    // Local routes take no environment selector.
    const login = doc.paths['/api/v1/auth/login'].post;
    expect(login.parameters ?? []).toEqual([]);
    expect(login.security).toEqual([]);
  });
});
