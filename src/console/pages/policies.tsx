/**
 * Traffic Policy of the selected environment: a card per kind (WAF rules,
 * rate limits, shapers) listing rules in the order they apply, with enable
 * toggles, editors whose expression field is checked as the admin types, and
 * a "try a request" panel that asks the instance what each stage would do.
 */
import { useEffect, useState } from 'preact/hooks';
import { type Client, clientFor } from '../api';
import { ConfirmDelete, RuleList, useAction } from '../components/data-table';
import { Form, FormDialog, useFieldError, useFields } from '../components/form-dialog';
import {
  Badge,
  ErrorMessage,
  Field,
  formatTime,
  LoadState,
  SectionHead,
  useResource,
} from '../components/ui';
import type { PolicyTestStage, RateLimitRule, ResponseTemplateSummary, Shaper, WafRule } from '../types';

type Kind = 'waf' | 'rate-limits' | 'shapers';
type AnyRule = WafRule | RateLimitRule | Shaper;

const TITLES: Record<Kind, string> = { waf: 'WAF rules', 'rate-limits': 'Rate limits', shapers: 'Shapers' };
const LIST_KEY: Record<Kind, string> = { waf: 'rules', 'rate-limits': 'rules', shapers: 'shapers' };

export function PoliciesPage(props: { environment: string }) {
  const api = clientFor(props.environment);
  const templates = useResource(
    () =>
      api.get<{ templates: ResponseTemplateSummary[] }>('/api/v1/templates').catch(() => ({ templates: [] })),
    [],
  );
  return (
    <section>
      <SectionHead title="Traffic Policy" />
      <p class="muted">
        A request passes WAF rules, then rate limits, then shapers, each in ascending priority. Expressions
        are CEL (Common Expression Language) over{' '}
        <code>method, host, path, query, headers, ip, listener</code> with <code>path_prefix()</code> and{' '}
        <code>ip_in()</code>; an empty one matches every request.
      </p>
      <div class="policy-cards">
        {(['waf', 'rate-limits', 'shapers'] as Kind[]).map((kind) => (
          <PolicyCard key={kind} kind={kind} api={api} templates={templates.data?.templates ?? []} />
        ))}
      </div>
      <TryRequest api={api} />
    </section>
  );
}

function summary(kind: Kind, rule: AnyRule): string {
  if (kind === 'waf') {
    const r = rule as WafRule;
    const auto = r.mode === 'auto' && r.auto ? ` · auto` : '';
    return r.action === 'block' ? `block ${r.status}${auto}` : `${r.action}${auto}`;
  }
  if (kind === 'rate-limits') {
    const r = rule as RateLimitRule;
    const what =
      r.algorithm === 'token_bucket'
        ? `${r.ratePerSecond}/s, burst ${r.burst}`
        : `${r.limit} per ${r.windowSeconds} s (${r.algorithm.replace('_', ' ')})`;
    return `${what} by ${r.key.join(' + ')}`;
  }
  const r = rule as Shaper;
  const parts = [
    r.downloadBytesPerSecond === null ? null : `↓ ${formatRate(r.downloadBytesPerSecond)}`,
    r.uploadBytesPerSecond === null ? null : `↑ ${formatRate(r.uploadBytesPerSecond)}`,
  ].filter(Boolean);
  return `${parts.join(' ')} by ${r.key.join(' + ')}`;
}

function formatRate(bytes: number): string {
  if (bytes >= 1024 * 1024) return `${(bytes / 1024 / 1024).toFixed(1)} MiB/s`;
  return `${(bytes / 1024).toFixed(0)} KiB/s`;
}

