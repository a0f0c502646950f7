/** Schema of `GET /api/v1/agent/connect`, the hub's WebSocket endpoint (docs/protocol.md). */
import { Type } from 'typebox';
import { errorResponses } from './common.js';

export const agentConnectSchema = {
  summary: 'Agent connection (WebSocket upgrade; agent credentials, never an API token)',
  description:
    'Send `Authorization: Bearer p2pag_…` and `X-P2PStream-Agent-Id`. After the upgrade, each binary ' +
    'message is one protobuf envelope of the relay protocol (docs/protocol.md).',
  tags: ['agent'],
  security: [],
  headers: Type.Object({
    'x-p2pstream-agent-id': Type.Optional(Type.String({ description: "The agent's id." })),
    'x-p2pstream-agent-elsewhere': Type.Optional(
      Type.String({
        description:
          'Replica ids (comma-separated) the agent already has a connection to; a replica named here ' +
          'answers 409 CONFLICT instead of replacing that connection (docs/cluster.md).',
      }),
    ),
  }),
  response: {
    101: Type.Null({ description: 'Switching Protocols: the WebSocket is open.' }),
    ...errorResponses,
  },
};
