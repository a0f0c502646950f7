/**
 * Response cache routes (operational, DESIGN.md §10):
 *
 * - `GET/PUT /api/v1/cache/settings` → the settings;
 * - `GET/POST /api/v1/cache/rules`, `GET/PATCH/DELETE /api/v1/cache/rules/:id`
 *   → `{rules}` / `{rule}` (create 201, delete 204);
 * - `POST /api/v1/cache/purge` `{all?, host?, pathPrefix?, ruleId?}` → `{purged}`;
 * - `GET /api/v1/cache/stats` → `{entries, memoryBytes, diskBytes, hits, misses, hitRatio, …}`.
 *
 * Errors come from CacheService: VALIDATION_FAILED, CONFLICT, NOT_FOUND.
 */
import type { FastifyPluginAsync } from 'fastify';
import { Type } from 'typebox';
import type { CacheService } from '../../domain/cache-service.js';
import { errorResponses, IdParams, NoContent, Timestamp } from '../schemas/common.js';

const Settings = Type.Object({
  enabled: Type.Boolean(),
  memoryMiB: Type.Integer(),
  diskMiB: Type.Integer(),
  hotObjectKiB: Type.Integer(),
  maxEntries: Type.Integer(),
  cleanupSeconds: Type.Integer(),
});

const SettingsInput = Type.Object({
  enabled: Type.Optional(Type.Boolean()),
  memoryMiB: Type.Optional(Type.Integer({ minimum: 1, maximum: 65_536 })),
  diskMiB: Type.Optional(Type.Integer({ minimum: 0, maximum: 16_777_216 })),
  hotObjectKiB: Type.Optional(Type.Integer({ minimum: 1, maximum: 65_536 })),
  maxEntries: Type.Optional(Type.Integer({ minimum: 1, maximum: 10_000_000 })),
  cleanupSeconds: Type.Optional(Type.Integer({ minimum: 5, maximum: 86_400 })),
});

const Ttl = Type.Object({
  mode: Type.Union([Type.Literal('origin'), Type.Literal('fixed')]),
  seconds: Type.Integer(),
});

const QueryMode = Type.Union([Type.Literal('include'), Type.Literal('ignore'), Type.Literal('allowlist')]);

const Rule = Type.Object({
  id: Type.String(),
  name: Type.String(),
  priority: Type.Integer(),
  expression: Type.String(),
  ttl: Ttl,
  queryMode: QueryMode,
  queryAllowlist: Type.Array(Type.String()),
  varyHeaders: Type.Array(Type.String()),
  maxObjectBytes: Type.Integer(),
  enabled: Type.Boolean(),
  createdAt: Timestamp,
  updatedAt: Timestamp,
});

/** Fields a client sends; the service checks them in detail (fields it does not know are refused). */
const RuleInput = Type.Object({
  name: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  priority: Type.Optional(Type.Integer()),
  expression: Type.Optional(Type.String({ maxLength: 4096 })),
  ttl: Type.Optional(Type.Object({ mode: Type.String(), seconds: Type.Optional(Type.Integer()) })),
  queryMode: Type.Optional(QueryMode),
  queryAllowlist: Type.Optional(Type.Array(Type.String())),
  varyHeaders: Type.Optional(Type.Array(Type.String())),
  maxObjectBytes: Type.Optional(Type.Integer({ minimum: 1 })),
  enabled: Type.Optional(Type.Boolean()),
});

const Stats = Type.Object({
  entries: Type.Integer(),
  memoryBytes: Type.Integer(),
  diskBytes: Type.Integer(),
  hits: Type.Integer(),
  misses: Type.Integer(),
  hitRatio: Type.Number(),
  stale: Type.Integer(),
  revalidated: Type.Integer(),
  expired: Type.Integer(),
  bypasses: Type.Integer(),
  evictions: Type.Integer(),
});

const PurgeInput = Type.Object({
  all: Type.Optional(Type.Boolean()),
  host: Type.Optional(Type.String()),
  pathPrefix: Type.Optional(Type.String()),
  ruleId: Type.Optional(Type.String()),
});

export function createCachePlugin(deps: { cache: CacheService }): FastifyPluginAsync {
  const { cache } = deps;
  return async (app) => {
    app.get(
      '/api/v1/cache/settings',
      { schema: { response: { 200: Settings, ...errorResponses } } },
      async () => cache.settings(),
    );
    app.put(
      '/api/v1/cache/settings',
      { schema: { body: SettingsInput, response: { 200: Settings, ...errorResponses } } },
      async (request) => cache.updateSettings(request.body),
    );
    app.get(
      '/api/v1/cache/rules',
      { schema: { response: { 200: Type.Object({ rules: Type.Array(Rule) }), ...errorResponses } } },
      async () => ({
        rules: cache.listRules(),
      }),
    );
    app.post(
      '/api/v1/cache/rules',
      { schema: { body: RuleInput, response: { 201: Type.Object({ rule: Rule }), ...errorResponses } } },
      async (request, reply) => reply.code(201).send({ rule: await cache.createRule(request.body) }),
    );
    app.get<{ Params: { id: string } }>(
      '/api/v1/cache/rules/:id',
      { schema: { params: IdParams, response: { 200: Type.Object({ rule: Rule }), ...errorResponses } } },
      async (request) => ({ rule: cache.getRule(request.params.id) }),
    );
    app.patch<{ Params: { id: string } }>(
      '/api/v1/cache/rules/:id',
      {
        schema: {
          params: IdParams,
          body: RuleInput,
          response: { 200: Type.Object({ rule: Rule }), ...errorResponses },
        },
      },
      async (request) => ({ rule: await cache.updateRule(request.params.id, request.body) }),
    );
    app.delete<{ Params: { id: string } }>(
      '/api/v1/cache/rules/:id',
      { schema: { params: IdParams, response: { 204: NoContent, ...errorResponses } } },
      async (request, reply) => {
        await cache.removeRule(request.params.id);
        return reply.code(204).send();
      },
    );
    app.post(
      '/api/v1/cache/purge',
      {
        schema: {
          body: PurgeInput,
          response: { 200: Type.Object({ purged: Type.Integer() }), ...errorResponses },
        },
      },
      async (request) => cache.purge(request.body),
    );
    app.get('/api/v1/cache/stats', { schema: { response: { 200: Stats, ...errorResponses } } }, async () =>
      cache.stats(),
    );
  };
}