function PolicyCard(props: { kind: Kind; api: Client; templates: ResponseTemplateSummary[] }) {
  const { kind, api } = props;
  const rules = useResource(() => api.get<Record<string, AnyRule[]>>(`/api/v1/policies/${kind}`), [kind]);
  const [editing, setEditing] = useState<AnyRule | 'new' | null>(null);
  const [deleting, setDeleting] = useState<AnyRule | null>(null);
  const action = useAction();
  const list = rules.data?.[LIST_KEY[kind]] ?? [];
  // Auto-mode switches show without a reload.
  useEffect(() => {
    if (kind !== 'waf') return;
    const timer = setInterval(rules.reload, 5000);
    return () => clearInterval(timer);
  }, [kind]);
  const toggle = (rule: AnyRule) =>
    action.run(() =>
      api
        .patch(`/api/v1/policies/${kind}/${encodeURIComponent(rule.id)}`, { enabled: !rule.enabled })
        .then(rules.reload),
    );
  return (
    <div class="card policy-card" data-testid={`policy-card-${kind}`}>
      <SectionHead title={TITLES[kind]} level={2}>
        <button type="button" class="primary small" onClick={() => setEditing('new')}>
          Add<span class="visually-hidden"> {TITLES[kind]}</span>
        </button>
      </SectionHead>
      <ErrorMessage error={action.error} />
      <LoadState
        loading={rules.loading && !rules.data}
        error={rules.error}
        empty={list.length === 0}
        what="rules"
      />
      <RuleList
        rules={list}
        badge={(rule) => <AutoBadge kind={kind} rule={rule} />}
        summary={(rule) => summary(kind, rule)}
        actions={(rule) => [
          { label: rule.enabled ? 'Disable' : 'Enable', onClick: () => toggle(rule) },
          { label: 'Edit', onClick: () => setEditing(rule) },
          { label: 'Delete', danger: true, onClick: () => setDeleting(rule) },
        ]}
      />
      {editing ? (
        <RuleEditor
          kind={kind}
          api={api}
          rule={editing === 'new' ? null : editing}
          templates={props.templates}
          onClose={() => setEditing(null)}
          onSaved={() => {
            setEditing(null);
            rules.reload();
          }}
        />
      ) : null}
      {deleting ? (
        <ConfirmDelete
          title="Delete rule"
          name={deleting.name}
          consequence="It stops applying at once."
          confirmLabel="Delete rule"
          onConfirm={() =>
            api.del(`/api/v1/policies/${kind}/${encodeURIComponent(deleting.id)}`).then(rules.reload)
          }
          onClose={() => setDeleting(null)}
        />
      ) : null}
    </div>
  );
}

function AutoBadge(props: { kind: Kind; rule: AnyRule }) {
  if (props.kind !== 'waf') return null;
  const rule = props.rule as WafRule;
  if (rule.mode !== 'auto' || !rule.state) return null;
  const on = rule.state.activeListeners.length > 0;
  const last = rule.state.switches[rule.state.switches.length - 1];
  return (
    <Badge
      tone={on ? 'warn' : 'muted'}
      title={
        last ? `${last.active ? 'on' : 'off'} at ${formatTime(last.at)}: ${last.reason}` : 'never switched'
      }
    >
      {on ? 'auto: on' : 'auto: off'}
    </Badge>
  );
}

/** The expression field: checked against the instance as the admin types (debounced). */
function ExpressionField(props: { api: Client; value: string; onInput: (v: string) => void }) {
  const serverError = useFieldError('expression');
  const [check, setCheck] = useState<{ valid: boolean; message: string } | null>(null);
  useEffect(() => {
    let current = true;
    const timer = setTimeout(() => {
      props.api
        .post<{ valid: boolean; error: { message: string } | null }>('/api/v1/policies/validate', {
          expression: props.value,
        })
        .then(
          (r) => current && setCheck({ valid: r.valid, message: r.error?.message ?? '' }),
          () => current && setCheck(null),
        );
    }, 250);
    return () => {
      current = false;
      clearTimeout(timer);
    };
  }, [props.value]);
  const error = serverError ?? (check && !check.valid ? check.message : null);
  return (
    <Field
      label="Match expression"
      error={error}
      hint={check?.valid ? 'Valid expression.' : 'CEL; empty matches every request.'}
    >
      <textarea
        name="expression"
        rows={3}
        spellcheck={false}
        class="mono"
        data-valid={check === null ? undefined : String(check.valid)}
        value={props.value}
        onInput={(e) => props.onInput(e.currentTarget.value)}
      />
    </Field>
  );
}

type Values = Record<string, string>;

function initialValues(kind: Kind, rule: AnyRule | null): Values {
  const v = (x: unknown) => (x === null || x === undefined ? '' : String(x));
  const base = { name: v(rule?.name), priority: v(rule?.priority ?? 0), expression: v(rule?.expression) };
  if (kind === 'waf') {
    const r = rule as WafRule | null;
    return {
      ...base,
      action: r?.action ?? 'block',
      status: v(r?.status ?? 403),
      templateId: v(r?.templateId),
      mode: r?.mode ?? 'always',
      requestsPerSecond: v(r?.auto?.requestsPerSecond),
      errorRatio: v(r?.auto?.errorRatio),
      forSeconds: v(r?.auto?.forSeconds ?? 10),
      coolDownSeconds: v(r?.auto?.coolDownSeconds ?? 60),
      passTtlSeconds: v(r?.passTtlSeconds ?? 3600),
    };
  }
  if (kind === 'rate-limits') {
    const r = rule as RateLimitRule | null;
    return {
      ...base,
      key: (r?.key ?? ['ip']).join(', '),
      algorithm: r?.algorithm ?? 'fixed_window',
      limit: v(r?.limit ?? 100),
      windowSeconds: v(r?.windowSeconds ?? 60),
      ratePerSecond: v(r?.ratePerSecond ?? 10),
      burst: v(r?.burst ?? 20),
      status: v(r?.status ?? 429),
      templateId: v(r?.templateId),
    };
  }
  const r = rule as Shaper | null;
  return {
    ...base,
    key: (r?.key ?? ['ip']).join(', '),
    downloadBytesPerSecond: v(r?.downloadBytesPerSecond ?? 1048576),
    uploadBytesPerSecond: v(r?.uploadBytesPerSecond),
    burstBytes: v(r?.burstBytes),
    exemptBytes: v(r?.exemptBytes ?? 0),
  };
}

