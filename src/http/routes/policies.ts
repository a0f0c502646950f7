/**
 * Traffic policy routes (operational, docs/pipeline.md "The policy stages"):
 *
 * - `GET/POST /api/v1/policies/waf`, `GET/PATCH/DELETE /api/v1/policies/waf/:id` → `{rules}` / `{rule}`;
 * - `GET/POST /api/v1/policies/rate-limits`, `…/rate-limits/:id` → `{rules}` / `{rule}`;
 * - `GET/POST /api/v1/policies/shapers`, `…/shapers/:id` → `{shapers}` / `{shaper}`;
 * - `POST /api/v1/policies/test` `{method, host, path, headers?, ip?, listenerId?}` → `{stages}`;
 * - `POST /api/v1/policies/validate` `{expression}` → `{valid, error: {message, position, line, column} | null}`
 *   (checks a match expression without saving; the console calls it as the admin types).
 *
 * Errors come from PolicyService: VALIDATION_FAILED (with `details.field`,
 * and `position`/`line`/`column` for expressions), CONFLICT, NOT_FOUND.
 */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { PolicyService } from '../../domain/policy-service.js';
import {
  rateLimitSchemas,
  shaperSchemas,
  testPoliciesSchema,
  validateExpressionSchema,
  wafSchemas,
} from '../schemas/policies.js';

interface Crud {
  path: string;
  schemas: typeof wafSchemas;
  ops: {
    list(): unknown[];
    get(id: string): unknown;
    create(body: unknown): Promise<unknown>;
    update(id: string, body: unknown): Promise<unknown>;
    remove(id: string): Promise<void>;
  };
}

export function createPoliciesPlugin(deps: { policies: PolicyService }): FastifyPluginAsyncTypebox {
  const { policies } = deps;
  const kinds: Crud[] = [
    {
      path: '/api/v1/policies/waf',
      schemas: wafSchemas,
      ops: {
        list: () => policies.listWaf(),
        get: (id) => policies.getWaf(id),
        create: (b) => policies.createWaf(b),
        update: (id, b) => policies.updateWaf(id, b),
        remove: (id) => policies.removeWaf(id),
      },
    },
    {
      path: '/api/v1/policies/rate-limits',
      schemas: rateLimitSchemas,
      ops: {
        list: () => policies.listRateLimits(),
        get: (id) => policies.getRateLimit(id),
        create: (b) => policies.createRateLimit(b),
        update: (id, b) => policies.updateRateLimit(id, b),
        remove: (id) => policies.removeRateLimit(id),
      },
    },
    {
      path: '/api/v1/policies/shapers',
      schemas: shaperSchemas,
      ops: {
        list: () => policies.listShapers(),
        get: (id) => policies.getShaper(id),
        create: (b) => policies.createShaper(b),
        update: (id, b) => policies.updateShaper(id, b),
        remove: (id) => policies.removeShaper(id),
      },
    },
  ];
  return async (app) => {
    for (const { path, schemas, ops } of kinds) {
      const { list, single } = schemas.names;
      app.get(path, { schema: schemas.list }, async () => ({ [list]: ops.list() }));
      app.post(path, { schema: schemas.create }, async (request, reply) =>
        reply.code(201).send({ [single]: await ops.create(request.body) }),
      );
      app.get(`${path}/:id`, { schema: schemas.get }, async (request) => ({
        [single]: ops.get(request.params.id),
      }));
      app.patch(`${path}/:id`, { schema: schemas.update }, async (request) => ({
        [single]: await ops.update(request.params.id, request.body),
      }));
      app.delete(`${path}/:id`, { schema: schemas.remove }, async (request, reply) => {
        await ops.remove(request.params.id);
        return reply.code(204).send(null);
      });
    }
    app.post('/api/v1/policies/validate', { schema: validateExpressionSchema }, async (request) =>
      policies.validateExpression(request.body),
    );
    app.post('/api/v1/policies/test', { schema: testPoliciesSchema }, async (request) =>
      policies.test(request.body),
    );
  };
}
