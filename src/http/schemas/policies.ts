/** Schemas of the traffic policy routes (docs/pipeline.md; README "Traffic policies"). */
import { Type } from 'typebox';
import { RATE_LIMIT_ALGORITHMS, WAF_ACTIONS } from '../../domain/policy-types.js';
import { Nullable } from './common.js';

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
