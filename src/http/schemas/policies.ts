/** Schemas of the traffic policy routes (docs/pipeline.md; README "Traffic policies"). */
import { type TSchema, Type } from 'typebox';
import { RATE_LIMIT_ALGORITHMS, WAF_ACTIONS } from '../../domain/policy-types.js';
import { errorResponses, IdParams, NoContent, Nullable } from './common.js';

const Common = {
  id: Type.String(),
  name: Type.String(),
  priority: Type.Integer(),
  expression: Type.String({
    description: 'CEL over method, host, path, query, headers, ip, listener; empty = all',
  }),
  enabled: Type.Boolean(),
  createdAt: Type.String(),
  updatedAt: Type.String(),
};

export const AutoSchema = Type.Object({
  requestsPerSecond: Nullable(Type.Number()),
  errorRatio: Nullable(Type.Number()),
  forSeconds: Type.Integer(),
  coolDownSeconds: Type.Integer(),
});

export const WafRuleSchema = Type.Object({
  ...Common,
  action: Type.Enum([...WAF_ACTIONS]),
  status: Type.Integer(),
  templateId: Nullable(Type.String()),
  mode: Type.Enum(['always', 'auto']),
  auto: Nullable(AutoSchema),
  passTtlSeconds: Type.Integer(),
  state: Nullable(
    Type.Object({
      activeListeners: Type.Array(Type.String()),
      switches: Type.Array(
        Type.Object({
          at: Type.String(),
          listenerId: Type.String(),
          active: Type.Boolean(),
          reason: Type.String(),
        }),
      ),
    }),
  ),
});

export const RateLimitSchema = Type.Object({
  ...Common,
  key: Type.Array(Type.String()),
  algorithm: Type.Enum([...RATE_LIMIT_ALGORITHMS]),
  limit: Nullable(Type.Integer()),
  windowSeconds: Nullable(Type.Integer()),
  ratePerSecond: Nullable(Type.Number()),
  burst: Nullable(Type.Integer()),
  status: Type.Integer(),
  templateId: Nullable(Type.String()),
});

export const ShaperSchema = Type.Object({
  ...Common,
  key: Type.Array(Type.String()),
  downloadBytesPerSecond: Nullable(Type.Integer()),
  uploadBytesPerSecond: Nullable(Type.Integer()),
  burstBytes: Type.Integer(),
  exemptBytes: Type.Integer(),
});

// Inputs: shapes only; the service checks ranges and combinations and names the field.
const CommonInput = {
  name: Type.Optional(Type.String()),
  priority: Type.Optional(Type.Integer()),
  expression: Type.Optional(Nullable(Type.String())),
  enabled: Type.Optional(Type.Boolean()),
};
const ReadOnly = {
  id: Type.Optional(Type.String()),
  state: Type.Optional(Type.Unknown()),
  createdAt: Type.Optional(Type.String()),
  updatedAt: Type.Optional(Type.String()),
};

export const WafInput = Type.Object(
  {
    ...CommonInput,
    ...ReadOnly,
    action: Type.Optional(Type.String()),
    status: Type.Optional(Type.Integer()),
    templateId: Type.Optional(Nullable(Type.String())),
    mode: Type.Optional(Type.String()),
    auto: Type.Optional(Nullable(Type.Record(Type.String(), Type.Unknown()))),
    passTtlSeconds: Type.Optional(Type.Integer()),
  },
  { additionalProperties: false },
);

export const RateLimitInput = Type.Object(
  {
    ...CommonInput,
    ...ReadOnly,
    key: Type.Optional(Type.Array(Type.String())),
    algorithm: Type.Optional(Type.String()),
    limit: Type.Optional(Nullable(Type.Integer())),
    windowSeconds: Type.Optional(Nullable(Type.Integer())),
    ratePerSecond: Type.Optional(Nullable(Type.Number())),
    burst: Type.Optional(Nullable(Type.Integer())),
    status: Type.Optional(Type.Integer()),
    templateId: Type.Optional(Nullable(Type.String())),
  },
  { additionalProperties: false },
);

export const ShaperInput = Type.Object(
  {
    ...CommonInput,
    ...ReadOnly,
    key: Type.Optional(Type.Array(Type.String())),
    downloadBytesPerSecond: Type.Optional(Nullable(Type.Integer())),
    uploadBytesPerSecond: Type.Optional(Nullable(Type.Integer())),
    burstBytes: Type.Optional(Nullable(Type.Integer())),
    exemptBytes: Type.Optional(Type.Integer()),
  },
  { additionalProperties: false },
);

export const TestInput = Type.Object(
  {
    method: Type.String({ maxLength: 16 }),
    host: Type.String({ maxLength: 253 }),
    path: Type.String({ maxLength: 8192 }),
    headers: Type.Optional(Type.Record(Type.String(), Type.String())),
    ip: Type.Optional(Type.String({ maxLength: 64 })),
    listenerId: Type.Optional(Nullable(Type.String())),
  },
  { additionalProperties: false },
);

export const TestResult = Type.Object({
  stages: Type.Array(
    Type.Object({
      stage: Type.String(),
      rule: Nullable(Type.String()),
      action: Type.String(),
      detail: Type.String(),
    }),
  ),
});

/**
 * The five route schemas of one policy kind (list, create, one, change,
 * delete): replies are `{<list>: [...]}` and `{<single>: {...}}` (`names`).
 */
function crudSchemas(what: string, list: string, single: string, item: TSchema, input: TSchema) {
  const one = Type.Object({ [single]: item });
  return {
    names: { list, single },
    list: {
      summary: `List ${what}s`,
      response: { 200: Type.Object({ [list]: Type.Array(item) }), ...errorResponses },
    },
    create: { summary: `Create a ${what}`, body: input, response: { 201: one, ...errorResponses } },
    get: { summary: `One ${what}`, params: IdParams, response: { 200: one, ...errorResponses } },
    update: {
      summary: `Change a ${what}`,
      params: IdParams,
      body: input,
      response: { 200: one, ...errorResponses },
    },
    remove: {
      summary: `Delete a ${what}`,
      params: IdParams,
      response: { 204: NoContent, ...errorResponses },
    },
  };
}

export const wafSchemas = crudSchemas('WAF rule', 'rules', 'rule', WafRuleSchema, WafInput);
export const rateLimitSchemas = crudSchemas('rate limit', 'rules', 'rule', RateLimitSchema, RateLimitInput);
export const shaperSchemas = crudSchemas('bandwidth shaper', 'shapers', 'shaper', ShaperSchema, ShaperInput);

export const validateExpressionSchema = {
  summary: 'Check a match expression without saving it',
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
};
export const testPoliciesSchema = {
  summary: 'Try a request against the policies: which stage would act, and how',
  body: TestInput,
  response: { 200: TestResult, ...errorResponses },
};
