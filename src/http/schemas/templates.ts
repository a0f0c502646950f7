/**
 * Schemas of the response template routes (docs/pipeline.md "Response
 * templates"); the console derives its types from them.
 */
import { Type } from 'typebox';
import { TEMPLATE_KINDS, TEMPLATE_PLACEHOLDERS } from '../../domain/template-types.js';
import { errorResponses, IdParams, NoContent, Timestamp } from './common.js';

export const Kind = Type.Enum([...TEMPLATE_KINDS]);

export const Usage = Type.Object({ type: Type.String(), id: Type.String(), name: Type.String() });

export const TemplateSchema = Type.Object({
  id: Type.String(),
  name: Type.String(),
  kind: Kind,
  status: Type.Integer(),
  contentType: Type.String(),
  body: Type.String(),
  usedBy: Type.Array(Usage),
  createdAt: Timestamp,
  updatedAt: Timestamp,
});

export const Warnings = Type.Array(Type.String(), { description: 'unknown placeholders, kept literally' });

/** Fields a client sends; the service checks them in detail (fields it does not know are refused). */
export const TemplateInput = Type.Object({
  name: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  kind: Type.Optional(Kind),
  status: Type.Optional(Type.Integer({ minimum: 200, maximum: 599 })),
  contentType: Type.Optional(Type.String({ maxLength: 256 })),
  body: Type.Optional(Type.String()),
});

export const Values = Type.Object(
  Object.fromEntries(
    TEMPLATE_PLACEHOLDERS.map((p) => [p, Type.Optional(Type.Union([Type.String(), Type.Number()]))]),
  ),
);

export const Preview = Type.Object({
  status: Type.Integer(),
  contentType: Type.String(),
  body: Type.String(),
  warnings: Warnings,
});

const Saved = Type.Object({ template: TemplateSchema, warnings: Warnings });

export const listTemplatesSchema = {
  summary: 'List response templates',
  response: { 200: Type.Object({ templates: Type.Array(TemplateSchema) }), ...errorResponses },
};
export const createTemplateSchema = {
  summary: 'Create a response template',
  body: TemplateInput,
  response: { 201: Saved, ...errorResponses },
};
export const previewDraftSchema = {
  summary: 'Render an unsaved template with sample or given values',
  body: Type.Object({ ...TemplateInput.properties, values: Type.Optional(Values) }),
  response: { 200: Preview, ...errorResponses },
};
export const getTemplateSchema = {
  summary: 'One response template',
  params: IdParams,
  response: { 200: Type.Object({ template: TemplateSchema }), ...errorResponses },
};
export const updateTemplateSchema = {
  summary: 'Change a response template',
  params: IdParams,
  body: TemplateInput,
  response: { 200: Saved, ...errorResponses },
};
export const deleteTemplateSchema = {
  summary: 'Delete a response template (refused while in use)',
  params: IdParams,
  response: { 204: NoContent, ...errorResponses },
};
export const previewTemplateSchema = {
  summary: 'Render a saved template with sample or given values',
  params: IdParams,
  body: Type.Object({ values: Type.Optional(Values) }),
  response: { 200: Preview, ...errorResponses },
};
