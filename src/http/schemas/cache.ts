/**
 * Schemas of the response cache routes (docs/pipeline.md "The cache stage");
 * the console derives its types from them.
 */
import { Type } from 'typebox';
import { errorResponses, IdParams, NoContent, Timestamp } from './common.js';

export const Settings = Type.Object({
  enabled: Type.Boolean(),
  memoryMiB: Type.Integer(),
  diskMiB: Type.Integer(),
  hotObjectKiB: Type.Integer(),
  maxEntries: Type.Integer(),
  cleanupSeconds: Type.Integer(),
});

export const SettingsInput = Type.Object({
  enabled: Type.Optional(Type.Boolean()),
  memoryMiB: Type.Optional(Type.Integer({ minimum: 1, maximum: 65_536 })),
  diskMiB: Type.Optional(Type.Integer({ minimum: 0, maximum: 16_777_216 })),
  hotObjectKiB: Type.Optional(Type.Integer({ minimum: 1, maximum: 65_536 })),
  maxEntries: Type.Optional(Type.Integer({ minimum: 1, maximum: 10_000_000 })),
  cleanupSeconds: Type.Optional(Type.Integer({ minimum: 5, maximum: 86_400 })),
});

export const Ttl = Type.Object({
  mode: Type.Union([Type.Literal('origin'), Type.Literal('fixed')]),
  seconds: Type.Integer(),
});

export const QueryMode = Type.Union([
  Type.Literal('include'),
  Type.Literal('ignore'),
  Type.Literal('allowlist'),
]);

export const Rule = Type.Object({
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
export const RuleInput = Type.Object({
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

export const Stats = Type.Object({
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

export const PurgeInput = Type.Object({
  all: Type.Optional(Type.Boolean()),
  host: Type.Optional(Type.String()),
  pathPrefix: Type.Optional(Type.String()),
  ruleId: Type.Optional(Type.String()),
});

const RuleReply = Type.Object({ rule: Rule });

export const getCacheSettingsSchema = {
  summary: 'The cache settings',
  response: { 200: Settings, ...errorResponses },
};
export const updateCacheSettingsSchema = {
  summary: 'Change the cache settings (sizes apply at once)',
  body: SettingsInput,
  response: { 200: Settings, ...errorResponses },
};
export const listCacheRulesSchema = {
  summary: 'List cache rules',
  response: { 200: Type.Object({ rules: Type.Array(Rule) }), ...errorResponses },
};
export const createCacheRuleSchema = {
  summary: 'Create a cache rule',
  body: RuleInput,
  response: { 201: RuleReply, ...errorResponses },
};
export const getCacheRuleSchema = {
  summary: 'One cache rule',
  params: IdParams,
  response: { 200: RuleReply, ...errorResponses },
};
export const updateCacheRuleSchema = {
  summary: 'Change a cache rule',
  params: IdParams,
  body: RuleInput,
  response: { 200: RuleReply, ...errorResponses },
};
export const deleteCacheRuleSchema = {
  summary: 'Delete a cache rule (its entries are purged)',
  params: IdParams,
  response: { 204: NoContent, ...errorResponses },
};
export const purgeCacheSchema = {
  summary: 'Purge cached responses (all, or by host, path prefix or rule)',
  body: PurgeInput,
  response: { 200: Type.Object({ purged: Type.Integer() }), ...errorResponses },
};
export const cacheStatsSchema = {
  summary: 'Cache statistics',
  response: { 200: Stats, ...errorResponses },
};
