/**
 * Settings → Environments: the registry of other instances this control plane
 * operates. Always talks to Local, whatever environment the header selects.
 */
import type { JSX } from 'preact';
import { useState } from 'preact/hooks';
import { local, messageOf } from '../api';
import {
  Badge,
  ConfirmDialog,
  Dialog,
  ErrorMessage,
  Field,
  type FormErrors,
  formatTime,
  formErrors,
  LoadState,
  NO_ERRORS,
  relativeTime,
  SectionHead,
  shortFingerprint,
  TrustBadge,
  useResource,
} from '../components/ui';
import { useEnvironments } from '../environment';
import type { Agent, Certificate, DiscoverOutcome, Environment, TestOutcome } from '../types';

const DEFAULT_TIMEOUT_MS = 10_000;
const FIELDS = ['name', 'url', 'transport', 'agentId', 'accessToken', 'timeoutMs', 'enabled'] as const;

type Editing = { mode: 'create' } | { mode: 'edit'; environment: Environment };

interface Reviewing {
  environment: Environment;
  certificate: Certificate;
  hostnameMatches?: boolean | undefined;
}

export function EnvironmentsPage() {
  const switcher = useEnvironments();
  const registry = useResource(() => local.get<{ environments: Environment[] }>('/api/v1/environments'), []);
  const [editing, setEditing] = useState<Editing | null>(null);
  const [reviewing, setReviewing] = useState<Reviewing | null>(null);
  const [deleting, setDeleting] = useState<Environment | null>(null);
  const [busy, setBusy] = useState<string | null>(null);
  const [rowMessage, setRowMessage] = useState<{
    id: string;
    ok: boolean;
    text: string;
    timing?: TestOutcome['timing'];
  } | null>(null);
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
      <LoadState
        loading={registry.loading && !registry.data}
        error={registry.error}
        empty={environments.length === 0}
        what="environments"
      />
      {environments.length > 0 ? (
        <table data-testid="environments-table">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">URL</th>
              <th scope="col">Transport</th>
              <th scope="col">Trust</th>
              <th scope="col">Certificate</th>
              <th scope="col">Last test</th>
              <th scope="col">
                <span class="visually-hidden">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {environments.map((environment) => (
              <EnvironmentRow
                key={environment.id}
                environment={environment}
                agents={agents}
                busy={busy}
                message={rowMessage?.id === environment.id ? rowMessage : null}
                onEdit={() => openForm({ mode: 'edit', environment })}
                onDiscover={() => discover(environment)}
                onReview={(certificate) => setReviewing({ environment, certificate })}
                onTest={() => test(environment)}
                onDelete={() => setDeleting(environment)}
              />
            ))}
          </tbody>
        </table>
      ) : null}
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
        <ConfirmDialog
          title="Delete environment"
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

function EnvironmentRow(props: {
  environment: Environment;
  agents: Agent[];
  busy: string | null;
  message: { ok: boolean; text: string; timing?: TestOutcome['timing'] } | null;
  onEdit: () => void;
  onDiscover: () => void;
  onReview: (certificate: Certificate) => void;
  onTest: () => void;
  onDelete: () => void;
}) {
  const { environment: env } = props;
  const agent = env.agentId ? props.agents.find((a) => a.id === env.agentId) : undefined;
  const pending =
    env.discoveredCertificate &&
    env.discoveredCertificate.fingerprintSha256 !== env.certificate?.fingerprintSha256
      ? env.discoveredCertificate
      : null;
  const cert = env.certificate;
  return (
    <tr data-environment={env.name}>
      <td>
        <div>{env.name}</div>
        {env.enabled === false ? <Badge tone="warn">disabled</Badge> : null}
      </td>
      <td class="mono break">{env.url}</td>
      <td>
        {env.transport === 'agent' ? (
          <>
            Agent <strong>{agent?.name ?? env.agentId}</strong>{' '}
            {agent ? (
              <Badge tone={agent.status === 'connected' ? 'ok' : 'muted'}>{agent.status}</Badge>
            ) : (
              <Badge tone="bad">missing</Badge>
            )}
          </>
        ) : (
          'Direct'
        )}
      </td>
      <td>
        <TrustBadge state={env.trustState} />
      </td>
      <td>
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
      </td>
      <td>
        {env.lastTest ? (
          <>
            <Badge tone={env.lastTest.ok ? 'ok' : 'bad'}>{env.lastTest.ok ? 'ok' : 'failed'}</Badge>{' '}
            <small class="muted" title={formatTime(env.lastTest.at)}>
              {env.lastTest.ok && env.lastTest.latencyMs !== null ? `${env.lastTest.latencyMs} ms · ` : ''}
              {relativeTime(env.lastTest.at)}
            </small>
            {env.lastTest.error ? <div class="bad-text small">{env.lastTest.error.code}</div> : null}
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
      </td>
      <td class="row-actions">
        <button type="button" class="secondary small" onClick={props.onEdit}>
          Edit<span class="visually-hidden"> {env.name}</span>
        </button>
        <button
          type="button"
          class="secondary small"
          onClick={props.onDiscover}
          disabled={props.busy === `discover:${env.id}`}
        >
          Discover<span class="visually-hidden"> {env.name}</span>
        </button>
        {pending ? (
          <button type="button" class="secondary small" onClick={() => props.onReview(pending)}>
            Review certificate<span class="visually-hidden"> of {env.name}</span>
          </button>
        ) : null}
        <button
          type="button"
          class="secondary small"
          onClick={props.onTest}
          disabled={props.busy === `test:${env.id}`}
        >
          Test<span class="visually-hidden"> {env.name}</span>
        </button>
        <button type="button" class="danger small" onClick={props.onDelete}>
          Delete<span class="visually-hidden"> {env.name}</span>
        </button>
      </td>
    </tr>
  );
}

function isOnline(agent: Agent): boolean {
  return agent.enabled && agent.status === 'connected';
}

/** The agent picker's order: connected agents first, then offline (and disabled) ones, each by name. */
function groupAgentsForPicker(agents: Agent[]): { label: string; agents: Agent[] }[] {
  const byName = (a: Agent, b: Agent) => a.name.localeCompare(b.name);
  return [
    { label: 'Connected', agents: agents.filter(isOnline).sort(byName) },
    { label: 'Offline', agents: agents.filter((a) => !isOnline(a)).sort(byName) },
  ];
}

function EnvironmentDialog(props: {
  editing: Editing;
  agents: Agent[];
  onClose: () => void;
  onSaved: () => void;
}) {
  const existing = props.editing.mode === 'edit' ? props.editing.environment : null;
  const [name, setName] = useState(existing?.name ?? '');
  const [url, setUrl] = useState(existing?.url ?? 'https://');
  const [transport, setTransport] = useState<'direct' | 'agent'>(existing?.transport ?? 'direct');
  const agentGroups = groupAgentsForPicker(props.agents);
  const [chosenAgentId, setAgentId] = useState(existing?.agentId ?? '');
  // Until one is chosen, the first listed (a connected one when there is one), from the latest list.
  const agentId = chosenAgentId || (agentGroups.find((g) => g.agents.length > 0)?.agents[0]?.id ?? '');
  const [accessToken, setAccessToken] = useState('');
  const [timeoutMs, setTimeoutMs] = useState(String(existing?.timeoutMs ?? DEFAULT_TIMEOUT_MS));
  const [enabled, setEnabled] = useState(existing?.enabled ?? true);
  const [errors, setErrors] = useState<FormErrors>(NO_ERRORS);
  const [busy, setBusy] = useState(false);

  const submit = async (event: JSX.TargetedEvent<HTMLFormElement>) => {
    event.preventDefault();
    setBusy(true);
    setErrors(NO_ERRORS);
    const body: Record<string, unknown> = { name, url, transport, enabled };
    if (transport === 'agent') body.agentId = agentId;
    const timeout = Number(timeoutMs);
    body.timeoutMs = timeoutMs.trim() === '' || Number.isNaN(timeout) ? timeoutMs : timeout;
    if (accessToken !== '' || !existing) body.accessToken = accessToken;
    try {
      if (existing) await local.patch(`/api/v1/environments/${encodeURIComponent(existing.id)}`, body);
      else await local.post('/api/v1/environments', body);
      props.onSaved();
    } catch (err) {
      setErrors(formErrors(err, FIELDS));
      setBusy(false);
    }
  };

  return (
    <Dialog
      title={existing ? `Edit ${existing.name}` : 'Add environment'}
      onClose={props.onClose}
      testId="environment-dialog"
    >
      <form onSubmit={submit} noValidate>
        <Field label="Name" error={errors.field.name}>
          <input name="name" value={name} maxLength={128} onInput={(e) => setName(e.currentTarget.value)} />
        </Field>
        <Field
          label="Management URL"
          error={errors.field.url}
          hint="The instance's management API, https:// only. Changing it clears the trusted certificate."
        >
          <input name="url" type="url" value={url} onInput={(e) => setUrl(e.currentTarget.value)} />
        </Field>
        <fieldset class={errors.field.transport ? 'field invalid' : 'field'}>
          <legend class="field-label">Transport</legend>
          <label class="inline">
            <input
              type="radio"
              name="transport"
              value="direct"
              checked={transport === 'direct'}
              onChange={() => setTransport('direct')}
            />{' '}
            Direct (this instance connects)
          </label>
          <label class="inline">
            <input
              type="radio"
              name="transport"
              value="agent"
              checked={transport === 'agent'}
              onChange={() => setTransport('agent')}
            />{' '}
            Through an agent
          </label>
          {errors.field.transport ? (
            <small class="field-error" role="alert">
              {errors.field.transport}
            </small>
          ) : null}
        </fieldset>
        {transport === 'agent' ? (
          <Field
            label="Agent"
            error={errors.field.agentId}
            hint={
              props.agents.length === 0 ? 'No agents yet: create one on the Agents page (Local).' : undefined
            }
          >
            <select name="agentId" value={agentId} onChange={(e) => setAgentId(e.currentTarget.value)}>
              {props.agents.length === 0 ? <option value="">No agents</option> : null}
              {agentGroups.map((group) =>
                group.agents.length === 0 ? null : (
                  <optgroup key={group.label} label={group.label}>
                    {group.agents.map((agent) => (
                      <option key={agent.id} value={agent.id}>
                        {agent.name}
                        {isOnline(agent) ? '' : ` (${agent.enabled ? 'offline' : 'disabled'})`}
                      </option>
                    ))}
                  </optgroup>
                ),
              )}
            </select>
          </Field>
        ) : null}
        <Field
          label="Access token"
          error={errors.field.accessToken}
          hint={
            existing
              ? 'Leave blank to keep the stored token.'
              : 'An API token created on that instance (p2pat_…). Stored encrypted, never shown again.'
          }
        >
          <input
            name="accessToken"
            type="password"
            autocomplete="off"
            placeholder={existing ? 'leave blank to keep' : 'p2pat_…'}
            value={accessToken}
            onInput={(e) => setAccessToken(e.currentTarget.value)}
          />
        </Field>
        <Field
          label="Timeout (ms)"
          error={errors.field.timeoutMs}
          hint="1000 to 300000; also bounds discovery."
        >
          <input
            name="timeoutMs"
            type="number"
            min={1000}
            max={300000}
            step={1000}
            value={timeoutMs}
            onInput={(e) => setTimeoutMs(e.currentTarget.value)}
          />
        </Field>
        <label class={errors.field.enabled ? 'field inline invalid' : 'field inline'}>
          <input
            name="enabled"
            type="checkbox"
            checked={enabled}
            onChange={(e) => setEnabled(e.currentTarget.checked)}
          />{' '}
          Enabled
        </label>
        <ErrorMessage error={errors.form} />
        <div class="actions">
          <button type="button" class="secondary" onClick={props.onClose}>
            Cancel
          </button>
          <button type="submit" class="primary" disabled={busy}>
            {existing ? 'Save' : 'Add environment'}
          </button>
        </div>
      </form>
    </Dialog>
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
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
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
    setBusy(true);
    setError(null);
    try {
      await local.post(`/api/v1/environments/${encodeURIComponent(props.environment.id)}/trust`, {
        fingerprintSha256: props.certificate.fingerprintSha256,
      });
      props.onTrusted();
    } catch (err) {
      setError(err);
      setBusy(false);
    }
  };
  return (
    <Dialog
      title={`Certificate of ${props.environment.name}`}
      onClose={props.onClose}
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
      <ErrorMessage error={error} />
      <div class="actions">
        <button type="button" class="secondary" onClick={props.onClose}>
          {same ? 'Close' : 'Cancel'}
        </button>
        {same ? null : (
          <button type="button" class="primary" onClick={trust} disabled={busy || refusal !== null}>
            Trust certificate
          </button>
        )}
      </div>
    </Dialog>
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
