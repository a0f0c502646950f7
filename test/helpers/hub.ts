/**
 * A bare hub on its own HTTPS listener on loopback, with the options the full
 * server does not expose (short keepalives, small buffers), an in-memory
 * agent registry, and its certificate for clients; and in-process agents on it.
 */
import type { AddressInfo } from 'node:net';
import Fastify, { type FastifyInstance } from 'fastify';
import { type RunningAgent, type StartAgentOptions, startAgent } from '../../agent/agent.js';
import { createAgentExecutor } from '../../agent/main.js';
import { AgentService } from '../../src/domain/agent-service.js';
import { registerErrorHandling } from '../../src/http/errors.js';
import { Hub, type HubOptions } from '../../src/hub/hub.js';
import { createLogger } from '../../src/logger.js';
import { emptyDatabase } from '../../src/storage/schema.js';
import { MemoryStore } from '../../src/storage/store.js';
import { createCertificate } from '../../src/tls/certificates.js';
import type { Cleanups } from './cleanup.js';

export interface BareHub {
  hub: Hub;
  agents: AgentService;
  app: FastifyInstance;
  port: number;
  /** `{url, ca}`: what upgradeAgent and agents need to reach it. */
  target: { url: string; ca: string };
  close(): Promise<void>;
}

export async function startBareHub(options: Partial<HubOptions> = {}): Promise<BareHub> {
  const cert = await createCertificate({ altNames: ['127.0.0.1'] });
  const agents = new AgentService({ store: new MemoryStore(emptyDatabase('hub-test')) });
  const hub = new Hub({ agents, logger: createLogger('silent'), ...options });
  const app: FastifyInstance = Fastify({
    https: { key: cert.key, cert: cert.cert },
  }) as unknown as FastifyInstance;
  registerErrorHandling(app);
  await app.register(hub.plugin);
  await app.listen({ host: '127.0.0.1', port: 0 });
  const port = (app.server.address() as AddressInfo).port;
  return {
    hub,
    agents,
    app,
    port,
    target: { url: `https://127.0.0.1:${port}`, ca: cert.cert },
    async close() {
      await hub.close();
      await app.close();
    },
  };
}

export interface HubAgentOptions extends Partial<Omit<StartAgentOptions, 'agentId' | 'agentToken'>> {
  /** Its name in the registry; a random one by default. */
  name?: string;
}

export interface HubAgent {
  id: string;
  token: string;
  agent: RunningAgent;
}

/**
 * Registers an agent in the bare hub's registry and starts an in-process
 * agent with its credentials: the hub's certificate trusted, fast retries
 * (20 ms → 100 ms), silent. `options` go over those. Given `cleanups`, the
 * agent is closed after the test.
 */
export async function startHubAgent(
  bare: BareHub,
  options: HubAgentOptions = {},
  cleanups?: Pick<Cleanups, 'push'>,
): Promise<HubAgent> {
  const { name = `agent-${Math.random().toString(36).slice(2)}`, ...agentOptions } = options;
  const created = await bare.agents.create({ name });
  const agent = startAgent({
    managementUrl: bare.target.url,
    agentId: created.agent.id,
    agentToken: created.token,
    ca: bare.target.ca,
    createExecutor: createAgentExecutor,
    backoff: { initialMs: 20, maxMs: 100 },
    logger: createLogger('silent'),
    ...agentOptions,
  });
  cleanups?.push(() => agent.close());
  return { id: created.agent.id, token: created.token, agent };
}
