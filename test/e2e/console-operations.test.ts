/**
 * The operational pages in a real browser against a real instance: proxy
 * listeners and routes, live traffic (with a reconnect after the instance
 * restarts), the overview, and the agent registry with its setup snippet.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Page } from 'playwright-core';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type ConsolePage, screenshot, useConsoleBrowser } from '../helpers/browser.js';
import { freePort } from '../helpers/processes.js';
import { startTestServer, TEST_PASSWORD, TEST_USERNAME, type TestServer } from '../helpers/server.js';

const consoleBrowser = useConsoleBrowser();
let server: TestServer;
let cookie: string;
let dataDir: string;
let tab: ConsolePage;

beforeEach(async () => {
  dataDir = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-console-'));
  server = await startTestServer({ dataDir });
  cookie = await server.setupAdmin();
  tab = await consoleBrowser.open(server.url);
  await logIn(tab.page);
});

afterEach(async () => {
  await server?.close();
  await rm(dataDir, { recursive: true, force: true });
});

async function logIn(page: Page, next = '/') {
  await page.goto(`/login?next=${encodeURIComponent(next)}`);
  await page.getByLabel('Username').fill(TEST_USERNAME);
  await page.getByLabel('Password').fill(TEST_PASSWORD);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByTestId('current-user').waitFor();
}

/** A listener on 127.0.0.1 with one static route, through the API. */
async function proxyWithRoute(): Promise<number> {
  const port = await freePort();
  const listener = await server.request('POST', '/api/v1/proxy/listeners', {
    cookie,
    body: { name: 'public', bindAddress: '127.0.0.1', port },
  });
  expect(listener.status).toBe(201);
  const route = await server.request('POST', '/api/v1/proxy/routes', {
    cookie,
    body: {
      listenerId: listener.json.listener.id,
      pathPrefix: '/',
      target: { type: 'static', status: 200, contentType: 'text/plain', body: 'hello' },
    },
  });
  expect(route.status).toBe(201);
  return port;
}

