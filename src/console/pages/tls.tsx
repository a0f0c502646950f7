/**
 * TLS of the selected environment (DESIGN.md §8): the certificate store
 * (hosts, source, issuer, expiry countdown, status with the last error and
 * the next attempt; add by upload / file / self-signed / ACME, renew,
 * delete), ACME accounts and DNS providers. Refreshes itself while an order
 * is running.
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
  formatTime,
  formErrors,
  LoadState,
  NO_ERRORS,
  relativeTime,
  SectionHead,
  type Tone,
  useResource,
} from '../components/ui';
import type { AcmeAccount, AcmeChallenge, CertificateSource, DnsProvider, TlsCertificate } from '../types';

const STATUS_TONE: Record<TlsCertificate['status'], Tone> = {
  pending: 'info',
  issuing: 'info',
  renewing: 'info',
  ready: 'ok',
  error: 'bad',
};

const PRESETS: { value: string; label: string }[] = [
  { value: 'letsencrypt', label: "Let's Encrypt" },
  { value: 'letsencrypt-staging', label: "Let's Encrypt (staging)" },
  { value: 'custom', label: 'Other directory URL' },
];

type Deleting =
  | { kind: 'certificate'; item: TlsCertificate }
  | { kind: 'account'; item: AcmeAccount }
  | { kind: 'provider'; item: DnsProvider };

export function TlsPage(props: { environment: string }) {
  const api = clientFor(props.environment);
  const data = useResource(
    () =>
      Promise.all([
        api.get<{ certificates: TlsCertificate[] }>('/api/v1/tls/certificates'),
        api.get<{ accounts: AcmeAccount[] }>('/api/v1/tls/acme/accounts'),
        api.get<{ providers: DnsProvider[] }>('/api/v1/tls/dns-providers'),
      ]).then(([c, a, p]) => ({
        certificates: c.certificates,
        accounts: a.accounts,
        providers: p.providers,
      })),
    [],
  );
  const [adding, setAdding] = useState(false);
  const [accountDialog, setAccountDialog] = useState(false);
  const [providerDialog, setProviderDialog] = useState(false);
  const [deleting, setDeleting] = useState<Deleting | null>(null);
  const [actionError, setActionError] = useState<unknown>(null);
  const certificates = data.data?.certificates ?? [];
  const accounts = data.data?.accounts ?? [];
  const providers = data.data?.providers ?? [];
  const busy = certificates.some(
    (c) => c.status === 'pending' || c.status === 'issuing' || c.status === 'renewing',
  );

  // While an order runs, follow it.
  useEffect(() => {
    if (!busy) return;
    const timer = setInterval(() => data.reload(), 2000);
    return () => clearInterval(timer);
  }, [busy]);

  const renew = async (certificate: TlsCertificate) => {
    setActionError(null);
    try {
      await api.post(`/api/v1/tls/certificates/${encodeURIComponent(certificate.id)}/renew`, {});
      data.reload();
    } catch (err) {
      setActionError(err);
    }
  };

  return (
    <section>
      <SectionHead title="TLS" />
      <ErrorMessage error={data.error} />
      <ErrorMessage error={actionError} />
      <SectionHead title="Certificates" level={2}>
        <button type="button" class="primary" onClick={() => setAdding(true)}>
          Add certificate
        </button>
      </SectionHead>
      <LoadState
        loading={data.loading && !data.data}
        error={null}
        empty={!data.error && certificates.length === 0}
        what="certificates"
      />
      {certificates.length > 0 ? (
        <table data-testid="certificates-table">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Hosts</th>
              <th scope="col">Source</th>
              <th scope="col">Issuer</th>
              <th scope="col">Expires</th>
              <th scope="col">Status</th>
              <th scope="col">
                <span class="visually-hidden">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {certificates.map((c) => (
              <tr key={c.id} data-testid={`certificate-${c.name}`}>
                <td>{c.name}</td>
                <td class="mono">{c.hosts.join(', ')}</td>
                <td>
                  {c.source}
                  {c.challenge ? <span class="muted"> ({c.challenge})</span> : null}
                </td>
                <td title={c.issuer ?? undefined}>{shortName(c.issuer)}</td>
                <td title={formatTime(c.notAfter)}>{c.notAfter ? <Countdown iso={c.notAfter} /> : '—'}</td>
                <td>
                  <Badge tone={STATUS_TONE[c.status]}>{c.status}</Badge>
                  {c.status === 'error' && c.lastError ? (
                    <div class="error-text" data-testid="last-error">
                      {c.lastError}
                    </div>
                  ) : null}
                  {c.nextRenewalAt ? (
                    <div class="muted small" title={formatTime(c.nextRenewalAt)}>
                      {c.status === 'error' ? 'next attempt' : 'renews'} {relativeTime(c.nextRenewalAt)}
                    </div>
                  ) : null}
                </td>
                <td class="row-actions">
                  {c.source !== 'upload' ? (
                    <button type="button" class="secondary small" onClick={() => renew(c)}>
                      Renew<span class="visually-hidden"> {c.name}</span>
                    </button>
                  ) : null}
                  <button
                    type="button"
                    class="danger small"
                    onClick={() => setDeleting({ kind: 'certificate', item: c })}
                  >
                    Delete<span class="visually-hidden"> {c.name}</span>
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : null}

      <SectionHead title="ACME accounts" level={2}>
        <button type="button" class="secondary" onClick={() => setAccountDialog(true)}>
          Add account
        </button>
      </SectionHead>
      {accounts.length === 0 ? (
        <p class="muted">No ACME account yet: add one to issue certificates automatically.</p>
      ) : (
        <table data-testid="accounts-table">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Directory</th>
              <th scope="col">E-mail</th>
              <th scope="col">
                <span class="visually-hidden">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {accounts.map((a) => (
              <tr key={a.id}>
                <td>{a.name}</td>
                <td class="mono">{a.directoryUrl}</td>
                <td>{a.email ?? '—'}</td>
                <td class="row-actions">
                  <button
                    type="button"
                    class="danger small"
                    onClick={() => setDeleting({ kind: 'account', item: a })}
                  >
                    Delete<span class="visually-hidden"> {a.name}</span>
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}

      <SectionHead title="DNS providers" level={2}>
        <button type="button" class="secondary" onClick={() => setProviderDialog(true)}>
          Add DNS provider
        </button>
      </SectionHead>
      {providers.length === 0 ? (
        <p class="muted">No DNS provider: needed for the dns-01 challenge (and wildcard names).</p>
      ) : (
        <table data-testid="providers-table">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Type</th>
              <th scope="col">API</th>
              <th scope="col">
                <span class="visually-hidden">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {providers.map((p) => (
              <tr key={p.id}>
                <td>{p.name}</td>
                <td>{p.type}</td>
                <td class="mono">{p.apiBaseUrl ?? 'default'}</td>
                <td class="row-actions">
                  <button
                    type="button"
                    class="danger small"
                    onClick={() => setDeleting({ kind: 'provider', item: p })}
                  >
                    Delete<span class="visually-hidden"> {p.name}</span>
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}

      {adding ? (
        <CertificateDialog
          api={api}
          accounts={accounts}
          providers={providers}
          onChanged={data.reload}
          onClose={() => setAdding(false)}
          onSaved={() => {
            setAdding(false);
            data.reload();
          }}
        />
      ) : null}
      {accountDialog ? (
        <AccountDialog
          api={api}
          onClose={() => setAccountDialog(false)}
          onSaved={() => {
            setAccountDialog(false);
            data.reload();
          }}
        />
      ) : null}
      {providerDialog ? (
        <ProviderDialog
          api={api}
          onClose={() => setProviderDialog(false)}
          onSaved={() => {
            setProviderDialog(false);
            data.reload();
          }}
        />
      ) : null}
      {deleting ? (
        <ConfirmDialog
          title={`Delete ${deleting.kind === 'provider' ? 'DNS provider' : deleting.kind === 'account' ? 'ACME account' : 'certificate'}`}
          message={
            <>
              Delete <strong>{deleting.item.name}</strong>?
            </>
          }
          confirmLabel="Delete"
          onConfirm={() =>
            api
              .del(
                deleting.kind === 'certificate'
                  ? `/api/v1/tls/certificates/${encodeURIComponent(deleting.item.id)}`
                  : deleting.kind === 'account'
                    ? `/api/v1/tls/acme/accounts/${encodeURIComponent(deleting.item.id)}`
                    : `/api/v1/tls/dns-providers/${encodeURIComponent(deleting.item.id)}`,
              )
              .then(data.reload)
          }
          onClose={() => setDeleting(null)}
        />
      ) : null}
    </section>
  );
}

/** `in 42 d` / `3 d ago`, warning when under two weeks, bad once past. */
function Countdown(props: { iso: string }) {
  const left = Date.parse(props.iso) - Date.now();
  const tone: Tone = left < 0 ? 'bad' : left < 14 * 86_400_000 ? 'warn' : 'muted';
  return (
    <Badge tone={tone}>{left < 0 ? `expired ${relativeTime(props.iso)}` : relativeTime(props.iso)}</Badge>
  );
}

