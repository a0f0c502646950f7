/**
 * Rendering of response templates (docs/pipeline.md "Response templates"),
 * shared by the template service (preview, validation) and the data plane
 * (static targets, WAF and rate-limit answers, upstream error pages).
 *
 * A template body is text with placeholders `{{name}}` (spaces inside the
 * braces allowed). The known names are {@link TEMPLATE_PLACEHOLDERS}; their
 * values are HTML-escaped when the content type is HTML (`text/html`,
 * `application/xhtml+xml`) and JSON-string-escaped when it is JSON, so a
 * host or path sent by a client never becomes markup. Anything else between
 * double braces is kept literally (and reported by {@link parseTemplate}).
 *
 * Rendering never throws to its caller: {@link renderTemplateResponse} falls
 * back to a plain built-in page when the template is missing or broken.
 */
import type { TemplateKind, TemplateRecord } from '../storage/schema.js';
import { TEMPLATE_PLACEHOLDERS, type TemplatePlaceholder } from './template-types.js';

export { TEMPLATE_KINDS, TEMPLATE_PLACEHOLDERS, type TemplatePlaceholder } from './template-types.js';

/** Values for one rendering; a missing value renders as ''. */
export type TemplateValues = Partial<Record<TemplatePlaceholder, string | number | null>>;

/** A parsed body: literal text and placeholder references, in order. */
export type TemplatePart = string | { readonly name: TemplatePlaceholder };

/** A template ready to render many times. */
export interface CompiledTemplate {
  readonly id: string;
  readonly name: string;
  readonly kind: TemplateKind;
  readonly status: number;
  readonly contentType: string;
  readonly escape: (value: string) => string;
  readonly parts: readonly TemplatePart[];
}

/** What an answer built from a template carries. */
export interface RenderedResponse {
  status: number;
  contentType: string;
  body: Buffer;
  /** True when the built-in page was used because the template was missing or failed. */
  fallback: boolean;
}

const PLACEHOLDER = /\{\{\s*([^{}]*?)\s*\}\}/g;
const KNOWN = new Set<string>(TEMPLATE_PLACEHOLDERS);

/**
 * Splits a body into parts. Unknown placeholders stay literal text and are
 * listed (each once, in order of appearance) in `unknown`.
 */
export function parseTemplate(body: string): { parts: TemplatePart[]; unknown: string[] } {
  const parts: TemplatePart[] = [];
  const unknown: string[] = [];
  let literal = '';
  let last = 0;
  for (const match of body.matchAll(PLACEHOLDER)) {
    const name = match[1] ?? '';
    const at = match.index;
    literal += body.slice(last, at);
    last = at + match[0].length;
    if (KNOWN.has(name)) {
      if (literal !== '') parts.push(literal);
      literal = '';
      parts.push({ name: name as TemplatePlaceholder });
    } else {
      literal += match[0];
      if (!unknown.includes(match[0])) unknown.push(match[0]);
    }
  }
  literal += body.slice(last);
  if (literal !== '') parts.push(literal);
  return { parts, unknown };
}

/** True for HTML media types (`text/html`, `application/xhtml+xml`), parameters ignored. */
export function isHtmlContentType(contentType: string): boolean {
  const type = mediaType(contentType);
  return type === 'text/html' || type === 'application/xhtml+xml';
}

function isJsonContentType(contentType: string): boolean {
  const type = mediaType(contentType);
  return type === 'application/json' || type.endsWith('+json');
}

function mediaType(contentType: string): string {
  return (contentType.split(';')[0] ?? '').trim().toLowerCase();
}

const HTML_ESCAPES: Record<string, string> = {
  '&': '&amp;',
  '<': '&lt;',
  '>': '&gt;',
  '"': '&quot;',
  "'": '&#39;',
  '`': '&#96;',
};