const num = (s: string | undefined) => (s === undefined || s.trim() === '' ? null : Number(s));

function bodyOf(kind: Kind, v: Values): Record<string, unknown> {
  const base = { name: v.name, priority: num(v.priority) ?? 0, expression: v.expression ?? '' };
  if (kind === 'waf') {
    return {
      ...base,
      action: v.action,
      status: num(v.status),
      templateId: v.templateId || null,
      mode: v.mode,
      auto:
        v.mode === 'auto'
          ? {
              requestsPerSecond: num(v.requestsPerSecond),
              errorRatio: num(v.errorRatio),
              forSeconds: num(v.forSeconds),
              coolDownSeconds: num(v.coolDownSeconds),
            }
          : null,
      passTtlSeconds: num(v.passTtlSeconds),
    };
  }
  const key = (v.key ?? '')
    .split(',')
    .map((k) => k.trim())
    .filter((k) => k !== '');
  if (kind === 'rate-limits') {
    const bucket = v.algorithm === 'token_bucket';
    return {
      ...base,
      key,
      algorithm: v.algorithm,
      limit: bucket ? null : num(v.limit),
      windowSeconds: bucket ? null : num(v.windowSeconds),
      ratePerSecond: bucket ? num(v.ratePerSecond) : null,
      burst: bucket ? num(v.burst) : null,
      status: num(v.status),
      templateId: v.templateId || null,
    };
  }
  return {
    ...base,
    key,
    downloadBytesPerSecond: num(v.downloadBytesPerSecond),
    uploadBytesPerSecond: num(v.uploadBytesPerSecond),
    burstBytes: num(v.burstBytes),
    exemptBytes: num(v.exemptBytes) ?? 0,
  };
}

const FIELDS = [
  'name',
  'priority',
  'expression',
  'action',
  'status',
  'templateId',
  'mode',
  'auto',
  'auto.requestsPerSecond',
  'auto.errorRatio',
  'auto.forSeconds',
  'auto.coolDownSeconds',
  'passTtlSeconds',
  'key',
  'key.0',
  'key.1',
  'key.2',
  'key.3',
  'key.4',
  'key.5',
  'algorithm',
  'limit',
  'windowSeconds',
  'ratePerSecond',
  'burst',
  'downloadBytesPerSecond',
  'uploadBytesPerSecond',
  'burstBytes',
  'exemptBytes',
];

