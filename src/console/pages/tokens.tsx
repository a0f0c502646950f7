/** Settings → API Tokens of the selected environment: list, create (shown once), enable/disable, delete. */
import { useState } from 'preact/hooks';
import { clientFor } from '../api';
import { ConfirmDelete, DataTable, useAction } from '../components/data-table';
import { FormDialog, useFields } from '../components/form-dialog';
import {
  Badge,
  Dialog,
  ErrorMessage,
  Field,
  formatTime,
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
  const action = useAction();
  const list = tokens.data?.tokens ?? [];

  const toggle = (token: ApiToken) =>
    action.run(() =>
      api
        .patch(`/api/v1/tokens/${encodeURIComponent(token.id)}`, { enabled: !token.enabled })
        .then(tokens.reload),
    );

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
      <ErrorMessage error={action.error} />
      <DataTable
        testId="tokens-table"
        what="tokens"
        rows={list}
        rowKey={(t) => t.id}
        loading={tokens.loading && !tokens.data}
        error={tokens.error}
        columns={[
          { header: 'Name', cell: (t) => t.name },
          {
            header: 'Status',
            cell: (t) => (
              <>
                {t.enabled ? <Badge tone="ok">enabled</Badge> : <Badge tone="muted">disabled</Badge>}
                {t.expiresAt && Date.parse(t.expiresAt) < Date.now() ? (
                  <Badge tone="warn">expired</Badge>
                ) : null}
              </>
            ),
          },
          {
            header: 'Expires',
            title: (t) => formatTime(t.expiresAt),
            cell: (t) => (t.expiresAt ? formatTime(t.expiresAt) : 'never'),
          },
          {
            header: 'Last used',
            title: (t) => formatTime(t.lastUsedAt),
            cell: (t) => (t.lastUsedAt ? relativeTime(t.lastUsedAt) : 'never'),
          },
          { header: 'Created', cell: (t) => formatTime(t.createdAt) },
        ]}
        rowName={(t) => t.name}
        actions={(token) => [
          { label: token.enabled ? 'Disable' : 'Enable', onClick: () => toggle(token) },
          { label: 'Delete', danger: true, onClick: () => setDeleting(token) },
        ]}
      />
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
        <ConfirmDelete
          title="Delete token"
          name={deleting.name}
          consequence="Clients using it are refused at once."
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
  const form = useFields({ name: '', expiresAt: '' });
  const create = async () => {
    const body: Record<string, unknown> = { name: form.values.name };
    if (form.values.expiresAt) body.expiresAt = new Date(form.values.expiresAt).toISOString();
    props.onCreated(
      await clientFor(props.environment).post<{ token: string; apiToken: ApiToken }>('/api/v1/tokens', body),
    );
  };
  return (
    <FormDialog
      title="Create API token"
      onClose={props.onClose}
      onSubmit={create}
      fields={['name', 'expiresAt']}
      submitLabel="Create"
    >
      <Field label="Name">
        <input required maxLength={128} {...form.text('name')} />
      </Field>
      <Field label="Expires" hint="Leave empty for a token that never expires.">
        <input type="datetime-local" {...form.text('expiresAt')} />
      </Field>
    </FormDialog>
  );
}
