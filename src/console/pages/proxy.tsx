/** Proxy configuration of the selected environment: listeners, routes and backends, create / edit / delete. */
import { useState } from 'preact/hooks';
import { ApiError, type Client, clientFor } from '../api';
import { ConfirmDelete, DataTable } from '../components/data-table';
import { CheckboxField, FormDialog, numberOr, useFields } from '../components/form-dialog';
import { Badge, ErrorMessage, Field, SectionHead, useResource } from '../components/ui';
import type { Agent, Backend, Listener, ProxyRoute, RouteTarget, TlsCertificate } from '../types';
import { BackendsSection, backendName } from './proxy-backends';

type Deleting = { kind: 'listener'; item: Listener } | { kind: 'route'; item: ProxyRoute };

export function ProxyPage(props: { environment: string }) {
  const api = clientFor(props.environment);
  const data = useResource(
    () =>
      Promise.all([
        api.get<{ listeners: Listener[] }>('/api/v1/proxy/listeners'),
        api.get<{ routes: ProxyRoute[] }>('/api/v1/proxy/routes'),
        api
          .get<{ certificates: TlsCertificate[] }>('/api/v1/tls/certificates')
          .catch(() => ({ certificates: [] })),
        // An environment on a version without backends has none.
        api
          .get<{ backends: Backend[] }>('/api/v1/proxy/backends')
          .catch((err: unknown) =>
            err instanceof ApiError && err.status === 404 ? { backends: [] } : Promise.reject(err),
          ),
        // For the agent picker of agent members; a caller who may not list agents still sees ids.
        api.get<{ agents: Agent[] }>('/api/v1/agents').catch(() => ({ agents: [] })),
      ]).then(([l, r, c, b, a]) => ({
        listeners: l.listeners,
        routes: r.routes,
        certificates: c.certificates,
        backends: b.backends,
        agents: a.agents,
      })),
    [],
  );
  const [listenerDialog, setListenerDialog] = useState<{ listener: Listener | null } | null>(null);
  const [routeDialog, setRouteDialog] = useState<{ route: ProxyRoute | null } | null>(null);
  const [deleting, setDeleting] = useState<Deleting | null>(null);
  const listeners = data.data?.listeners ?? [];
  const certificates = data.data?.certificates ?? [];
  const backends = data.data?.backends ?? [];
  const describe = (target: RouteTarget) => describeTarget(target, backends);
  const routes = [...(data.data?.routes ?? [])].sort(
    (a, b) => a.listenerId.localeCompare(b.listenerId) || b.priority - a.priority,
  );
  const listenerName = (id: string) => listeners.find((l) => l.id === id)?.name ?? id;
  const loading = data.loading && !data.data;

  return (
    <section>
      <SectionHead title="Proxy" />
      <ErrorMessage error={data.error} />
      <SectionHead title="Listeners" level={2}>
        <button type="button" class="primary" onClick={() => setListenerDialog({ listener: null })}>
          Add listener
        </button>
      </SectionHead>
      <DataTable
        testId="listeners-table"
        what="listeners"
        rows={listeners}
        rowKey={(l) => l.id}
        loading={loading}
        error={data.error}
        errorShownElsewhere
        columns={[
          { header: 'Name', cell: (l) => l.name },
          { header: 'Address', class: 'mono', cell: (l) => `${l.bindAddress}:${l.port}` },
          {
            header: 'Protocol',
            cell: (l) => (
              <>
                {l.protocol ?? 'http'}
                {l.hsts ? <span class="muted"> +HSTS</span> : null}
                {l.redirectHttps ? <span class="muted"> → https</span> : null}
              </>
            ),
          },
          { header: 'Status', cell: (l) => <ListenerStatus listener={l} /> },
          { header: 'Routes', cell: (l) => routes.filter((r) => r.listenerId === l.id).length },
          {
            header: 'Certificates',
            cell: (l) => (
              <CertificateMapping
                listener={l}
                routes={routes.filter((r) => r.listenerId === l.id)}
                certificates={certificates}
              />
            ),
          },
        ]}
        rowName={(l) => l.name}
        actions={(listener) => [
          { label: 'Edit', onClick: () => setListenerDialog({ listener }) },
          { label: 'Delete', danger: true, onClick: () => setDeleting({ kind: 'listener', item: listener }) },
        ]}
      />

      <SectionHead title="Routes" level={2}>
        <button
          type="button"
          class="primary"
          disabled={listeners.length === 0}
          title={listeners.length === 0 ? 'Add a listener first' : undefined}
          onClick={() => setRouteDialog({ route: null })}
        >
          Add route
        </button>
      </SectionHead>
      <DataTable
        testId="routes-table"
        what="routes"
        rows={routes}
        rowKey={(r) => r.id}
        loading={loading}
        error={data.error}
        errorShownElsewhere
        columns={[
          { header: 'Listener', cell: (r) => listenerName(r.listenerId) },
          { header: 'Host', class: 'mono', cell: (r) => r.host ?? '*' },
          { header: 'Path prefix', class: 'mono', cell: (r) => r.pathPrefix },
          { header: 'Priority', cell: (r) => r.priority },
          { header: 'Target', class: 'mono break', cell: (r) => describe(r.target) },
        ]}
        rowName={(r) => `route ${r.pathPrefix}`}
        actions={(route) => [
          { label: 'Edit', onClick: () => setRouteDialog({ route }) },
          { label: 'Delete', danger: true, onClick: () => setDeleting({ kind: 'route', item: route }) },
        ]}
      />

      <BackendsSection
        api={api}
        backends={backends}
        agents={data.data?.agents ?? []}
        routes={routes}
        listeners={listeners}
        loading={loading}
        error={data.error}
        onChanged={data.reload}
      />

      {listenerDialog ? (
        <ListenerDialog
          certificates={certificates}
          api={api}
          listener={listenerDialog.listener}
          onClose={() => setListenerDialog(null)}
          onSaved={() => {
            setListenerDialog(null);
            data.reload();
          }}
        />
      ) : null}
      {routeDialog ? (
        <RouteDialog
          api={api}
          route={routeDialog.route}
          listeners={listeners}
          backends={backends}
          onClose={() => setRouteDialog(null)}
          onSaved={() => {
            setRouteDialog(null);
            data.reload();
          }}
        />
      ) : null}
      {deleting?.kind === 'listener' ? (
        <ConfirmDelete
          title="Delete listener"
          name={`listener ${deleting.item.name}`}
          message={
            <>
              Delete listener <strong>{deleting.item.name}</strong>? It stops accepting connections at once.
            </>
          }
          onConfirm={() =>
            api.del(`/api/v1/proxy/listeners/${encodeURIComponent(deleting.item.id)}`).then(data.reload)
          }
          onClose={() => setDeleting(null)}
        />
      ) : deleting?.kind === 'route' ? (
        <ConfirmDelete
          title="Delete route"
          name={deleting.item.pathPrefix}
          message={
            <>
              Delete the route <strong>{deleting.item.pathPrefix}</strong> → {describe(deleting.item.target)}?
            </>
          }
          onConfirm={() =>
            api.del(`/api/v1/proxy/routes/${encodeURIComponent(deleting.item.id)}`).then(data.reload)
          }
          onClose={() => setDeleting(null)}
        />
      ) : null}
    </section>
  );
}

