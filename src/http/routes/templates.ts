/**
 * Response template routes (operational, docs/pipeline.md "Response templates"):
 *
 * - `GET/POST /api/v1/templates` → `{templates}` / 201 `{template, warnings}`;
 * - `GET/PATCH/DELETE /api/v1/templates/:id` → `{template}` / `{template, warnings}` / 204;
 * - `POST /api/v1/templates/:id/preview` `{values?}` → `{status, contentType, body, warnings}`;
 * - `POST /api/v1/templates/preview` `{kind?, status?, contentType?, body, values?}` → the same
 *   for an unsaved template (the console's live preview).
 *
 * `warnings` names unknown placeholders, kept literally. Errors come from
 * TemplateService: VALIDATION_FAILED, CONFLICT (name taken; delete of a
 * template in use, with `details.usedBy`), NOT_FOUND.
 */
import type { FastifyPluginAsync } from 'fastify';
import { Type } from 'typebox';
import type { TemplateService } from '../../domain/template-service.js';
import { errorResponses, IdParams, NoContent } from '../schemas/common.js';
import { Preview, TemplateInput, TemplateSchema, Values, Warnings } from '../schemas/templates.js';

export function createTemplatesPlugin(deps: { templates: TemplateService }): FastifyPluginAsync {
  const { templates } = deps;
  return async (app) => {
    app.get(
      '/api/v1/templates',
      {
        schema: {
          response: { 200: Type.Object({ templates: Type.Array(TemplateSchema) }), ...errorResponses },
        },
      },
      async () => ({ templates: templates.list() }),
    );
    app.post(
      '/api/v1/templates',
      {
        schema: {
          body: TemplateInput,
          response: { 201: Type.Object({ template: TemplateSchema, warnings: Warnings }), ...errorResponses },
        },
      },
      async (request, reply) => reply.code(201).send(await templates.create(request.body)),
    );
    app.post(
      '/api/v1/templates/preview',
      {
        schema: {
          body: Type.Object({ ...TemplateInput.properties, values: Type.Optional(Values) }),
          response: { 200: Preview, ...errorResponses },
        },
      },
      async (request) => templates.previewDraft(request.body),
    );
    app.get<{ Params: { id: string } }>(
      '/api/v1/templates/:id',
      {
        schema: {
          params: IdParams,
          response: { 200: Type.Object({ template: TemplateSchema }), ...errorResponses },
        },
      },
      async (request) => ({ template: templates.get(request.params.id) }),
    );
    app.patch<{ Params: { id: string } }>(
      '/api/v1/templates/:id',
      {
        schema: {
          params: IdParams,
          body: TemplateInput,
          response: { 200: Type.Object({ template: TemplateSchema, warnings: Warnings }), ...errorResponses },
        },
      },
      async (request) => templates.update(request.params.id, request.body),
    );
    app.delete<{ Params: { id: string } }>(
      '/api/v1/templates/:id',
      { schema: { params: IdParams, response: { 204: NoContent, ...errorResponses } } },
      async (request, reply) => {
        await templates.remove(request.params.id);
        return reply.code(204).send();
      },
    );
    app.post<{ Params: { id: string } }>(
      '/api/v1/templates/:id/preview',
      {
        // `{values?}` may be left out entirely: sample values only.
        preValidation: async (request) => {
          request.body ??= {};
        },
        schema: {
          params: IdParams,
          body: Type.Object({ values: Type.Optional(Values) }),
          response: { 200: Preview, ...errorResponses },
        },
      },
      async (request) => templates.preview(request.params.id, request.body),
    );
  };
}
