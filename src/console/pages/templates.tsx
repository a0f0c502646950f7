/**
 * Response templates of the selected environment (docs/pipeline.md "Response
 * templates"): the list with who uses each one, and an editor whose live
 * preview is rendered by the instance (`POST /api/v1/templates/preview`, sample
 * values) and shown in a sandboxed iframe (no scripts, no same origin), so a
 * template's markup never runs in the console.
 */
import type { JSX } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { type Client, clientFor } from '../api';
import { ConfirmDelete, DataTable } from '../components/data-table';
import { FormDialog, useFields } from '../components/form-dialog';
import { Badge, ErrorMessage, Field, SectionHead, useResource } from '../components/ui';
import type { ResponseTemplate, TemplatePreview } from '../types';

const KINDS = ['generic', 'block', 'rate_limit', 'error', 'challenge'] as const;
const PLACEHOLDERS = ['status', 'requestId', 'host', 'path', 'clientIp', 'retryAfter', 'ruleName', 'time'];
const DEFAULT_STATUS: Record<string, number> = {
  generic: 200,
  block: 403,
  rate_limit: 429,
  error: 502,
  challenge: 403,
};

export function TemplatesPage(props: { environment: string }) {
  const api = clientFor(props.environment);
  const templates = useResource(() => api.get<{ templates: ResponseTemplate[] }>('/api/v1/templates'), []);
  const [editing, setEditing] = useState<ResponseTemplate | 'new' | null>(null);
  const [deleting, setDeleting] = useState<ResponseTemplate | null>(null);
  const list = templates.data?.templates ?? [];
  return (
    <section>
      <SectionHead title="Templates">
        <button type="button" class="primary" onClick={() => setEditing('new')}>
          Add template
        </button>
      </SectionHead>
      <p class="muted">
        Pages for static routes, WAF blocks and challenges, rate-limit refusals and upstream errors.
        Placeholders:{' '}
        {PLACEHOLDERS.map((p) => (
          <code key={p}>{`{{${p}}} `}</code>
        ))}
        — escaped for HTML.
      </p>
      <DataTable
        testId="templates-table"
        what="templates"
        rows={list}
        rowKey={(t) => t.id}
        rowAttributes={(t) => ({ 'data-template': t.name })}
        loading={templates.loading && !templates.data}
        error={templates.error}
        columns={[
          { header: 'Name', cell: (t) => <strong>{t.name}</strong> },
          { header: 'Kind', cell: (t) => <Badge tone="info">{t.kind}</Badge> },
          { header: 'Status', cell: (t) => t.status },
          { header: 'Content type', class: 'mono small', cell: (t) => t.contentType },
          {
            header: 'Used by',
            class: 'small',
            testId: 'used-by',
            cell: (t) =>
              t.usedBy.length === 0 ? (
                <span class="muted">unused</span>
              ) : (
                t.usedBy.map((u) => `${u.type.replace('_', ' ')} ${u.name}`).join('; ')
              ),
          },
        ]}
        rowName={(t) => t.name}
        actions={(t) => [
          { label: 'Edit', onClick: () => setEditing(t) },
          { label: 'Delete', danger: true, onClick: () => setDeleting(t) },
        ]}
      />
      {editing ? (
        <TemplateEditor
          api={api}
          template={editing === 'new' ? null : editing}
          onClose={() => setEditing(null)}
          onSaved={() => {
            setEditing(null);
            templates.reload();
          }}
        />
      ) : null}
      {deleting ? (
        <ConfirmDelete
          title="Delete template"
          name={deleting.name}
          confirmLabel="Delete template"
          onConfirm={() =>
            api.del(`/api/v1/templates/${encodeURIComponent(deleting.id)}`).then(templates.reload)
          }
          onClose={() => setDeleting(null)}
        />
      ) : null}
    </section>
  );
}

