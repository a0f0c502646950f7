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
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { CacheService } from '../../domain/cache-service.js';
import {
  cacheStatsSchema,
  createCacheRuleSchema,
  deleteCacheRuleSchema,
  getCacheRuleSchema,
  getCacheSettingsSchema,
  listCacheRulesSchema,
  purgeCacheSchema,
  updateCacheRuleSchema,
  updateCacheSettingsSchema,
} from '../schemas/cache.js';

export function createCachePlugin(deps: { cache: CacheService }): FastifyPluginAsyncTypebox {
  const { cache } = deps;
  return async (app) => {
    app.get('/api/v1/cache/settings', { schema: getCacheSettingsSchema }, async () => cache.settings());
    app.put('/api/v1/cache/settings', { schema: updateCacheSettingsSchema }, async (request) =>
      cache.updateSettings(request.body),
    );
    app.get('/api/v1/cache/rules', { schema: listCacheRulesSchema }, async () => ({
      rules: cache.listRules(),
    }));
    app.post('/api/v1/cache/rules', { schema: createCacheRuleSchema }, async (request, reply) =>
      reply.code(201).send({ rule: await cache.createRule(request.body) }),
    );
    app.get('/api/v1/cache/rules/:id', { schema: getCacheRuleSchema }, async (request) => ({
      rule: cache.getRule(request.params.id),
    }));
    app.patch('/api/v1/cache/rules/:id', { schema: updateCacheRuleSchema }, async (request) => ({
      rule: await cache.updateRule(request.params.id, request.body),
    }));
    app.delete('/api/v1/cache/rules/:id', { schema: deleteCacheRuleSchema }, async (request, reply) => {
      await cache.removeRule(request.params.id);
      return reply.code(204).send(null);
    });
    app.post('/api/v1/cache/purge', { schema: purgeCacheSchema }, async (request) =>
      cache.purge(request.body),
    );
    app.get('/api/v1/cache/stats', { schema: cacheStatsSchema }, async () => cache.stats());
  };
}