function RuleEditor(props: {
  kind: Kind;
  api: Client;
  rule: AnyRule | null;
  templates: ResponseTemplateSummary[];
  onClose: () => void;
  onSaved: () => void;
}) {
  const { kind, api, rule } = props;
  const form = useFields<Values>(initialValues(kind, rule));
  const values = form.values;
  const save = async () => {
    const body = bodyOf(kind, values);
    if (rule === null) await api.post(`/api/v1/policies/${kind}`, body);
    else await api.patch(`/api/v1/policies/${kind}/${encodeURIComponent(rule.id)}`, body);
    props.onSaved();
  };
  const templateSelect = (
    <Field label="Template" hint="Optional page for the answer.">
      <select {...form.choice('templateId')}>
        <option value="">Built-in page</option>
        {props.templates.map((t) => (
          <option key={t.id} value={t.id}>
            {t.name} ({t.kind})
          </option>
        ))}
      </select>
    </Field>
  );
  const input = (name: string, label: string, hint?: string, type = 'number') => (
    <Field label={label} hint={hint}>
      <input type={type} step="any" {...form.text(name)} />
    </Field>
  );
  return (
    <FormDialog
      title={`${rule ? 'Edit' : 'Add'} ${TITLES[kind].replace(/s$/, '').toLowerCase()}`}
      onClose={props.onClose}
      onSubmit={save}
      fields={FIELDS}
      testId="policy-editor"
    >
      <Field label="Name">
        <input required maxLength={128} {...form.text('name')} />
      </Field>
      {input('priority', 'Priority', 'Lower runs first.')}
      <ExpressionField api={api} value={values.expression ?? ''} onInput={(v) => form.set('expression', v)} />
      {kind === 'waf' ? (
        <>
          <Field label="Action">
            <select {...form.choice('action')}>
              <option value="block">block</option>
              <option value="allow">allow (skip later WAF rules)</option>
              <option value="log">log (trace only)</option>
              <option value="challenge">challenge (proof of work)</option>
            </select>
          </Field>
          {values.action === 'block' || values.action === 'challenge' ? (
            <>
              {input('status', 'Status')}
              {templateSelect}
            </>
          ) : null}
          {values.action === 'challenge' ? input('passTtlSeconds', 'Pass valid (seconds)') : null}
          <Field label="Mode" name={['mode', 'auto']}>
            <select {...form.choice('mode')}>
              <option value="always">always</option>
              <option value="auto">auto (switches on under load)</option>
            </select>
          </Field>
          {values.mode === 'auto' ? (
            <>
              {input('requestsPerSecond', 'Requests per second', 'Listener rate that switches the rule on.')}
              {input('errorRatio', 'Error ratio', '0–1; 5xx answers over all answers.')}
              {input('forSeconds', 'For (seconds)')}
              {input('coolDownSeconds', 'Cool-down (seconds)')}
            </>
          ) : null}
        </>
      ) : null}
      {kind === 'rate-limits' ? (
        <>
          {input('key', 'Key', 'ip, host, path, route, header:NAME — comma separated.', 'text')}
          <Field label="Algorithm">
            <select {...form.choice('algorithm')}>
              <option value="fixed_window">fixed window</option>
              <option value="sliding_window">sliding window</option>
              <option value="token_bucket">token bucket</option>
            </select>
          </Field>
          {values.algorithm === 'token_bucket' ? (
            <>
              {input('ratePerSecond', 'Rate per second')}
              {input('burst', 'Burst')}
            </>
          ) : (
            <>
              {input('limit', 'Limit')}
              {input('windowSeconds', 'Window (seconds)')}
            </>
          )}
          {input('status', 'Status')}
          {templateSelect}
        </>
      ) : null}
      {kind === 'shapers' ? (
        <>
          {input('key', 'Key', 'ip, host, path, route, header:NAME — comma separated.', 'text')}
          {input('downloadBytesPerSecond', 'Download (bytes/s)', 'Empty: not shaped.')}
          {input('uploadBytesPerSecond', 'Upload (bytes/s)', 'Empty: not shaped.')}
          {input('burstBytes', 'Burst (bytes)', 'Empty: one second of the rate.')}
          {input('exemptBytes', 'Exempt (bytes)', 'The first bytes of each body go unshaped.')}
        </>
      ) : null}
    </FormDialog>
  );
}

const TRY_FIELDS = ['method', 'host', 'path', 'ip', 'headers'];

function TryRequest(props: { api: Client }) {
  const form = useFields({
    method: 'GET',
    host: 'www.example.com',
    path: '/',
    ip: '203.0.113.7',
    headers: '',
  });
  const [stages, setStages] = useState<PolicyTestStage[] | null>(null);
  const submit = async () => {
    const { method, host, path, ip } = form.values;
    const headers: Record<string, string> = {};
    for (const line of form.values.headers.split('\n')) {
      const colon = line.indexOf(':');
      if (colon > 0) headers[line.slice(0, colon).trim()] = line.slice(colon + 1).trim();
    }
    setStages(null);
    const result = await props.api.post<{ stages: PolicyTestStage[] }>('/api/v1/policies/test', {
      method,
      host,
      path,
      ip,
      headers,
    });
    setStages(result.stages);
  };
  return (
    <div class="card" data-testid="try-request">
      <SectionHead title="Try a request" level={2} />
      <Form
        class="try-form"
        onSubmit={submit}
        fields={TRY_FIELDS}
        repeatable
        actions={(busy) => (
          <div class="actions">
            <button type="submit" class="primary" disabled={busy}>
              Try
            </button>
          </div>
        )}
      >
        <Field label="Method">
          <input {...form.text('method')} />
        </Field>
        <Field label="Host">
          <input {...form.text('host')} />
        </Field>
        <Field label="Path">
          <input {...form.text('path')} />
        </Field>
        <Field label="Client address">
          <input {...form.text('ip')} />
        </Field>
        <Field label="Headers" hint="One per line: Name: value">
          <textarea rows={2} {...form.text('headers')} />
        </Field>
      </Form>
      {stages ? (
        <table data-testid="try-result">
          <thead>
            <tr>
              <th scope="col">Stage</th>
              <th scope="col">Rule</th>
              <th scope="col">Action</th>
              <th scope="col">Detail</th>
            </tr>
          </thead>
          <tbody>
            {stages.map((s, i) => (
              <tr key={`${i}-${s.stage}`}>
                <td>{s.stage}</td>
                <td>{s.rule ?? '—'}</td>
                <td>{s.action}</td>
                <td>{s.detail}</td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : null}
    </div>
  );
}
