/**
 * Settings → Environments: the registry of other instances this control plane
 * operates. Always talks to Local, whatever environment the header selects.
 */
import { useState } from 'preact/hooks';
import { local, messageOf } from '../api';
import { AgentOptions, defaultAgentId } from '../components/agent-picker';
import { ConfirmDelete, DataTable } from '../components/data-table';
import { CheckboxField, FormDialog, numberOr, useFieldError, useFields } from '../components/form-dialog';
import {
  Badge,
  Field,
  formatTime,
  relativeTime,
  SectionHead,
  shortFingerprint,
  TrustBadge,
  useResource,
} from '../components/ui';
import { useEnvironments } from '../environment';
import type { Agent, Certificate, DiscoverOutcome, Environment, TestOutcome } from '../types';

const DEFAULT_TIMEOUT_MS = 10_000;
const FIELDS = ['name', 'url', 'transport', 'agentId', 'accessToken', 'timeoutMs'] as const;

type Editing = { mode: 'create' } | { mode: 'edit'; environment: Environment };

interface Reviewing {
  environment: Environment;
  certificate: Certificate;
  hostnameMatches?: boolean | undefined;
}

/** What the last Discover / Test said in its row. */
interface RowMessage {
  ok: boolean;
  text: string;
  timing?: TestOutcome['timing'];
}

export function EnvironmentsPage() {
  const switcher = useEnvironments();
  const registry = useResource(() => local.get<{ environments: Environment[] }>('/api/v1/environments'), []);
  const [editing, setEditing] = useState<Editing | null>(null);
  const [reviewing, setReviewing] = useState<Reviewing | null>(null);
  const [deleting, setDeleting] = useState<Environment | null>(null);
  const [busy, setBusy] = useState<string | null>(null);
  const [rowMessage, setRowMessage] = useState<(RowMessage & { id: string }) | null>(null);
  const environments = (registry.data?.environments ?? []).filter((e) => !e.virtual);
  const agents = switcher.agents;

  // The agent picker shows the agents' state as of opening the form.
  const openForm = (next: Editing) => {
    switcher.refresh().catch(() => undefined);
    setEditing(next);
  };

  const changed = () => {
    registry.reload();
    switcher.refresh().catch(() => undefined);
  };

  const discover = async (environment: Environment) => {
    setBusy(`discover:${environment.id}`);
    setRowMessage(null);
    try {
      const result = await local.post<DiscoverOutcome>(
        `/api/v1/environments/${encodeURIComponent(environment.id)}/discover`,
      );
      changed();
      setReviewing({ environment, certificate: result.certificate, hostnameMatches: result.hostnameMatches });
    } catch (err) {
      setRowMessage({ id: environment.id, ok: false, text: `Discovery failed: ${messageOf(err)}` });
      changed();
    } finally {
      setBusy(null);
    }
  };

  const test = async (environment: Environment) => {
    setBusy(`test:${environment.id}`);
    setRowMessage(null);
    try {
      const result = await local.post<TestOutcome>(
        `/api/v1/environments/${encodeURIComponent(environment.id)}/test`,
      );
      setRowMessage({
        id: environment.id,
        ok: result.ok,
        text: `Test ${result.ok ? 'passed' : 'failed'} in ${result.latencyMs} ms: p2pstream ${result.remote?.version ?? '?'}, instance ${result.remote?.instanceId ?? '?'}`,
        timing: result.timing,
      });
    } catch (err) {
      setRowMessage({ id: environment.id, ok: false, text: `Test failed: ${messageOf(err)}` });
    } finally {
      setBusy(null);
      changed();
    }
  };

  return (
    <section>
      <SectionHead title="Environments">
        <button type="button" class="primary" onClick={() => openForm({ mode: 'create' })}>
          Add environment
        </button>
      </SectionHead>
      <p class="muted">
        Other p2pstream instances operated from here, directly or through an agent. This list always belongs
        to <strong>Local</strong>, whichever environment is selected above.
      </p>
      <DataTable
        testId="environments-table"
        what="environments"
        rows={environments}
        rowKey={(e) => e.id}
        loading={registry.loading && !registry.data}
        error={registry.error}
        rowAttributes={(e) => ({ 'data-environment': e.name })}
        columns={[
          {
            header: 'Name',
            cell: (env) => (
              <>
                <div>{env.name}</div>
                {env.enabled === false ? <Badge tone="warn">disabled</Badge> : null}
              </>
            ),
          },
          { header: 'URL', class: 'mono break', cell: (env) => env.url },
          { header: 'Transport', cell: (env) => <TransportCell environment={env} agents={agents} /> },
          { header: 'Trust', cell: (env) => <TrustBadge state={env.trustState} /> },
          { header: 'Certificate', cell: (env) => <CertificateCell environment={env} /> },
          {
            header: 'Last test',
            cell: (env) => (
              <LastTestCell environment={env} message={rowMessage?.id === env.id ? rowMessage : null} />
            ),
          },
        ]}
        rowName={(e) => e.name}
        actions={(env) => {
          const pending = pendingCertificate(env);
          return [
            { label: 'Edit', onClick: () => openForm({ mode: 'edit', environment: env }) },
            { label: 'Discover', onClick: () => discover(env), disabled: busy === `discover:${env.id}` },
            pending
              ? {
                  label: 'Review certificate',
                  what: `of ${env.name}`,
                  onClick: () => setReviewing({ environment: env, certificate: pending }),
                }
              : null,
            { label: 'Test', onClick: () => test(env), disabled: busy === `test:${env.id}` },
            { label: 'Delete', danger: true, onClick: () => setDeleting(env) },
          ];
        }}
      />
      {editing ? (
        <EnvironmentDialog
          editing={editing}
          agents={agents}
          onClose={() => setEditing(null)}
          onSaved={() => {
            setEditing(null);
            changed();
          }}
        />
      ) : null}
      {reviewing ? (
        <TrustDialog
          environment={reviewing.environment}
          certificate={reviewing.certificate}
          hostnameMatches={reviewing.hostnameMatches}
          onClose={() => setReviewing(null)}
          onTrusted={() => {
            setReviewing(null);
            changed();
          }}
        />
      ) : null}
      {deleting ? (
        <ConfirmDelete
          title="Delete environment"
          name={deleting.name}
          message={
            <>
              Delete <strong>{deleting.name}</strong> ({deleting.url})? Its access token and trusted
              certificate are forgotten.
            </>
          }
          confirmLabel="Delete environment"
          onConfirm={() => local.del(`/api/v1/environments/${encodeURIComponent(deleting.id)}`).then(changed)}
          onClose={() => setDeleting(null)}
        />
      ) : null}
    </section>
  );
}

