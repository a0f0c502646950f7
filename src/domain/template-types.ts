/**
 * Names of response templates (docs/pipeline.md "Response templates") shared by
 * the renderer, the route schemas and, through them, the console's types: kinds
 * and placeholders.
 */
import type { TemplateKind } from '../storage/schema.js';

/** The placeholders a template may use. */
export const TEMPLATE_PLACEHOLDERS = [
  'status',
  'requestId',
  'host',
  'path',
  'clientIp',
  'retryAfter',
  'ruleName',
  'time',
] as const;

export type TemplatePlaceholder = (typeof TEMPLATE_PLACEHOLDERS)[number];

/** What a template is for. */
export const TEMPLATE_KINDS: readonly TemplateKind[] = [
  'generic',
  'block',
  'rate_limit',
  'error',
  'challenge',
];
