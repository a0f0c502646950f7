/**
 * Response templates (docs/pipeline.md "Response templates"): stored pages that
 * static route targets, WAF blocks and challenges, rate-limit refusals and
 * upstream error answers render with request values (see template-render.ts).
 *
 * Other services say who uses a template by registering a usage finder
 * ({@link TemplateService.registerUsage}); a template in use cannot be
 * deleted (409 CONFLICT, `details.usedBy`), and each template reports its
 * `usedBy`. Services that store a reference check it with
 * {@link requireTemplateRef} inside their store mutation, so a reference and
 * a delete cannot interleave.
 *
 * Validation (400 VALIDATION_FAILED with `details.field`): name 1–128
 * characters, unique (409 CONFLICT); kind one of generic, block, rate_limit,
 * error, challenge; status 200–599 (default per kind: 200, 403, 429, 502,
 * 403); contentType a media type (default `text/html; charset=utf-8`); body
 * at most {@link MAX_TEMPLATE_BODY_BYTES} bytes of UTF-8. Unknown
 * placeholders are kept literally and returned as `warnings`.
 */
import { AppError } from '../errors.js';
import type { Database, TemplateKind, TemplateRecord } from '../storage/schema.js';
import type { Store } from '../storage/store.js';
import { newId } from './ids.js';
import {
  compileTemplate,
  parseTemplate,
  renderTemplate,
  TEMPLATE_KINDS,
  TEMPLATE_PLACEHOLDERS,
  type TemplateValues,
} from './template-render.js';
import { invalid, rejectUnknownFields, requireInteger, requireName, requireObject } from './validate.js';

/** Largest template body, in bytes of UTF-8. */
export const MAX_TEMPLATE_BODY_BYTES = 256 * 1024;
export const DEFAULT_TEMPLATE_CONTENT_TYPE = 'text/html; charset=utf-8';

/** The status a template gets when created without one. */
export const DEFAULT_TEMPLATE_STATUS: Readonly<Record<TemplateKind, number>> = {
  generic: 200,
  block: 403,
  rate_limit: 429,
  error: 502,
  challenge: 403,
};

/** One user of a template: a route, a listener, a WAF or rate-limit rule… */
export interface TemplateUsage {
  templateId: string;
  /** What kind of object refers to it (`route`, `listener`, `waf_rule`, `rate_limit_rule`…). */
  type: string;
  id: string;
  /** A label for people (a rule's name, a route's host and path). */
  name: string;
}

/** Lists every template reference held in one collection of the database. */
export type TemplateUsageFinder = (db: Readonly<Database>) => TemplateUsage[];

/** A template as the API shows it. */
export interface Template {
  id: string;
  name: string;
  kind: TemplateKind;
  status: number;
  contentType: string;
  body: string;
  usedBy: Omit<TemplateUsage, 'templateId'>[];
  createdAt: string;
  updatedAt: string;
}

/** What the data plane needs to know when templates change. */
export interface TemplateRuntime {
  setTemplates(templates: readonly Readonly<TemplateRecord>[]): void;
}

export interface TemplateServiceOptions {
  store: Store;
  runtime?: TemplateRuntime;
  now?: () => number;
}

/** Sample values of a preview; a preview's `values` replace any of them. */
export const SAMPLE_TEMPLATE_VALUES: Readonly<Required<Omit<TemplateValues, 'status' | 'time'>>> = {
  requestId: '5f0c6d1e-8a4b-4c2d-9e3f-7a1b2c3d4e5f',
  host: 'www.example.com',
  path: '/some/page',
  clientIp: '203.0.113.7',
  retryAfter: 30,
  ruleName: 'sample rule',
};

const FIELDS = ['name', 'kind', 'status', 'contentType', 'body'] as const;
const READ_ONLY_FIELDS = ['id', 'usedBy', 'createdAt', 'updatedAt'];

export class TemplateService {
  readonly #store: Store;
  readonly #runtime: TemplateRuntime | null;
  readonly #now: () => number;
  readonly #finders: TemplateUsageFinder[] = [];

  constructor(options: TemplateServiceOptions) {
    this.#store = options.store;
    this.#runtime = options.runtime ?? null;
    this.#now = options.now ?? Date.now;
  }

  /** Adds a finder of template references; deletes and `usedBy` consult every finder. */
  registerUsage(finder: TemplateUsageFinder): void {
    this.#finders.push(finder);
  }

  list(): Template[] {
    const db = this.#store.read();
    const usages = this.#usages(db);
    return db.templates.map((t) => toTemplate(t, usages));
  }

