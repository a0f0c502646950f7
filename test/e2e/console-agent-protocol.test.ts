/**
 * The agent link's protocol state in a real browser: an agent whose
 * protocol versions do not meet the control plane's shows the refusal on
 * its row, and an agent whose streams leaked shows the count on its row and
 * in its recent sessions (the API's agent details carry the same).
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { PROTOCOL_VERSION } from '../../src/relay/envelope.js';
import {
  agentHeaders,
  createTestAgent,
  type RawAgent,
  startTestAgent,
  type TestAgent,
  upgradeAgent,
} from '../helpers/agent.js';
import { type ConsolePage, screenshot, useConsoleBrowser } from '../helpers/browser.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { eventually } from '../helpers/wait.js';

const consoleBrowser = useConsoleBrowser();
let server: TestServer;
let cookie: string;
let tab: ConsolePage | null = null;
let agent: TestAgent | null = null;
let raw: RawAgent | null = null;

beforeEach(async () => {
  server = await startTestServer();
  cookie = await server.setupAdmin();
});

afterEach(async () => {
  await agent?.close();
  await raw?.close();
  tab = null;
  agent = null;
  raw = null;
  await server?.close();
});

async function agentView(id: string) {
  const res = await server.request('GET', `/api/v1/agents/${id}`, { cookie });
  expect(res.status).toBe(200);
  return res.json.agent;
}

describe('console: the agent link’s protocol on the Agents page', () => {
  it('shows the refusal of an agent that speaks other protocol versions on its row', async () => {
    const old = await createTestAgent(server, cookie, 'edge-future');
    await createTestAgent(server, cookie, 'edge-current');
    // An agent speaking only v3–v4, against this control plane's v1–v1.
    agent = startTestAgent(server, old, { protocolVersions: { min: 3, max: 4 } });
    await agent.waitFor((e) => e.type === 'failed' && e.code === 'PROTOCOL_ERROR');
    await eventually(async () => {
      const view = await agentView(old.id);
      expect(view.protocol?.refusal).toContain('the agent speaks v3–v4, the control plane v1–v1');
    });

    tab = await consoleBrowser.open(server.url, { session: cookie });
    const { page } = tab;
    await page.goto('/');
    await page.getByRole('link', { name: 'Agents' }).click();
    const table = page.getByTestId('agents-table');
    const row = table.getByRole('row', { name: /edge-future/ });
    const refusal = row.getByTestId('agent-protocol-refusal');
    await refusal.waitFor();
    expect((await refusal.textContent())?.trim()).toBe('speaks v3–v4, control plane v1–v1');
    expect(await refusal.getAttribute('title')).toContain('the agent speaks v3–v4, the control plane v1–v1');
    expect(await row.textContent()).toContain('offline');
    // An agent that never connected has no protocol line and no refusal.
    const other = table.getByRole('row', { name: /edge-current/ });
    await other.waitFor();
    expect(await other.getByTestId('agent-protocol-refusal').count()).toBe(0);
    await screenshot(page, 'agents-protocol-refusal');
    expect(tab.errors).toEqual([]);
  });

  it('shows leaked streams on the agent’s row and in its sessions, as the API details do', async () => {
    const leaky = await createTestAgent(server, cookie, 'edge-leaky');
    const upgraded = await upgradeAgent(server, agentHeaders(leaky.id, leaky.token), { answerPings: true });
    if (!upgraded.ok) throw new Error(`refused: ${upgraded.status}`);
    raw = upgraded.socket;
    const socket = raw;
    socket.send({
      streamId: 0,
      payload: {
        case: 'hello',
        value: { protocolVersion: PROTOCOL_VERSION, agentVersion: 'leaky-1', capabilities: ['reconcile'] },
      },
    });
    await eventually(() => socket.received.some((e) => e.payload.case === 'welcome'));
    // The agent's reconciliation list reports two streams it closed as leaked.
    socket.send({ streamId: 0, payload: { case: 'streamSet', value: { streamIds: [], leakedTotal: 2 } } });
    await eventually(async () => {
      const view = await agentView(leaky.id);
      expect(view.leakedStreams).toBe(2);
      expect(view.connections.at(-1)?.leakedStreams).toBe(2);
    });

    tab = await consoleBrowser.open(server.url, { session: cookie });
    const { page } = tab;
    await page.goto('/');
    await page.getByRole('link', { name: 'Agents' }).click();
    const row = page.getByTestId('agents-table').getByRole('row', { name: /edge-leaky/ });
    await row.getByText('2 leaked streams').waitFor();
    expect(await row.textContent()).toContain('connected');
    await row.getByText(/1 recent/).click();
    const session = row.locator('ul.sessions li').first();
    await session.waitFor();
    expect(await session.textContent()).toMatch(/→ open · .* · vleaky-1 · 2 leaked$/);
    await screenshot(page, 'agents-leaked-streams');
    expect(tab.errors).toEqual([]);
  });
});
