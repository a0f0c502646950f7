/**
 * A bare hub on its own HTTPS listener on loopback, with the options the full
 * server does not expose (short keepalives, small buffers), an in-memory
 * agent registry, and its certificate for clients.
 */
import type { AddressInfo } from 'node:net';
import Fastify, { type FastifyInstance } from 'fastify';
import { AgentService } from '../../src/domain/agent-service.js';
import { registerErrorHandling } from '../../src/http/errors.js';
import { Hub, type HubOptions } from '../../src/hub/hub.js';
import { createLogger } from '../../src/logger.js';
import { emptyDatabase } from '../../src/storage/schema.js';
import { MemoryStore } from '../../src/storage/store.js';
import { createCertificate } from '../../src/tls/certificates.js';

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
