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
import type { FastifyPluginAsync } from 'fastify';
import { type TSchema, Type } from 'typebox';
import type { PolicyService } from '../../domain/policy-service.js';
import { errorResponses, IdParams, NoContent, Nullable } from '../schemas/common.js';
import {
  RateLimitInput,
  RateLimitSchema,
  ShaperInput,
  ShaperSchema,
  TestInput,
  TestResult,
  WafInput,
  WafRuleSchema,
} from '../schemas/policies.js';

interface Crud {
  path: string;
  list: string;
  single: string;
  schema: TSchema;
  input: TSchema;
  ops: {
    list(): unknown[];
    get(id: string): unknown;
    create(body: unknown): Promise<unknown>;
    update(id: string, body: unknown): Promise<unknown>;
    remove(id: string): Promise<void>;
  };
}

export function createPoliciesPlugin(deps: { policies: PolicyService }): FastifyPluginAsync {
  const { policies } = deps;
  const kinds: Crud[] = [
    {
      path: '/api/v1/policies/waf',
      list: 'rules',
      single: 'rule',
      schema: WafRuleSchema,
      input: WafInput,
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
      list: 'rules',
      single: 'rule',
      schema: RateLimitSchema,
      input: RateLimitInput,
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
      list: 'shapers',
      single: 'shaper',
      schema: ShaperSchema,
      input: ShaperInput,
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
    for (const kind of kinds) {
      const one = Type.Object({ [kind.single]: kind.schema });
      app.get(
        kind.path,
        {
          schema: {
            response: { 200: Type.Object({ [kind.list]: Type.Array(kind.schema) }), ...errorResponses },
          },
        },
        async () => ({ [kind.list]: kind.ops.list() }),
      );
      app.post(
        kind.path,
        { schema: { body: kind.input, response: { 201: one, ...errorResponses } } },
        async (request, reply) =>
          reply.code(201).send({ [kind.single]: await kind.ops.create(request.body) }),
      );
      app.get<{ Params: { id: string } }>(
        `${kind.path}/:id`,
        { schema: { params: IdParams, response: { 200: one, ...errorResponses } } },
        async (request) => ({ [kind.single]: kind.ops.get(request.params.id) }),
      );
      app.patch<{ Params: { id: string } }>(
        `${kind.path}/:id`,
        { schema: { params: IdParams, body: kind.input, response: { 200: one, ...errorResponses } } },
        async (request) => ({ [kind.single]: await kind.ops.update(request.params.id, request.body) }),
      );
      app.delete<{ Params: { id: string } }>(
        `${kind.path}/:id`,
        { schema: { params: IdParams, response: { 204: NoContent, ...errorResponses } } },
        async (request, reply) => {
          await kind.ops.remove(request.params.id);
          return reply.code(204).send();
        },
      );
    }
    app.post(
      '/api/v1/policies/validate',
      {
        schema: {
          body: Type.Object({ expression: Nullable(Type.String()) }, { additionalProperties: false }),
          response: {
            200: Type.Object({
              valid: Type.Boolean(),
              error: Nullable(
                Type.Object({
                  message: Type.String(),
                  position: Type.Integer(),
                  line: Type.Integer(),
                  column: Type.Integer(),
                }),
              ),
            }),
            ...errorResponses,
          },
        },
      },
      async (request) => policies.validateExpression(request.body),
    );
    app.post(
      '/api/v1/policies/test',
      { schema: { body: TestInput, response: { 200: TestResult, ...errorResponses } } },
      async (request) => policies.test(request.body),
    );
  };
}
