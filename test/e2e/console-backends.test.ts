/**
 * The Backends section of the Proxy page in a real browser: a backend of two
 * upstream members whose health turns healthy, a route pointed at it from
 * the route dialog, traffic spread over both (named in the traffic view),
 * and the refusal to delete it while in use said in words. Then on a remote environment (relayed): agent
 * members picked by name (connected agents first, offline ones marked) and
 * by labels, saved on that environment. Last, a real agent tunnel: the
 * traffic view names the agent that carried a request, the overview counts it.
 */
import type { Page } from 'playwright-core';
import { afterEach, describe, expect, it } from 'vitest';
import { createTestAgent, startTestAgent, type TestAgent } from '../helpers/agent.js';
import { type ConsolePage, screenshot, useConsoleBrowser } from '../helpers/browser.js';
import { freePort } from '../helpers/processes.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { eventually, startUpstream, type Upstream } from '../integration/proxy-helpers.js';

const consoleBrowser = useConsoleBrowser();
const servers: TestServer[] = [];
const upstreams: Upstream[] = [];
const agents: TestAgent[] = [];
let tab: ConsolePage | undefined;

afterEach(async () => {
  tab = undefined;
  for (const a of agents.splice(0)) await a.close();
  for (const s of servers.splice(0)) await s.close();
  for (const u of upstreams.splice(0)) await u.close();
});

async function server(): Promise<{ s: TestServer; cookie: string }> {
  const s = await startTestServer();
  servers.push(s);
  return { s, cookie: await s.setupAdmin() };
}

/** An upstream answering its name; `/health` answers 200. */
async function namedUpstream(name: string): Promise<Upstream> {
  const u = await startUpstream((req, res) => {
    res.end(req.url === '/health' ? 'ok' : `${name} ${req.url}`);
  });
  upstreams.push(u);
  return u;
}

function members(page: Page, backend: string) {
  return page
    .getByTestId('backends-table')
    .locator(`tr[data-backend="${backend}"] [data-testid="backend-member"]`);
}

