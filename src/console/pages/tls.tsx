/**
 * TLS of the selected environment (docs/tls.md): the certificate store
 * (hosts, source, issuer, expiry countdown, status with the last error and
 * the next attempt; add by upload / file / self-signed / ACME, renew,
 * delete), ACME accounts and DNS providers (add, edit, delete). Refreshes
 * itself while an order is running.
 */
import { useEffect, useState } from 'preact/hooks';
import { type Client, clientFor } from '../api';
import { ConfirmDelete, DataTable, useAction } from '../components/data-table';
import { FormDialog, useFields } from '../components/form-dialog';
import {
  Badge,
  ErrorMessage,
  Field,
  type FormErrors,
  formatTime,
  formErrors,
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
  /** true: adding one; an account or provider: editing it. */
  const [accountDialog, setAccountDialog] = useState<AcmeAccount | boolean>(false);
  const [providerDialog, setProviderDialog] = useState<DnsProvider | boolean>(false);
  const [deleting, setDeleting] = useState<Deleting | null>(null);
  const action = useAction();
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

  const renew = (certificate: TlsCertificate) =>
    action.run(() =>
      api.post(`/api/v1/tls/certificates/${encodeURIComponent(certificate.id)}/renew`, {}).then(data.reload),
    );

  return (
    <section>
      <SectionHead title="TLS" />
      <ErrorMessage error={data.error} />
      <ErrorMessage error={action.error} />
      <SectionHead title="Certificates" level={2}>
        <button type="button" class="primary" onClick={() => setAdding(true)}>
          Add certificate
        </button>
      </SectionHead>
      <DataTable
        testId="certificates-table"
        what="certificates"
        rows={certificates}
        rowKey={(c) => c.id}
        rowTestId={(c) => `certificate-${c.name}`}
        loading={data.loading && !data.data}
        error={data.error}
        errorShownElsewhere
        columns={[
          { header: 'Name', cell: (c) => c.name },
          { header: 'Hosts', class: 'mono', cell: (c) => c.hosts.join(', ') },
          {
            header: 'Source',
            cell: (c) => (
              <>
                {c.source}
                {c.challenge ? <span class="muted"> ({c.challenge})</span> : null}
              </>
            ),
          },
          { header: 'Issuer', title: (c) => c.issuer ?? undefined, cell: (c) => shortName(c.issuer) },
          {
            header: 'Expires',
            title: (c) => formatTime(c.notAfter),
            cell: (c) => (c.notAfter ? <Countdown iso={c.notAfter} /> : '—'),
          },
          { header: 'Status', cell: (c) => <CertificateStatus certificate={c} /> },
        ]}
        rowName={(c) => c.name}
        actions={(c) => [
          c.source !== 'upload' && { label: 'Renew', onClick: () => renew(c) },
          { label: 'Delete', danger: true, onClick: () => setDeleting({ kind: 'certificate', item: c }) },
        ]}
      />

      <SectionHead title="ACME accounts" level={2}>
        <button type="button" class="secondary" onClick={() => setAccountDialog(true)}>
          Add account
        </button>
      </SectionHead>
      <DataTable
        testId="accounts-table"
        what="ACME accounts"
        rows={accounts}
        rowKey={(a) => a.id}
        empty={<p class="muted">No ACME account yet: add one to issue certificates automatically.</p>}
        columns={[
          { header: 'Name', cell: (a) => a.name },
          { header: 'Directory', class: 'mono', cell: (a) => a.directoryUrl },
          { header: 'E-mail', cell: (a) => a.email ?? '—' },
        ]}
        rowName={(a) => a.name}
        actions={(a) => [
          { label: 'Edit', onClick: () => setAccountDialog(a) },
          { label: 'Delete', danger: true, onClick: () => setDeleting({ kind: 'account', item: a }) },
        ]}
      />

      <SectionHead title="DNS providers" level={2}>
        <button type="button" class="secondary" onClick={() => setProviderDialog(true)}>
          Add DNS provider
        </button>
      </SectionHead>
      <DataTable
        testId="providers-table"
        what="DNS providers"
        rows={providers}
        rowKey={(p) => p.id}
        empty={<p class="muted">No DNS provider: needed for the dns-01 challenge (and wildcard names).</p>}
        columns={[
          { header: 'Name', cell: (p) => p.name },
          { header: 'Type', cell: (p) => p.type },
          { header: 'API', class: 'mono', cell: (p) => p.apiBaseUrl ?? 'default' },
        ]}
        rowName={(p) => p.name}
        actions={(p) => [
          { label: 'Edit', onClick: () => setProviderDialog(p) },
          { label: 'Delete', danger: true, onClick: () => setDeleting({ kind: 'provider', item: p }) },
        ]}
      />

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
          editing={accountDialog === true ? null : accountDialog}
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
          editing={providerDialog === true ? null : providerDialog}
          onClose={() => setProviderDialog(false)}
          onSaved={() => {
            setProviderDialog(false);
            data.reload();
          }}
        />
      ) : null}
      {deleting ? (
        <ConfirmDelete
          title={`Delete ${deleting.kind === 'provider' ? 'DNS provider' : deleting.kind === 'account' ? 'ACME account' : 'certificate'}`}
          name={deleting.item.name}
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

/** The status badge, the last error of a failed order and when the next attempt or renewal comes. */
function CertificateStatus(props: { certificate: TlsCertificate }) {
  const c = props.certificate;
  return (
    <>
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
    </>
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
  const form = useFields({
    source: 'acme' as CertificateSource,
    name: '',
    hosts: '',
    certificatePem: '',
    privateKeyPem: '',
    certificateFile: '',
    privateKeyFile: '',
    validDays: '90',
    acmeAccountId: props.accounts[0]?.id ?? '',
    challenge: 'http-01' as AcmeChallenge,
    dnsProviderId: props.providers[0]?.id ?? '',
  });
  const v = form.values;
  const source = v.source;
  const [subDialog, setSubDialog] = useState<'account' | 'provider' | null>(null);

  const save = async () => {
    const hostList = v.hosts
      .split(/[\s,]+/)
      .map((h) => h.trim())
      .filter(Boolean);
    const body: Record<string, unknown> = { name: v.name, source };
    if (hostList.length > 0 || source === 'self-signed' || source === 'acme') body.hosts = hostList;
    if (source === 'upload')
      Object.assign(body, { certificatePem: v.certificatePem, privateKeyPem: v.privateKeyPem });
    if (source === 'file')
      Object.assign(body, { certificateFile: v.certificateFile, privateKeyFile: v.privateKeyFile });
    if (source === 'self-signed') body.validDays = Number(v.validDays) || v.validDays;
    if (source === 'acme') {
      Object.assign(body, { acmeAccountId: v.acmeAccountId, challenge: v.challenge });
      if (v.challenge === 'dns-01') body.dnsProviderId = v.dnsProviderId;
    }
    await props.api.post('/api/v1/tls/certificates', body);
    props.onSaved();
  };

  return (
    <FormDialog
      title="Add certificate"
      onClose={props.onClose}
      onSubmit={save}
      fields={Object.keys(v)}
      sortErrors={tlsFormErrors}
      submitLabel={source === 'acme' ? 'Order certificate' : 'Save'}
      noValidate
      wide
      after={
        subDialog === 'account' ? (
          <AccountDialog
            api={props.api}
            onClose={() => setSubDialog(null)}
            onSaved={(account) => {
              setSubDialog(null);
              form.set('acmeAccountId', account.id);
              props.accounts.push(account);
              props.onChanged();
            }}
          />
        ) : subDialog === 'provider' ? (
          <ProviderDialog
            api={props.api}
            onClose={() => setSubDialog(null)}
            onSaved={(provider) => {
              setSubDialog(null);
              form.set('dnsProviderId', provider.id);
              props.providers.push(provider);
              props.onChanged();
            }}
          />
        ) : null
      }
    >
      <Field label="Source">
        <select {...form.choice('source')}>
          <option value="acme">ACME (Let's Encrypt or another CA)</option>
          <option value="upload">Upload PEM</option>
          <option value="file">Files on the server</option>
          <option value="self-signed">Self-signed</option>
        </select>
      </Field>
      <Field label="Name">
        <input {...form.text('name')} />
      </Field>
      <Field
        label="Hosts"
        hint={
          source === 'upload' || source === 'file'
            ? 'Optional: the certificate’s DNS names when left empty. Separate with commas or spaces.'
            : 'Names such as example.com, www.example.com or *.example.com (dns-01 only).'
        }
      >
        <input {...form.text('hosts')} />
      </Field>
      {source === 'upload' ? (
        <>
          <Field label="Certificate chain (PEM, leaf first)">
            <textarea rows={6} class="mono" {...form.text('certificatePem')} />
          </Field>
          <Field label="Private key (PEM)" hint="Stored encrypted; never shown again.">
            <textarea rows={4} class="mono" {...form.text('privateKeyPem')} />
          </Field>
        </>
      ) : null}
      {source === 'file' ? (
        <>
          <Field label="Certificate file" hint="Re-read whenever it changes.">
            <input placeholder="/etc/ssl/example/fullchain.pem" {...form.text('certificateFile')} />
          </Field>
          <Field label="Private key file">
            <input placeholder="/etc/ssl/example/privkey.pem" {...form.text('privateKeyFile')} />
          </Field>
        </>
      ) : null}
      {source === 'self-signed' ? (
        <Field label="Valid days">
          <input type="number" min={1} max={3650} {...form.text('validDays')} />
        </Field>
      ) : null}
      {source === 'acme' ? (
        <>
          <Field label="ACME account">
            <select {...form.choice('acmeAccountId')}>
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
          <Field label="Challenge">
            <select {...form.choice('challenge')}>
              <option value="http-01">http-01 (an http listener on port 80)</option>
              <option value="tls-alpn-01">tls-alpn-01 (an https listener on port 443)</option>
              <option value="dns-01">dns-01 (a DNS provider; wildcards)</option>
            </select>
          </Field>
          {v.challenge === 'dns-01' ? (
            <>
              <Field label="DNS provider">
                <select {...form.choice('dnsProviderId')}>
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
    </FormDialog>
  );
}

/**
 * Adds an account, or edits one (`editing`): its name, e-mail and directory
 * CA — the directory and EAB belong to the registration.
 */
function AccountDialog(props: {
  api: Client;
  editing?: AcmeAccount | null;
  onClose: () => void;
  onSaved: (account: AcmeAccount) => void;
}) {
  const editing = props.editing ?? null;
  const form = useFields({
    name: editing?.name ?? '',
    preset: 'letsencrypt-staging',
    directoryUrl: '',
    email: editing?.email ?? '',
    directoryCaPem: '',
    eabKid: '',
    eabHmacKey: '',
  });
  const v = form.values;
  const save = async () => {
    if (editing) {
      const body: Record<string, unknown> = { name: v.name, email: v.email || null };
      if (v.directoryCaPem) body.directoryCaPem = v.directoryCaPem;
      const saved = await props.api.patch<{ account: AcmeAccount }>(
        `/api/v1/tls/acme/accounts/${encodeURIComponent(editing.id)}`,
        body,
      );
      props.onSaved(saved.account);
      return;
    }
    const body: Record<string, unknown> = {
      name: v.name,
      directoryUrl: v.preset === 'custom' ? v.directoryUrl : v.preset,
    };
    if (v.email) body.email = v.email;
    if (v.directoryCaPem) body.directoryCaPem = v.directoryCaPem;
    if (v.eabKid || v.eabHmacKey) body.eab = { kid: v.eabKid, hmacKey: v.eabHmacKey };
    const created = await props.api.post<{ account: AcmeAccount }>('/api/v1/tls/acme/accounts', body);
    props.onSaved(created.account);
  };
  if (editing) {
    return (
      <FormDialog
        title="Edit ACME account"
        onClose={props.onClose}
        onSubmit={save}
        fields={['name', 'email', 'directoryCaPem']}
        submitLabel="Save account"
        noValidate
      >
        <Field label="Account name">
          <input {...form.text('name')} />
        </Field>
        <p class="muted mono">{editing.directoryUrl}</p>
        <Field label="E-mail" hint="Sent to the CA as the account's new contact.">
          <input type="email" {...form.text('email')} />
        </Field>
        <Field
          label="Directory CA (PEM)"
          hint={editing.hasDirectoryCa ? 'Leave empty to keep the stored one.' : 'Only for a private CA.'}
        >
          <textarea rows={3} class="mono" {...form.text('directoryCaPem')} />
        </Field>
      </FormDialog>
    );
  }
  return (
    <FormDialog
      title="Add ACME account"
      onClose={props.onClose}
      onSubmit={save}
      fields={['name', 'directoryUrl', 'email', 'directoryCaPem', 'eab.kid', 'eab.hmacKey']}
      submitLabel="Register account"
      busyLabel="Registering…"
      noValidate
    >
      <Field label="Account name">
        <input {...form.text('name')} />
      </Field>
      <Field label="Directory" name={v.preset === 'custom' ? 'preset' : 'directoryUrl'}>
        <select {...form.choice('preset')}>
          {PRESETS.map((p) => (
            <option key={p.value} value={p.value}>
              {p.label}
            </option>
          ))}
        </select>
      </Field>
      {v.preset === 'custom' ? (
        <Field label="Directory URL">
          <input placeholder="directory URL (https)" {...form.text('directoryUrl')} />
        </Field>
      ) : null}
      <Field label="E-mail" hint="The CA writes here about expiring certificates.">
        <input type="email" {...form.text('email')} />
      </Field>
      <Field
        label="Directory CA (PEM)"
        hint="Only for a private CA whose directory uses its own certificate."
      >
        <textarea rows={3} class="mono" {...form.text('directoryCaPem')} />
      </Field>
      <Field label="EAB key id" name="eab.kid" hint="External account binding, if the CA requires it.">
        <input {...form.text('eabKid')} />
      </Field>
      <Field label="EAB HMAC key" name="eab.hmacKey">
        <input type="password" autocomplete="off" {...form.text('eabHmacKey')} />
      </Field>
    </FormDialog>
  );
}

/** Adds a provider, or edits one (`editing`): an empty token keeps the stored one. */
function ProviderDialog(props: {
  api: Client;
  editing?: DnsProvider | null;
  onClose: () => void;
  onSaved: (provider: DnsProvider) => void;
}) {
  const editing = props.editing ?? null;
  const form = useFields({ name: editing?.name ?? '', apiToken: '', apiBaseUrl: editing?.apiBaseUrl ?? '' });
  const v = form.values;
  const save = async () => {
    if (editing) {
      const body: Record<string, unknown> = { name: v.name, apiBaseUrl: v.apiBaseUrl || null };
      if (v.apiToken) body.apiToken = v.apiToken;
      const saved = await props.api.patch<{ provider: DnsProvider }>(
        `/api/v1/tls/dns-providers/${encodeURIComponent(editing.id)}`,
        body,
      );
      props.onSaved(saved.provider);
      return;
    }
    const body: Record<string, unknown> = { name: v.name, type: 'cloudflare', apiToken: v.apiToken };
    if (v.apiBaseUrl) body.apiBaseUrl = v.apiBaseUrl;
    const created = await props.api.post<{ provider: DnsProvider }>('/api/v1/tls/dns-providers', body);
    props.onSaved(created.provider);
  };
  return (
    <FormDialog
      title={editing ? 'Edit DNS provider' : 'Add DNS provider'}
      onClose={props.onClose}
      onSubmit={save}
      fields={['name', 'apiToken', 'apiBaseUrl']}
      submitLabel="Save provider"
      noValidate
    >
      <Field label="Provider name">
        <input {...form.text('name')} />
      </Field>
      <Field
        label="Cloudflare API token"
        hint={
          editing
            ? 'Leave empty to keep the stored token (needed again for another API host).'
            : 'Zone:DNS:Edit on the zones to be used.'
        }
      >
        <input type="password" autocomplete="off" {...form.text('apiToken')} />
      </Field>
      <Field label="API base URL" hint="Leave empty for api.cloudflare.com.">
        <input {...form.text('apiBaseUrl')} />
      </Field>
    </FormDialog>
  );
}
