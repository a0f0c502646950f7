/**
 * Agents of the selected environment: connection status, last seen, version,
 * address and recent sessions; create and rotate show the setup snippet once.
 */
import { useState } from 'preact/hooks';
import { clientFor, LOCAL } from '../api';
import { parseLabels } from '../components/agent-picker';
import { ConfirmDelete, DataTable, useAction } from '../components/data-table';
import { FormDialog, useFields } from '../components/form-dialog';
import {
  Badge,
  ConfirmDialog,
  Dialog,
  ErrorMessage,
  Field,
  formatTime,
  relativeTime,
  SecretBlock,
  SectionHead,
  useResource,
} from '../components/ui';
import { useEnvironments } from '../environment';
import type { Agent, AgentGrant, Environment } from '../types';

export function AgentsPage(props: { environment: string }) {
  const api = clientFor(props.environment);
  const agents = useResource(() => api.get<{ agents: Agent[] }>('/api/v1/agents'), []);
  const { selected } = useEnvironments();
  const [creating, setCreating] = useState(false);
  const [grant, setGrant] = useState<{ grant: AgentGrant; rotated: boolean } | null>(null);
  const [confirm, setConfirm] = useState<{ agent: Agent; action: 'rotate' | 'delete' } | null>(null);
  const action = useAction();
  const list = agents.data?.agents ?? [];

  const toggle = (agent: Agent) =>
    action.run(() =>
      api
        .patch(`/api/v1/agents/${encodeURIComponent(agent.id)}`, { enabled: !agent.enabled })
        .then(agents.reload),
    );

  return (
    <section>
      <SectionHead title="Agents">
        <button type="button" class="secondary" onClick={agents.reload}>
          Refresh
        </button>
        <button type="button" class="primary" onClick={() => setCreating(true)}>
          Create agent
        </button>
      </SectionHead>
      <p class="muted">
        An agent runs next to instances that accept no inbound connection and keeps an outbound WebSocket to
        this control plane.
      </p>
      <ErrorMessage error={action.error} />
      <DataTable
        testId="agents-table"
        what="agents"
        rows={list}
        rowKey={(a) => a.id}
        loading={agents.loading && !agents.data}
        error={agents.error}
        columns={[
          { header: 'Name', cell: (agent) => <AgentName agent={agent} /> },
          { header: 'Status', cell: (agent) => <AgentStatus agent={agent} /> },
          {
            header: 'Last seen',
            title: (agent) => formatTime(agent.lastSeenAt),
            cell: (agent) => relativeTime(agent.lastSeenAt),
          },
          {
            header: 'Version',
            cell: (agent) => (
              <>
                <div>{agent.version ?? '—'}</div>
                <Protocol agent={agent} />
              </>
            ),
          },
          { header: 'Address', class: 'mono', cell: (agent) => agent.remoteAddress ?? '—' },
          { header: 'Recent sessions', cell: (agent) => <Sessions agent={agent} /> },
        ]}
        rowName={(a) => a.name}
        actions={(agent) => [
          { label: agent.enabled ? 'Disable' : 'Enable', onClick: () => toggle(agent) },
          {
            label: 'Rotate token',
            what: `of ${agent.name}`,
            onClick: () => setConfirm({ agent, action: 'rotate' }),
          },
          { label: 'Delete', danger: true, onClick: () => setConfirm({ agent, action: 'delete' }) },
        ]}
      />
      {creating ? (
        <CreateAgentDialog
          environment={props.environment}
          onClose={() => setCreating(false)}
          onCreated={(created) => {
            setCreating(false);
            setGrant({ grant: created, rotated: false });
            agents.reload();
          }}
        />
      ) : null}
      {grant ? (
        <SetupDialog
          grant={grant.grant}
          rotated={grant.rotated}
          environment={selected}
          onClose={() => setGrant(null)}
        />
      ) : null}
      {confirm?.action === 'delete' ? (
        <ConfirmDelete
          title="Delete agent"
          name={confirm.agent.name}
          consequence="A connected agent is disconnected at once, and environments using it become unreachable."
          confirmLabel="Delete agent"
          onConfirm={() =>
            api.del(`/api/v1/agents/${encodeURIComponent(confirm.agent.id)}`).then(agents.reload)
          }
          onClose={() => setConfirm(null)}
        />
      ) : null}
      {confirm?.action === 'rotate' ? (
        <ConfirmDialog
          title="Rotate agent token"
          message={
            <>
              Issue a new token for <strong>{confirm.agent.name}</strong>? The current token stops working and
              a connected agent is disconnected until it runs with the new one.
            </>
          }
          confirmLabel="Rotate token"
          onConfirm={async () => {
            const rotated = await api.post<AgentGrant>(
              `/api/v1/agents/${encodeURIComponent(confirm.agent.id)}/rotate`,
            );
            setGrant({ grant: rotated, rotated: true });
            agents.reload();
          }}
          onClose={() => setConfirm(null)}
        />
      ) : null}
    </section>
  );
}