/** A certificate discovered but not the trusted one: the one to review. */
function pendingCertificate(env: Environment): Certificate | null {
  return env.discoveredCertificate &&
    env.discoveredCertificate.fingerprintSha256 !== env.certificate?.fingerprintSha256
    ? env.discoveredCertificate
    : null;
}

function TransportCell(props: { environment: Environment; agents: Agent[] }) {
  const env = props.environment;
  if (env.transport !== 'agent') return <>Direct</>;
  const agent = env.agentId ? props.agents.find((a) => a.id === env.agentId) : undefined;
  return (
    <>
      Agent <strong>{agent?.name ?? env.agentId}</strong>{' '}
      {agent ? (
        <Badge tone={agent.status === 'connected' ? 'ok' : 'muted'}>{agent.status}</Badge>
      ) : (
        <Badge tone="bad">missing</Badge>
      )}
    </>
  );
}

function CertificateCell(props: { environment: Environment }) {
  const cert = props.environment.certificate;
  const pending = pendingCertificate(props.environment);
  return (
    <>
      {cert ? (
        <>
          <span class="mono" title={cert.fingerprintSha256}>
            {shortFingerprint(cert.fingerprintSha256)}
          </span>
          <br />
          <small class={Date.parse(cert.validTo) < Date.now() ? 'bad-text' : 'muted'}>
            expires {formatTime(cert.validTo)}
          </small>
        </>
      ) : (
        <span class="muted">none trusted</span>
      )}
      {pending ? (
        <div>
          <small class="warn-text">
            observed <span class="mono">{shortFingerprint(pending.fingerprintSha256)}</span>
          </small>
        </div>
      ) : null}
    </>
  );
}

function LastTestCell(props: { environment: Environment; message: RowMessage | null }) {
  const last = props.environment.lastTest;
  return (
    <>
      {last ? (
        <>
          <Badge tone={last.ok ? 'ok' : 'bad'}>{last.ok ? 'ok' : 'failed'}</Badge>{' '}
          <small class="muted" title={formatTime(last.at)}>
            {last.ok && last.latencyMs !== null ? `${last.latencyMs} ms · ` : ''}
            {relativeTime(last.at)}
          </small>
          {last.error ? <div class="bad-text small">{last.error.code}</div> : null}
        </>
      ) : (
        <span class="muted">never</span>
      )}
      {props.message ? (
        <div class={props.message.ok ? 'ok-text small' : 'bad-text small'} role="status">
          {props.message.text}
          {props.message.timing ? <TimingBreakdown timing={props.message.timing} /> : null}
        </div>
      ) : null}
    </>
  );
}

