/**
 * Building blocks of the route schemas (TypeBox, i.e. JSON Schema): the one
 * error body, id params, nullable values and timestamps. A route's schema
 * validates its input, serializes its reply (fields not in the schema are
 * never sent), generates the OpenAPI document and gives the console its types
 * (`Static<typeof X>`, imported with `import type` only).
 */
import { type TProperties, type TSchema, Type } from 'typebox';
import { ERROR_CODES } from '../../errors.js';

/** `T | null`. */
export const Nullable = <T extends TSchema>(schema: T) => Type.Union([schema, Type.Null()]);

/** A body that takes exactly these fields, each optional (PATCH); unknown fields are refused. */
export const Patch = <P extends TProperties>(properties: P) =>
  Type.Object(Type.Partial(Type.Object(properties)).properties, { additionalProperties: false });

/** An ISO 8601 timestamp as the API writes it (`2026-01-02T03:04:05.678Z`). */
export const Timestamp = Type.String({ format: 'date-time' });

/** `:id` of a single-object route; an unknown id is NOT_FOUND, not a validation error. */
export const IdParams = Type.Object({ id: Type.String() });

const ERROR_TABLE = Object.entries(ERROR_CODES)
  .map(([code, { status }]) => `${code} (${status})`)
  .join(', ');

/** Every error: `{error: {code, message, field?, details?}}` (the codes of src/errors.ts). */
export const ErrorBody = Type.Object(
  {
    error: Type.Object({
      code: Type.Enum(Object.keys(ERROR_CODES) as (keyof typeof ERROR_CODES)[], {
        description: `A stable code: ${ERROR_TABLE}.`,
      }),
      message: Type.String(),
      /** The failing input, for VALIDATION_FAILED (also in `details.field`). */
      field: Type.Optional(Type.String()),
      details: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
    }),
  },
  { description: 'An error answer; `code` is one of a closed table (see the error code list in `code`).' },
);

/** The error answers every route may give, for `schema.response`. */
export const errorResponses = { '4xx': ErrorBody, '5xx': ErrorBody } as const;

/** A 204 answer without a body. */
export const NoContent = Type.Null({ description: 'No content' });

const ENVIRONMENT_SELECTOR = Type.String({
  description: 'The environment to act on (`local` or absent = this instance).',
});

/**
 * An operational route's schema with the environment selector documented and
 * accepted: `?environment=` beside the route's own query fields, and the
 * `X-P2PStream-Environment` header. Returns new objects; `schema` is not changed.
 */
export function withEnvironmentSelector<S extends { querystring?: unknown; headers?: unknown }>(
  schema: S | undefined,
): S {
  const base = (schema ?? {}) as S;
  const query = (base.querystring ?? { type: 'object', properties: {} }) as {
    properties?: Record<string, unknown>;
  };
  const headers = (base.headers ?? { type: 'object', properties: {} }) as {
    properties?: Record<string, unknown>;
  };
  return {
    ...base,
    querystring: { ...query, properties: { ...query.properties, environment: ENVIRONMENT_SELECTOR } },
    headers: {
      ...headers,
      properties: { ...headers.properties, 'x-p2pstream-environment': ENVIRONMENT_SELECTOR },
    },
  };
}