function ListenerStatus(props: { listener: Listener }) {
  const { listener } = props;
  if (!listener.enabled) return <Badge tone="muted">disabled</Badge>;
  if (listener.running === false)
    return (
      <>
        <Badge tone="bad">not running</Badge>
        {listener.error ? <small class="bad-text"> {listener.error}</small> : null}
      </>
    );
  return <Badge tone="ok">{listener.running ? 'running' : 'enabled'}</Badge>;
}

/** One line for a route target: `→ http://…`, `302 → /x`, `200 text/plain`, `→ backend web`. */
export function describeTarget(target: RouteTarget, backends: readonly Backend[] = []): string {
  switch (target.type) {
    case 'upstream':
      return `→ ${target.url}${target.timeoutMs ? ` (timeout ${target.timeoutMs} ms)` : ''}`;
    case 'redirect':
      return `${target.status} → ${target.location}`;
    case 'static':
      return `${target.status} ${target.contentType} (${target.body.length} chars)`;
    case 'backend':
      return `→ backend ${backendName(backends, target.backendId)}`;
    default:
      return JSON.stringify(target);
  }
}

/**
 * Which certificate an https listener serves for each host its routes name
 * (the SNI choice: exact host, then the longest `*.suffix`, then the
 * listener's default), and the default itself.
 */