function EnvironmentDialog(props: {
  editing: Editing;
  agents: Agent[];
  onClose: () => void;
  onSaved: () => void;
}) {
  const existing = props.editing.mode === 'edit' ? props.editing.environment : null;
  const form = useFields({
    name: existing?.name ?? '',
    url: existing?.url ?? 'https://',
    transport: existing?.transport ?? 'direct',
    agentId: existing?.agentId ?? '',
    accessToken: '',
    timeoutMs: String(existing?.timeoutMs ?? DEFAULT_TIMEOUT_MS),
    enabled: existing?.enabled ?? true,
  });
  const v = form.values;
  // Until one is chosen, the first listed (a connected one when there is one), from the latest list.
  const agentId = v.agentId || defaultAgentId(props.agents);

  const save = async () => {
    const body: Record<string, unknown> = {
      name: v.name,
      url: v.url,
      transport: v.transport,
      enabled: v.enabled,
      timeoutMs: numberOr(v.timeoutMs),
    };
    if (v.transport === 'agent') body.agentId = agentId;
    if (v.accessToken !== '' || !existing) body.accessToken = v.accessToken;
    if (existing) await local.patch(`/api/v1/environments/${encodeURIComponent(existing.id)}`, body);
    else await local.post('/api/v1/environments', body);
    props.onSaved();
  };

  return (
    <FormDialog
      title={existing ? `Edit ${existing.name}` : 'Add environment'}
      onClose={props.onClose}
      onSubmit={save}
      fields={FIELDS}
      submitLabel={existing ? 'Save' : 'Add environment'}
      noValidate
      testId="environment-dialog"
    >
      <Field label="Name">
        <input maxLength={128} {...form.text('name')} />
      </Field>
      <Field
        label="Management URL"
        hint="The instance's management API, https:// only. Changing it clears the trusted certificate."
      >
        <input type="url" {...form.text('url')} />
      </Field>
      <TransportChoice value={v.transport} onChange={(transport) => form.set('transport', transport)} />
      {v.transport === 'agent' ? (
        <Field
          label="Agent"
          hint={
            props.agents.length === 0 ? 'No agents yet: create one on the Agents page (Local).' : undefined
          }
        >
          <select {...form.choice('agentId')} value={agentId}>
            <AgentOptions agents={props.agents} />
          </select>
        </Field>
      ) : null}
      <Field
        label="Access token"
        hint={
          existing
            ? 'Leave blank to keep the stored token.'
            : 'An API token created on that instance (p2pat_…). Stored encrypted, never shown again.'
        }
      >
        <input
          type="password"
          autocomplete="off"
          placeholder={existing ? 'leave blank to keep' : 'p2pat_…'}
          {...form.text('accessToken')}
        />
      </Field>
      <Field label="Timeout (ms)" hint="1000 to 300000; also bounds discovery.">
        <input type="number" min={1000} max={300000} step={1000} {...form.text('timeoutMs')} />
      </Field>
      <CheckboxField {...form.check('enabled')}>Enabled</CheckboxField>
    </FormDialog>
  );
}

/** Direct or through an agent: a radio group, with the server's error for `transport` under it. */
function TransportChoice(props: { value: string; onChange: (value: 'direct' | 'agent') => void }) {
  const error = useFieldError('transport');
  const option = (value: 'direct' | 'agent', label: string) => (
    <label class="inline">
      <input
        type="radio"
        name="transport"
        value={value}
        checked={props.value === value}
        onChange={() => props.onChange(value)}
      />{' '}
      {label}
    </label>
  );
  return (
    <fieldset class={error ? 'field invalid' : 'field'}>
      <legend class="field-label">Transport</legend>
      {option('direct', 'Direct (this instance connects)')}
      {option('agent', 'Through an agent')}
      {error ? (
        <small class="field-error" role="alert">
          {error}
        </small>
      ) : null}
    </fieldset>
  );
}