  get(id: string): Template {
    const db = this.#store.read();
    return toTemplate(findTemplate(db, id), this.#usages(db));
  }

  /** Creates a template; `warnings` names unknown placeholders (kept literally). */
  async create(body: unknown): Promise<{ template: Template; warnings: string[] }> {
    const input = requireObject(body);
    rejectUnknownFields(input, [...FIELDS, ...READ_ONLY_FIELDS]);
    if (input.kind === undefined) throw invalid('kind', 'is required');
    const kind = requireKind(input.kind);
    const at = new Date(this.#now()).toISOString();
    const record: TemplateRecord = {
      id: newId(),
      name: requireName(input.name),
      kind,
      ...pageOf(input, kind),
      createdAt: at,
      updatedAt: at,
    };
    await this.#store.update((db) => {
      assertNameFree(db.templates, record);
      db.templates.push(record);
    });
    this.#apply();
    return { template: this.get(record.id), warnings: warningsOf(record.body) };
  }

  /** Changes any of the fields; the next answer that uses the template renders the new one. */
  async update(id: string, body: unknown): Promise<{ template: Template; warnings: string[] }> {
    const input = requireObject(body);
    rejectUnknownFields(input, [...FIELDS, ...READ_ONLY_FIELDS]);
    const name = input.name === undefined ? undefined : requireName(input.name);
    const kind = input.kind === undefined ? undefined : requireKind(input.kind);
    const status = input.status === undefined ? undefined : requireStatus(input.status);
    const contentType = input.contentType === undefined ? undefined : requireContentType(input.contentType);
    const text = input.body === undefined ? undefined : requireBody(input.body);
    const updated = await this.#store.update((db) => {
      const index = db.templates.findIndex((t) => t.id === id);
      const current = db.templates[index];
      if (!current) throw new AppError('NOT_FOUND', 'no such template');
      const next: TemplateRecord = {
        ...current,
        name: name ?? current.name,
        kind: kind ?? current.kind,
        status: status ?? current.status,
        contentType: contentType ?? current.contentType,
        body: text ?? current.body,
        updatedAt: new Date(this.#now()).toISOString(),
      };
      assertNameFree(db.templates, next);
      db.templates[index] = next;
      return next;
    });
    this.#apply();
    return { template: this.get(id), warnings: warningsOf(updated.body) };
  }

  /** Deletes an unused template; one in use → 409 CONFLICT with `details.usedBy`. */
  async remove(id: string): Promise<void> {
    await this.#store.update((db) => {
      findTemplate(db, id);
      const usedBy = this.#usages(db)
        .filter((u) => u.templateId === id)
        .map(({ type, id: userId, name }) => ({ type, id: userId, name }));
      if (usedBy.length > 0) {
        throw new AppError(
          'CONFLICT',
          `the template is used by ${usedBy.map((u) => `${u.type.replace('_', ' ')} "${u.name}"`).join(', ')}`,
          { details: { usedBy } },
        );
      }
      db.templates = db.templates.filter((t) => t.id !== id);
    });
    this.#apply();
  }

  /**
   * Renders a stored template with the sample values, any of them replaced
   * by `values` (`{values?}`); answers `{contentType, status, body, warnings}`.
   */
  preview(
    id: string,
    body: unknown,
  ): { status: number; contentType: string; body: string; warnings: string[] } {
    const input = body === undefined || body === null ? {} : requireObject(body);
    rejectUnknownFields(input, ['values']);
    const record = findTemplate(this.#store.read(), id);
    return this.#render(record, input.values);
  }

  /**
   * Renders an unsaved template (`{kind?, status?, contentType?, body, values?}`),
   * validated as a create would be: the console's live preview.
   */
  previewDraft(body: unknown): { status: number; contentType: string; body: string; warnings: string[] } {
    const input = requireObject(body);
    rejectUnknownFields(input, [...FIELDS, 'values']);
    const kind = input.kind === undefined ? 'generic' : requireKind(input.kind);
    const record: TemplateRecord = {
      id: 'draft',
      name: 'draft',
      kind,
      ...pageOf(input, kind),
      createdAt: '',
      updatedAt: '',
    };
    return this.#render(record, input.values);
  }

  /** The stored templates, for the data plane at start. */
  records(): readonly Readonly<TemplateRecord>[] {
    return this.#store.read().templates;
  }

  #render(
    record: Readonly<TemplateRecord>,
    rawValues: unknown,
  ): { status: number; contentType: string; body: string; warnings: string[] } {
    const values: TemplateValues = {
      ...SAMPLE_TEMPLATE_VALUES,
      status: record.status,
      time: new Date(this.#now()).toISOString(),
      ...requireValues(rawValues),
    };
    const compiled = compileTemplate(record);
    return {
      status: record.status,
      contentType: record.contentType,
      body: renderTemplate(compiled, values),
      warnings: warningsOf(record.body),
    };
  }

  #usages(db: Readonly<Database>): TemplateUsage[] {
    return this.#finders.flatMap((finder) => finder(db));
  }

  #apply(): void {
    this.#runtime?.setTemplates(this.#store.read().templates);
  }
}