function shortName(dn: string | null): string {
  if (!dn) return '—';
  const cn = /CN=([^,]+)/.exec(dn);
  return cn ? cn[1]! : dn;
}

/** Field errors for `hosts[2]` belong to the hosts control. */
function tlsFormErrors(err: unknown, fields: readonly string[]): FormErrors {
  const errors = formErrors(err, [...fields, 'hosts[0]', 'hosts[1]', 'hosts[2]', 'hosts[3]', 'hosts[4]']);
  const field: Record<string, string> = {};
  for (const [name, message] of Object.entries(errors.field)) field[name.replace(/\[\d+\]$/, '')] = message;
  return { field, form: errors.form };
}

function CertificateDialog(props: {
  api: Client;
  accounts: AcmeAccount[];
  providers: DnsProvider[];
  onChanged: () => void;
  onClose: () => void;
  onSaved: () => void;
}) {
  const [source, setSource] = useState<CertificateSource>('acme');
  const [name, setName] = useState('');
  const [hosts, setHosts] = useState('');
  const [certificatePem, setCertificatePem] = useState('');
  const [privateKeyPem, setPrivateKeyPem] = useState('');
  const [certificateFile, setCertificateFile] = useState('');
  const [privateKeyFile, setPrivateKeyFile] = useState('');
  const [validDays, setValidDays] = useState('90');
  const [accountId, setAccountId] = useState(props.accounts[0]?.id ?? '');
  const [challenge, setChallenge] = useState<AcmeChallenge>('http-01');
  const [providerId, setProviderId] = useState(props.providers[0]?.id ?? '');
  const [subDialog, setSubDialog] = useState<'account' | 'provider' | null>(null);
  const [errors, setErrors] = useState<FormErrors>(NO_ERRORS);
  const [busy, setBusy] = useState(false);
  const hostList = hosts
    .split(/[\s,]+/)
    .map((h) => h.trim())
    .filter(Boolean);

  const submit = async (event: JSX.TargetedEvent<HTMLFormElement>) => {
    event.preventDefault();
    setBusy(true);
    setErrors(NO_ERRORS);
    const body: Record<string, unknown> = { name, source };
    if (hostList.length > 0 || source === 'self-signed' || source === 'acme') body.hosts = hostList;
    if (source === 'upload') Object.assign(body, { certificatePem, privateKeyPem });
    if (source === 'file') Object.assign(body, { certificateFile, privateKeyFile });
    if (source === 'self-signed') body.validDays = Number(validDays) || validDays;
    if (source === 'acme') {
      Object.assign(body, { acmeAccountId: accountId, challenge });
      if (challenge === 'dns-01') body.dnsProviderId = providerId;
    }
    try {
      await props.api.post('/api/v1/tls/certificates', body);
      props.onSaved();
    } catch (err) {
      setErrors(
        tlsFormErrors(err, [
          'name',
          'hosts',
          'source',
          'certificatePem',
          'privateKeyPem',
          'certificateFile',
          'privateKeyFile',
          'validDays',
          'acmeAccountId',
          'challenge',
          'dnsProviderId',
        ]),
      );
      setBusy(false);
    }
  };

  return (
    <Dialog title="Add certificate" onClose={props.onClose} wide>
      <form onSubmit={submit} noValidate>
        <Field label="Source" error={errors.field.source}>
          <select
            name="source"
            value={source}
            onChange={(e) => setSource(e.currentTarget.value as CertificateSource)}
          >
            <option value="acme">ACME (Let's Encrypt or another CA)</option>
            <option value="upload">Upload PEM</option>
            <option value="file">Files on the server</option>
            <option value="self-signed">Self-signed</option>
          </select>
        </Field>
        <Field label="Name" error={errors.field.name}>
          <input name="name" value={name} onInput={(e) => setName(e.currentTarget.value)} />
        </Field>
        <Field
          label="Hosts"
          error={errors.field.hosts}
          hint={
            source === 'upload' || source === 'file'
              ? 'Optional: the certificate’s DNS names when left empty. Separate with commas or spaces.'
              : 'Names such as example.com, www.example.com or *.example.com (dns-01 only).'
          }
        >
          <input name="hosts" value={hosts} onInput={(e) => setHosts(e.currentTarget.value)} />
        </Field>
        {source === 'upload' ? (
          <>
            <Field label="Certificate chain (PEM, leaf first)" error={errors.field.certificatePem}>
              <textarea
                name="certificatePem"
                rows={6}
                class="mono"
                value={certificatePem}
                onInput={(e) => setCertificatePem(e.currentTarget.value)}
              />
            </Field>
            <Field
              label="Private key (PEM)"
              error={errors.field.privateKeyPem}
              hint="Stored encrypted; never shown again."
            >
              <textarea
                name="privateKeyPem"
                rows={4}
                class="mono"
                value={privateKeyPem}
                onInput={(e) => setPrivateKeyPem(e.currentTarget.value)}
              />
            </Field>
          </>
        ) : null}
        {source === 'file' ? (
          <>
            <Field
              label="Certificate file"
              error={errors.field.certificateFile}
              hint="Re-read whenever it changes."
            >
              <input
                name="certificateFile"
                value={certificateFile}
                placeholder="/etc/ssl/example/fullchain.pem"
                onInput={(e) => setCertificateFile(e.currentTarget.value)}
              />
            </Field>
            <Field label="Private key file" error={errors.field.privateKeyFile}>
              <input
                name="privateKeyFile"
                value={privateKeyFile}
                placeholder="/etc/ssl/example/privkey.pem"
                onInput={(e) => setPrivateKeyFile(e.currentTarget.value)}
              />
            </Field>
          </>
        ) : null}
        {source === 'self-signed' ? (
          <Field label="Valid days" error={errors.field.validDays}>
            <input
              name="validDays"
              type="number"
              min={1}
              max={3650}
              value={validDays}
              onInput={(e) => setValidDays(e.currentTarget.value)}
            />
          </Field>
        ) : null}
        {source === 'acme' ? (
          <>
            <Field label="ACME account" error={errors.field.acmeAccountId}>
              <select
                name="acmeAccountId"
                value={accountId}
                onChange={(e) => setAccountId(e.currentTarget.value)}
              >
                <option value="">—</option>
                {props.accounts.map((a) => (
                  <option key={a.id} value={a.id}>
                    {a.name}
                  </option>
                ))}
              </select>
            </Field>
            <p>
              <button type="button" class="secondary small" onClick={() => setSubDialog('account')}>
                New account…
              </button>
            </p>
            <Field label="Challenge" error={errors.field.challenge}>
              <select
                name="challenge"
                value={challenge}
                onChange={(e) => setChallenge(e.currentTarget.value as AcmeChallenge)}
              >
                <option value="http-01">http-01 (an http listener on port 80)</option>
                <option value="tls-alpn-01">tls-alpn-01 (an https listener on port 443)</option>
                <option value="dns-01">dns-01 (a DNS provider; wildcards)</option>
              </select>
            </Field>
            {challenge === 'dns-01' ? (
              <>
                <Field label="DNS provider" error={errors.field.dnsProviderId}>
                  <select
                    name="dnsProviderId"
                    value={providerId}
                    onChange={(e) => setProviderId(e.currentTarget.value)}
                  >
                    <option value="">—</option>
                    {props.providers.map((p) => (
                      <option key={p.id} value={p.id}>
                        {p.name}
                      </option>
                    ))}
                  </select>
                </Field>
                <p>
                  <button type="button" class="secondary small" onClick={() => setSubDialog('provider')}>
                    New DNS provider…
                  </button>
                </p>
              </>
            ) : null}
          </>
        ) : null}
        <ErrorMessage error={errors.form} />
        <div class="actions">
          <button type="button" class="secondary" onClick={props.onClose}>
            Cancel
          </button>
          <button type="submit" class="primary" disabled={busy}>
            {source === 'acme' ? 'Order certificate' : 'Save'}
          </button>
        </div>
      </form>
      {subDialog === 'account' ? (
        <AccountDialog
          api={props.api}
          onClose={() => setSubDialog(null)}
          onSaved={(account) => {
            setSubDialog(null);
            setAccountId(account.id);
            props.accounts.push(account);
            props.onChanged();
          }}
        />
      ) : null}
      {subDialog === 'provider' ? (
        <ProviderDialog
          api={props.api}
          onClose={() => setSubDialog(null)}
          onSaved={(provider) => {
            setSubDialog(null);
            setProviderId(provider.id);
            props.providers.push(provider);
            props.onChanged();
          }}
        />
      ) : null}
    </Dialog>
  );
}

function AccountDialog(props: { api: Client; onClose: () => void; onSaved: (account: AcmeAccount) => void }) {
  const [name, setName] = useState('');
  const [preset, setPreset] = useState('letsencrypt-staging');
  const [directoryUrl, setDirectoryUrl] = useState('');
  const [email, setEmail] = useState('');
  const [directoryCaPem, setDirectoryCaPem] = useState('');
  const [eabKid, setEabKid] = useState('');
  const [eabHmacKey, setEabHmacKey] = useState('');
  const [errors, setErrors] = useState<FormErrors>(NO_ERRORS);
  const [busy, setBusy] = useState(false);
  const submit = async (event: JSX.TargetedEvent<HTMLFormElement>) => {
    event.preventDefault();
    event.stopPropagation();
    setBusy(true);
    setErrors(NO_ERRORS);
    const body: Record<string, unknown> = { name, directoryUrl: preset === 'custom' ? directoryUrl : preset };
    if (email) body.email = email;
    if (directoryCaPem) body.directoryCaPem = directoryCaPem;
    if (eabKid || eabHmacKey) body.eab = { kid: eabKid, hmacKey: eabHmacKey };
    try {
      const created = await props.api.post<{ account: AcmeAccount }>('/api/v1/tls/acme/accounts', body);
      props.onSaved(created.account);
    } catch (err) {
      setErrors(
        formErrors(err, ['name', 'directoryUrl', 'email', 'directoryCaPem', 'eab.kid', 'eab.hmacKey']),
      );
      setBusy(false);
    }
  };
  return (
    <Dialog title="Add ACME account" onClose={props.onClose}>
      <form onSubmit={submit} noValidate>
        <Field label="Account name" error={errors.field.name}>
          <input name="name" value={name} onInput={(e) => setName(e.currentTarget.value)} />
        </Field>
        <Field label="Directory" error={preset === 'custom' ? undefined : errors.field.directoryUrl}>
          <select name="preset" value={preset} onChange={(e) => setPreset(e.currentTarget.value)}>
            {PRESETS.map((p) => (
              <option key={p.value} value={p.value}>
                {p.label}
              </option>
            ))}
          </select>
        </Field>
        {preset === 'custom' ? (
          <Field label="Directory URL" error={errors.field.directoryUrl}>
            <input
              name="directoryUrl"
              value={directoryUrl}
              placeholder="directory URL (https)"
              onInput={(e) => setDirectoryUrl(e.currentTarget.value)}
            />
          </Field>
        ) : null}
        <Field
          label="E-mail"
          error={errors.field.email}
          hint="The CA writes here about expiring certificates."
        >
          <input name="email" type="email" value={email} onInput={(e) => setEmail(e.currentTarget.value)} />
        </Field>
        <Field
          label="Directory CA (PEM)"
          error={errors.field.directoryCaPem}
          hint="Only for a private CA whose directory uses its own certificate."
        >
          <textarea
            name="directoryCaPem"
            rows={3}
            class="mono"
            value={directoryCaPem}
            onInput={(e) => setDirectoryCaPem(e.currentTarget.value)}
          />
        </Field>
        <Field
          label="EAB key id"
          error={errors.field['eab.kid']}
          hint="External account binding, if the CA requires it."
        >
          <input name="eabKid" value={eabKid} onInput={(e) => setEabKid(e.currentTarget.value)} />
        </Field>
        <Field label="EAB HMAC key" error={errors.field['eab.hmacKey']}>
          <input
            name="eabHmacKey"
            type="password"
            autocomplete="off"
            value={eabHmacKey}
            onInput={(e) => setEabHmacKey(e.currentTarget.value)}
          />
        </Field>
        <ErrorMessage error={errors.form} />
        <div class="actions">
          <button type="button" class="secondary" onClick={props.onClose}>
            Cancel
          </button>
          <button type="submit" class="primary" disabled={busy}>
            {busy ? 'Registering…' : 'Register account'}
          </button>
        </div>
      </form>
    </Dialog>
  );
}

function ProviderDialog(props: {
  api: Client;
  onClose: () => void;
  onSaved: (provider: DnsProvider) => void;
}) {
  const [name, setName] = useState('');
  const [apiToken, setApiToken] = useState('');
  const [apiBaseUrl, setApiBaseUrl] = useState('');
  const [errors, setErrors] = useState<FormErrors>(NO_ERRORS);
  const [busy, setBusy] = useState(false);
  const submit = async (event: JSX.TargetedEvent<HTMLFormElement>) => {
    event.preventDefault();
    event.stopPropagation();
    setBusy(true);
    setErrors(NO_ERRORS);
    const body: Record<string, unknown> = { name, type: 'cloudflare', apiToken };
    if (apiBaseUrl) body.apiBaseUrl = apiBaseUrl;
    try {
      const created = await props.api.post<{ provider: DnsProvider }>('/api/v1/tls/dns-providers', body);
      props.onSaved(created.provider);
    } catch (err) {
      setErrors(formErrors(err, ['name', 'apiToken', 'apiBaseUrl']));
      setBusy(false);
    }
  };
  return (
    <Dialog title="Add DNS provider" onClose={props.onClose}>
      <form onSubmit={submit} noValidate>
        <Field label="Provider name" error={errors.field.name}>
          <input name="name" value={name} onInput={(e) => setName(e.currentTarget.value)} />
        </Field>
        <Field
          label="Cloudflare API token"
          error={errors.field.apiToken}
          hint="Zone:DNS:Edit on the zones to be used."
        >
          <input
            name="apiToken"
            type="password"
            autocomplete="off"
            value={apiToken}
            onInput={(e) => setApiToken(e.currentTarget.value)}
          />
        </Field>
        <Field
          label="API base URL"
          error={errors.field.apiBaseUrl}
          hint="Leave empty for api.cloudflare.com."
        >
          <input name="apiBaseUrl" value={apiBaseUrl} onInput={(e) => setApiBaseUrl(e.currentTarget.value)} />
        </Field>
        <ErrorMessage error={errors.form} />
        <div class="actions">
          <button type="button" class="secondary" onClick={props.onClose}>
            Cancel
          </button>
          <button type="submit" class="primary" disabled={busy}>
            Save provider
          </button>
        </div>
      </form>
    </Dialog>
  );
}
