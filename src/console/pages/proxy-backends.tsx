/**
 * The Backends section of the Proxy page: pools of upstream and agent members
 * a route can target, each member with its live health (polled from
 * `/api/v1/proxy/backends/:id/health`), and the create / edit / delete dialogs.
 * An agent member picks one agent by name or any connected agent by labels
 * (README "Load balancing with backends").
 */
import { useEffect, useState } from 'preact/hooks';
import { ApiError, type Client } from '../api';
import {
  AgentOptions,
  agentsWithLabels,
  defaultAgentId,
  formatLabels,
  isAgentOnline,
  parseLabels,
} from '../components/agent-picker';
import { ConfirmDelete, DataTable } from '../components/data-table';
import { CheckboxField, FormDialog, numberOr, useFields } from '../components/form-dialog';
import { Badge, Field, SectionHead, type Tone } from '../components/ui';
import type { Agent, Backend, BackendMember, Listener, MemberHealth, ProxyRoute } from '../types';

/** How often the members' health is asked for while the page is shown. */
export const HEALTH_POLL_MS = 2000;

export const ALGORITHM_NAMES: Record<Backend['algorithm'], string> = {
  round_robin: 'Round robin',
  weighted_round_robin: 'Weighted round robin',
  least_active: 'Least active',
  consistent_hash: 'Consistent hash',
};

const HEALTH_TONES: Record<MemberHealth['state'], Tone> = {
  healthy: 'ok',
  unhealthy: 'bad',
  draining: 'warn',
  unknown: 'muted',
};

/** The last health answer of each backend (by id), or the error that replaced it. */
type HealthByBackend = Record<string, { members: MemberHealth[] } | { error: unknown }>;

/**
 * Polls the health of `ids` every {@link HEALTH_POLL_MS} (one round at a time,
 * paused while the tab is hidden); restarts when the environment or the list changes.
 */
function useBackendHealth(api: Client, ids: readonly string[]): HealthByBackend {
  const [health, setHealth] = useState<HealthByBackend>({});
  const key = ids.join(',');
  useEffect(() => {
    let live = true;
    let timer: number | undefined;
    const round = async () => {
      if (ids.length > 0 && !document.hidden) {
        const answers = await Promise.all(
          ids.map((id) =>
            api
              .get<{ members: MemberHealth[] }>(`/api/v1/proxy/backends/${encodeURIComponent(id)}/health`)
              .then(
                (r) => [id, { members: r.members }] as const,
                (error: unknown) => [id, { error }] as const,
              ),
          ),
        );
        if (!live) return;
        setHealth(Object.fromEntries(answers));
      }
      if (live) timer = window.setTimeout(round, HEALTH_POLL_MS);
    };
    void round();
    return () => {
      live = false;
      window.clearTimeout(timer);
    };
  }, [api.environment, key]);
  return health;
}

/** `→ backend web`: how a route's backend target reads. */
export function backendName(backends: readonly Backend[], id: string): string {
  return backends.find((b) => b.id === id)?.name ?? `${id} (missing)`;
}

/** One route as a phrase: `/app on public` (`host/app on public` with a host). */
function routePhrase(route: ProxyRoute, listeners: readonly Listener[]): string {
  const listener = listeners.find((l) => l.id === route.listenerId)?.name ?? route.listenerId;
  return `${route.host ?? ''}${route.pathPrefix} on ${listener}`;
}

/**
 * A delete refused because routes still target the backend (409 CONFLICT
 * with `details.usedBy`), said in words naming those routes.
 */
function conflictInWords(
  err: unknown,
  backend: Backend,
  routes: readonly ProxyRoute[],
  listeners: readonly Listener[],
): unknown {
  if (!(err instanceof ApiError) || err.code !== 'CONFLICT') return err;
  const usedBy = Array.isArray(err.details?.usedBy) ? (err.details.usedBy as { id?: unknown }[]) : [];
  const names = usedBy.map((u) => {
    const route = routes.find((r) => r.id === u.id);
    return route ? routePhrase(route, listeners) : `route ${String(u.id)}`;
  });
  const which = names.length > 0 ? names.join(', ') : 'some routes';
  return new ApiError(
    409,
    'CONFLICT',
    `${backend.name} is still in use: ${names.length === 1 ? 'the route' : 'the routes'} ${which} ` +
      `send${names.length === 1 ? 's' : ''} traffic to it. Point ${names.length === 1 ? 'it' : 'them'} at ` +
      'another target first, then delete the backend.',
  );
}

