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
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { TemplateService } from '../../domain/template-service.js';
import {
  createTemplateSchema,
  deleteTemplateSchema,
  getTemplateSchema,
  listTemplatesSchema,
  previewDraftSchema,
  previewTemplateSchema,
  updateTemplateSchema,
} from '../schemas/templates.js';

export function createTemplatesPlugin(deps: { templates: TemplateService }): FastifyPluginAsyncTypebox {
  const { templates } = deps;
  return async (app) => {
    app.get('/api/v1/templates', { schema: listTemplatesSchema }, async () => ({
      templates: templates.list(),
    }));
    app.post('/api/v1/templates', { schema: createTemplateSchema }, async (request, reply) =>
      reply.code(201).send(await templates.create(request.body)),
    );
    app.post('/api/v1/templates/preview', { schema: previewDraftSchema }, async (request) =>
      templates.previewDraft(request.body),
    );
    app.get('/api/v1/templates/:id', { schema: getTemplateSchema }, async (request) => ({
      template: templates.get(request.params.id),
    }));
    app.patch('/api/v1/templates/:id', { schema: updateTemplateSchema }, async (request) =>
      templates.update(request.params.id, request.body),
    );
    app.delete('/api/v1/templates/:id', { schema: deleteTemplateSchema }, async (request, reply) => {
      await templates.remove(request.params.id);
      return reply.code(204).send(null);
    });
    app.post(
      '/api/v1/templates/:id/preview',
      {
        schema: previewTemplateSchema,
        // `{values?}` may be left out entirely: sample values only.
        preValidation: async (request) => {
          request.body ??= {};
        },
      },
      async (request) => templates.preview(request.params.id, request.body),
    );
  };
}