function CertificateMapping(props: {
  listener: Listener;
  routes: ProxyRoute[];
  certificates: TlsCertificate[];
}) {
  if ((props.listener.protocol ?? 'http') !== 'https') return <span class="muted">—</span>;
  const byId = (id: string | null | undefined) => props.certificates.find((c) => c.id === id) ?? null;
  const fallback = byId(props.listener.defaultCertificateId);
  const hosts = [...new Set(props.routes.map((r) => r.host).filter((h): h is string => !!h))];
  return (
    <ul class="plain" data-testid={`certificate-mapping-${props.listener.name}`}>
      <li>
        default:{' '}
        {fallback ? (
          <strong>{fallback.name}</strong>
        ) : (
          <span class="muted">none (unknown names refused)</span>
        )}
      </li>
      {hosts.map((host) => {
        const chosen = certificateFor(props.certificates, host) ?? fallback;
        return (
          <li key={host}>
            <span class="mono">{host}</span> →{' '}
            {chosen ? chosen.name : <Badge tone="warn">no certificate</Badge>}
          </li>
        );
      })}
    </ul>
  );
}

/** The certificate whose hosts cover `host` (a route host may itself be `*.suffix`). */
function certificateFor(certificates: TlsCertificate[], host: string): TlsCertificate | null {
  const exact = certificates.find((c) => c.hosts.includes(host));
  if (exact) return exact;
  let best: TlsCertificate | null = null;
  let bestLength = 0;
  const name = host.startsWith('*.') ? `x${host.slice(1)}` : host;
  for (const c of certificates) {
    for (const h of c.hosts) {
      if (
        h.startsWith('*.') &&
        name.endsWith(h.slice(1)) &&
        name.length > h.length - 1 &&
        h.length > bestLength
      ) {
        best = c;
        bestLength = h.length;
      }
    }
  }
  return best;
}

