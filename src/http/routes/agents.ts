/**
 * Agent registry routes (operational: they follow the selected environment).
 * Create and rotate answer `{agent, token, setup}`: the token is shown this
 * once, and `setup` is a ready-to-use snippet (environment variables, the
 * command and a systemd unit reading them from an environment file).
 */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { FastifyRequest } from 'fastify';
import type { AgentService } from '../../domain/agent-service.js';
import {
  createAgentSchema,
  deleteAgentSchema,
  getAgentSchema,
  listAgentsSchema,
  rotateAgentSchema,
  updateAgentSchema,
} from '../schemas/agents.js';

/** Where the agent's environment file goes in the systemd example. */
export const AGENT_ENV_FILE = '/etc/p2pstream/agent.env';
/** The command the systemd example runs (a global npm install). */
export const AGENT_COMMAND = '/usr/local/bin/p2pstream agent';

export interface AgentRoutesDeps {
  agents: AgentService;
  /** SHA-256 fingerprint of this instance's management certificate, for MANAGEMENT_FINGERPRINT. */
  managementFingerprint?: string;
}

/** How to run an agent with the credentials just issued. */
export interface AgentSetup {
  env: Record<string, string>;
  /** The same variables as an environment file (`KEY=value` lines). */
  envFile: string;
  command: string;
  systemdUnit: string;
}

/** Builds the setup snippet; `token` is the one just issued (nothing else secret goes in). */
export function agentSetup(options: {
  managementUrl: string;
  agentId: string;
  token: string;
  managementFingerprint?: string;
}): AgentSetup {
  const env: Record<string, string> = {
    MANAGEMENT_URL: options.managementUrl,
    AGENT_ID: options.agentId,
    AGENT_TOKEN: options.token,
  };
  if (options.managementFingerprint) env.MANAGEMENT_FINGERPRINT = options.managementFingerprint;
  const envFile = `${Object.entries(env)
    .map(([key, value]) => `${key}=${value}`)
    .join('\n')}\n`;
  const systemdUnit = [
    '[Unit]',
    'Description=p2pstream agent',
    'After=network-online.target',
    'Wants=network-online.target',
    '',
    '[Service]',
    `EnvironmentFile=${AGENT_ENV_FILE}`,
    `ExecStart=${AGENT_COMMAND}`,
    'Restart=always',
    'RestartSec=5',
    'DynamicUser=yes',
    'NoNewPrivileges=yes',
    'ProtectSystem=strict',
    'ProtectHome=yes',
    'PrivateTmp=yes',
    '',
    '[Install]',
    'WantedBy=multi-user.target',
    '',
  ].join('\n');
  return { env, envFile, command: 'p2pstream agent', systemdUnit };
}

// The URL the caller reached this instance at; the Host header is reduced to
// the characters a host and port can hold, so nothing odd lands in a snippet.
function managementUrlOf(request: FastifyRequest): string {
  const host = String(request.headers.host ?? '').replace(/[^A-Za-z0-9.:[\]-]/g, '');
  return `https://${host || 'CONTROL_PLANE_HOST:8081'}`;
}

/** The `/api/v1/agents` routes as a plugin for the operational scope. */
export function createAgentsPlugin(deps: AgentRoutesDeps): FastifyPluginAsyncTypebox {
  return async (app) => {
    const { agents } = deps;
    const withSetup = <G extends { agent: { id: string }; token: string }>(
      request: FastifyRequest,
      result: G,
    ) => ({
      ...result,
      setup: agentSetup({
        managementUrl: managementUrlOf(request),
        agentId: result.agent.id,
        token: result.token,
        ...(deps.managementFingerprint ? { managementFingerprint: deps.managementFingerprint } : {}),
      }),
    });

    app.get('/api/v1/agents', { schema: listAgentsSchema }, async () => ({ agents: agents.list() }));
    app.post('/api/v1/agents', { schema: createAgentSchema }, async (request, reply) =>
      reply
        .code(201)
        .header('cache-control', 'no-store')
        .send(withSetup(request, await agents.create(request.body))),
    );
    app.get('/api/v1/agents/:id', { schema: getAgentSchema }, async (request) => ({
      agent: agents.get(request.params.id),
    }));
    app.patch('/api/v1/agents/:id', { schema: updateAgentSchema }, async (request) => ({
      agent: await agents.update(request.params.id, request.body),
    }));
    app.post('/api/v1/agents/:id/rotate', { schema: rotateAgentSchema }, async (request, reply) =>
      reply
        .header('cache-control', 'no-store')
        .send(withSetup(request, await agents.rotate(request.params.id))),
    );
    app.delete('/api/v1/agents/:id', { schema: deleteAgentSchema }, async (request, reply) => {
      await agents.remove(request.params.id);
      return reply.code(204).send(null);
    });
  };
}
