/**
 * Environments in the console, in a real browser against two real instances
 * (shared by the tests of this file; each test registers its own environments
 * on the control plane): register a direct environment, discover and trust its
 * certificate through the dialog, edit and delete it; switch to it and operate
 * on the remote from every operational page; blocked environments cannot be
 * selected; a changed certificate is shown next to the trusted one; the remote
 * traffic streams live and switching back to Local clears it.
 */
import type { Page, Request } from 'playwright-core';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createCertificate, describeCertificate } from '../../src/tls/certificates.js';
import { type ConsolePage, screenshot, useConsoleBrowser } from '../helpers/browser.js';
import { freePort } from '../helpers/processes.js';
import { ok, startTestServer, type TestServer } from '../helpers/server.js';
import { startTlsTarget } from '../helpers/tls-target.js';

const consoleBrowser = useConsoleBrowser();
let control: TestServer;
let remote: TestServer;
let controlCookie: string;
let remoteCookie: string;
let remoteAccessToken: string;
let remoteInstanceId: string;
let remotePort: number;
let tab: ConsolePage;

beforeAll(async () => {
  [control, remote] = await Promise.all([startTestServer(), startTestServer()]);
  [controlCookie, remoteCookie] = await Promise.all([control.setupAdmin(), remote.setupAdmin()]);
  await control.createToken(controlCookie, 'only-on-control');
  await ok(
    control.request('POST', '/api/v1/agents', { cookie: controlCookie, body: { name: 'control-agent' } }),
  );
  remoteAccessToken = await remote.createToken(remoteCookie, 'control-plane-access');
  await remote.createToken(remoteCookie, 'only-on-remote');
  await ok(
    remote.request('POST', '/api/v1/agents', { cookie: remoteCookie, body: { name: 'remote-agent' } }),
  );
  remoteInstanceId = (await ok(remote.request('GET', '/api/v1/system/info', { cookie: remoteCookie })))
    .instanceId;
  // A public listener on the remote with one static route, for its proxy and traffic pages.
  remotePort = await freePort();
  const listener = await ok(
    remote.request('POST', '/api/v1/proxy/listeners', {
      cookie: remoteCookie,
      body: { name: 'remote-public', bindAddress: '127.0.0.1', port: remotePort },
    }),
  );
  await ok(
    remote.request('POST', '/api/v1/proxy/routes', {
      cookie: remoteCookie,
      body: { listenerId: listener.listener.id, target: { type: 'static', status: 200, body: 'remote' } },
    }),
  );
});

afterAll(async () => {
  await Promise.all([control?.close(), remote?.close()]);
});

beforeEach(async () => {
  tab = await consoleBrowser.open(control.url, { session: controlCookie });
});

/** Registers a direct environment to `url` (default: the remote) through the control plane's API. */
async function registerEnvironment(name: string, url = remote.url): Promise<{ id: string }> {
  const created = await ok(
    control.request('POST', '/api/v1/environments', {
      cookie: controlCookie,
      body: { name, url, transport: 'direct', accessToken: remoteAccessToken },
    }),
  );
  return created.environment;
}

async function discoverAndTrust(id: string): Promise<void> {
  const discovered = await ok(
    control.request('POST', `/api/v1/environments/${id}/discover`, { cookie: controlCookie }),
  );
  await ok(
    control.request('POST', `/api/v1/environments/${id}/trust`, {
      cookie: controlCookie,
      body: { fingerprintSha256: discovered.certificate.fingerprintSha256 },
    }),
  );
}

function switcher(page: Page) {
  return page.getByLabel('Environment', { exact: true });
}

function switcherOption(page: Page, name: string) {
  return switcher(page).locator('option', { hasText: name });
}