async function hit(port: number, pathname: string): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${port}${pathname}`);
  await res.arrayBuffer();
  return res.status;
}

describe('console: operations on Local', () => {
  it('creates, edits and deletes proxy listeners and routes', async () => {
    const { page } = tab;
    const port = await freePort();
    await page.getByRole('link', { name: 'Proxy' }).click();
    await page.getByRole('button', { name: 'Add listener' }).click();
    let dialog = page.getByRole('dialog', { name: 'Add listener' });
    await dialog.getByLabel('Name').fill('public');
    await dialog.getByLabel('Bind address').fill('not-an-address');
    await dialog.getByLabel('Port').fill(String(port));
    await dialog.getByRole('button', { name: 'Save' }).click();
    // The server's error lands at the field.
    await dialog
      .locator('.field.invalid')
      .filter({ has: page.getByLabel('Bind address') })
      .getByRole('alert')
      .waitFor();
    await dialog.getByLabel('Bind address').fill('127.0.0.1');
    await dialog.getByRole('button', { name: 'Save' }).click();
    await dialog.waitFor({ state: 'detached' });
    const listeners = page.getByTestId('listeners-table');
    await listeners.getByText(`127.0.0.1:${port}`).waitFor();
    await listeners.getByText('running').waitFor();

    await page.getByRole('button', { name: 'Add route' }).click();
    dialog = page.getByRole('dialog', { name: 'Add route' });
    await dialog.getByLabel('Path prefix').fill('/hello');
    await dialog.getByLabel('Static response').check();
    await dialog.getByLabel('Body').fill('hi there');
    await dialog.getByRole('button', { name: 'Save' }).click();
    await dialog.waitFor({ state: 'detached' });
    const routes = page.getByTestId('routes-table');
    await routes.getByRole('cell', { name: '/hello', exact: true }).waitFor();
    const served = await fetch(`http://127.0.0.1:${port}/hello`);
    expect(await served.text()).toBe('hi there');

    await routes.getByRole('button', { name: 'Edit route /hello' }).click();
    dialog = page.getByRole('dialog', { name: 'Edit route' });
    await dialog.getByLabel('Body').fill('changed');
    await dialog.getByRole('button', { name: 'Save' }).click();
    await dialog.waitFor({ state: 'detached' });
    expect(await (await fetch(`http://127.0.0.1:${port}/hello`)).text()).toBe('changed');
    await screenshot(page, 'proxy');

    await routes.getByRole('button', { name: 'Delete route /hello' }).click();
    await page.getByTestId('confirm-dialog').getByRole('button', { name: 'Delete' }).click();
    await routes.waitFor({ state: 'detached' });
    await listeners.getByRole('button', { name: 'Delete public' }).click();
    await page.getByTestId('confirm-dialog').getByRole('button', { name: 'Delete' }).click();
    await listeners.waitFor({ state: 'detached' });
    await expect(fetch(`http://127.0.0.1:${port}/hello`)).rejects.toThrow();
    expect(tab.errors).toEqual([]);
  });

  it('shows live traffic newest first, filters and pauses, and reconnects after the instance restarts', async () => {
    const port = await proxyWithRoute();
    const { page } = tab;
    await page.getByRole('link', { name: 'Traffic', exact: true }).click();
    await page.getByTestId('stream-status').getByText('Live').waitFor();
    const table = page.getByTestId('traffic-table');

    expect(await hit(port, '/first')).toBe(200);
    await table.getByText('/first').waitFor({ timeout: 2000 });
    expect(await hit(port, '/second')).toBe(200);
    await table.getByText('/second').waitFor({ timeout: 2000 });
    const paths = await table.locator('tbody tr td:nth-child(4)').allTextContents();
    expect(paths.slice(0, 2)).toEqual(['/second', '/first']);

    await page.getByLabel('Path contains').fill('first');
    await expect.poll(() => table.locator('tbody tr').count()).toBe(1);
    await page.getByLabel('Path contains').fill('');
    await page.getByLabel('Status').selectOption('4xx');
    await table.getByText('No request matches the filters.').waitFor();
    await page.getByLabel('Status').selectOption('all');

    // Paused: new events wait until resumed.
    await page.getByRole('button', { name: 'Pause' }).click();
    expect(await hit(port, '/while-paused')).toBe(200);
    await page.getByRole('button', { name: 'Resume (1 new)' }).waitFor({ timeout: 2000 });
    expect(await table.getByText('/while-paused').count()).toBe(0);
    await page.getByRole('button', { name: /Resume/ }).click();
    await table.getByText('/while-paused').waitFor();

    // Tracing settings are the instance's.
    await page.getByLabel('Level').selectOption('detailed');
    await expect
      .poll(async () => (await server.request('GET', '/api/v1/traffic/settings', { cookie })).json.level)
      .toBe('detailed');
    // The sparkline counts the requests of the last minute.
    await page.getByText(/peak [1-9]\d*\/s/).waitFor({ timeout: 3000 });
    expect(await page.locator('svg.sparkline polyline').count()).toBe(1);
    await screenshot(page, 'traffic');

    // The instance restarts on the same address: the stream comes back by itself.
    const managementPort = server.server.port;
    await server.close();
    await page
      .getByTestId('stream-status')
      .getByText(/Reconnecting/)
      .waitFor();
    server = await startTestServer({ dataDir, env: { MANAGEMENT_PORT: String(managementPort) } });
    await page.getByTestId('stream-status').getByText('Live').waitFor({ timeout: 15_000 });
    expect(await hit(port, '/after-restart')).toBe(200);
    await table.getByText('/after-restart').waitFor({ timeout: 2000 });
    expect(await table.getByText('/first').count()).toBe(1);
  });

  it('shows the overview numbers with a chart', async () => {
    const port = await proxyWithRoute();
    for (let i = 0; i < 3; i += 1) expect(await hit(port, `/n${i}`)).toBe(200);
    const { page } = tab;
    await page.reload();
    const cards = page.getByTestId('overview-cards');
    const requests = cards.locator('.stat').filter({ hasText: 'Requests, last 5 min' });
    await expect.poll(() => requests.locator('.stat-value').textContent()).toBe('3');
    expect(
      await cards
        .locator('.stat')
        .filter({ hasText: 'Listeners running' })
        .locator('.stat-value')
        .textContent(),
    ).toBe('1 / 1');
    expect(await page.locator('svg.barchart rect').count()).toBe(4);
    await screenshot(page, 'overview');
  });

  it('creates an agent with its setup shown once, rotates, disables and deletes it', async () => {
    const { page } = tab;
    await page.getByRole('link', { name: 'Agents' }).click();
    await page.getByRole('button', { name: 'Create agent' }).click();
    const dialog = page.getByRole('dialog', { name: 'Create agent' });
    await dialog.getByLabel('Name').fill('edge-1');
    await dialog.getByLabel('Labels').fill('site=lab');
    await dialog.getByRole('button', { name: 'Create' }).click();
    const setup = page.getByTestId('agent-setup');
    await setup.getByText('you will not see the token again').waitFor();
    const envFile = (await setup.locator('pre').first().textContent()) ?? '';
    const token = /AGENT_TOKEN=(p2pag_\S+)/.exec(envFile)?.[1];
    expect(token).toBeDefined();
    expect(envFile).toContain(`MANAGEMENT_URL=${server.url}`);
    expect(await setup.textContent()).toContain('[Service]');
    await screenshot(page, 'agent-setup');
    await setup.getByRole('button', { name: 'Done' }).click();

    const table = page.getByTestId('agents-table');
    const row = table.getByRole('row', { name: /edge-1/ });
    await row.getByText('offline').waitFor();
    await row.getByText('site=lab').waitFor();
    expect(await page.content()).not.toContain(token!);
    await screenshot(page, 'agents');

    await row.getByRole('button', { name: 'Rotate token of edge-1' }).click();
    await page.getByTestId('confirm-dialog').getByRole('button', { name: 'Rotate token' }).click();
    const rotated = page.getByTestId('agent-setup');
    await rotated.getByText('you will not see the token again').waitFor();
    const newToken = /AGENT_TOKEN=(p2pag_\S+)/.exec(
      (await rotated.locator('pre').first().textContent()) ?? '',
    )?.[1];
    expect(newToken).toBeDefined();
    expect(newToken).not.toBe(token);
    await rotated.getByRole('button', { name: 'Done' }).click();

    await row.getByRole('button', { name: 'Disable edge-1' }).click();
    await row.getByText('disabled').waitFor();
    const listed = await server.request('GET', '/api/v1/agents', { cookie });
    expect(listed.json.agents[0].enabled).toBe(false);

    await row.getByRole('button', { name: 'Delete edge-1' }).click();
    await page.getByTestId('confirm-dialog').getByRole('button', { name: 'Delete agent' }).click();
    await table.waitFor({ state: 'detached' });
    expect((await server.request('GET', '/api/v1/agents', { cookie })).json.agents).toEqual([]);
    expect(tab.errors).toEqual([]);
  });
});
