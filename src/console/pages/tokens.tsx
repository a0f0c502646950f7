/** Settings → API Tokens of the selected environment: list, create (shown once), enable/disable, delete. */
import type { JSX } from 'preact';
import { useState } from 'preact/hooks';
import { clientFor } from '../api';
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
  SecretBlock,
  SectionHead,
  useResource,
} from '../components/ui';
import type { ApiToken } from '../types';

export function TokensPage(props: { environment: string }) {
  const api = clientFor(props.environment);
  const tokens = useResource(() => api.get<{ tokens: ApiToken[] }>('/api/v1/tokens'), []);
  const [creating, setCreating] = useState(false);
  const [created, setCreated] = useState<{ token: string; apiToken: ApiToken } | null>(null);
  const [deleting, setDeleting] = useState<ApiToken | null>(null);
  const [actionError, setActionError] = useState<unknown>(null);
  const list = tokens.data?.tokens ?? [];

  const toggle = async (token: ApiToken) => {
    setActionError(null);
    try {
      await api.patch(`/api/v1/tokens/${encodeURIComponent(token.id)}`, { enabled: !token.enabled });
      tokens.reload();
    } catch (err) {
      setActionError(err);
    }
  };

  return (
    <section>
      <SectionHead title="API Tokens">
        <button type="button" class="primary" onClick={() => setCreating(true)}>
          Create token
        </button>
      </SectionHead>
      <p class="muted">
        Tokens authenticate scripts and other control planes: <code>Authorization: Bearer p2pat_…</code>.
      </p>
      <ErrorMessage error={actionError} />
      <LoadState
        loading={tokens.loading && !tokens.data}
        error={tokens.error}
        empty={list.length === 0}
        what="tokens"
      />
      {list.length > 0 ? (
        <table data-testid="tokens-table">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Status</th>
              <th scope="col">Expires</th>
              <th scope="col">Last used</th>
              <th scope="col">Created</th>
              <th scope="col">
                <span class="visually-hidden">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {list.map((token) => (
              <tr key={token.id}>
                <td>{token.name}</td>
                <td>
                  {token.enabled ? <Badge tone="ok">enabled</Badge> : <Badge tone="muted">disabled</Badge>}
                  {token.expiresAt && Date.parse(token.expiresAt) < Date.now() ? (
                    <Badge tone="warn">expired</Badge>
                  ) : null}
                </td>
                <td title={formatTime(token.expiresAt)}>
                  {token.expiresAt ? formatTime(token.expiresAt) : 'never'}
                </td>
                <td title={formatTime(token.lastUsedAt)}>
                  {token.lastUsedAt ? relativeTime(token.lastUsedAt) : 'never'}
                </td>
                <td>{formatTime(token.createdAt)}</td>
                <td class="row-actions">
                  <button type="button" class="secondary small" onClick={() => toggle(token)}>
                    {token.enabled ? 'Disable' : 'Enable'}
                    <span class="visually-hidden"> {token.name}</span>
                  </button>
                  <button type="button" class="danger small" onClick={() => setDeleting(token)}>
                    Delete<span class="visually-hidden"> {token.name}</span>
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : null}
      {creating ? (
        <CreateTokenDialog
          environment={props.environment}
          onClose={() => setCreating(false)}
          onCreated={(result) => {
            setCreating(false);
            setCreated(result);
            tokens.reload();
          }}
        />
      ) : null}
      {created ? (
        <Dialog title="Token created" onClose={() => setCreated(null)} testId="token-created">
          <p>
            <strong>Copy the token now: you will not see it again.</strong> Only its hash is stored.
          </p>
          <SecretBlock label={`Token “${created.apiToken.name}”`} text={created.token} />
          <div class="actions">
            <button type="button" class="primary" onClick={() => setCreated(null)}>
              Done
            </button>
          </div>
        </Dialog>
      ) : null}
      {deleting ? (
        <ConfirmDialog
          title="Delete token"
          message={
            <>
              Delete <strong>{deleting.name}</strong>? Clients using it are refused at once.
            </>
          }
          confirmLabel="Delete token"
          onConfirm={() => api.del(`/api/v1/tokens/${encodeURIComponent(deleting.id)}`).then(tokens.reload)}
          onClose={() => setDeleting(null)}
        />
      ) : null}
    </section>
  );
}

function CreateTokenDialog(props: {
  environment: string;
  onClose: () => void;
  onCreated: (result: { token: string; apiToken: ApiToken }) => void;
}) {
  const [name, setName] = useState('');
  const [expires, setExpires] = useState('');
  const [errors, setErrors] = useState<FormErrors>(NO_ERRORS);
  const [busy, setBusy] = useState(false);
  const submit = async (event: JSX.TargetedEvent<HTMLFormElement>) => {
    event.preventDefault();
    setBusy(true);
    setErrors(NO_ERRORS);
    try {
      const body: Record<string, unknown> = { name };
      if (expires) body.expiresAt = new Date(expires).toISOString();
      props.onCreated(
        await clientFor(props.environment).post<{ token: string; apiToken: ApiToken }>(
          '/api/v1/tokens',
          body,
        ),
      );
    } catch (err) {
      setErrors(formErrors(err, ['name', 'expiresAt']));
      setBusy(false);
    }
  };
  return (
    <Dialog title="Create API token" onClose={props.onClose}>
      <form onSubmit={submit}>
        <Field label="Name" error={errors.field.name}>
          <input
            name="name"
            required
            maxLength={128}
            value={name}
            onInput={(e) => setName(e.currentTarget.value)}
          />
        </Field>
        <Field
          label="Expires"
          error={errors.field.expiresAt}
          hint="Leave empty for a token that never expires."
        >
          <input
            name="expiresAt"
            type="datetime-local"
            value={expires}
            onInput={(e) => setExpires(e.currentTarget.value)}
          />
        </Field>
        <ErrorMessage error={errors.form} />
        <div class="actions">
          <button type="button" class="secondary" onClick={props.onClose}>
            Cancel
          </button>
          <button type="submit" class="primary" disabled={busy}>
            Create
          </button>
        </div>
      </form>
    </Dialog>
  );
}
