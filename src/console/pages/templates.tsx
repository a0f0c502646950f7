/**
 * Response templates of the selected environment (DESIGN.md §10): the list
 * with who uses each one, and an editor whose live preview is rendered by
 * the instance (`POST /api/v1/templates/preview`, sample values) and shown
 * in a sandboxed iframe (no scripts, no same origin), so a template's markup
 * never runs in the console.
 */
import type { JSX } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { type Client, clientFor } from '../api';
import {
  Badge,
  ConfirmDialog,
  Dialog,
  ErrorMessage,
  Field,
  type FormErrors,
  formErrors,
  LoadState,
  NO_ERRORS,
  SectionHead,
  useResource,
} from '../components/ui';
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
      <LoadState
        loading={templates.loading && !templates.data}
        error={templates.error}
        empty={list.length === 0}
        what="templates"
      />
      {list.length > 0 ? (
        <table class="table" data-testid="templates-table">
          <thead>
            <tr>
              <th>Name</th>
              <th>Kind</th>
              <th>Status</th>
              <th>Content type</th>
              <th>Used by</th>
              <th>
                <span class="visually-hidden">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {list.map((t) => (
              <tr key={t.id} data-template={t.name}>
                <td>
                  <strong>{t.name}</strong>
                </td>
                <td>
                  <Badge tone="info">{t.kind}</Badge>
                </td>
                <td>{t.status}</td>
                <td class="mono small">{t.contentType}</td>
                <td class="small" data-testid="used-by">
                  {t.usedBy.length === 0 ? (
                    <span class="muted">unused</span>
                  ) : (
                    t.usedBy.map((u) => `${u.type.replace('_', ' ')} ${u.name}`).join('; ')
                  )}
                </td>
                <td class="row-actions">
                  <button type="button" class="secondary small" onClick={() => setEditing(t)}>
                    Edit<span class="visually-hidden"> {t.name}</span>
                  </button>
                  <button type="button" class="danger small" onClick={() => setDeleting(t)}>
                    Delete<span class="visually-hidden"> {t.name}</span>
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : null}
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
        <ConfirmDialog
          title="Delete template"
          message={
            <>
              Delete <strong>{deleting.name}</strong>?
            </>
          }
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
  const [v, setV] = useState(() => ({
    name: template?.name ?? '',
    kind: template?.kind ?? 'error',
    status: String(template?.status ?? 502),
    contentType: template?.contentType ?? 'text/html; charset=utf-8',
    body:
      template?.body ??
      '<!doctype html>\n<title>{{status}}</title>\n<h1>{{host}} is not available</h1>\n<p>Reference {{requestId}}</p>\n',
  }));
  const [errors, setErrors] = useState<FormErrors>(NO_ERRORS);
  const [busy, setBusy] = useState(false);
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
  const set =
    (name: keyof typeof v) =>
    (e: JSX.TargetedEvent<HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement>) => {
      const value = e.currentTarget.value;
      if (name === 'kind' && template === null)
        setV({ ...v, kind: value, status: String(DEFAULT_STATUS[value] ?? v.status) });
      else setV({ ...v, [name]: value });
    };
  const submit = async (event: JSX.TargetedEvent<HTMLFormElement>) => {
    event.preventDefault();
    setBusy(true);
    setErrors(NO_ERRORS);
    const body = {
      name: v.name,
      kind: v.kind,
      status: Number(v.status),
      contentType: v.contentType,
      body: v.body,
    };
    try {
      if (template === null) await api.post('/api/v1/templates', body);
      else await api.patch(`/api/v1/templates/${encodeURIComponent(template.id)}`, body);
      props.onSaved();
    } catch (err) {
      setErrors(formErrors(err, FIELDS));
      setBusy(false);
    }
  };
  return (
    <Dialog
      title={template ? `Edit ${template.name}` : 'Add template'}
      onClose={props.onClose}
      testId="template-editor"
      wide
    >
      <form onSubmit={submit} class="template-editor">
        <div class="template-fields">
          <Field label="Name" error={errors.field.name}>
            <input name="name" value={v.name} onInput={set('name')} />
          </Field>
          <Field label="Kind" error={errors.field.kind}>
            <select name="kind" value={v.kind} onChange={set('kind')}>
              {KINDS.map((k) => (
                <option key={k} value={k}>
                  {k}
                </option>
              ))}
            </select>
          </Field>
          <Field label="Status" error={errors.field.status} hint="Used when the referrer sets none.">
            <input name="status" type="number" value={v.status} onInput={set('status')} />
          </Field>
          <Field label="Content type" error={errors.field.contentType}>
            <input name="contentType" value={v.contentType} onInput={set('contentType')} />
          </Field>
          <Field label="Body" error={errors.field.body} hint="At most 256 KiB.">
            <textarea
              name="body"
              rows={14}
              class="mono"
              spellcheck={false}
              value={v.body}
              onInput={set('body')}
            />
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
        <ErrorMessage error={errors.form} />
        <div class="actions">
          <button type="button" class="secondary" onClick={props.onClose}>
            Cancel
          </button>
          <button type="submit" class="primary" disabled={busy}>
            Save template
          </button>
        </div>
      </form>
    </Dialog>
  );
}