/**
 * A template reference from another record: null/absent/'' → null; a string
 * must name a stored template (VALIDATION_FAILED on `field` otherwise).
 * Call it inside the store mutation that saves the reference.
 */
export function requireTemplateRef(db: Readonly<Database>, value: unknown, field: string): string | null {
  if (value === undefined || value === null || value === '') return null;
  if (typeof value !== 'string' || !db.templates.some((t) => t.id === value))
    throw invalid(field, 'no such template');
  return value;
}

/** The status, content type and body of a new or draft template; each absent one defaulted. */
function pageOf(
  input: Record<string, unknown>,
  kind: TemplateKind,
): Pick<TemplateRecord, 'status' | 'contentType' | 'body'> {
  return {
    status: input.status === undefined ? DEFAULT_TEMPLATE_STATUS[kind] : requireStatus(input.status),
    contentType:
      input.contentType === undefined ? DEFAULT_TEMPLATE_CONTENT_TYPE : requireContentType(input.contentType),
    body: input.body === undefined ? '' : requireBody(input.body),
  };
}

function findTemplate(db: Readonly<Database>, id: string): Readonly<TemplateRecord> {
  const record = db.templates.find((t) => t.id === id);
  if (!record) throw new AppError('NOT_FOUND', 'no such template');
  return record;
}

function toTemplate(record: Readonly<TemplateRecord>, usages: readonly TemplateUsage[]): Template {
  return {
    id: record.id,
    name: record.name,
    kind: record.kind,
    status: record.status,
    contentType: record.contentType,
    body: record.body,
    usedBy: usages
      .filter((u) => u.templateId === record.id)
      .map(({ type, id, name }) => ({ type, id, name })),
    createdAt: record.createdAt,
    updatedAt: record.updatedAt,
  };
}

function warningsOf(body: string): string[] {
  return parseTemplate(body).unknown.map(
    (text) =>
      `unknown placeholder ${text} is kept as it is; known ones: ${TEMPLATE_PLACEHOLDERS.map((p) => `{{${p}}}`).join(' ')}`,
  );
}

function assertNameFree(templates: readonly TemplateRecord[], next: TemplateRecord): void {
  if (templates.some((t) => t.id !== next.id && t.name === next.name)) {
    throw new AppError('CONFLICT', `a template named "${next.name}" already exists`, {
      details: { field: 'name' },
    });
  }
}

function requireKind(value: unknown): TemplateKind {
  if (typeof value !== 'string' || !(TEMPLATE_KINDS as readonly string[]).includes(value))
    throw invalid('kind', `must be one of ${TEMPLATE_KINDS.join(', ')}`);
  return value as TemplateKind;
}

function requireStatus(value: unknown): number {
  return requireInteger(value, 'status', 200, 599);
}

// biome-ignore lint/suspicious/noControlCharactersInRegex: refusing them is the point
const CONTROL_CHARACTERS = /[\u0000-\u001f\u007f]/;

function requireContentType(value: unknown): string {
  if (
    typeof value !== 'string' ||
    !/^[a-z0-9!#$&^_.+-]+\/[a-z0-9!#$&^_.+-]+(\s*;.*)?$/i.test(value.trim()) ||
    value.length > 256 ||
    CONTROL_CHARACTERS.test(value)
  )
    throw invalid('contentType', 'must be a media type such as text/html; charset=utf-8');
  return value.trim();
}

function requireBody(value: unknown): string {
  if (typeof value !== 'string') throw invalid('body', 'must be a string');
  const bytes = Buffer.byteLength(value, 'utf8');
  if (bytes > MAX_TEMPLATE_BODY_BYTES)
    throw invalid(
      'body',
      `is ${bytes} bytes; a template may hold at most ${MAX_TEMPLATE_BODY_BYTES} (256 KiB)`,
    );
  return value;
}

function requireValues(value: unknown): TemplateValues {
  if (value === undefined || value === null) return {};
  const input = requireObject(value, 'values');
  const values: TemplateValues = {};
  for (const [key, v] of Object.entries(input)) {
    if (!(TEMPLATE_PLACEHOLDERS as readonly string[]).includes(key))
      throw invalid(`values.${key}`, `is not a placeholder; known ones: ${TEMPLATE_PLACEHOLDERS.join(', ')}`);
    if (typeof v !== 'string' && typeof v !== 'number')
      throw invalid(`values.${key}`, 'must be a string or a number');
    if (typeof v === 'string' && v.length > 2048)
      throw invalid(`values.${key}`, 'must be at most 2048 characters');
    values[key as keyof TemplateValues] = v;
  }
  return values;
}