/** Escapes text for HTML element content and quoted attribute values. */
export function escapeHtml(value: string): string {
  return value.replace(/[&<>"'`]/g, (c) => HTML_ESCAPES[c] ?? c);
}

function escapeJson(value: string): string {
  return JSON.stringify(value).slice(1, -1);
}

function escapeNone(value: string): string {
  return value;
}

/** The escaping a content type needs for placeholder values. */
export function escaperFor(contentType: string): (value: string) => string {
  if (isHtmlContentType(contentType)) return escapeHtml;
  if (isJsonContentType(contentType)) return escapeJson;
  return escapeNone;
}

/**
 * Compiles a stored template. Throws when the record is unusable (only
 * possible in a hand-edited database): callers fall back to the built-in page.
 */
export function compileTemplate(record: Readonly<TemplateRecord>): CompiledTemplate {
  if (typeof record.body !== 'string' || typeof record.contentType !== 'string') {
    throw new Error(`template ${record.id} has no usable body or content type`);
  }
  const status =
    Number.isInteger(record.status) && record.status >= 100 && record.status <= 599 ? record.status : 200;
  return {
    id: record.id,
    name: record.name,
    kind: record.kind,
    status,
    contentType: record.contentType,
    escape: escaperFor(record.contentType),
    parts: parseTemplate(record.body).parts,
  };
}

/** Compiles every usable template of a list into a map by id; broken ones are left out. */
export function compileTemplates(
  records: readonly Readonly<TemplateRecord>[],
): Map<string, CompiledTemplate> {
  const map = new Map<string, CompiledTemplate>();
  for (const record of records) {
    try {
      map.set(record.id, compileTemplate(record));
    } catch {
      // Left out: a reference to it renders the built-in page.
    }
  }
  return map;
}

/** Renders a compiled template's body with `values` (escaped for its content type). */
export function renderTemplate(template: CompiledTemplate, values: TemplateValues): string {
  let out = '';
  for (const part of template.parts) {
    if (typeof part === 'string') out += part;
    else {
      const value = values[part.name];
      if (value !== undefined && value !== null) out += template.escape(String(value));
    }
  }
  return out;
}

const REASONS: Record<number, string> = {
  400: 'Bad Request',
  403: 'Forbidden',
  404: 'Not Found',
  405: 'Method Not Allowed',
  429: 'Too Many Requests',
  500: 'Internal Server Error',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
  504: 'Gateway Timeout',
};

/** The short reason phrase of a status, or ''. */
export function reasonPhrase(status: number): string {
  return REASONS[status] ?? '';
}

/** The plain built-in page: `STATUS Reason` and the request id, as text/plain. */
export function builtinPage(status: number, values: TemplateValues = {}): RenderedResponse {
  const reason = reasonPhrase(status);
  let text = reason === '' ? `${status}\n` : `${status} ${reason}\n`;
  if (values.requestId) text += `request id: ${values.requestId}\n`;
  return {
    status,
    contentType: 'text/plain; charset=utf-8',
    body: Buffer.from(text, 'utf8'),
    fallback: true,
  };
}

/**
 * The answer for `templateId` with `values`: the template's body and content
 * type with `status`, or the template's own status when `status` is null.
 * A missing template or a failure while rendering gives the built-in page
 * with the same status (`fallback: true`), never an exception.
 */
export function renderTemplateResponse(
  templates: ReadonlyMap<string, CompiledTemplate>,
  templateId: string | null | undefined,
  values: TemplateValues,
  status: number | null,
): RenderedResponse {
  const template = templateId ? templates.get(templateId) : undefined;
  const finalStatus = status ?? template?.status ?? 500;
  if (!template) return builtinPage(finalStatus, values);
  try {
    const body = renderTemplate(template, { ...values, status: values.status ?? finalStatus });
    return {
      status: finalStatus,
      contentType: template.contentType,
      body: Buffer.from(body, 'utf8'),
      fallback: false,
    };
  } catch {
    return builtinPage(finalStatus, values);
  }
}
