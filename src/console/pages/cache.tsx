/**
 * Response cache of the selected environment (docs/pipeline.md "The cache
 * stage"): its counters, settings, rules (in the order they apply) and purge.
 */
import { useEffect, useState } from 'preact/hooks';
import { type Client, clientFor } from '../api';
import { formatNumber } from '../components/charts';
import { ConfirmDelete, RuleList } from '../components/data-table';
import { Form, FormDialog, useFields } from '../components/form-dialog';
import { ErrorMessage, Field, LoadState, SectionHead, useResource } from '../components/ui';
import type { CacheRule, CacheSettings, CacheStats } from '../types';

function bytes(n: number): string {
  if (n >= 1024 * 1024 * 1024) return `${(n / 1024 / 1024 / 1024).toFixed(1)} GiB`;
  if (n >= 1024 * 1024) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} B`;
}

export function CachePage(props: { environment: string }) {
  const api = clientFor(props.environment);
  const stats = useResource(() => api.get<CacheStats>('/api/v1/cache/stats'), []);
  const rules = useResource(() => api.get<{ rules: CacheRule[] }>('/api/v1/cache/rules'), []);
  useEffect(() => {
    const timer = setInterval(stats.reload, 5000);
    return () => clearInterval(timer);
  }, []);
  const s = stats.data;
  return (
    <section>
      <SectionHead title="Cache" />
      <p class="muted">
        Responses of upstream routes that a rule matches are stored by RFC 9111 (the origin's Cache-Control,
        Vary and validators) and answered with a <code>Cache-Status</code> header.
      </p>
      <ErrorMessage error={stats.error} />
      {s ? (
        <div class="cards" data-testid="cache-stats">
          <Stat
            label="Hit ratio"
            value={s.hits + s.misses === 0 ? '—' : `${(s.hitRatio * 100).toFixed(1)} %`}
          />
          <Stat
            label="Hits"
            value={formatNumber(s.hits)}
            detail={`${s.stale} stale · ${s.revalidated} revalidated`}
          />
          <Stat label="Misses" value={formatNumber(s.misses)} detail={`${s.bypasses} bypassed`} />
          <Stat label="Entries" value={formatNumber(s.entries)} detail={`${s.evictions} evicted`} />
          <Stat label="Memory" value={bytes(s.memoryBytes)} />
          <Stat label="Disk" value={bytes(s.diskBytes)} />
        </div>
      ) : null}
      <SettingsCard api={api} />
      <RulesCard api={api} rules={rules} />
      <PurgeCard api={api} rules={rules.data?.rules ?? []} onPurged={stats.reload} />
    </section>
  );
}

function Stat(props: { label: string; value: string; detail?: string }) {
  return (
    <div class="card stat">
      <div class="stat-value">{props.value}</div>
      <div class="stat-label">{props.label}</div>
      {props.detail ? <div class="small muted">{props.detail}</div> : null}
    </div>
  );
}

type SettingKey = Exclude<keyof CacheSettings, 'enabled'>;

const SETTING_FIELDS: [SettingKey, string, string][] = [
  ['memoryMiB', 'Memory (MiB)', 'Hot bodies and the index.'],
  ['diskMiB', 'Disk (MiB)', '0 = memory only; in the data dir.'],
  ['hotObjectKiB', 'Hot object size (KiB)', 'Bodies up to this size also stay in memory.'],
  ['maxEntries', 'Max entries', ''],
  ['cleanupSeconds', 'Cleanup every (s)', 'Expired entries are removed.'],
];
const SETTING_NAMES = ['enabled', ...SETTING_FIELDS.map(([k]) => k)];

/** The settings as the form edits them: numbers as typed. */
function settingValues(d: CacheSettings): { enabled: boolean } & Record<SettingKey, string> {
  return {
    enabled: d.enabled,
    ...(Object.fromEntries(SETTING_FIELDS.map(([k]) => [k, String(d[k])])) as Record<SettingKey, string>),
  };
}

function SettingsCard(props: { api: Client }) {
  const settings = useResource(() => props.api.get<CacheSettings>('/api/v1/cache/settings'), []);
  if (!settings.data)
    return <LoadState loading={settings.loading} error={settings.error} empty={false} what="settings" />;
  return <SettingsForm api={props.api} settings={settings.data} />;
}

function SettingsForm(props: { api: Client; settings: CacheSettings }) {
  const form = useFields(settingValues(props.settings));
  const [saved, setSaved] = useState(false);
  const submit = async () => {
    setSaved(false);
    const body: Record<string, unknown> = { enabled: form.values.enabled };
    for (const [k] of SETTING_FIELDS) body[k] = Number(form.values[k]);
    const next = await props.api.put<CacheSettings>('/api/v1/cache/settings', body);
    for (const [k, v] of Object.entries(settingValues(next))) form.set(k as SettingKey, v as string);
    setSaved(true);
  };
  return (
    <Form
      class="card settings-card"
      testId="cache-settings"
      onSubmit={submit}
      fields={SETTING_NAMES}
      repeatable
      actions={(busy) => (
        <div class="actions">
          {saved ? <span class="ok-text">Saved.</span> : null}
          <button type="submit" class="primary" disabled={busy}>
            Save settings
          </button>
        </div>
      )}
    >
      <SectionHead title="Settings" level={2} />
      <label>
        <input {...form.check('enabled')} /> Cache enabled
      </label>
      {SETTING_FIELDS.map(([name, label, hint]) => (
        <Field key={name} label={label} hint={hint || undefined}>
          <input type="number" {...form.text(name)} />
        </Field>
      ))}
    </Form>
  );
}

function ttlText(rule: CacheRule): string {
  if (rule.ttl.mode === 'fixed') return `${rule.ttl.seconds} s fixed`;
  return rule.ttl.seconds > 0 ? `origin, else ${rule.ttl.seconds} s` : 'origin';
}

function RulesCard(props: { api: Client; rules: ReturnType<typeof useResource<{ rules: CacheRule[] }>> }) {
  const { api, rules } = props;
  const [editing, setEditing] = useState<CacheRule | 'new' | null>(null);
  const [deleting, setDeleting] = useState<CacheRule | null>(null);
  const list = rules.data?.rules ?? [];
  return (
    <div class="card policy-card" data-testid="cache-rules">
      <SectionHead title="Rules" level={2}>
        <button type="button" class="primary small" onClick={() => setEditing('new')}>
          Add<span class="visually-hidden"> cache rule</span>
        </button>
      </SectionHead>
      <LoadState
        loading={rules.loading && !rules.data}
        error={rules.error}
        empty={list.length === 0}
        what="cache rules"
      />
      <RuleList
        rules={list}
        summary={(rule) => (
          <>
            {ttlText(rule)} · query {rule.queryMode} · up to {bytes(rule.maxObjectBytes)}
            {rule.varyHeaders.length > 0 ? ` · vary ${rule.varyHeaders.join(', ')}` : ''}
          </>
        )}
        actions={(rule) => [
          { label: 'Edit', onClick: () => setEditing(rule) },
          { label: 'Delete', danger: true, onClick: () => setDeleting(rule) },
        ]}
      />
      {editing ? (
        <RuleEditor
          api={api}
          rule={editing === 'new' ? null : editing}
          onClose={() => setEditing(null)}
          onSaved={() => {
            setEditing(null);
            rules.reload();
          }}
        />
      ) : null}
      {deleting ? (
        <ConfirmDelete
          title="Delete cache rule"
          name={deleting.name}
          consequence="What it stored is purged."
          confirmLabel="Delete rule"
          onConfirm={() =>
            api.del(`/api/v1/cache/rules/${encodeURIComponent(deleting.id)}`).then(rules.reload)
          }
          onClose={() => setDeleting(null)}
        />
      ) : null}
    </div>
  );
}

const RULE_FIELDS = [
  'name',
  'priority',
  'expression',
  'ttl',
  'ttl.mode',
  'ttl.seconds',
  'queryMode',
  'queryAllowlist',
  'varyHeaders',
  'maxObjectBytes',
];

const list = (s: string) =>
  s
    .split(',')
    .map((x) => x.trim())
    .filter((x) => x !== '');

function RuleEditor(props: {
  api: Client;
  rule: CacheRule | null;
  onClose: () => void;
  onSaved: () => void;
}) {
  const { api, rule } = props;
  const form = useFields({
    name: rule?.name ?? '',
    priority: String(rule?.priority ?? 0),
    expression: rule?.expression ?? '',
    ttlMode: rule?.ttl.mode ?? 'origin',
    ttlSeconds: String(rule?.ttl.seconds ?? 0),
    queryMode: rule?.queryMode ?? 'include',
    queryAllowlist: (rule?.queryAllowlist ?? []).join(', '),
    varyHeaders: (rule?.varyHeaders ?? []).join(', '),
    maxObjectBytes: String(rule?.maxObjectBytes ?? 100 * 1024 * 1024),
    enabled: rule?.enabled ?? true,
  });
  const v = form.values;
  const save = async () => {
    const body = {
      name: v.name,
      priority: Number(v.priority),
      expression: v.expression,
      ttl: { mode: v.ttlMode, seconds: Number(v.ttlSeconds) },
      queryMode: v.queryMode,
      queryAllowlist: list(v.queryAllowlist),
      varyHeaders: list(v.varyHeaders),
      maxObjectBytes: Number(v.maxObjectBytes),
      enabled: v.enabled,
    };
    if (rule === null) await api.post('/api/v1/cache/rules', body);
    else await api.patch(`/api/v1/cache/rules/${encodeURIComponent(rule.id)}`, body);
    props.onSaved();
  };
  return (
    <FormDialog
      title={rule ? `Edit ${rule.name}` : 'Add cache rule'}
      onClose={props.onClose}
      onSubmit={save}
      fields={RULE_FIELDS}
      submitLabel="Save rule"
      testId="cache-rule-editor"
      wide
    >
      <Field label="Name">
        <input {...form.text('name')} />
      </Field>
      <Field label="Priority" hint="Lower applies first.">
        <input type="number" {...form.text('priority')} />
      </Field>
      <Field
        label="Match expression"
        hint="CEL, e.g. path_prefix(path, &quot;/assets&quot;); empty matches every request."
      >
        <textarea rows={2} class="mono" spellcheck={false} {...form.text('expression')} />
      </Field>
      <Field
        label="TTL"
        name="ttl"
        hint="origin: as the upstream says (seconds used when it says nothing); fixed: always."
      >
        <select {...form.choice('ttlMode')}>
          <option value="origin">origin</option>
          <option value="fixed">fixed</option>
        </select>
      </Field>
      <Field label="TTL seconds" name="ttl.seconds">
        <input type="number" {...form.text('ttlSeconds')} />
      </Field>
      <Field label="Query">
        <select {...form.choice('queryMode')}>
          <option value="include">part of the key</option>
          <option value="ignore">ignored</option>
          <option value="allowlist">only the names listed</option>
        </select>
      </Field>
      {v.queryMode === 'allowlist' ? (
        <Field label="Query names" hint="Comma separated.">
          <input {...form.text('queryAllowlist')} />
        </Field>
      ) : null}
      <Field label="Vary on request headers" hint="Comma separated, added to the key.">
        <input {...form.text('varyHeaders')} />
      </Field>
      <Field label="Largest object (bytes)" hint="Bigger answers stream through uncached.">
        <input type="number" {...form.text('maxObjectBytes')} />
      </Field>
      <label>
        <input {...form.check('enabled')} /> Enabled
      </label>
    </FormDialog>
  );
}

const PURGE_KINDS = ['all', 'host', 'pathPrefix', 'ruleId'] as const;

function PurgeCard(props: { api: Client; rules: CacheRule[]; onPurged: () => void }) {
  const form = useFields({ purgeWhat: 'all', purgeValue: '' });
  const [result, setResult] = useState<string | null>(null);
  const what = form.values.purgeWhat as (typeof PURGE_KINDS)[number];
  const submit = async () => {
    setResult(null);
    const body = what === 'all' ? { all: true } : { [what]: form.values.purgeValue };
    const { purged } = await props.api.post<{ purged: number }>('/api/v1/cache/purge', body);
    setResult(`Purged ${purged} ${purged === 1 ? 'entry' : 'entries'}.`);
    props.onPurged();
  };
  return (
    <Form
      class="card settings-card"
      testId="cache-purge"
      onSubmit={submit}
      fields={PURGE_KINDS}
      repeatable
      actions={(busy) => (
        <div class="actions">
          {result ? (
            <span class="ok-text" role="status">
              {result}
            </span>
          ) : null}
          <button type="submit" class="danger" disabled={busy}>
            Purge
          </button>
        </div>
      )}
    >
      <SectionHead title="Purge" level={2} />
      <Field label="Purge" name="all">
        <select {...form.choice('purgeWhat')}>
          <option value="all">everything</option>
          <option value="host">one host</option>
          <option value="pathPrefix">a path prefix</option>
          <option value="ruleId">what a rule stored</option>
        </select>
      </Field>
      {what === 'ruleId' ? (
        <Field label="Rule" name="ruleId">
          <select {...form.choice('purgeValue')}>
            <option value="">Choose a rule</option>
            {props.rules.map((r) => (
              <option key={r.id} value={r.id}>
                {r.name}
              </option>
            ))}
          </select>
        </Field>
      ) : what !== 'all' ? (
        <Field label={what === 'host' ? 'Host' : 'Path prefix'} name={what}>
          <input {...form.text('purgeValue')} />
        </Field>
      ) : null}
    </Form>
  );
}