/** The Backends heading, table and dialogs; `onChanged` reloads the page's data. */
export function BackendsSection(props: {
  api: Client;
  backends: readonly Backend[];
  agents: readonly Agent[];
  routes: readonly ProxyRoute[];
  listeners: readonly Listener[];
  loading: boolean;
  error: unknown;
  onChanged: () => void;
}) {
  const { api, backends, routes } = props;
  const health = useBackendHealth(
    api,
    backends.map((b) => b.id),
  );
  const [dialog, setDialog] = useState<{ backend: Backend | null } | null>(null);
  const [deleting, setDeleting] = useState<Backend | null>(null);
  const usedBy = (b: Backend) =>
    routes.filter((r) => r.target.type === 'backend' && r.target.backendId === b.id);

  return (
    <>
      <SectionHead title="Backends" level={2}>
        <button type="button" class="primary" onClick={() => setDialog({ backend: null })}>
          Add backend
        </button>
      </SectionHead>
      <p class="muted small">
        Pools of upstream servers and agents a route sends requests to, spread by the algorithm among the
        healthy members. An agent member reaches a service in the agent's own network.
      </p>
      <DataTable
        testId="backends-table"
        what="backends"
        rows={backends}
        rowKey={(b) => b.id}
        rowAttributes={(b) => ({ 'data-backend': b.name })}
        loading={props.loading}
        error={props.error}
        errorShownElsewhere
        columns={[
          { header: 'Name', cell: (b) => b.name },
          {
            header: 'Algorithm',
            cell: (b) => (
              <>
                {ALGORITHM_NAMES[b.algorithm] ?? b.algorithm}
                {b.algorithm === 'consistent_hash' ? (
                  <div class="small muted mono">by {b.hashKey}</div>
                ) : null}
              </>
            ),
          },
          {
            header: 'Members',
            cell: (b) => <Members backend={b} health={health[b.id]} agents={props.agents} />,
          },
          {
            header: 'Checks',
            cell: (b) =>
              b.healthCheck ? (
                <span class="small">
                  <span class="mono">{b.healthCheck.path}</span>{' '}
                  <span class="nowrap">every {b.healthCheck.intervalSeconds} s</span>
                </span>
              ) : (
                <span class="small muted">passive only</span>
              ),
          },
          {
            header: 'Used by',
            cell: (b) => {
              const list = usedBy(b);
              return list.length === 0 ? (
                <span class="muted nowrap">no route</span>
              ) : (
                <ul class="plain small">
                  {list.map((r) => (
                    <li key={r.id} class="mono">
                      {routePhrase(r, props.listeners)}
                    </li>
                  ))}
                </ul>
              );
            },
          },
        ]}
        rowName={(b) => b.name}
        actions={(backend) => [
          { label: 'Edit', onClick: () => setDialog({ backend }) },
          { label: 'Delete', danger: true, onClick: () => setDeleting(backend) },
        ]}
      />
      {dialog ? (
        <BackendDialog
          api={api}
          backend={dialog.backend}
          agents={props.agents}
          onClose={() => setDialog(null)}
          onSaved={() => {
            setDialog(null);
            props.onChanged();
          }}
        />
      ) : null}
      {deleting ? (
        <ConfirmDelete
          title="Delete backend"
          name={deleting.name}
          consequence="Routes must not target it any more."
          onConfirm={() =>
            api
              .del(`/api/v1/proxy/backends/${encodeURIComponent(deleting.id)}`)
              .then(props.onChanged, (err: unknown) => {
                throw conflictInWords(err, deleting, routes, props.listeners);
              })
          }
          onClose={() => setDeleting(null)}
        />
      ) : null}
    </>
  );
}