function CertificateDetails(props: { certificate: Certificate; title: string; testId: string }) {
  const c = props.certificate;
  const expired = Date.parse(c.validTo) < Date.now();
  return (
    <div class="certificate" data-testid={props.testId}>
      <h3>{props.title}</h3>
      <dl>
        <dt>SHA-256 fingerprint</dt>
        <dd class="mono break fingerprint">{c.fingerprintSha256}</dd>
        <dt>Subject</dt>
        <dd class="break">{c.subject}</dd>
        <dt>Issuer</dt>
        <dd class="break">{c.issuer}</dd>
        <dt>Subject alternative names</dt>
        <dd>{c.subjectAltNames.length ? c.subjectAltNames.join(', ') : '—'}</dd>
        <dt>Valid</dt>
        <dd>
          {formatTime(c.validFrom)} → {formatTime(c.validTo)}{' '}
          {expired ? <Badge tone="bad">expired</Badge> : null}
        </dd>
        <dt>Serial number</dt>
        <dd class="mono break">{c.serialNumber}</dd>
      </dl>
    </div>
  );
}

function TrustDialog(props: {
  environment: Environment;
  certificate: Certificate;
  hostnameMatches?: boolean | undefined;
  onClose: () => void;
  onTrusted: () => void;
}) {
  const trusted = props.environment.certificate;
  const same = trusted?.fingerprintSha256 === props.certificate.fingerprintSha256;
  const changedFrom = trusted && !same ? trusted : null;
  const now = Date.now();
  const expired =
    Date.parse(props.certificate.validTo) < now || Date.parse(props.certificate.validFrom) > now;
  const refusal = expired
    ? 'This certificate is outside its validity period: it cannot be trusted. Renew it on the instance, then discover again.'
    : props.hostnameMatches === false
      ? `This certificate is not valid for the host name of ${props.environment.url}: it cannot be trusted. Fix the URL or the certificate, then discover again.`
      : null;
  const trust = async () => {
    await local.post(`/api/v1/environments/${encodeURIComponent(props.environment.id)}/trust`, {
      fingerprintSha256: props.certificate.fingerprintSha256,
    });
    props.onTrusted();
  };
  return (
    <FormDialog
      title={`Certificate of ${props.environment.name}`}
      onClose={props.onClose}
      onSubmit={trust}
      fields={[]}
      submitLabel={same ? null : 'Trust certificate'}
      submitDisabled={refusal !== null}
      cancelLabel={same ? 'Close' : 'Cancel'}
      wide
      testId="trust-dialog"
    >
      {same ? (
        <p>
          <Badge tone="ok">TRUSTED</Badge> This is the certificate already trusted for {props.environment.url}
          .
        </p>
      ) : changedFrom ? (
        <p class="warn-text" role="alert">
          <strong>The certificate changed.</strong> {props.environment.url} now presents another certificate
          than the trusted one. Trust the new one only if you expected this change (a planned rotation).
        </p>
      ) : (
        <p>
          Compare the fingerprint with the one the instance shows (its log or{' '}
          <code>openssl x509 -fingerprint -sha256</code>) before trusting it. Requests to{' '}
          {props.environment.url} will then only go to a server presenting exactly this certificate.
        </p>
      )}
      <div class={changedFrom ? 'compare' : undefined}>
        {changedFrom ? (
          <CertificateDetails certificate={changedFrom} title="Trusted (old)" testId="old-certificate" />
        ) : null}
        <CertificateDetails
          certificate={props.certificate}
          title={changedFrom ? 'Observed (new)' : 'Observed certificate'}
          testId="new-certificate"
        />
      </div>
      {refusal && !same ? (
        <p class="error-box" role="alert">
          {refusal}
        </p>
      ) : null}
    </FormDialog>
  );
}

const TIMING_STEPS = [
  ['cp', 'control plane'],
  ['hub', 'agent link'],
  ['dns', 'DNS'],
  ['connect', 'connect'],
  ['tls', 'TLS'],
  ['ttfb', 'first byte'],
  ['total', 'total'],
] as const;

/** The environment test's timing, step by step (as relayed responses' Server-Timing). */
function TimingBreakdown(props: { timing: TestOutcome['timing'] }) {
  return (
    <dl class="timing" data-testid="test-timing">
      {TIMING_STEPS.map(([key, label]) => {
        const value = props.timing[key];
        return value === null ? null : (
          <div key={key} data-step={key}>
            <dt>{label}</dt>
            <dd>{value} ms</dd>
          </div>
        );
      })}
    </dl>
  );
}