function AgentName(props: { agent: Agent }) {
  const { agent } = props;
  return (
    <>
      <div>{agent.name}</div>
      <small class="muted mono">{agent.id}</small>
      {Object.keys(agent.labels ?? {}).length > 0 ? (
        <div class="labels">
          {Object.entries(agent.labels).map(([k, v]) => (
            <span key={k} class="label-chip">
              {k}={v}
            </span>
          ))}
        </div>
      ) : null}
    </>
  );
}

function AgentStatus(props: { agent: Agent }) {
  const { agent } = props;
  return (
    <>
      {agent.status === 'connected' ? (
        <Badge tone="ok">connected</Badge>
      ) : (
        <Badge tone="muted">offline</Badge>
      )}
      {agent.enabled ? null : <Badge tone="warn">disabled</Badge>}
      {agent.status === 'connected' && agent.replicaId ? (
        <div class="small muted" data-testid="agent-replica">
          on replica <span class="mono">{agent.replicaId}</span>
        </div>
      ) : null}
      {agent.leakedStreams > 0 ? (
        <Badge tone="warn">
          {agent.leakedStreams} leaked stream{agent.leakedStreams === 1 ? '' : 's'}
        </Badge>
      ) : null}
    </>
  );
}

const range = (r: { min: number; max: number }) => `v${r.min}–v${r.max}`;

/** The relay protocol of the last handshake: the version in use, or why the versions did not meet. */
function Protocol(props: { agent: Agent }) {
  const protocol = props.agent.protocol;
  if (!protocol) return null;
  if (protocol.refusal !== null || protocol.version === null) {
    return (
      <small class="warn-text" data-testid="agent-protocol-refusal" title={protocol.refusal ?? ''}>
        speaks {range(protocol.agentVersions)}, control plane {range(protocol.controlPlaneVersions)}
      </small>
    );
  }
  return (
    <small
      class="muted"
      title={`agent ${range(protocol.agentVersions)}, control plane ${range(protocol.controlPlaneVersions)}`}
    >
      protocol v{protocol.version}
    </small>
  );
}

function Sessions(props: { agent: Agent }) {
  const sessions = (props.agent.connections ?? []).slice(-5).reverse();
  if (sessions.length === 0) return <span class="muted">none</span>;
  return (
    <details>
      <summary>
        {sessions.length} recent<span class="visually-hidden"> sessions of {props.agent.name}</span>
      </summary>
      <ul class="sessions">
        {sessions.map((s) => (
          <li key={s.id}>
            {formatTime(s.startedAt)} → {s.endedAt ? formatTime(s.endedAt) : 'open'}
            {s.remoteAddress ? ` · ${s.remoteAddress}` : ''}
            {s.version ? ` · v${s.version}` : ''}
            {s.endReason ? ` · ${s.endReason}` : ''}
            {s.leakedStreams > 0 ? ` · ${s.leakedStreams} leaked` : ''}
          </li>
        ))}
      </ul>
    </details>
  );
}