/** Each member: where it sends, its weight, and its live health. */
function Members(props: {
  backend: Backend;
  health: HealthByBackend[string] | undefined;
  agents: readonly Agent[];
}) {
  const { backend, health } = props;
  const states = health && 'members' in health ? health.members : null;
  return (
    <>
      <ul class="plain members">
        {backend.members.map((member) => {
          const h = states?.find((s) => s.id === member.id);
          return (
            <li key={member.id} data-testid="backend-member" data-state={h?.state ?? 'loading'}>
              <MemberTarget member={member} agents={props.agents} />
              {member.weight !== 1 || backend.algorithm === 'weighted_round_robin' ? (
                <span class="muted small"> weight {member.weight}</span>
              ) : null}{' '}
              {h ? (
                <>
                  <Badge tone={HEALTH_TONES[h.state]}>{h.state}</Badge>{' '}
                  <small class="muted">{h.activeRequests} active</small>
                  {h.lastError ? <div class="small bad-text">{h.lastError}</div> : null}
                </>
              ) : (
                <Badge tone="muted">…</Badge>
              )}
            </li>
          );
        })}
      </ul>
      {health && 'error' in health ? (
        <small class="bad-text">health unavailable: {String((health.error as Error)?.message)}</small>
      ) : null}
    </>
  );
}

function MemberTarget(props: { member: BackendMember; agents: readonly Agent[] }) {
  const { member } = props;
  if (member.type === 'upstream') return <span class="mono break">{member.url}</span>;
  const agent = member.agentId ? props.agents.find((a) => a.id === member.agentId) : undefined;
  const matching = member.agentLabels ? agentsWithLabels(props.agents, member.agentLabels) : [];
  return (
    <>
      {member.agentId ? (
        <>
          agent <strong>{agent?.name ?? member.agentId}</strong>{' '}
          {agent && isAgentOnline(agent) ? null : (
            <Badge tone="muted">{agent ? (agent.enabled ? 'offline' : 'disabled') : 'missing'}</Badge>
          )}
        </>
      ) : (
        <>
          agents with{' '}
          {Object.entries(member.agentLabels ?? {}).map(([k, v]) => (
            <span key={k} class="label-chip">
              {k}={v}
            </span>
          ))}{' '}
          <small class="muted">({matching.filter(isAgentOnline).length} connected)</small>
        </>
      )}{' '}
      → <span class="mono break">{member.upstreamUrl}</span>
    </>
  );
}

/** A member being edited; `key` keeps its controls when one above is removed. */
interface MemberDraft {
  key: number;
  /** The stored member's id (kept on save: its health and requests in flight stay). */
  id: string | null;
  type: 'upstream' | 'agent';
  url: string;
  pickBy: 'name' | 'labels';
  agentId: string;
  labels: string;
  /** Labels a member picked by name also requires (kept as they were). */
  alsoLabels: Record<string, string> | null;
  upstreamUrl: string;
  weight: string;
  draining: boolean;
}

let nextKey = 1;

function draftOf(member: BackendMember | null): MemberDraft {
  const base: MemberDraft = {
    key: nextKey++,
    id: member?.id ?? null,
    type: member?.type ?? 'upstream',
    url: '',
    pickBy: 'name',
    agentId: '',
    labels: '',
    alsoLabels: null,
    upstreamUrl: '',
    weight: String(member?.weight ?? 1),
    draining: member?.draining ?? false,
  };
  if (!member) return base;
  if (member.type === 'upstream') return { ...base, url: member.url };
  return {
    ...base,
    pickBy: member.agentId ? 'name' : 'labels',
    agentId: member.agentId ?? '',
    labels: member.agentId ? '' : formatLabels(member.agentLabels),
    alsoLabels: member.agentId ? member.agentLabels : null,
    upstreamUrl: member.upstreamUrl,
  };
}

const MEMBER_FIELDS = ['type', 'url', 'agentId', 'agentLabels', 'upstreamUrl', 'weight', 'draining'];