function ListenerDialog(props: {
  api: Client;
  certificates: TlsCertificate[];
  listener: Listener | null;
  onClose: () => void;
  onSaved: () => void;
}) {
  const existing = props.listener;
  const form = useFields({
    name: existing?.name ?? '',
    bindAddress: existing?.bindAddress ?? '0.0.0.0',
    port: existing ? String(existing.port) : '8080',
    enabled: existing?.enabled ?? true,
    protocol: existing?.protocol ?? 'http',
    defaultCertificateId: existing?.defaultCertificateId ?? '',
    redirectHttps: existing?.redirectHttps ?? false,
    hsts: existing?.hsts ?? false,
  });
  const v = form.values;
  const save = async () => {
    const https = v.protocol === 'https';
    const body = {
      name: v.name,
      bindAddress: v.bindAddress,
      port: numberOr(v.port),
      enabled: v.enabled,
      protocol: v.protocol,
      defaultCertificateId: https && v.defaultCertificateId ? v.defaultCertificateId : null,
      redirectHttps: !https && v.redirectHttps,
      hsts: https && v.hsts,
    };
    if (existing) await props.api.patch(`/api/v1/proxy/listeners/${encodeURIComponent(existing.id)}`, body);
    else await props.api.post('/api/v1/proxy/listeners', body);
    props.onSaved();
  };
  return (
    <FormDialog
      title={existing ? `Edit listener ${existing.name}` : 'Add listener'}
      onClose={props.onClose}
      onSubmit={save}
      fields={Object.keys(v)}
      noValidate
    >
      <Field label="Name">
        <input {...form.text('name')} />
      </Field>
      <Field label="Bind address">
        <input {...form.text('bindAddress')} />
      </Field>
      <Field label="Port">
        <input type="number" min={0} max={65535} {...form.text('port')} />
      </Field>
      <Field label="Protocol">
        <select {...form.choice('protocol')}>
          <option value="http">http</option>
          <option value="https">https (h2 and http/1.1)</option>
        </select>
      </Field>
      {v.protocol === 'https' ? (
        <>
          <Field
            label="Default certificate"
            hint="Served when no certificate names the requested host; with none, such names are refused."
          >
            <select {...form.choice('defaultCertificateId')}>
              <option value="">none</option>
              {props.certificates.map((c) => (
                <option key={c.id} value={c.id}>
                  {c.name} ({c.hosts.join(', ')})
                </option>
              ))}
            </select>
          </Field>
          <CheckboxField {...form.check('hsts')}>Send HSTS (Strict-Transport-Security)</CheckboxField>
        </>
      ) : (
        <CheckboxField {...form.check('redirectHttps')}>
          Redirect to https (ACME challenges still answered)
        </CheckboxField>
      )}
      <CheckboxField {...form.check('enabled')}>Enabled</CheckboxField>
    </FormDialog>
  );
}

const ROUTE_FIELDS = [
  'listenerId',
  'host',
  'pathPrefix',
  'priority',
  'target',
  'target.type',
  'target.url',
  'target.timeoutMs',
  'target.location',
  'target.status',
  'target.contentType',
  'target.body',
  'target.backendId',
] as const;

const TARGET_NAMES: Record<RouteTarget['type'], string> = {
  upstream: 'Upstream',
  backend: 'Backend',
  redirect: 'Redirect',
  static: 'Static response',
};

/** A target field's error, or one about the whole target. */
const targetError = (name: string) => [`target.${name}`, 'target', 'target.type'];