function CreateAgentDialog(props: {
  environment: string;
  onClose: () => void;
  onCreated: (grant: AgentGrant) => void;
}) {
  const form = useFields({ name: '', labels: '' });
  const create = async () => {
    const body: Record<string, unknown> = { name: form.values.name };
    const parsed = parseLabels(form.values.labels);
    if (Object.keys(parsed).length > 0) body.labels = parsed;
    props.onCreated(await clientFor(props.environment).post<AgentGrant>('/api/v1/agents', body));
  };
  return (
    <FormDialog
      title="Create agent"
      onClose={props.onClose}
      onSubmit={create}
      fields={['name', 'labels']}
      submitLabel="Create"
    >
      <Field label="Name">
        <input required maxLength={128} {...form.text('name')} />
      </Field>
      <Field label="Labels" hint="Optional, one key=value per line.">
        <textarea rows={3} {...form.text('labels')} />
      </Field>
    </FormDialog>
  );
}

/** The `setup` object create and rotate answer with (see src/http/routes/agents.ts). */
interface ServerSetup {
  env?: Record<string, string>;
  envFile?: string;
  command?: string;
  systemdUnit?: string;
}

/**
 * The snippet blocks for a new or rotated agent token: the server's `setup`
 * (environment file, command, systemd unit), completed here where it lacks
 * something (an older server: the URL and fingerprint the console knows).
 */
export function setupSnippets(
  grant: AgentGrant,
  environment: Environment,
  origin: string,
): { label: string; text: string }[] {
  const setup: ServerSetup =
    grant.setup && typeof grant.setup === 'object' ? (grant.setup as ServerSetup) : {};
  const remote = environment.id !== LOCAL;
  const env: Record<string, string> = { ...(setup.env ?? {}) };
  env.MANAGEMENT_URL ??= remote && environment.url ? environment.url : origin;
  env.AGENT_ID ??= grant.agent.id;
  env.AGENT_TOKEN = grant.token;
  let complete = typeof setup.envFile === 'string' && setup.envFile.includes(grant.token);
  if (!env.MANAGEMENT_FINGERPRINT && !env.MANAGEMENT_CA_FILE) {
    const pinned = remote ? environment.certificate?.fingerprintSha256 : undefined;
    env.MANAGEMENT_FINGERPRINT = pinned ?? '<SHA-256 fingerprint of the management certificate>';
    complete = false;
  }
  const envFile = complete
    ? setup.envFile!
    : `${Object.entries(env)
        .map(([k, v]) => `${k}=${v}`)
        .join('\n')}\n`;
  const command = `set -a && . ./agent.env && set +a && ${setup.command ?? 'p2pstream agent'}`;
  const unit =
    setup.systemdUnit ??
    [
      '[Unit]',
      'Description=p2pstream agent',
      'After=network-online.target',
      'Wants=network-online.target',
      '',
      '[Service]',
      'EnvironmentFile=/etc/p2pstream/agent.env',
      'ExecStart=/usr/local/bin/p2pstream agent',
      'Restart=always',
      'RestartSec=5',
      'DynamicUser=yes',
      'NoNewPrivileges=yes',
      'ProtectSystem=strict',
      'ProtectHome=yes',
      '',
      '[Install]',
      'WantedBy=multi-user.target',
      '',
    ].join('\n');
  return [
    { label: 'Environment file (agent.env)', text: envFile },
    { label: 'Command', text: command },
    { label: 'systemd unit', text: unit },
  ];
}

function SetupDialog(props: {
  grant: AgentGrant;
  rotated: boolean;
  environment: Environment;
  onClose: () => void;
}) {
  const blocks = setupSnippets(props.grant, props.environment, window.location.origin);
  return (
    <Dialog
      title={
        props.rotated ? `New token for ${props.grant.agent.name}` : `Agent ${props.grant.agent.name} created`
      }
      onClose={props.onClose}
      wide
      testId="agent-setup"
    >
      <p>
        <strong>Copy the setup now: you will not see the token again.</strong> Run the agent next to the
        instances it should reach; for systemd, install the environment file as{' '}
        <code>/etc/p2pstream/agent.env</code> (mode 0600).
      </p>
      {blocks.map((block) => (
        <SecretBlock key={block.label} label={block.label} text={block.text} />
      ))}
      <div class="actions">
        <button type="button" class="primary" onClick={props.onClose}>
          Done
        </button>
      </div>
    </Dialog>
  );
}
