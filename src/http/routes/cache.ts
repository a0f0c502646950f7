/**
 * Response cache routes (operational, docs/pipeline.md "The cache stage"):
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
import { PurgeInput, Rule, RuleInput, Settings, SettingsInput, Stats } from '../schemas/cache.js';
import { errorResponses, IdParams, NoContent } from '../schemas/common.js';

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
