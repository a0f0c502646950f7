/**
 * Environments in the console, in a real browser against two real instances:
 * register a direct environment, discover and trust its certificate through
 * the dialog, switch to it and operate on the remote; blocked environments
 * cannot be selected; a changed certificate is shown next to the trusted one.
 */
import { createServer } from 'node:net';
import type { Browser, Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { describeCertificate } from '../../src/tls/certificates.js';
import {
  buildConsoleOnce,
  type ConsolePage,
  launchBrowser,
  openConsole,
  screenshot,
} from '../helpers/browser.js';
import { startTestServer, TEST_PASSWORD, TEST_USERNAME, type TestServer } from '../helpers/server.js';

let browser: Browser;
let control: TestServer;
let remote: TestServer;
let controlCookie: string;
let remoteAccessToken: string;
let remoteCookie: string;
let tab: ConsolePage;

beforeAll(async () => {
  await buildConsoleOnce();
  browser = await launchBrowser();
});

afterAll(async () => {
  await browser?.close();
});

beforeEach(async () => {
  [control, remote] = await Promise.all([startTestServer(), startTestServer()]);
  controlCookie = await control.setupAdmin();
  await control.createToken(controlCookie, 'only-on-control');
  remoteCookie = await remote.setupAdmin();
  remoteAccessToken = await remote.createToken(remoteCookie, 'control-plane-access');
  await remote.createToken(remoteCookie, 'only-on-remote');
  tab = await openConsole(browser, control.url);
  await logIn(tab.page);
});

afterEach(async () => {
  await tab?.context.close();
  await Promise.all([control?.close(), remote?.close()]);
});

async function logIn(page: Page, next = '/') {
  await page.goto(`/login?next=${encodeURIComponent(next)}`);
  await page.getByLabel('Username').fill(TEST_USERNAME);
  await page.getByLabel('Password').fill(TEST_PASSWORD);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByTestId('current-user').waitFor();
}

/** Registers an environment through the API of the control plane (as the admin). */
async function registerEnvironment(body: Record<string, unknown>): Promise<{ id: string }> {
  const res = await control.request('POST', '/api/v1/environments', { cookie: controlCookie, body });
  if (res.status !== 201) throw new Error(`create environment: ${res.status} ${res.text}`);
  return res.json.environment;
}

async function discoverAndTrust(id: string): Promise<void> {
  const discovered = await control.request('POST', `/api/v1/environments/${id}/discover`, {
    cookie: controlCookie,
  });
  expect(discovered.status).toBe(200);
  const trusted = await control.request('POST', `/api/v1/environments/${id}/trust`, {
    cookie: controlCookie,
    body: { fingerprintSha256: discovered.json.certificate.fingerprintSha256 },
  });
  expect(trusted.status).toBe(200);
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolve(port));
    });
  });
}

function switcher(page: Page) {
  return page.getByLabel('Environment', { exact: true });
}