describe('console: backends', () => {
  it('creates a backend of two upstreams, shows them turn healthy, routes to it and refuses deleting it in use', {
    timeout: 120_000,
  }, async () => {
    const { s, cookie } = await server();
    const a = await namedUpstream('a');
    const b = await namedUpstream('b');
    const port = await freePort();
    const listener = await s.request('POST', '/api/v1/proxy/listeners', {
      cookie,
      body: { name: 'public', bindAddress: '127.0.0.1', port },
    });
    expect(listener.status).toBe(201);

    tab = await consoleBrowser.open(s.url, { session: cookie });
    const { page } = tab;
    await page.goto('/proxy');
    await page.getByRole('button', { name: 'Add backend' }).click();
    const dialog = page.getByRole('dialog', { name: 'Add backend' });
    await dialog.getByLabel('Name').fill('web');
    const first = dialog.getByRole('group', { name: 'Member 1' });
    await first.getByLabel('URL').fill('ftp://nowhere');
    await dialog.getByRole('button', { name: 'Add member' }).click();
    const second = dialog.getByRole('group', { name: 'Member 2' });
    await second.getByLabel('URL').fill(b.url);
    await dialog.getByLabel('Interval (s)').fill('1');
    await dialog.getByLabel('Healthy after (checks)', { exact: true }).fill('1');
    await dialog.getByRole('button', { name: 'Save' }).click();
    // The server's error for member 1's URL shows at that member's field.
    await first
      .locator('.field.invalid')
      .filter({ has: page.getByLabel('URL') })
      .getByRole('alert')
      .waitFor();
    await first.getByLabel('URL').fill(a.url);
    await dialog.getByRole('button', { name: 'Save' }).click();
    await dialog.waitFor({ state: 'detached' });

    const table = page.getByTestId('backends-table');
    await table.getByRole('cell', { name: 'Round robin' }).waitFor();
    await table.getByText(a.url).waitFor();
    await table.getByText(b.url).waitFor();
    // Live health: both members turn healthy without reloading the page.
    await expect
      .poll(() => members(page, 'web').evaluateAll((els) => els.map((e) => e.getAttribute('data-state'))), {
        timeout: 10_000,
      })
      .toEqual(['healthy', 'healthy']);
    expect(await members(page, 'web').first().textContent()).toContain('0 active');

    // The route dialog offers the backend as a target.
    await page.getByRole('button', { name: 'Add route' }).click();
    const routeDialog = page.getByRole('dialog', { name: 'Add route' });
    await routeDialog.getByLabel('Backend', { exact: true }).check();
    await routeDialog.getByRole('combobox', { name: 'Backend' }).selectOption({ label: 'web (2 members)' });
    await routeDialog.getByRole('button', { name: 'Save' }).click();
    await routeDialog.waitFor({ state: 'detached' });
    await page.getByTestId('routes-table').getByText('→ backend web').waitFor();
    await table.getByText('/ on public').waitFor();

    const answers: string[] = [];
    for (let i = 0; i < 4; i++) {
      const res = await fetch(`http://127.0.0.1:${port}/x`);
      expect(res.status).toBe(200);
      answers.push(await res.text());
    }
    expect(answers.sort()).toEqual(['a /x', 'a /x', 'b /x', 'b /x']);
    await screenshot(page, 'proxy-backends');

    // The traffic view names the backend and the member that served each request.
    await page.getByRole('link', { name: 'Traffic', exact: true }).click();
    const traced = page.getByTestId('traffic-table').locator('tbody tr').filter({ hasText: '/x' });
    await expect.poll(() => traced.count()).toBe(4);
    // Names replace ids once the page's list of backends is reloaded (at most every few seconds).
    const named = () => traced.getByTestId('trace-backend').filter({ hasText: 'backend web' });
    await expect.poll(() => named().count(), { timeout: 10_000 }).toBe(4);
    const targets = await traced.getByTestId('trace-backend').allTextContents();
    expect(targets.filter((t) => t === `backend webmember ${a.url}`)).toHaveLength(2);
    expect(targets.filter((t) => t === `backend webmember ${b.url}`)).toHaveLength(2);
    expect(await traced.getByTestId('trace-agent').count()).toBe(0);
    // The overview counts them, none through an agent.
    await page.getByRole('link', { name: 'Overview' }).click();
    const tunnelled = page.locator('.stat').filter({ hasText: 'Through agents, last 5 min' });
    await tunnelled.waitFor();
    expect(await tunnelled.locator('.stat-value').textContent()).toBe('0');
    await page.getByRole('link', { name: 'Proxy' }).click();

    // Deleting it while the route targets it: refused, said in words, nothing deleted.
    await table.getByRole('button', { name: 'Delete web' }).click();
    const confirm = page.getByTestId('confirm-dialog');
    await confirm.getByRole('button', { name: 'Delete' }).click();
    const alert = confirm.getByRole('alert');
    await alert.waitFor();
    expect(await alert.textContent()).toBe(
      'web is still in use: the route / on public sends traffic to it. Point it at another target first, then delete the backend. (CONFLICT)',
    );
    await screenshot(page, 'proxy-backend-in-use');
    await confirm.getByRole('button', { name: 'Cancel' }).click();
    const stored = await s.request('GET', '/api/v1/proxy/backends', { cookie });
    expect(stored.json.backends.map((x: { name: string }) => x.name)).toEqual(['web']);
    expect((await fetch(`http://127.0.0.1:${port}/y`)).status).toBe(200);
    expect(tab.errors).toEqual([]);
  });

  it('edits agent members of a remote environment: by name, connected agents first, and by labels', {
    timeout: 120_000,
  }, async () => {
    const control = await server();
    const remote = await server();
    const token = await remote.s.createToken(remote.cookie);
    // Two agents on the remote instance: one connected, one never started.
    const online = await createTestAgent(remote.s, remote.cookie, 'zz-online');
    await createTestAgent(remote.s, remote.cookie, 'aa-offline');
    for (const id of [online.id]) {
      const labelled = await remote.s.request('PATCH', `/api/v1/agents/${id}`, {
        cookie: remote.cookie,
        body: { labels: { site: 'home' } },
      });
      expect(labelled.status).toBe(200);
    }
    const running = startTestAgent(remote.s, online);
    agents.push(running);
    await running.connected();

    const created = await control.s.request('POST', '/api/v1/environments', {
      cookie: control.cookie,
      body: { name: 'remote', url: remote.s.url, transport: 'direct', accessToken: token },
    });
    expect(created.status).toBe(201);
    const envId = created.json.environment.id as string;
    const discovered = await control.s.request('POST', `/api/v1/environments/${envId}/discover`, {
      cookie: control.cookie,
    });
    const trusted = await control.s.request('POST', `/api/v1/environments/${envId}/trust`, {
      cookie: control.cookie,
      body: { fingerprintSha256: discovered.json.certificate.fingerprintSha256 },
    });
    expect(trusted.status).toBe(200);

    tab = await consoleBrowser.open(control.s.url, { session: control.cookie });
    const { page } = tab;
    await page.goto('/proxy');
    await page.getByLabel('Environment', { exact: true }).selectOption(envId);
    await page.getByRole('button', { name: 'Add backend' }).click();
    const dialog = page.getByRole('dialog', { name: 'Add backend' });
    await dialog.getByLabel('Name').fill('home');
    await dialog.getByLabel('Algorithm').selectOption('consistent_hash');
    await dialog.getByLabel('Hash key').selectOption('header');
    await dialog.getByLabel('Header name').fill('X-Session');
    const first = dialog.getByRole('group', { name: 'Member 1' });
    await first.getByLabel('Kind').selectOption('agent');
    // The remote's agents, connected first, the offline one marked.
    const picker = first.getByLabel('Agent', { exact: true });
    expect(
      await picker.locator('optgroup').evaluateAll((els) => els.map((e) => e.getAttribute('label'))),
    ).toEqual(['Connected', 'Offline']);
    expect((await picker.locator('option').allTextContents()).map((t) => t.trim())).toEqual([
      'zz-online',
      'aa-offline (offline)',
    ]);
    expect(await picker.inputValue()).toBe(online.id);
    await first.getByLabel("URL in the agent's network").fill('http://127.0.0.1:3000');

    await dialog.getByRole('button', { name: 'Add member' }).click();
    const second = dialog.getByRole('group', { name: 'Member 2' });
    await second.getByLabel('Kind').selectOption('agent');
    await second.getByLabel('Pick the agent').selectOption('labels');
    await second.getByLabel('Agent labels').fill('site=home');
    await second.getByText('Matches zz-online.').waitFor();
    await second.getByLabel("URL in the agent's network").fill('http://127.0.0.1:3001');
    await second.getByLabel('Agent labels').fill('site');
    await dialog.getByRole('button', { name: 'Save' }).click();
    // Labels that are not key=value: an error at that member's field, nothing sent.
    await second
      .locator('.field.invalid')
      .filter({ has: page.getByLabel('Agent labels') })
      .getByRole('alert')
      .waitFor();
    await second.getByLabel('Agent labels').fill('site=home');
    await dialog.getByRole('button', { name: 'Save' }).click();
    await dialog.waitFor({ state: 'detached' });

    const row = page.getByTestId('backends-table').locator('tr[data-backend="home"]');
    await row.getByText('by header:x-session').waitFor();
    await row.getByText('agent zz-online').waitFor();
    await row.getByText('(1 connected)').waitFor();
    await expect.poll(() => members(page, 'home').count()).toBe(2);
    await expect
      .poll(() => members(page, 'home').evaluateAll((els) => els.map((e) => e.getAttribute('data-state'))))
      .not.toContain('loading');
    await screenshot(page, 'proxy-backends-agents');

    // Saved on the remote instance, not on the control plane.
    const onRemote = await remote.s.request('GET', '/api/v1/proxy/backends', { cookie: remote.cookie });
    expect(onRemote.json.backends).toHaveLength(1);
    const saved = onRemote.json.backends[0];
    expect(saved).toMatchObject({ name: 'home', algorithm: 'consistent_hash', hashKey: 'header:x-session' });
    expect(saved.members).toMatchObject([
      { type: 'agent', agentId: online.id, agentLabels: null, upstreamUrl: 'http://127.0.0.1:3000' },
      { type: 'agent', agentId: null, agentLabels: { site: 'home' }, upstreamUrl: 'http://127.0.0.1:3001' },
    ]);
    const onControl = await control.s.request('GET', '/api/v1/proxy/backends', { cookie: control.cookie });
    expect(onControl.json.backends).toEqual([]);

    // Editing keeps the members (their ids) and marks one draining.
    await row.getByRole('button', { name: 'Edit home' }).click();
    const edit = page.getByRole('dialog', { name: 'Edit backend home' });
    expect(await edit.getByRole('group', { name: 'Member 2' }).getByLabel('Agent labels').inputValue()).toBe(
      'site=home',
    );
    await edit
      .getByRole('group', { name: 'Member 1' })
      .getByLabel(/Draining/)
      .check();
    await edit.getByRole('button', { name: 'Save' }).click();
    await edit.waitFor({ state: 'detached' });
    await expect
      .poll(async () => {
        const after = await remote.s.request('GET', '/api/v1/proxy/backends', { cookie: remote.cookie });
        return after.json.backends[0].members.map((m: { id: string; draining: boolean }) => [
          m.id,
          m.draining,
        ]);
      })
      .toEqual([
        [saved.members[0].id, true],
        [saved.members[1].id, false],
      ]);
    await row.getByText('draining').waitFor();
    expect(tab.errors).toEqual([]);
  });
  it('names the agent that carried a request in the traffic view, and the overview counts it', {
    timeout: 120_000,
  }, async () => {
    const { s, cookie } = await server();
    const app = await namedUpstream('private');
    const created = await createTestAgent(s, cookie, 'home-lab');
    const running = startTestAgent(s, created, { allowedTargets: [`127.0.0.1:${app.port}`] });
    agents.push(running);
    await running.connected();
    await eventually(() => s.server.hub.tunnelAgents().some((a) => a.agentId === created.id));
    const backend = await s.request('POST', '/api/v1/proxy/backends', {
      cookie,
      body: { name: 'home', members: [{ type: 'agent', agentId: created.id, upstreamUrl: app.url }] },
    });
    expect(backend.status).toBe(201);
    const port = await freePort();
    const listener = await s.request('POST', '/api/v1/proxy/listeners', {
      cookie,
      body: { name: 'public', bindAddress: '127.0.0.1', port },
    });
    const route = await s.request('POST', '/api/v1/proxy/routes', {
      cookie,
      body: {
        listenerId: listener.json.listener.id,
        pathPrefix: '/',
        target: { type: 'backend', backendId: backend.json.backend.id },
      },
    });
    expect(route.status).toBe(201);

    tab = await consoleBrowser.open(s.url, { session: cookie });
    const { page } = tab;
    await page.goto('/traffic');
    await page.getByTestId('stream-status').getByText('Live').waitFor();
    const res = await fetch(`http://127.0.0.1:${port}/through`);
    expect(await res.text()).toBe('private /through');
    const row = page.getByTestId('traffic-table').locator('tbody tr').filter({ hasText: '/through' });
    await row.getByTestId('trace-agent').getByText('through agent home-lab').waitFor();
    expect(await row.getByTestId('trace-backend').textContent()).toBe(
      `backend homemember ${app.url}through agent home-lab`,
    );
    await screenshot(page, 'traffic-agent');

    await page.getByRole('link', { name: 'Overview' }).click();
    const tunnelled = page.locator('.stat').filter({ hasText: 'Through agents, last 5 min' });
    await expect.poll(() => tunnelled.locator('.stat-value').textContent()).toBe('1');

    // The member reads healthy once a request went through the agent.
    await page.getByRole('link', { name: 'Proxy' }).click();
    await expect
      .poll(() => members(page, 'home').evaluateAll((els) => els.map((e) => e.getAttribute('data-state'))))
      .toEqual(['healthy']);
    await page.getByTestId('backends-table').getByText('agent home-lab').waitFor();
    expect(tab.errors).toEqual([]);
  });
});
