/** Proxy configuration of the selected environment: listeners and routes, create / edit / delete. */
import type { JSX } from 'preact';
import { useState } from 'preact/hooks';
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
import type { Listener, ProxyRoute, RouteTarget, TlsCertificate } from '../types';

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
      ]).then(([l, r, c]) => ({ listeners: l.listeners, routes: r.routes, certificates: c.certificates })),
    [],
  );
  const [listenerDialog, setListenerDialog] = useState<{ listener: Listener | null } | null>(null);
  const [routeDialog, setRouteDialog] = useState<{ route: ProxyRoute | null } | null>(null);
  const [deleting, setDeleting] = useState<Deleting | null>(null);
  const listeners = data.data?.listeners ?? [];
  const certificates = data.data?.certificates ?? [];
  const routes = [...(data.data?.routes ?? [])].sort(
    (a, b) => a.listenerId.localeCompare(b.listenerId) || b.priority - a.priority,
  );
  const listenerName = (id: string) => listeners.find((l) => l.id === id)?.name ?? id;

  return (
    <section>
      <SectionHead title="Proxy" />
      <ErrorMessage error={data.error} />
      <SectionHead title="Listeners" level={2}>
        <button type="button" class="primary" onClick={() => setListenerDialog({ listener: null })}>
          Add listener
        </button>
      </SectionHead>
      <LoadState
        loading={data.loading && !data.data}
        error={null}
        empty={!data.error && listeners.length === 0}
        what="listeners"
      />
      {listeners.length > 0 ? (
        <table data-testid="listeners-table">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Address</th>
              <th scope="col">Protocol</th>
              <th scope="col">Status</th>
              <th scope="col">Routes</th>
              <th scope="col">Certificates</th>
              <th scope="col">
                <span class="visually-hidden">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {listeners.map((listener) => (
              <tr key={listener.id}>
                <td>{listener.name}</td>
                <td class="mono">
                  {listener.bindAddress}:{listener.port}
                </td>
                <td>
                  {listener.protocol ?? 'http'}
                  {listener.hsts ? <span class="muted"> +HSTS</span> : null}
                  {listener.redirectHttps ? <span class="muted"> → https</span> : null}
                </td>
                <td>
                  <ListenerStatus listener={listener} />
                </td>
                <td>{routes.filter((r) => r.listenerId === listener.id).length}</td>
                <td>
                  <CertificateMapping
                    listener={listener}
                    routes={routes.filter((r) => r.listenerId === listener.id)}
                    certificates={certificates}
                  />
                </td>
                <td class="row-actions">
                  <button
                    type="button"
                    class="secondary small"
                    onClick={() => setListenerDialog({ listener })}
                  >
                    Edit<span class="visually-hidden"> {listener.name}</span>
                  </button>
                  <button
                    type="button"
                    class="danger small"
                    onClick={() => setDeleting({ kind: 'listener', item: listener })}
                  >
                    Delete<span class="visually-hidden"> {listener.name}</span>
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : null}

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
      <LoadState
        loading={data.loading && !data.data}
        error={null}
        empty={!data.error && routes.length === 0}
        what="routes"
      />
      {routes.length > 0 ? (
        <table data-testid="routes-table">
          <thead>
            <tr>
              <th scope="col">Listener</th>
              <th scope="col">Host</th>
              <th scope="col">Path prefix</th>
              <th scope="col">Priority</th>
              <th scope="col">Target</th>
              <th scope="col">
                <span class="visually-hidden">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {routes.map((route) => (
              <tr key={route.id}>
                <td>{listenerName(route.listenerId)}</td>
                <td class="mono">{route.host ?? '*'}</td>
                <td class="mono">{route.pathPrefix}</td>
                <td>{route.priority}</td>
                <td class="mono break">{describeTarget(route.target)}</td>
                <td class="row-actions">
                  <button type="button" class="secondary small" onClick={() => setRouteDialog({ route })}>
                    Edit<span class="visually-hidden"> route {route.pathPrefix}</span>
                  </button>
                  <button
                    type="button"
                    class="danger small"
                    onClick={() => setDeleting({ kind: 'route', item: route })}
                  >
                    Delete<span class="visually-hidden"> route {route.pathPrefix}</span>
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : null}

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
          onClose={() => setRouteDialog(null)}
          onSaved={() => {
            setRouteDialog(null);
            data.reload();
          }}
        />
      ) : null}
      {deleting ? (
        <ConfirmDialog
          title={deleting.kind === 'listener' ? 'Delete listener' : 'Delete route'}
          message={
            deleting.kind === 'listener' ? (
              <>
                Delete listener <strong>{deleting.item.name}</strong>? It stops accepting connections at once.
              </>
            ) : (
              <>
                Delete the route <strong>{deleting.item.pathPrefix}</strong> →{' '}
                {describeTarget(deleting.item.target)}?
              </>
            )
          }
          confirmLabel="Delete"
          onConfirm={() =>
            api
              .del(
                deleting.kind === 'listener'
                  ? `/api/v1/proxy/listeners/${encodeURIComponent(deleting.item.id)}`
                  : `/api/v1/proxy/routes/${encodeURIComponent(deleting.item.id)}`,
              )
              .then(data.reload)
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

/** One line for a route target: `→ http://…`, `302 → /x`, `200 text/plain`. */
export function describeTarget(target: RouteTarget): string {
  switch (target.type) {
    case 'upstream':
      return `→ ${target.url}${target.timeoutMs ? ` (timeout ${target.timeoutMs} ms)` : ''}`;
    case 'redirect':
      return `${target.status} → ${target.location}`;
    case 'static':
      return `${target.status} ${target.contentType} (${target.body.length} chars)`;
    default:
      return JSON.stringify(target);
  }
}

function numberOr(value: string): number | string {
  const n = Number(value);
  return value.trim() === '' || Number.isNaN(n) ? value : n;
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
  const [name, setName] = useState(existing?.name ?? '');
  const [bindAddress, setBindAddress] = useState(existing?.bindAddress ?? '0.0.0.0');
  const [port, setPort] = useState(existing ? String(existing.port) : '8080');
  const [enabled, setEnabled] = useState(existing?.enabled ?? true);
  const [protocol, setProtocol] = useState(existing?.protocol ?? 'http');
  const [defaultCertificateId, setDefaultCertificateId] = useState(existing?.defaultCertificateId ?? '');
  const [redirectHttps, setRedirectHttps] = useState(existing?.redirectHttps ?? false);
  const [hsts, setHsts] = useState(existing?.hsts ?? false);
  const [errors, setErrors] = useState<FormErrors>(NO_ERRORS);
  const [busy, setBusy] = useState(false);
  const submit = async (event: JSX.TargetedEvent<HTMLFormElement>) => {
    event.preventDefault();
    setBusy(true);
    setErrors(NO_ERRORS);
    const https = protocol === 'https';
    const body = {
      name,
      bindAddress,
      port: numberOr(port),
      enabled,
      protocol,
      defaultCertificateId: https && defaultCertificateId ? defaultCertificateId : null,
      redirectHttps: !https && redirectHttps,
      hsts: https && hsts,
    };
    try {
      if (existing) await props.api.patch(`/api/v1/proxy/listeners/${encodeURIComponent(existing.id)}`, body);
      else await props.api.post('/api/v1/proxy/listeners', body);
      props.onSaved();
    } catch (err) {
      setErrors(
        formErrors(err, [
          'name',
          'bindAddress',
          'port',
          'enabled',
          'protocol',
          'defaultCertificateId',
          'redirectHttps',
          'hsts',
        ]),
      );
      setBusy(false);
    }
  };
  return (
    <Dialog title={existing ? `Edit listener ${existing.name}` : 'Add listener'} onClose={props.onClose}>
      <form onSubmit={submit} noValidate>
        <Field label="Name" error={errors.field.name}>
          <input name="name" value={name} onInput={(e) => setName(e.currentTarget.value)} />
        </Field>
        <Field label="Bind address" error={errors.field.bindAddress}>
          <input
            name="bindAddress"
            value={bindAddress}
            onInput={(e) => setBindAddress(e.currentTarget.value)}
          />
        </Field>
        <Field label="Port" error={errors.field.port}>
          <input
            name="port"
            type="number"
            min={0}
            max={65535}
            value={port}
            onInput={(e) => setPort(e.currentTarget.value)}
          />
        </Field>
        <Field label="Protocol" error={errors.field.protocol}>
          <select
            name="protocol"
            value={protocol}
            onChange={(e) => setProtocol(e.currentTarget.value as 'http' | 'https')}
          >
            <option value="http">http</option>
            <option value="https">https (h2 and http/1.1)</option>
          </select>
        </Field>
        {protocol === 'https' ? (
          <>
            <Field
              label="Default certificate"
              error={errors.field.defaultCertificateId}
              hint="Served when no certificate names the requested host; with none, such names are refused."
            >
              <select
                name="defaultCertificateId"
                value={defaultCertificateId}
                onChange={(e) => setDefaultCertificateId(e.currentTarget.value)}
              >
                <option value="">none</option>
                {props.certificates.map((c) => (
                  <option key={c.id} value={c.id}>
                    {c.name} ({c.hosts.join(', ')})
                  </option>
                ))}
              </select>
            </Field>
            <label class="field inline">
              <input
                name="hsts"
                type="checkbox"
                checked={hsts}
                onChange={(e) => setHsts(e.currentTarget.checked)}
              />{' '}
              Send HSTS (Strict-Transport-Security)
            </label>
          </>
        ) : (
          <label class="field inline">
            <input
              name="redirectHttps"
              type="checkbox"
              checked={redirectHttps}
              onChange={(e) => setRedirectHttps(e.currentTarget.checked)}
            />{' '}
            Redirect to https (ACME challenges still answered)
          </label>
        )}
        <label class="field inline">
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
            Save
          </button>
        </div>
      </form>
    </Dialog>
  );
}

function RouteDialog(props: {
  api: Client;
  route: ProxyRoute | null;
  listeners: Listener[];
  onClose: () => void;
  onSaved: () => void;
}) {
  const existing = props.route;
  const target = existing?.target;
  const [listenerId, setListenerId] = useState(existing?.listenerId ?? props.listeners[0]?.id ?? '');
  const [host, setHost] = useState(existing?.host ?? '');
  const [pathPrefix, setPathPrefix] = useState(existing?.pathPrefix ?? '/');
  const [priority, setPriority] = useState(String(existing?.priority ?? 0));
  const [type, setType] = useState<RouteTarget['type']>(target?.type ?? 'upstream');
  const [url, setUrl] = useState(target?.type === 'upstream' ? target.url : 'http://127.0.0.1:3000');
  const [upstreamTimeout, setUpstreamTimeout] = useState(
    target?.type === 'upstream' && target.timeoutMs ? String(target.timeoutMs) : '',
  );
  const [location, setLocation] = useState(target?.type === 'redirect' ? target.location : '');
  const [redirectStatus, setRedirectStatus] = useState(
    String(target?.type === 'redirect' ? target.status : 302),
  );
  const [staticStatus, setStaticStatus] = useState(String(target?.type === 'static' ? target.status : 200));
  const [contentType, setContentType] = useState(
    target?.type === 'static' ? target.contentType : 'text/plain',
  );
  const [body, setBody] = useState(target?.type === 'static' ? target.body : '');
  const [errors, setErrors] = useState<FormErrors>(NO_ERRORS);
  const [busy, setBusy] = useState(false);

  const submit = async (event: JSX.TargetedEvent<HTMLFormElement>) => {
    event.preventDefault();
    setBusy(true);
    setErrors(NO_ERRORS);
    const routeTarget =
      type === 'upstream'
        ? upstreamTimeout.trim() === ''
          ? { type, url }
          : { type, url, timeoutMs: numberOr(upstreamTimeout) }
        : type === 'redirect'
          ? { type, location, status: numberOr(redirectStatus) }
          : { type, status: numberOr(staticStatus), contentType, body };
    const payload = {
      listenerId,
      host: host.trim() === '' ? null : host.trim(),
      pathPrefix,
      priority: numberOr(priority),
      target: routeTarget,
    };
    try {
      if (existing) await props.api.patch(`/api/v1/proxy/routes/${encodeURIComponent(existing.id)}`, payload);
      else await props.api.post('/api/v1/proxy/routes', payload);
      props.onSaved();
    } catch (err) {
      setErrors(
        formErrors(err, [
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
        ]),
      );
      setBusy(false);
    }
  };
  const fieldError = (name: string) =>
    errors.field[`target.${name}`] ?? errors.field.target ?? errors.field['target.type'];
  return (
    <Dialog title={existing ? 'Edit route' : 'Add route'} onClose={props.onClose} wide>
      <form onSubmit={submit} noValidate>
        <div class="grid2">
          <Field label="Listener" error={errors.field.listenerId}>
            <select
              name="listenerId"
              value={listenerId}
              onChange={(e) => setListenerId(e.currentTarget.value)}
            >
              {props.listeners.map((l) => (
                <option key={l.id} value={l.id}>
                  {l.name} ({l.bindAddress}:{l.port})
                </option>
              ))}
            </select>
          </Field>
          <Field
            label="Host"
            error={errors.field.host}
            hint="Exact host or *.suffix; empty matches any host."
          >
            <input name="host" value={host} onInput={(e) => setHost(e.currentTarget.value)} />
          </Field>
          <Field label="Path prefix" error={errors.field.pathPrefix}>
            <input
              name="pathPrefix"
              value={pathPrefix}
              onInput={(e) => setPathPrefix(e.currentTarget.value)}
            />
          </Field>
          <Field label="Priority" error={errors.field.priority} hint="Higher wins among equal matches.">
            <input
              name="priority"
              type="number"
              value={priority}
              onInput={(e) => setPriority(e.currentTarget.value)}
            />
          </Field>
        </div>
        <fieldset class="field">
          <legend class="field-label">Target</legend>
          {(['upstream', 'redirect', 'static'] as const).map((t) => (
            <label class="inline" key={t}>
              <input
                type="radio"
                name="targetType"
                value={t}
                checked={type === t}
                onChange={() => setType(t)}
              />{' '}
              {t === 'upstream' ? 'Upstream' : t === 'redirect' ? 'Redirect' : 'Static response'}
            </label>
          ))}
        </fieldset>
        {type === 'upstream' ? (
          <div class="grid2">
            <Field
              label="Upstream URL"
              error={fieldError('url')}
              hint="http:// or https:// origin, optionally a base path."
            >
              <input name="url" type="url" value={url} onInput={(e) => setUrl(e.currentTarget.value)} />
            </Field>
            <Field
              label="Upstream timeout (ms)"
              error={errors.field['target.timeoutMs']}
              hint="Empty: the default (30 s)."
            >
              <input
                name="timeoutMs"
                type="number"
                min={100}
                max={600000}
                value={upstreamTimeout}
                onInput={(e) => setUpstreamTimeout(e.currentTarget.value)}
              />
            </Field>
          </div>
        ) : null}
        {type === 'redirect' ? (
          <div class="grid2">
            <Field label="Location" error={fieldError('location')}>
              <input name="location" value={location} onInput={(e) => setLocation(e.currentTarget.value)} />
            </Field>
            <Field label="Redirect status" error={errors.field['target.status']}>
              <select
                name="status"
                value={redirectStatus}
                onChange={(e) => setRedirectStatus(e.currentTarget.value)}
              >
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
              <Field label="Status" error={errors.field['target.status']}>
                <input
                  name="status"
                  type="number"
                  min={200}
                  max={599}
                  value={staticStatus}
                  onInput={(e) => setStaticStatus(e.currentTarget.value)}
                />
              </Field>
              <Field label="Content type" error={fieldError('contentType')}>
                <input
                  name="contentType"
                  value={contentType}
                  onInput={(e) => setContentType(e.currentTarget.value)}
                />
              </Field>
            </div>
            <Field label="Body" error={fieldError('body')}>
              <textarea name="body" rows={4} value={body} onInput={(e) => setBody(e.currentTarget.value)} />
            </Field>
          </>
        ) : null}
        <ErrorMessage error={errors.form} />
        <div class="actions">
          <button type="button" class="secondary" onClick={props.onClose}>
            Cancel
          </button>
          <button type="submit" class="primary" disabled={busy}>
            Save
          </button>
        </div>
      </form>
    </Dialog>
  );
}
