/**
 * The agent's WebSocket to the control plane's hub, opened the one way both
 * the daemon and `p2pstream agent check` use: the agent's credentials in the
 * upgrade headers, the verified TLS options of control-plane-tls.ts, and a
 * connection handed to the HTTP upgrade only once its TLS handshake passed
 * verification (whatever NODE_TLS_REJECT_UNAUTHORIZED says), so the token is
 * never written to an unverified peer.
 */
import { isIP, type Socket } from 'node:net';
import type { ConnectionOptions } from 'node:tls';
import WebSocket from 'ws';
import { connectVerified } from '../src/relay/pinned-tls.js';
import { AGENT_CONNECT_PATH, AGENT_ELSEWHERE_HEADER, AGENT_ID_HEADER } from '../src/relay/protocol.js';
import { VERSION } from '../src/version.js';
import type { ControlPlaneTlsOptions } from './control-plane-tls.js';

/** Options of {@link createControlPlaneSocket}. */
export interface ControlPlaneSocketOptions {
  /** `https://` base URL of the control plane. */
  managementUrl: string;
  agentId: string;
  agentToken: string;
  /** From controlPlaneTlsOptions(). */
  tls: ControlPlaneTlsOptions;
  /** Bounds the TCP connect, the TLS handshake and the HTTP upgrade. */
  handshakeTimeoutMs: number;
  /** Largest frame accepted from the control plane. */
  maxFrameBytes: number;
  /**
   * Replica ids the agent's other connections are on (`X-P2PStream-Agent-Elsewhere`):
   * those replicas refuse this one (409) rather than replace them (docs/cluster.md).
   */
  elsewhere?: string[];
}

/** Starts the upgrade to `MANAGEMENT_URL` + /api/v1/agent/connect; the caller listens for its events. */
export function createControlPlaneSocket(options: ControlPlaneSocketOptions): WebSocket {
  const { handshakeTimeoutMs, tls } = options;
  return new WebSocket(`${options.managementUrl.replace(/\/+$/, '')}${AGENT_CONNECT_PATH}`, {
    headers: {
      authorization: `Bearer ${options.agentToken}`,
      [AGENT_ID_HEADER]: options.agentId,
      'user-agent': `p2pstream-agent/${VERSION}`,
      ...(options.elsewhere?.length ? { [AGENT_ELSEWHERE_HEADER]: options.elsewhere.join(',') } : {}),
    },
    ca: tls.ca,
    ...(tls.checkServerIdentity
      ? { checkServerIdentity: tls.checkServerIdentity as unknown as () => boolean }
      : {}),
    maxPayload: options.maxFrameBytes,
    handshakeTimeout: handshakeTimeoutMs,
    perMessageDeflate: false,
    followRedirects: false,
    // Verified whatever NODE_TLS_REJECT_UNAUTHORIZED says; the upgrade (and the token) is
    // written only on a socket that passed the handshake check.
    createConnection: ((
      connectOptions: ConnectionOptions & { path?: string },
      callback: (err: Error | null, socket?: Socket) => void,
    ) => {
      connectVerified(
        {
          ...connectOptions,
          // ws hands over its request options: `path` is the URL path here, not an IPC socket.
          path: undefined,
          servername:
            connectOptions.servername ??
            (isIP(connectOptions.host ?? '') === 0 ? (connectOptions.host ?? '') : ''),
          handshakeTimeoutMs,
        },
        callback,
      );
      // Nothing returned: the request waits for the callback, so for the verified socket.
      return undefined;
    }) as unknown as AgentSocketConnect,
    // A zero mask: frames go out without the per-byte masking pass (and the hub skips unmasking).
    // Masking guards plaintext intermediaries against cache poisoning; this link is always TLS.
    generateMask: zeroMask,
  });
}

type AgentSocketConnect = NonNullable<WebSocket.ClientOptions['createConnection']>;

function zeroMask(mask: Buffer): void {
  mask.fill(0);
}
