/**
 * Request validation against the route schemas (JSON Schema via Ajv, formats
 * from ajv-formats). Bodies are checked as sent: no type coercion, no defaults
 * filled in, unknown fields refused rather than dropped. Query strings, params
 * and headers arrive as text, so they are coerced (`"5"` → 5) first.
 *
 * A failure becomes VALIDATION_FAILED naming the field path (`details.field`,
 * e.g. `members.0.url`), in the one error shape (see errors.ts).
 */
import { Ajv, type ErrorObject, type Options } from 'ajv';
import addFormatsModule from 'ajv-formats';
import type { FastifySchemaCompiler } from 'fastify';
import { AppError } from '../errors.js';

// ajv-formats is CommonJS with a default export; under NodeNext it arrives wrapped.
const addFormats = addFormatsModule as unknown as (ajv: Ajv) => Ajv;

const COMMON: Options = {
  allErrors: false,
  removeAdditional: false,
  useDefaults: false,
  strict: false,
};

/** The compiler of `app.setValidatorCompiler`: strict for bodies, coercing for the URL and headers. */
export function createValidatorCompiler(): FastifySchemaCompiler<unknown> {
  const bodies = addFormats(new Ajv({ ...COMMON, coerceTypes: false }));
  const text = addFormats(new Ajv({ ...COMMON, coerceTypes: 'array' }));
  return ({ schema, httpPart }) =>
    (httpPart === 'body' ? bodies : text).compile(schema as object) as ReturnType<
      FastifySchemaCompiler<unknown>
    >;
}

/** The dotted path of the input an Ajv error is about (`''` for the whole part). */
export function fieldOf(error: ErrorObject): string {
  const parts = error.instancePath
    .split('/')
    .slice(1)
    .map((part) => part.replace(/~1/g, '/').replace(/~0/g, '~'));
  const params = error.params as { missingProperty?: string; additionalProperty?: string };
  if (error.keyword === 'required' && params.missingProperty) parts.push(params.missingProperty);
  if (error.keyword === 'additionalProperties' && params.additionalProperty)
    parts.push(params.additionalProperty);
  return parts.join('.');
}

function describe(error: ErrorObject): string {
  if (error.keyword === 'required') return 'is required';
  if (error.keyword === 'additionalProperties') return 'is not a known field';
  return error.message ?? 'is not valid';
}

const PART_NAMES: Record<string, string> = {
  body: 'the request body',
  querystring: 'the query string',
  params: 'the URL',
  headers: 'the headers',
};

/** Fastify's schema validation failure as VALIDATION_FAILED, or null for any other error. */
export function validationFailure(err: unknown): AppError | null {
  const fe = err as { validation?: ErrorObject[]; validationContext?: string } | null;
  const first = fe?.validation?.[0];
  if (!first) return null;
  const field = fieldOf(first);
  const where = PART_NAMES[fe?.validationContext ?? ''] ?? 'the request';
  const message = field ? `${field}: ${describe(first)}` : `${where} ${describe(first)}`;
  return new AppError('VALIDATION_FAILED', message, {
    cause: err,
    ...(field ? { details: { field } } : {}),
  });
}
