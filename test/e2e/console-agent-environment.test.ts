/**
 * An environment reached through an agent, in a real browser: two real
 * instances and a real agent daemon connected to the control plane's hub.
 * Register it with the agent picker, discover and trust through the agent,
 * operate on the remote, watch its traffic; when the agent goes offline the
 * environment can no longer be selected.
 */
import type { Page } from 'playwright-core';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { describeCertificate } from '../../src/tls/certificates.js';
import { createTestAgent, startTestAgent, type TestAgent } from '../helpers/agent.js';
import { type ConsolePage, screenshot, useConsoleBrowser } from '../helpers/browser.js';
import { freePort } from '../helpers/processes.js';
import { startTestServer, TEST_PASSWORD, TEST_USERNAME, type TestServer } from '../helpers/server.js';

const consoleBrowser = useConsoleBrowser();
let control: TestServer;
let remote: TestServer;
let agent: TestAgent | null;
let remoteCookie: string;
let controlCookie: string;
let remoteAccessToken: string;
let tab: ConsolePage;

beforeEach(async () => {
  [control, remote] = await Promise.all([startTestServer(), startTestServer()]);
  controlCookie = await control.setupAdmin();
  remoteCookie = await remote.setupAdmin();
  remoteAccessToken = await remote.createToken(remoteCookie, 'control-plane-access');
  await remote.createToken(remoteCookie, 'only-on-remote');
  agent = startTestAgent(control, await createTestAgent(control, controlCookie, 'edge'));
  await agent.connected();
  tab = await consoleBrowser.open(control.url);
  await logIn(tab.page);
});

afterEach(async () => {
  await agent?.close();
  await Promise.all([control?.close(), remote?.close()]);
});

async function logIn(page: Page) {
  await page.goto('/login');
  await page.getByLabel('Username').fill(TEST_USERNAME);
  await page.getByLabel('Password').fill(TEST_PASSWORD);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByTestId('current-user').waitFor();
}

function switcher(page: Page) {
  return page.getByLabel('Environment', { exact: true });
}

describe('console: an environment through an agent', () => {
  it('lists connected agents first in the environment form and marks offline ones', async () => {
    const { page } = tab;
    // Names sort before "edge": only their state puts them after it.
    await createTestAgent(control, controlCookie, 'aardvark');
    const disabled = await createTestAgent(control, controlCookie, 'beaver');
    const patched = await control.request('PATCH', `/api/v1/agents/${disabled.id}`, {
      cookie: controlCookie,
      body: { enabled: false },
    });
    expect(patched.status).toBe(200);
    await page.getByRole('link', { name: 'Environments' }).click();
    await page.getByRole('button', { name: 'Add environment' }).click();
    const dialog = page.getByTestId('environment-dialog');
    await dialog.getByLabel('Through an agent').check();
    const picker = dialog.getByLabel('Agent', { exact: true });
    // Opening the form refreshes the agent list.
    await picker.locator('option', { hasText: 'beaver' }).waitFor({ state: 'attached' });
    expect(await picker.locator('option').allTextContents()).toEqual([
      'edge',
      'aardvark (offline)',
      'beaver (disabled)',
    ]);
    expect(await picker.locator('optgroup').evaluateAll((groups) => groups.map((g) => g.label))).toEqual([
      'Connected',
      'Offline',
    ]);
    expect(await picker.locator('option:checked').textContent()).toBe('edge');
    await screenshot(page, 'environment-form-agents');

    // The agent goes away: the next form lists it offline, with nothing connected above it.
    await dialog.getByRole('button', { name: 'Cancel' }).click();
    await agent?.close();
    agent = null;
    await page.getByRole('button', { name: 'Add environment' }).click();
    await dialog.getByLabel('Through an agent').check();
    await picker.locator('option', { hasText: 'edge (offline)' }).waitFor({ state: 'attached' });
    expect(await picker.locator('option').allTextContents()).toEqual([
      'aardvark (offline)',
      'beaver (disabled)',
      'edge (offline)',
    ]);
    expect(await picker.locator('optgroup').evaluateAll((groups) => groups.map((g) => g.label))).toEqual([
      'Offline',
    ]);
  });

  it('registers, trusts and operates on a remote through the agent, then blocks it when the agent goes offline', async () => {
    const { page } = tab;
    await page.getByRole('link', { name: 'Environments' }).click();
    await page.getByRole('button', { name: 'Add environment' }).click();
    const dialog = page.getByTestId('environment-dialog');
    await dialog.getByLabel('Name').fill('behind-agent');
    await dialog.getByLabel('Management URL').fill(remote.url);
    await dialog.getByLabel('Through an agent').check();
    const picker = dialog.getByLabel('Agent', { exact: true });
    expect(await picker.locator('option:checked').textContent()).toBe('edge');
    await dialog.getByLabel('Access token').fill(remoteAccessToken);
    await dialog.getByRole('button', { name: 'Add environment' }).click();
    await dialog.waitFor({ state: 'detached' });

    const row = page.locator('tr[data-environment="behind-agent"]');
    await row.getByText('edge').waitFor();
    await row.getByText('connected').waitFor();
    await row.getByRole('button', { name: 'Discover behind-agent' }).click();
    const trust = page.getByTestId('trust-dialog');
    const fingerprint = describeCertificate(remote.server.certificate).fingerprintSha256;
    expect((await trust.getByTestId('new-certificate').locator('.fingerprint').textContent())?.trim()).toBe(
      fingerprint,
    );
    await trust.getByRole('button', { name: 'Trust certificate' }).click();
    await row.getByText('TRUSTED', { exact: true }).waitFor();
    await screenshot(page, 'environments-agent');

    // Operate on the remote through the agent.
    await switcher(page).selectOption({ label: 'behind-agent · TRUSTED · via edge' });
    await page.getByRole('link', { name: 'API Tokens' }).click();
    await page
      .getByTestId('tokens-table')
      .getByRole('cell', { name: 'only-on-remote', exact: true })
      .waitFor();

    // Its live traffic arrives through the agent too.
    const port = await freePort();
    const listener = await remote.request('POST', '/api/v1/proxy/listeners', {
      cookie: remoteCookie,
      body: { name: 'remote-public', bindAddress: '127.0.0.1', port },
    });
    expect(listener.status).toBe(201);
    const route = await remote.request('POST', '/api/v1/proxy/routes', {
      cookie: remoteCookie,
      body: {
        listenerId: listener.json.listener.id,
        target: { type: 'static', status: 200, body: 'remote' },
      },
    });
    expect(route.status).toBe(201);
    await page.getByRole('link', { name: 'Traffic', exact: true }).click();
    await page.getByTestId('stream-status').getByText('Live').waitFor();
    expect(await (await fetch(`http://127.0.0.1:${port}/via-agent`)).text()).toBe('remote');
    const table = page.getByTestId('traffic-table');
    await table.getByText('/via-agent').waitFor({ timeout: 2000 });
    await switcher(page).selectOption({ label: 'Local' });
    await table.getByText('Waiting for requests…').waitFor();
    expect(await table.getByText('/via-agent').count()).toBe(0);

    // The agent goes away: the environment is shown as blocked and cannot be chosen.
    await agent!.close();
    agent = null;
    await page.reload();
    const option = switcher(page).locator('option', { hasText: 'behind-agent' });
    await expect.poll(() => option.textContent()).toContain('unavailable: agent offline');
    expect(await option.isDisabled()).toBe(true);
    expect(tab.errors).toEqual([]);
  });
});
