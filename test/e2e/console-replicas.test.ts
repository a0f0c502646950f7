/**
 * The console of one replica of several: the overview lists every replica
 * with its uptime and agent count, and the agents page names the replica
 * holding each connected agent.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestAgent, startTestAgent } from '../helpers/agent.js';
import { buildConsoleOnce, screenshot, useConsoleBrowser } from '../helpers/browser.js';
import { startNats, type TestNats } from '../helpers/nats.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { type ReplicaSet, startReplicas } from '../helpers/replicas.js';

const consoleBrowser = useConsoleBrowser();
let postgres: TestPostgres;
let nats: TestNats;
let set: ReplicaSet;

beforeAll(async () => {
  await buildConsoleOnce();
  [postgres, nats] = await Promise.all([startPostgres(), startNats()]);
  set = await startReplicas(2, {
    databaseUrl: await postgres.createDatabase(),
    natsUrl: nats.url,
    config: { cluster: { heartbeatMs: 300, replicaTtlMs: 2000 } },
  });
}, 60_000);

afterAll(async () => {
  await set?.close();
  await Promise.all([nats?.close(), postgres?.close()]);
});

describe('console on a replica of several', () => {
  it('lists both replicas on the overview and the replica holding an agent on the agents page', async () => {
    const [a, b] = set.replicas;
    const session = await a!.setupAdmin();
    const credentials = await createTestAgent(a!, session, 'console-replica-agent');
    const agent = startTestAgent(b!, credentials);
    const tab = await consoleBrowser.open(a!.url, { session });
    try {
      await agent.connected();
      const { page } = tab;
      await page.goto('/');
      const replicas = page.getByTestId('replicas');
      await replicas.waitFor();
      await expect.poll(async () => replicas.locator('tbody tr').count(), { timeout: 10_000 }).toBe(2);
      const text = (await replicas.textContent()) ?? '';
      expect(text).toContain(a!.server.replicaId);
      expect(text).toContain(b!.server.replicaId);
      expect(text).toContain('(this one)');
      await screenshot(page, 'overview-replicas');
      await page.goto('/agents');
      await expect
        .poll(async () => page.getByTestId('agent-replica').textContent(), { timeout: 10_000 })
        .toContain(b!.server.replicaId);
      expect(tab.errors).toEqual([]);
    } finally {
      await tab.context.close();
      await agent.close();
    }
  });
});