describe('console: environments', () => {
  it('registers a direct environment with server errors at the field, and trusts it after reviewing the certificate', async () => {
    const { page } = tab;
    const remoteCert = describeCertificate(remote.server.certificate);
    await page.goto('/settings/environments');
    await page.getByRole('heading', { name: 'Environments' }).waitFor();

    await page.getByRole('button', { name: 'Add environment' }).click();
    const dialog = page.getByTestId('environment-dialog');
    await dialog.getByLabel('Name').fill('remote-direct');
    await dialog.getByLabel('Management URL').fill(remote.url.replace('https://', 'http://'));
    await dialog.getByLabel('Access token').fill(remoteAccessToken);
    await dialog.getByRole('button', { name: 'Add environment' }).click();
    // The server refuses http://: its message is shown at the URL field, and the dialog stays open.
    const urlField = dialog.locator('.field.invalid').filter({ has: page.getByLabel('Management URL') });
    expect(await urlField.getByRole('alert').textContent()).toMatch(/https/);
    expect(await dialog.getByLabel('Management URL').getAttribute('aria-invalid')).toBe('true');
    await dialog.getByLabel('Management URL').fill(remote.url);
    await dialog.getByRole('button', { name: 'Add environment' }).click();
    await dialog.waitFor({ state: 'detached' });

    const row = page.locator('tr[data-environment="remote-direct"]');
    await row.getByText('UNTRUSTED').waitFor();
    expect(await row.textContent()).toContain('Direct');
    expect(await row.textContent()).toContain('none trusted');
    expect(await row.textContent()).toContain('never');
    await expect
      .poll(() => switcherOption(page, 'remote-direct').textContent())
      .toContain('unavailable: certificate not trusted yet');
    expect(await switcherOption(page, 'remote-direct').isDisabled()).toBe(true);

    await row.getByRole('button', { name: 'Discover remote-direct' }).click();
    const trust = page.getByTestId('trust-dialog');
    const shown = trust.getByTestId('new-certificate');
    expect((await shown.locator('.fingerprint').textContent())?.trim()).toBe(remoteCert.fingerprintSha256);
    const details = (await shown.textContent()) ?? '';
    for (const part of [
      remoteCert.subject,
      remoteCert.issuer,
      remoteCert.serialNumber,
      ...remoteCert.subjectAltNames,
    ]) {
      expect(details).toContain(part);
    }
    expect(await shown.locator('dt').allTextContents()).toEqual([
      'SHA-256 fingerprint',
      'Subject',
      'Issuer',
      'Subject alternative names',
      'Valid',
      'Serial number',
    ]);
    await screenshot(page, 'trust-dialog');
    // Nothing is trusted until the button says so.
    const before = await ok(control.request('GET', '/api/v1/environments', { cookie: controlCookie }));
    expect(before.environments.find((e: { name: string }) => e.name === 'remote-direct').trustState).toBe(
      'UNTRUSTED',
    );
    await trust.getByRole('button', { name: 'Trust certificate' }).click();
    await trust.waitFor({ state: 'detached' });
    await row.getByText('TRUSTED', { exact: true }).waitFor();
    // The table shows the fingerprint's short form and the expiry of the trusted certificate.
    const pairs = remoteCert.fingerprintSha256.split(':');
    expect(await row.textContent()).toContain(`${pairs.slice(0, 4).join(':')}…${pairs.slice(-2).join(':')}`);
    expect(await row.textContent()).toMatch(/expires /);

    await row.getByRole('button', { name: 'Test remote-direct' }).click();
    await row.getByText(/Test passed/).waitFor();
    await row.locator('.badge', { hasText: 'ok' }).waitFor();
    expect(await row.textContent()).toMatch(/\d+ ms · /);
    // The test's timing, step by step; a direct environment has no agent link.
    const timing = row.getByTestId('test-timing');
    expect(
      await timing
        .locator('[data-step]')
        .evaluateAll((steps) => steps.map((s) => s.getAttribute('data-step'))),
    ).toEqual(['cp', 'dns', 'connect', 'tls', 'ttfb', 'total']);
    expect(await timing.textContent()).toMatch(/first byte[\d.]+ ms/);
    await expect.poll(() => switcherOption(page, 'remote-direct').isDisabled()).toBe(false);
    await screenshot(page, 'environments');
    expect(tab.errors).toEqual([]);
  });

  it('edits an environment leaving the access token blank to keep it, and deletes it after confirmation', async () => {
    const env = await registerEnvironment('to-edit');
    await discoverAndTrust(env.id);
    const { page } = tab;
    await page.goto('/settings/environments');
    // Selected, so deleting it later moves the console back to Local.
    await switcher(page).selectOption(env.id);
    const row = page.locator('tr[data-environment="to-edit"]');
    await row.getByRole('button', { name: 'Edit to-edit' }).click();
    const dialog = page.getByTestId('environment-dialog');
    const token = dialog.getByLabel('Access token');
    expect(await token.inputValue()).toBe('');
    expect(await token.getAttribute('placeholder')).toBe('leave blank to keep');
    await dialog.getByText('Leave blank to keep the stored token.').waitFor();
    expect(await dialog.getByLabel('Name').inputValue()).toBe('to-edit');
    expect(await dialog.getByLabel('Direct (this instance connects)').isChecked()).toBe(true);
    expect(await dialog.getByLabel('Enabled').isChecked()).toBe(true);

    // An out-of-range timeout: the server's message at the timeout field.
    await dialog.getByLabel('Timeout (ms)').fill('500');
    await dialog.getByRole('button', { name: 'Save' }).click();
    await dialog
      .locator('.field.invalid')
      .filter({ has: page.getByLabel('Timeout (ms)') })
      .getByRole('alert')
      .waitFor();
    await dialog.getByLabel('Timeout (ms)').fill('15000');
    await dialog.getByLabel('Name').fill('edited');
    await dialog.getByRole('button', { name: 'Save' }).click();
    await dialog.waitFor({ state: 'detached' });
    const edited = page.locator('tr[data-environment="edited"]');
    await edited.waitFor();
    const stored = await ok(
      control.request('GET', `/api/v1/environments/${env.id}`, { cookie: controlCookie }),
    );
    expect(stored.environment).toMatchObject({ name: 'edited', timeoutMs: 15000, hasAccessToken: true });
    // The stored token was kept: the remote still accepts the relayed call.
    await edited.getByRole('button', { name: 'Test edited' }).click();
    await edited.getByText(/Test passed/).waitFor();

    // Delete asks first; Cancel keeps it.
    await edited.getByRole('button', { name: 'Delete edited' }).click();
    const confirm = page.getByTestId('confirm-dialog');
    expect(await confirm.textContent()).toContain('edited');
    await confirm.getByRole('button', { name: 'Cancel' }).click();
    await confirm.waitFor({ state: 'detached' });
    expect(await edited.count()).toBe(1);
    await edited.getByRole('button', { name: 'Delete edited' }).click();
    await confirm.getByRole('button', { name: 'Delete environment' }).click();
    await edited.waitFor({ state: 'detached' });
    expect(
      (await control.request('GET', `/api/v1/environments/${env.id}`, { cookie: controlCookie })).status,
    ).toBe(404);
    await page
      .getByRole('status')
      .filter({ hasText: 'edited is unavailable (no longer registered)' })
      .waitFor();
    expect(await switcher(page).inputValue()).toBe('local');
    expect(await switcherOption(page, 'edited').count()).toBe(0);
    expect(tab.errors).toEqual([]);
  });

  it('operates on the selected remote from every operational page, keeps the choice across reloads and Settings → Environments on Local', async () => {
    const env = await registerEnvironment('remote-ops');
    await discoverAndTrust(env.id);
    const { page } = tab;
    await page.goto('/');
    await switcher(page).selectOption({ label: 'remote-ops · TRUSTED' });
    await page.getByTestId('scope').getByText('remote-ops').waitFor();
    expect(await page.getByTestId('selected-trust').textContent()).toBe('TRUSTED');

    // Overview: the remote instance's identity and numbers.
    await page.getByTestId('instance-info').getByText(remoteInstanceId).waitFor();
    // Proxy: the remote's listener.
    await page.getByRole('link', { name: 'Proxy' }).click();
    await page
      .getByTestId('listeners-table')
      .getByRole('cell', { name: 'remote-public', exact: true })
      .waitFor();
    // Agents: the remote's agents, not this instance's.
    await page.getByRole('link', { name: 'Agents' }).click();
    const agents = page.getByTestId('agents-table');
    await agents.getByRole('row', { name: /remote-agent/ }).waitFor();
    expect(await agents.textContent()).not.toContain('control-agent');
    // API Tokens: the remote's tokens.
    await page.getByRole('link', { name: 'API Tokens' }).click();
    const tokens = page.getByTestId('tokens-table');
    await tokens.getByRole('cell', { name: 'only-on-remote', exact: true }).waitFor();
    expect(await tokens.textContent()).not.toContain('only-on-control');
    await screenshot(page, 'tokens-remote');

    // The choice survives a reload.
    await page.reload();
    await tokens.getByRole('cell', { name: 'only-on-remote', exact: true }).waitFor();
    expect(await switcher(page).locator('option:checked').textContent()).toContain('remote-ops');

    // Settings → Environments talks to Local only, whatever is selected: no call carries the
    // environment, its agent picker lists this instance's agents, and no scope banner shows.
    const calls: Request[] = [];
    page.on('request', (request) => {
      if (new URL(request.url()).pathname.startsWith('/api/')) calls.push(request);
    });
    await page.getByRole('link', { name: 'Environments' }).click();
    await page.locator('tr[data-environment="remote-ops"]').waitFor();
    expect(await page.getByTestId('scope').count()).toBe(0);
    await page.getByRole('button', { name: 'Add environment' }).click();
    const dialog = page.getByTestId('environment-dialog');
    await dialog.getByLabel('Through an agent').check();
    const picker = dialog.getByLabel('Agent', { exact: true });
    expect(await picker.locator('option').allTextContents()).toEqual(['control-agent (offline)']);
    await dialog.getByRole('button', { name: 'Cancel' }).click();
    expect(calls.map((c) => new URL(c.url()).pathname)).toContain('/api/v1/environments');
    for (const call of calls) {
      expect(call.headers()['x-p2pstream-environment']).toBeUndefined();
      expect(new URL(call.url()).searchParams.has('environment')).toBe(false);
    }

    // Back to Local: the operational pages show this instance again.
    await switcher(page).selectOption({ label: 'Local' });
    await page.getByRole('link', { name: 'API Tokens' }).click();
    await tokens.getByRole('cell', { name: 'only-on-control', exact: true }).waitFor();
    expect(await tokens.textContent()).not.toContain('only-on-remote');
    expect(tab.errors).toEqual([]);
  });

  it('shows blocked environments with their reason and does not let them be selected', async () => {
    // A certificate that expires in a few seconds: trusted while valid, then EXPIRED.
    const shortLived = await createCertificate({
      altNames: ['127.0.0.1'],
      notAfter: new Date(Date.now() + 3000),
    });
    const target = await startTlsTarget({ cert: shortLived.cert, key: shortLived.key });
    try {
      const expiring = await registerEnvironment('expiring', target.url);
      await discoverAndTrust(expiring.id);
      await registerEnvironment('not-trusted');
      const disabled = await registerEnvironment('switched-off');
      await discoverAndTrust(disabled.id);
      await ok(
        control.request('PATCH', `/api/v1/environments/${disabled.id}`, {
          cookie: controlCookie,
          body: { enabled: false },
        }),
      );
      const validTo = Date.parse(describeCertificate(shortLived.cert).validTo);
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, validTo - Date.now() + 200)));

      const { page } = tab;
      await page.goto('/');
      const reasons = {
        'not-trusted': 'certificate not trusted yet',
        'switched-off': 'disabled',
        expiring: 'certificate expired',
      };
      await switcherOption(page, 'expiring').waitFor({ state: 'attached' });
      for (const [name, reason] of Object.entries(reasons)) {
        const option = switcherOption(page, name);
        expect(await option.textContent()).toContain(`unavailable: ${reason}`);
        expect(await option.isDisabled()).toBe(true);
      }
      expect(await switcherOption(page, 'expiring').textContent()).toContain('EXPIRED');

      await expect(
        switcher(page).selectOption(
          { label: (await switcherOption(page, 'not-trusted').textContent())!.trim() },
          { timeout: 1000 },
        ),
      ).rejects.toThrow();
      expect(await switcher(page).inputValue()).toBe('local');

      // A stored choice that is now blocked falls back to Local, with the reason.
      await page.evaluate(`localStorage.setItem('p2pstream.environment', ${JSON.stringify(expiring.id)})`);
      await page.reload();
      await page
        .getByRole('status')
        .filter({ hasText: 'expiring is unavailable (certificate expired)' })
        .waitFor();
      expect(await switcher(page).inputValue()).toBe('local');
      expect(await page.getByTestId('scope').count()).toBe(0);
      await page.goto('/settings/environments');
      await page.locator('tr[data-environment="expiring"]').getByText('EXPIRED').waitFor();
      expect(tab.errors).toEqual([]);
    } finally {
      await target.close();
    }
  });

  it('shows the trusted and the new certificate side by side when the certificate changed', async () => {
    let other = await startTestServer();
    try {
      const env = await registerEnvironment('rotating', other.url);
      await discoverAndTrust(env.id);
      const oldFingerprint = describeCertificate(other.server.certificate).fingerprintSha256;
      // Another instance (another certificate) takes over the same address.
      const port = other.server.port;
      await other.close();
      other = await startTestServer({ env: { MANAGEMENT_PORT: String(port) } });
      const newFingerprint = describeCertificate(other.server.certificate).fingerprintSha256;
      expect(newFingerprint).not.toBe(oldFingerprint);

      const { page } = tab;
      await page.goto('/settings/environments');
      const row = page.locator('tr[data-environment="rotating"]');
      await row.getByRole('button', { name: 'Discover rotating' }).click();
      const trust = page.getByTestId('trust-dialog');
      await trust.getByText('The certificate changed.').waitFor();
      const old = trust.getByTestId('old-certificate');
      const observed = trust.getByTestId('new-certificate');
      expect(await old.getByRole('heading').textContent()).toBe('Trusted (old)');
      expect(await observed.getByRole('heading').textContent()).toBe('Observed (new)');
      expect((await old.locator('.fingerprint').textContent())?.trim()).toBe(oldFingerprint);
      expect((await observed.locator('.fingerprint').textContent())?.trim()).toBe(newFingerprint);
      // Side by side: same row, old on the left.
      const [left, right] = [await old.boundingBox(), await observed.boundingBox()];
      expect(left!.x + left!.width).toBeLessThanOrEqual(right!.x);
      expect(Math.abs(left!.y - right!.y)).toBeLessThan(2);
      await screenshot(page, 'certificate-changed');

      await trust.getByRole('button', { name: 'Cancel' }).click();
      await row.getByText('CHANGED').waitFor();
      await row.getByText(/observed/).waitFor();
      await expect
        .poll(() => switcherOption(page, 'rotating').textContent())
        .toContain('unavailable: certificate changed');
      expect(await switcherOption(page, 'rotating').isDisabled()).toBe(true);

      // Reviewing again from the row and trusting the new one makes it selectable.
      await row.getByRole('button', { name: 'Review certificate of rotating' }).click();
      await trust.getByRole('button', { name: 'Trust certificate' }).click();
      await row.getByText('TRUSTED', { exact: true }).waitFor();
      await expect.poll(() => switcherOption(page, 'rotating').isDisabled()).toBe(false);
      expect(tab.errors).toEqual([]);
    } finally {
      await other.close();
    }
  });

  it('streams the remote traffic live, and switching back to Local clears it', async () => {
    const env = await registerEnvironment('remote-traffic');
    await discoverAndTrust(env.id);
    const remoteSubscribers = async () =>
      (await ok(remote.request('GET', '/api/v1/traffic/settings', { cookie: remoteCookie }))).subscribers;
    // Streams of the earlier tests' pages are gone.
    await expect.poll(remoteSubscribers).toBe(0);

    const { page } = tab;
    await page.goto('/traffic');
    const status = page.getByTestId('stream-status');
    await status.getByText('Live').waitFor();
    await switcher(page).selectOption({ label: 'remote-traffic · TRUSTED' });
    await page.getByTestId('scope').getByText('remote-traffic').waitFor();
    await status.getByText('Live').waitFor();
    await expect.poll(remoteSubscribers).toBe(1);

    const res = await fetch(`http://127.0.0.1:${remotePort}/seen-through-the-relay`);
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