const BACKEND_FIELDS = [
  'name',
  'algorithm',
  'hashKey',
  'healthCheck',
  'healthCheck.path',
  'healthCheck.intervalSeconds',
  'healthCheck.timeoutMs',
  'healthCheck.healthyThreshold',
  'healthCheck.unhealthyThreshold',
  'healthCheck.expectStatus',
  'passive.failures',
  'passive.ejectSeconds',
];

function BackendDialog(props: {
  api: Client;
  backend: Backend | null;
  agents: readonly Agent[];
  onClose: () => void;
  onSaved: () => void;
}) {
  const existing = props.backend;
  const check = existing ? existing.healthCheck : null;
  const hashKey = existing?.hashKey ?? 'ip';
  const form = useFields({
    name: existing?.name ?? '',
    algorithm: existing?.algorithm ?? 'round_robin',
    hashKind: hashKey.startsWith('header:') ? 'header' : hashKey,
    hashHeader: hashKey.startsWith('header:') ? hashKey.slice(7) : '',
    checks: existing ? check !== null : true,
    checkPath: check?.path ?? '/',
    intervalSeconds: String(check?.intervalSeconds ?? 10),
    timeoutMs: String(check?.timeoutMs ?? 2000),
    healthyThreshold: String(check?.healthyThreshold ?? 2),
    unhealthyThreshold: String(check?.unhealthyThreshold ?? 3),
    expectStatus: String(check?.expectStatus ?? 200),
    failures: String(existing?.passive.failures ?? 3),
    ejectSeconds: String(existing?.passive.ejectSeconds ?? 30),
  });
  const v = form.values;
  const [members, setMembers] = useState<MemberDraft[]>(() =>
    existing ? existing.members.map(draftOf) : [draftOf(null)],
  );
  const change = (key: number, patch: Partial<MemberDraft>) =>
    setMembers((list) => list.map((m) => (m.key === key ? { ...m, ...patch } : m)));
  const fields = [
    ...BACKEND_FIELDS,
    ...members.flatMap((_, i) => MEMBER_FIELDS.map((f) => `members.${i}.${f}`)),
  ];

  const save = async () => {
    const body = {
      name: v.name,
      algorithm: v.algorithm,
      hashKey: v.hashKind === 'header' ? `header:${v.hashHeader.trim()}` : v.hashKind,
      members: members.map((m, i) => memberBody(m, i, props.agents)),
      healthCheck: v.checks
        ? {
            path: v.checkPath,
            intervalSeconds: numberOr(v.intervalSeconds),
            timeoutMs: numberOr(v.timeoutMs),
            healthyThreshold: numberOr(v.healthyThreshold),
            unhealthyThreshold: numberOr(v.unhealthyThreshold),
            expectStatus: numberOr(v.expectStatus),
          }
        : null,
      passive: { failures: numberOr(v.failures), ejectSeconds: numberOr(v.ejectSeconds) },
    };
    if (existing) await props.api.patch(`/api/v1/proxy/backends/${encodeURIComponent(existing.id)}`, body);
    else await props.api.post('/api/v1/proxy/backends', body);
    props.onSaved();
  };

  return (
    <FormDialog
      title={existing ? `Edit backend ${existing.name}` : 'Add backend'}
      onClose={props.onClose}
      onSubmit={save}
      fields={fields}
      noValidate
      wide
      testId="backend-dialog"
    >
      <div class="grid2">
        <Field label="Name">
          <input maxLength={128} {...form.text('name')} />
        </Field>
        <Field label="Algorithm">
          <select {...form.choice('algorithm')}>
            {Object.entries(ALGORITHM_NAMES).map(([value, name]) => (
              <option key={value} value={value}>
                {name}
              </option>
            ))}
          </select>
        </Field>
      </div>
      {v.algorithm === 'consistent_hash' ? (
        <div class="grid2">
          <Field label="Hash key" name="hashKey" hint="A key keeps its member while that member is usable.">
            <select {...form.choice('hashKind')}>
              <option value="ip">Client IP</option>
              <option value="path">Path</option>
              <option value="header">A request header</option>
            </select>
          </Field>
          {v.hashKind === 'header' ? (
            <Field label="Header name" name="hashKey">
              <input {...form.text('hashHeader')} placeholder="x-session-id" />
            </Field>
          ) : null}
        </div>
      ) : null}

      <h3>Members</h3>
      {members.map((member, i) => (
        <MemberEditor
          key={member.key}
          index={i}
          member={member}
          agents={props.agents}
          weighted={v.algorithm !== 'round_robin'}
          onChange={(patch) => change(member.key, patch)}
          onRemove={
            members.length > 1 ? () => setMembers((list) => list.filter((m) => m.key !== member.key)) : null
          }
        />
      ))}
      <p>
        <button
          type="button"
          class="secondary small"
          onClick={() => setMembers((list) => [...list, draftOf(null)])}
        >
          Add member
        </button>
      </p>

      <h3>Health</h3>
      <CheckboxField {...form.check('checks')}>
        Active health checks (the control plane checks upstream members; agents check their own)
      </CheckboxField>
      {v.checks ? (
        <div class="grid2">
          <Field label="Check path" name="healthCheck.path">
            <input {...form.text('checkPath')} />
          </Field>
          <Field label="Interval (s)" name="healthCheck.intervalSeconds">
            <input type="number" min={1} max={3600} {...form.text('intervalSeconds')} />
          </Field>
          <Field label="Check timeout (ms)" name="healthCheck.timeoutMs">
            <input type="number" min={50} max={60000} {...form.text('timeoutMs')} />
          </Field>
          <Field label="Expected status" name="healthCheck.expectStatus">
            <input type="number" min={100} max={599} {...form.text('expectStatus')} />
          </Field>
          <Field label="Healthy after (checks)" name="healthCheck.healthyThreshold">
            <input type="number" min={1} max={100} {...form.text('healthyThreshold')} />
          </Field>
          <Field label="Unhealthy after (checks)" name="healthCheck.unhealthyThreshold">
            <input type="number" min={1} max={100} {...form.text('unhealthyThreshold')} />
          </Field>
        </div>
      ) : null}
      <div class="grid2">
        <Field
          label="Eject after failures"
          name="passive.failures"
          hint="Consecutive failed requests that take a member out; 0: never."
        >
          <input type="number" min={0} max={1000} {...form.text('failures')} />
        </Field>
        <Field label="Ejected for (s)" name="passive.ejectSeconds">
          <input type="number" min={1} max={86400} {...form.text('ejectSeconds')} />
        </Field>
      </div>
    </FormDialog>
  );
}