/** What the preview iframe shows: the rendered HTML, or other text as preformatted text. */
function previewDocument(preview: TemplatePreview): string {
  const type = preview.contentType.split(';')[0]?.trim().toLowerCase();
  if (type === 'text/html' || type === 'application/xhtml+xml') return preview.body;
  const escaped = preview.body.replace(/[&<>]/g, (c) => (c === '&' ? '&amp;' : c === '<' ? '&lt;' : '&gt;'));
  return `<pre style="white-space:pre-wrap">${escaped}</pre>`;
}

const FIELDS = ['name', 'kind', 'status', 'contentType', 'body'];

function TemplateEditor(props: {
  api: Client;
  template: ResponseTemplate | null;
  onClose: () => void;
  onSaved: () => void;
}) {
  const { api, template } = props;
  const form = useFields({
    name: template?.name ?? '',
    kind: template?.kind ?? 'error',
    status: String(template?.status ?? 502),
    contentType: template?.contentType ?? 'text/html; charset=utf-8',
    body:
      template?.body ??
      '<!doctype html>\n<title>{{status}}</title>\n<h1>{{host}} is not available</h1>\n<p>Reference {{requestId}}</p>\n',
  });
  const v = form.values;
  const [preview, setPreview] = useState<TemplatePreview | null>(null);
  const [previewError, setPreviewError] = useState<unknown>(null);
  // Live preview: rendered by the instance as the admin types (debounced).
  useEffect(() => {
    let current = true;
    const timer = setTimeout(() => {
      api
        .post<TemplatePreview>('/api/v1/templates/preview', {
          kind: v.kind,
          status: Number(v.status),
          contentType: v.contentType,
          body: v.body,
        })
        .then(
          (p) => {
            if (!current) return;
            setPreview(p);
            setPreviewError(null);
          },
          (err) => current && setPreviewError(err),
        );
    }, 250);
    return () => {
      current = false;
      clearTimeout(timer);
    };
  }, [v.kind, v.status, v.contentType, v.body]);
  // A new template takes the usual status of the kind chosen.
  const chooseKind = (e: JSX.TargetedEvent<HTMLSelectElement>) => {
    const kind = e.currentTarget.value as (typeof KINDS)[number];
    form.set('kind', kind);
    if (template === null) form.set('status', String(DEFAULT_STATUS[kind] ?? v.status));
  };
  const save = async () => {
    const body = {
      name: v.name,
      kind: v.kind,
      status: Number(v.status),
      contentType: v.contentType,
      body: v.body,
    };
    if (template === null) await api.post('/api/v1/templates', body);
    else await api.patch(`/api/v1/templates/${encodeURIComponent(template.id)}`, body);
    props.onSaved();
  };
  return (
    <FormDialog
      title={template ? `Edit ${template.name}` : 'Add template'}
      onClose={props.onClose}
      onSubmit={save}
      fields={FIELDS}
      submitLabel="Save template"
      formClass="template-editor"
      testId="template-editor"
      wide
    >
      <div class="template-fields">
        <Field label="Name">
          <input {...form.text('name')} />
        </Field>
        <Field label="Kind">
          <select {...form.choice('kind')} onChange={chooseKind}>
            {KINDS.map((k) => (
              <option key={k} value={k}>
                {k}
              </option>
            ))}
          </select>
        </Field>
        <Field label="Status" hint="Used when the referrer sets none.">
          <input type="number" {...form.text('status')} />
        </Field>
        <Field label="Content type">
          <input {...form.text('contentType')} />
        </Field>
        <Field label="Body" hint="At most 256 KiB.">
          <textarea rows={14} class="mono" spellcheck={false} {...form.text('body')} />
        </Field>
      </div>
      <div class="template-preview">
        <p class="field-label">Preview (sample values)</p>
        {preview ? (
          <iframe
            title="Template preview"
            sandbox=""
            srcdoc={previewDocument(preview)}
            class="preview-frame"
            data-testid="template-preview"
          />
        ) : null}
        <ErrorMessage error={previewError} />
        {preview && preview.warnings.length > 0 ? (
          <ul class="warn-text small" data-testid="template-warnings">
            {preview.warnings.map((w) => (
              <li key={w}>{w}</li>
            ))}
          </ul>
        ) : null}
      </div>
    </FormDialog>
  );
}