describe('console: environments', () => {
  it('registers a direct environment, trusts it through the dialog, and operates on the remote', async () => {
    const { page } = tab;
    const remoteCert = describeCertificate(remote.server.certificate);
    await page.getByRole('link', { name: 'Environments' }).click();
    await page.getByRole('heading', { name: 'Environments' }).waitFor();

    // Server validation errors appear at the field they concern.
    await page.getByRole('button', { name: 'Add environment' }).click();
    const dialog = page.getByTestId('environment-dialog');
    await dialog.getByLabel('Name').fill('remote-direct');
    await dialog.getByLabel('Management URL').fill(remote.url.replace('https://', 'http://'));
    await dialog.getByLabel('Access token').fill(remoteAccessToken);
    await dialog.getByRole('button', { name: 'Add environment' }).click();
    const urlError = dialog.locator('.field.invalid').filter({ has: page.getByLabel('Management URL') });
    await urlError.getByRole('alert').waitFor();
    await dialog.getByLabel('Management URL').fill(remote.url);
    await dialog.getByRole('button', { name: 'Add environment' }).click();
    await dialog.waitFor({ state: 'detached' });

    const row = page.locator('tr[data-environment="remote-direct"]');
    await row.getByText('UNTRUSTED').waitFor();
    expect(await row.textContent()).toContain('Direct');
    // Not selectable before it is trusted.
    const option = switcher(page).locator('option', { hasText: 'remote-direct' });
    expect(await option.isDisabled()).toBe(true);

    await row.getByRole('button', { name: 'Discover remote-direct' }).click();
    const trust = page.getByTestId('trust-dialog');
    await trust.waitFor();
    const shown = trust.getByTestId('new-certificate');
    expect((await shown.locator('.fingerprint').textContent())?.trim()).toBe(remoteCert.fingerprintSha256);
    expect(await shown.textContent()).toContain('127.0.0.1');
    expect(await shown.textContent()).toContain(remoteCert.serialNumber);
    await screenshot(page, 'trust-dialog');
    await trust.getByRole('button', { name: 'Trust certificate' }).click();
    await trust.waitFor({ state: 'detached' });
    await row.getByText('TRUSTED', { exact: true }).waitFor();

    await row.getByRole('button', { name: 'Test remote-direct' }).click();
    await row.getByText(/Test passed/).waitFor();
    await screenshot(page, 'environments');

    // Switch to it: operational pages now show the remote's data.
    await expect.poll(() => option.isDisabled(), { timeout: 20_000 }).toBe(false);
    await switcher(page).selectOption({ label: await option.textContent().then((t) => t!.trim()) });
    await page.getByRole('link', { name: 'API Tokens' }).click();
    const tokens = page.getByTestId('tokens-table');
    await tokens.getByRole('cell', { name: 'only-on-remote', exact: true }).waitFor();
    expect(await tokens.textContent()).not.toContain('only-on-control');
    expect(await page.getByTestId('scope').textContent()).toContain('remote-direct');
    await screenshot(page, 'tokens-remote');

    // The choice survives a reload.
    await page.reload();
    await page
      .getByTestId('tokens-table')
      .getByRole('cell', { name: 'only-on-remote', exact: true })
      .waitFor();
    expect(await switcher(page).locator('option:checked').textContent()).toContain('remote-direct');

    // Settings → Environments still shows this instance's registry.
    await page.getByRole('link', { name: 'Environments' }).click();
    await page.locator('tr[data-environment="remote-direct"]').waitFor();

    // Back to Local.
    await switcher(page).selectOption({ label: 'Local' });
    await page.getByRole('link', { name: 'API Tokens' }).click();
    await page
      .getByTestId('tokens-table')
      .getByRole('cell', { name: 'only-on-control', exact: true })
      .waitFor();
    expect(await page.getByTestId('tokens-table').textContent()).not.toContain('only-on-remote');
    expect(tab.errors).toEqual([]);
  });

  it('shows blocked environments with their reason and does not let them be selected', async () => {
    await registerEnvironment({
      name: 'not-trusted',
      url: remote.url,
      transport: 'direct',
      accessToken: remoteAccessToken,
    });
    const disabled = await registerEnvironment({
      name: 'switched-off',
      url: remote.url,
      transport: 'direct',
      accessToken: remoteAccessToken,
    });
    await discoverAndTrust(disabled.id);
    const patch = await control.request('PATCH', `/api/v1/environments/${disabled.id}`, {
      cookie: controlCookie,
      body: { enabled: false },
    });
    expect(patch.status).toBe(200);

    const { page } = tab;
    await page.reload();
    const untrusted = switcher(page).locator('option', { hasText: 'not-trusted' });
    const off = switcher(page).locator('option', { hasText: 'switched-off' });
    await untrusted.waitFor({ state: 'attached' });
    expect(await untrusted.textContent()).toContain('unavailable: certificate not trusted yet');
    expect(await untrusted.isDisabled()).toBe(true);
    expect(await off.textContent()).toContain('unavailable: disabled');
    expect(await off.isDisabled()).toBe(true);

    await expect(
      switcher(page).selectOption({ label: (await untrusted.textContent())!.trim() }, { timeout: 1000 }),
    ).rejects.toThrow();
    expect(await switcher(page).inputValue()).toBe('local');
    // A stored choice that is now blocked falls back to Local, with the reason.
    await page.evaluate(`localStorage.setItem('p2pstream.environment', ${JSON.stringify(disabled.id)})`);
    await page.reload();
    await page.getByRole('status').filter({ hasText: 'switched-off is unavailable (disabled)' }).waitFor();
    expect(await switcher(page).inputValue()).toBe('local');
  });

  it('shows the trusted and the new fingerprint side by side when the certificate changed', async () => {
    const env = await registerEnvironment({
      name: 'rotating',
      url: remote.url,
      transport: 'direct',
      accessToken: remoteAccessToken,
    });
    await discoverAndTrust(env.id);
    const oldFingerprint = describeCertificate(remote.server.certificate).fingerprintSha256;
    // Another instance (another certificate) takes over the same address.
    const port = remote.server.port;
    await remote.close();
    remote = await startTestServer({ env: { MANAGEMENT_PORT: String(port) } });
    const newFingerprint = describeCertificate(remote.server.certificate).fingerprintSha256;
    expect(newFingerprint).not.toBe(oldFingerprint);

    const { page } = tab;
    await page.goto('/settings/environments');
    const row = page.locator('tr[data-environment="rotating"]');
    await row.getByRole('button', { name: 'Discover rotating' }).click();
    const trust = page.getByTestId('trust-dialog');
    await trust.getByText('The certificate changed.').waitFor();
    expect((await trust.getByTestId('old-certificate').locator('.fingerprint').textContent())?.trim()).toBe(
      oldFingerprint,
    );
    expect((await trust.getByTestId('new-certificate').locator('.fingerprint').textContent())?.trim()).toBe(
      newFingerprint,
    );
    await screenshot(page, 'certificate-changed');
    await trust.getByRole('button', { name: 'Cancel' }).click();
    await row.getByText('CHANGED').waitFor();
    expect(await switcher(page).locator('option', { hasText: 'rotating' }).isDisabled()).toBe(true);
  });

  it('streams the remote traffic live, and switching back to Local clears it', async () => {
    const env = await registerEnvironment({
      name: 'remote-traffic',
      url: remote.url,
      transport: 'direct',
      accessToken: remoteAccessToken,
    });
    await discoverAndTrust(env.id);
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

    const { page } = tab;
    await page.goto('/traffic');
    await page.getByTestId('stream-status').getByText('Live').waitFor();
    await switcher(page).selectOption({ label: 'remote-traffic · TRUSTED' });
    await page.getByTestId('scope').getByText('remote-traffic').waitFor();
    await page.getByTestId('stream-status').getByText('Live').waitFor();
    const remoteSubscribers = async () =>
      (await remote.request('GET', '/api/v1/traffic/settings', { cookie: remoteCookie })).json.subscribers;
    await expect.poll(remoteSubscribers).toBe(1);

    const res = await fetch(`http://127.0.0.1:${port}/seen-through-the-relay`);
    expect(await res.text()).toBe('remote');
    const table = page.getByTestId('traffic-table');
    await table.getByText('/seen-through-the-relay').waitFor({ timeout: 2000 });
    await screenshot(page, 'traffic-remote');

    // Back to Local: the stream moves, nothing of the remote stays on screen, and the remote stream is closed.
    await switcher(page).selectOption({ label: 'Local' });
    await table.getByText('Waiting for requests…').waitFor();
    expect(await table.getByText('/seen-through-the-relay').count()).toBe(0);
    await expect.poll(remoteSubscribers, { timeout: 5000 }).toBe(0);
    expect(tab.errors).toEqual([]);
  });
});