/** What the API takes for one member; labels typed wrong are a field error of that member. */
function memberBody(m: MemberDraft, index: number, agents: readonly Agent[]): Record<string, unknown> {
  const common = {
    ...(m.id ? { id: m.id } : {}),
    weight: numberOr(m.weight),
    draining: m.draining,
  };
  if (m.type === 'upstream') return { type: 'upstream', url: m.url, ...common };
  let agentLabels: Record<string, string> | null = m.alsoLabels;
  let agentId: string | null = m.agentId || defaultAgentId(agents) || null;
  if (m.pickBy === 'labels') {
    agentId = null;
    try {
      agentLabels = parseLabels(m.labels, /[\n,]/);
    } catch (err) {
      throw new ApiError(0, 'VALIDATION_FAILED', (err as Error).message, `members.${index}.agentLabels`);
    }
  }
  return { type: 'agent', agentId, agentLabels, upstreamUrl: m.upstreamUrl, ...common };
}

function MemberEditor(props: {
  index: number;
  member: MemberDraft;
  agents: readonly Agent[];
  weighted: boolean;
  onChange: (patch: Partial<MemberDraft>) => void;
  onRemove: (() => void) | null;
}) {
  const { member, index } = props;
  const path = (field: string) => `members.${index}.${field}`;
  const title = `Member ${index + 1}`;
  const text = (key: 'url' | 'labels' | 'upstreamUrl' | 'weight') => ({
    value: member[key],
    onInput: (e: { currentTarget: HTMLInputElement }) => props.onChange({ [key]: e.currentTarget.value }),
  });
  const agentId = member.agentId || defaultAgentId(props.agents);
  let matching: Agent[] | null = null;
  if (member.pickBy === 'labels') {
    try {
      const labels = parseLabels(member.labels, /[\n,]/);
      matching = Object.keys(labels).length > 0 ? agentsWithLabels(props.agents, labels) : null;
    } catch {
      matching = null;
    }
  }
  return (
    <fieldset class="member">
      <legend>{title}</legend>
      <div class="grid2">
        <Field label="Kind" name={path('type')}>
          <select
            name={path('type')}
            value={member.type}
            onChange={(e) => props.onChange({ type: e.currentTarget.value as MemberDraft['type'] })}
          >
            <option value="upstream">Upstream server</option>
            <option value="agent">Through an agent</option>
          </select>
        </Field>
        <Field
          label="Weight"
          name={path('weight')}
          hint={props.weighted ? undefined : 'Used by the weighted algorithms.'}
        >
          <input type="number" min={1} max={1000} name={path('weight')} {...text('weight')} />
        </Field>
      </div>
      {member.type === 'upstream' ? (
        <Field label="URL" name={path('url')} hint="http:// or https:// origin, optionally a base path.">
          <input type="url" name={path('url')} placeholder="http://127.0.0.1:8080" {...text('url')} />
        </Field>
      ) : (
        <>
          <div class="grid2">
            <Field label="Pick the agent">
              <select
                name={`${path('pickBy')}`}
                value={member.pickBy}
                onChange={(e) => props.onChange({ pickBy: e.currentTarget.value as MemberDraft['pickBy'] })}
              >
                <option value="name">By name</option>
                <option value="labels">By labels (any connected agent carrying them)</option>
              </select>
            </Field>
            {member.pickBy === 'name' ? (
              <Field
                label="Agent"
                name={path('agentId')}
                hint={
                  props.agents.length === 0
                    ? 'No agents yet: create one on the Agents page.'
                    : member.alsoLabels
                      ? `Also requires the labels ${formatLabels(member.alsoLabels)}.`
                      : undefined
                }
              >
                <select
                  name={path('agentId')}
                  value={agentId}
                  onChange={(e) => props.onChange({ agentId: e.currentTarget.value })}
                >
                  <AgentOptions agents={props.agents} missing={member.agentId || null} />
                </select>
              </Field>
            ) : (
              <Field
                label="Agent labels"
                name={path('agentLabels')}
                hint={
                  matching === null
                    ? 'key=value, separated by commas.'
                    : matching.length === 0
                      ? 'No agent carries these labels yet.'
                      : `Matches ${matching
                          .map((a) => (isAgentOnline(a) ? a.name : `${a.name} (offline)`))
                          .join(', ')}.`
                }
              >
                <input name={path('agentLabels')} placeholder="site=home" {...text('labels')} />
              </Field>
            )}
          </div>
          <Field
            label="URL in the agent's network"
            name={path('upstreamUrl')}
            hint="The agent makes the request, under its allowed targets (AGENT_ALLOWED_TARGETS)."
          >
            <input
              type="url"
              name={path('upstreamUrl')}
              placeholder="http://127.0.0.1:3000"
              {...text('upstreamUrl')}
            />
          </Field>
        </>
      )}
      <div class="member-actions">
        {member.id ? (
          <CheckboxField
            name={path('draining')}
            checked={member.draining}
            onChange={(e) => props.onChange({ draining: e.currentTarget.checked })}
          >
            Draining (no new requests; those in flight finish)
          </CheckboxField>
        ) : null}
        {props.onRemove ? (
          <button type="button" class="secondary small" onClick={props.onRemove}>
            Remove<span class="visually-hidden"> {title.toLowerCase()}</span>
          </button>
        ) : null}
      </div>
    </fieldset>
  );
}