function RouteDialog(props: {
  api: Client;
  route: ProxyRoute | null;
  listeners: Listener[];
  backends: readonly Backend[];
  onClose: () => void;
  onSaved: () => void;
}) {
  const existing = props.route;
  const target = existing?.target;
  const form = useFields({
    listenerId: existing?.listenerId ?? props.listeners[0]?.id ?? '',
    host: existing?.host ?? '',
    pathPrefix: existing?.pathPrefix ?? '/',
    priority: String(existing?.priority ?? 0),
    type: (target?.type ?? 'upstream') as RouteTarget['type'],
    url: target?.type === 'upstream' ? target.url : 'http://127.0.0.1:3000',
    timeoutMs: target?.type === 'upstream' && target.timeoutMs ? String(target.timeoutMs) : '',
    location: target?.type === 'redirect' ? target.location : '',
    redirectStatus: String(target?.type === 'redirect' ? target.status : 302),
    staticStatus: String(target?.type === 'static' ? target.status : 200),
    contentType: target?.type === 'static' ? target.contentType : 'text/plain',
    body: target?.type === 'static' ? target.body : '',
    backendId: target?.type === 'backend' ? target.backendId : (props.backends[0]?.id ?? ''),
  });
  const v = form.values;
  const type = v.type;

  const save = async () => {
    const routeTarget =
      type === 'upstream'
        ? v.timeoutMs.trim() === ''
          ? { type, url: v.url }
          : { type, url: v.url, timeoutMs: numberOr(v.timeoutMs) }
        : type === 'redirect'
          ? { type, location: v.location, status: numberOr(v.redirectStatus) }
          : type === 'backend'
            ? { type, backendId: v.backendId }
            : { type, status: numberOr(v.staticStatus), contentType: v.contentType, body: v.body };
    const payload = {
      listenerId: v.listenerId,
      host: v.host.trim() === '' ? null : v.host.trim(),
      pathPrefix: v.pathPrefix,
      priority: numberOr(v.priority),
      target: routeTarget,
    };
    if (existing) await props.api.patch(`/api/v1/proxy/routes/${encodeURIComponent(existing.id)}`, payload);
    else await props.api.post('/api/v1/proxy/routes', payload);
    props.onSaved();
  };
  return (
    <FormDialog
      title={existing ? 'Edit route' : 'Add route'}
      onClose={props.onClose}
      onSubmit={save}
      fields={ROUTE_FIELDS}
      noValidate
      wide
    >
      <div class="grid2">
        <Field label="Listener">
          <select {...form.choice('listenerId')}>
            {props.listeners.map((l) => (
              <option key={l.id} value={l.id}>
                {l.name} ({l.bindAddress}:{l.port})
              </option>
            ))}
          </select>
        </Field>
        <Field label="Host" hint="Exact host or *.suffix; empty matches any host.">
          <input {...form.text('host')} />
        </Field>
        <Field label="Path prefix">
          <input {...form.text('pathPrefix')} />
        </Field>
        <Field label="Priority" hint="Higher wins among equal matches.">
          <input type="number" {...form.text('priority')} />
        </Field>
      </div>
      <fieldset class="field">
        <legend class="field-label">Target</legend>
        {(['upstream', 'backend', 'redirect', 'static'] as const).map((t) => (
          <label class="inline" key={t}>
            <input
              type="radio"
              name="targetType"
              value={t}
              checked={type === t}
              onChange={() => form.set('type', t)}
            />{' '}
            {TARGET_NAMES[t]}
          </label>
        ))}
      </fieldset>
      {type === 'backend' ? (
        <Field
          label="Backend"
          name={targetError('backendId')}
          hint={props.backends.length === 0 ? 'No backends yet: add one under Backends.' : undefined}
        >
          <select {...form.choice('backendId')}>
            {props.backends.length === 0 ? <option value="">No backends</option> : null}
            {props.backends.map((b) => (
              <option key={b.id} value={b.id}>
                {b.name} ({b.members.length} member{b.members.length === 1 ? '' : 's'})
              </option>
            ))}
          </select>
        </Field>
      ) : null}
      {type === 'upstream' ? (
        <div class="grid2">
          <Field
            label="Upstream URL"
            name={targetError('url')}
            hint="http:// or https:// origin, optionally a base path."
          >
            <input type="url" {...form.text('url')} />
          </Field>
          <Field label="Upstream timeout (ms)" name="target.timeoutMs" hint="Empty: the default (30 s).">
            <input type="number" min={100} max={600000} {...form.text('timeoutMs')} />
          </Field>
        </div>
      ) : null}
      {type === 'redirect' ? (
        <div class="grid2">
          <Field label="Location" name={targetError('location')}>
            <input {...form.text('location')} />
          </Field>
          <Field label="Redirect status" name="target.status">
            <select {...form.choice('redirectStatus')} name="status">
              {['301', '302', '303', '307', '308'].map((s) => (
                <option key={s} value={s}>
                  {s}
                </option>
              ))}
            </select>
          </Field>
        </div>
      ) : null}
      {type === 'static' ? (
        <>
          <div class="grid2">
            <Field label="Status" name="target.status">
              <input type="number" min={200} max={599} {...form.text('staticStatus')} name="status" />
            </Field>
            <Field label="Content type" name={targetError('contentType')}>
              <input {...form.text('contentType')} />
            </Field>
          </div>
          <Field label="Body" name={targetError('body')}>
            <textarea rows={4} {...form.text('body')} />
          </Field>
        </>
      ) : null}
    </FormDialog>
  );
}
