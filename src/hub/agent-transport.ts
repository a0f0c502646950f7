/**
 * AgentTransport: the relay Transport that reaches targets through one agent.
 * It looks the agent's live session up at each call, so an environment keeps
 * one transport across reconnects; with no session the call fails at once
 * with AGENT_OFFLINE (AGENT_NOT_FOUND when the agent no longer exists).
 * Streams of a session that drops fail with AGENT_OFFLINE (see AgentSession).
 */
import { AppError } from '../errors.js';
import type {
  DiscoverOptions,
  DiscoverResult,
  RelayRequest,
  RelayResponse,
  Transport,
} from '../relay/transport.js';

export interface AgentTransportOptions {
  agentId: string;
  /** The live session's stream client, or null while the agent is not connected. */
  current(): Transport | null;
  /** Whether the agent still exists (to tell AGENT_NOT_FOUND from AGENT_OFFLINE). */
  exists(): boolean;
}

export class AgentTransport implements Transport {
  readonly agentId: string;
  readonly #current: () => Transport | null;
  readonly #exists: () => boolean;

  constructor(options: AgentTransportOptions) {
    this.agentId = options.agentId;
    this.#current = options.current;
    this.#exists = options.exists;
  }

  async discover(options: DiscoverOptions): Promise<DiscoverResult> {
    return this.#client().discover(options);
  }

  async request(request: RelayRequest): Promise<RelayResponse> {
    return this.#client().request(request);
  }

  #client(): Transport {
    const client = this.#current();
    if (client) return client;
    if (!this.#exists()) throw new AppError('AGENT_NOT_FOUND', 'the agent no longer exists');
    throw new AppError('AGENT_OFFLINE', 'the agent is not connected');
  }
}
