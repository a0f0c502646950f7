/** Schemas of the agent registry routes (README "Running an agent"). */
import { Type } from 'typebox';
import { errorResponses, IdParams, NoContent, Nullable, Patch, Timestamp } from './common.js';

export const AgentConnection = Type.Object({
  id: Type.String(),
  startedAt: Timestamp,
  endedAt: Nullable(Timestamp),
  remoteAddress: Nullable(Type.String()),
  version: Nullable(Type.String()),
  endReason: Nullable(Type.String()),
  leakedStreams: Type.Integer({
    description: 'Streams closed as leaked by stream reconciliation (both sides).',
  }),
});

const ProtocolRange = Type.Object({ min: Type.Integer(), max: Type.Integer() });

/** The relay protocol of the agent's last handshake. */
export const AgentProtocol = Type.Object({
  version: Nullable(
    Type.Integer({ description: 'The version in use; null when the handshake was refused.' }),
  ),
  agentVersions: ProtocolRange,
  controlPlaneVersions: ProtocolRange,
  refusal: Nullable(
    Type.String({ description: 'Why the last handshake was refused ("the agent speaks v1–v1, …").' }),
  ),
  at: Timestamp,
});

/** An agent as the API shows it (never its token or the token's hash). */
export const Agent = Type.Object({
  id: Type.String(),
  name: Type.String(),
  enabled: Type.Boolean(),
  labels: Type.Record(Type.String(), Type.String()),
  status: Type.Enum(['connected', 'offline']),
  connectedAt: Nullable(Timestamp),
  replicaId: Nullable(Type.String({ description: 'The control-plane replica holding the live session.' })),
  lastSeenAt: Nullable(Timestamp),
  remoteAddress: Nullable(Type.String()),
  version: Nullable(Type.String()),
  protocol: Nullable(AgentProtocol),
  leakedStreams: Type.Integer({ description: 'Streams closed as leaked over the recent sessions.' }),
  connections: Type.Array(AgentConnection, { description: 'Recent sessions, newest first.' }),
  createdAt: Timestamp,
  updatedAt: Timestamp,
});

/** How to run the agent with the credentials just issued. */
export const AgentSetup = Type.Object({
  env: Type.Record(Type.String(), Type.String()),
  envFile: Type.String({ description: 'The same variables as KEY=value lines.' }),
  command: Type.String(),
  systemdUnit: Type.String(),
});

/** Create and rotate: the token is shown this once. */
export const AgentGrant = Type.Object({
  agent: Agent,
  token: Type.String({ description: '`p2pag_…`, shown once.' }),
  setup: AgentSetup,
});

const AgentInput = {
  name: Type.String({ description: '1–128 characters, unique.' }),
  labels: Type.Optional(Type.Record(Type.String(), Type.String())),
  enabled: Type.Optional(Type.Boolean()),
};

const AgentReply = Type.Object({ agent: Agent });

export const listAgentsSchema = {
  summary: 'List agents',
  response: { 200: Type.Object({ agents: Type.Array(Agent) }), ...errorResponses },
};
export const createAgentSchema = {
  summary: 'Create an agent (its token is shown this once)',
  body: Type.Object(AgentInput, { additionalProperties: false }),
  response: { 201: AgentGrant, ...errorResponses },
};
export const getAgentSchema = {
  summary: 'One agent',
  params: IdParams,
  response: { 200: AgentReply, ...errorResponses },
};
export const updateAgentSchema = {
  summary: 'Rename, relabel, enable or disable an agent (disabling disconnects it)',
  params: IdParams,
  body: Patch(AgentInput),
  response: { 200: AgentReply, ...errorResponses },
};
export const rotateAgentSchema = {
  summary: 'Issue a new token (the old one stops working and a live agent is disconnected)',
  params: IdParams,
  response: { 200: AgentGrant, ...errorResponses },
};
export const deleteAgentSchema = {
  summary: 'Delete an agent (disconnects it)',
  params: IdParams,
  response: { 204: NoContent, ...errorResponses },
};
