/**
 * The TLS page and the listener certificate mapping in a real browser:
 * uploads with field errors, self-signed certificates, an ACME order against
 * a real pebble through the account sub-dialog (and one that fails, with
 * its cause shown), editing an account and a DNS provider, an https
 * listener with its default certificate on the Proxy page, and the same page
 * relayed to a remote environment.
 */
import type { Page } from 'playwright-core';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createCertificate } from '../../src/tls/certificates.js';
import { type ConsolePage, screenshot, useConsoleBrowser } from '../helpers/browser.js';
import { type Pebble, startPebble } from '../helpers/pebble.js';
import { freePort } from '../helpers/processes.js';
import { ok, startTestServer, type TestServer } from '../helpers/server.js';
import { registerEnvironment } from '../integration/environment-helpers.js';

const consoleBrowser = useConsoleBrowser();
let control: TestServer;
let remote: TestServer;
let controlCookie: string;
let remoteCookie: string;
let tab: ConsolePage;

beforeAll(async () => {
  const tls = { checkIntervalMs: 100, retryBaseMs: 60_000, dnsPropagationMs: 0 };
  [control, remote] = await Promise.all([
    startTestServer({ config: { tls } }),
    startTestServer({ config: { tls } }),
  ]);
  [controlCookie, remoteCookie] = await Promise.all([control.setupAdmin(), remote.setupAdmin()]);
});

afterAll(async () => {
  await Promise.all([control?.close(), remote?.close()]);
});

beforeEach(async () => {
  tab = await consoleBrowser.open(control.url, { session: controlCookie });
});

async function openTls(page: Page): Promise<void> {
  await page.goto('/');
  await page.getByRole('link', { name: 'TLS' }).click();
  await page.getByRole('heading', { name: 'Certificates' }).waitFor();
}

describe('console: TLS', () => {
  it('adds uploaded and self-signed certificates, shows field errors, and maps them on the Proxy page', async () => {
    const { page } = tab;
    await openTls(page);
    await page.getByRole('button', { name: 'Add certificate' }).click();
    const dialog = page.getByRole('dialog', { name: 'Add certificate' });
    await dialog.getByLabel('Source').selectOption('upload');
    await dialog.getByLabel('Name').fill('uploaded');
    await dialog.getByLabel('Certificate chain (PEM, leaf first)').fill('not a certificate');
    await dialog.getByLabel('Private key (PEM)').fill('not a key');
    await dialog.getByRole('button', { name: 'Save' }).click();
    await dialog
      .locator('.field.invalid')
      .filter({ has: page.getByLabel('Certificate chain (PEM, leaf first)') })
      .getByText(/no PEM certificate/)
      .waitFor();
    const cert = await createCertificate({ altNames: ['upload.test'] });
    await dialog.getByLabel('Certificate chain (PEM, leaf first)').fill(cert.cert);
    await dialog.getByLabel('Private key (PEM)').fill(cert.key);
    await dialog.getByRole('button', { name: 'Save' }).click();
    await dialog.waitFor({ state: 'detached' });
    const uploaded = page.getByTestId('certificate-uploaded');
    await uploaded.getByText('ready').waitFor();
    await uploaded.locator('td.mono', { hasText: 'upload.test' }).waitFor();
    expect(await uploaded.textContent()).toMatch(/in 36[45] d/);

    await page.getByRole('button', { name: 'Add certificate' }).click();
    await dialog.getByLabel('Source').selectOption('self-signed');
    await dialog.getByLabel('Name').fill('internal');
    await dialog.getByLabel('Hosts').fill('internal.test, *.internal.test');
    await dialog.getByLabel('Valid days').fill('30');
    await dialog.getByRole('button', { name: 'Save' }).click();
    await dialog.waitFor({ state: 'detached' });
    const internal = page.getByTestId('certificate-internal');
    await internal.getByText('ready').waitFor();
    expect(await internal.textContent()).toContain('internal.test, *.internal.test');
    await internal.getByText(/renews in 20 d/).waitFor();
    // Renew makes it again: another certificate, still ready.
    const fingerprint = async () =>
      (
        await ok(control.request('GET', '/api/v1/tls/certificates', { cookie: controlCookie }))
      ).certificates.find((c: { name: string }) => c.name === 'internal').fingerprintSha256 as string;
    const before = await fingerprint();
    await internal.getByRole('button', { name: 'Renew internal' }).click();
    for (let i = 0; i < 100 && (await fingerprint()) === before; i++) await page.waitForTimeout(50);
    expect(await fingerprint()).not.toBe(before);
    await internal.getByText('ready').waitFor();
    await screenshot(page, 'tls-certificates');

    // An https listener with a default certificate, and a route host the other one covers.
    const port = await freePort();
    await page.getByRole('link', { name: 'Proxy' }).click();
    await page.getByRole('button', { name: 'Add listener' }).click();
    const listenerDialog = page.getByRole('dialog', { name: 'Add listener' });
    await listenerDialog.getByLabel('Name').fill('secure');
    await listenerDialog.getByLabel('Bind address').fill('127.0.0.1');
    await listenerDialog.getByLabel('Port').fill(String(port));
    await listenerDialog.getByLabel('Protocol').selectOption('https');
    await listenerDialog.getByLabel('Default certificate').selectOption({ label: 'uploaded (upload.test)' });
    await listenerDialog.getByLabel('Send HSTS (Strict-Transport-Security)').check();
    await listenerDialog.getByRole('button', { name: 'Save' }).click();
    await listenerDialog.waitFor({ state: 'detached' });
    const listeners = page.getByTestId('listeners-table');
    await listeners.getByText('running').waitFor();
    const listener = (await ok(control.request('GET', '/api/v1/proxy/listeners', { cookie: controlCookie })))
      .listeners[0];
    expect(listener).toMatchObject({ protocol: 'https', hsts: true });
    await ok(
      control.request('POST', '/api/v1/proxy/routes', {
        cookie: controlCookie,
        body: {
          listenerId: listener.id,
          host: 'app.internal.test',
          target: { type: 'static', status: 200, body: 'x' },
        },
      }),
    );
    await page.reload();
    const mapping = page.getByTestId('certificate-mapping-secure');
    await mapping.getByText('uploaded').waitFor();
    await mapping.getByText(/app\.internal\.test → internal/).waitFor();
    await screenshot(page, 'proxy-certificate-mapping');

    // The default certificate cannot be deleted while the listener uses it.
    await page.getByRole('link', { name: 'TLS' }).click();
    await uploaded.getByRole('button', { name: 'Delete uploaded' }).click();
    const confirm = page.getByTestId('confirm-dialog');
    await confirm.getByRole('button', { name: 'Delete' }).click();
    await confirm.getByText(/default of listener "secure"/).waitFor();
    await confirm.getByRole('button', { name: 'Cancel' }).click();
    expect(tab.errors).toEqual([]);
  });

  it('orders a certificate from a real ACME directory through the account sub-dialog, and shows a failed order with its cause', async () => {
    const httpPort = await freePort();
    const tlsPort = await freePort();
    let pebble: Pebble | undefined;
    try {
      pebble = await startPebble({ httpPort, tlsPort });
      await ok(
        control.request('POST', '/api/v1/proxy/listeners', {
          cookie: controlCookie,
          body: { name: 'acme-http', bindAddress: '127.0.0.1', port: httpPort },
        }),
      );
      const { page } = tab;
      await openTls(page);
      await page.getByRole('button', { name: 'Add certificate' }).click();
      const dialog = page.getByRole('dialog', { name: 'Add certificate' });
      await dialog.getByLabel('Source').selectOption('acme');
      await dialog.getByLabel('Name').fill('site');
      await dialog.getByLabel('Hosts').fill('www.console.test');
      await dialog.getByRole('button', { name: 'New account…' }).click();
      const account = page.getByRole('dialog', { name: 'Add ACME account' });
      await account.getByLabel('Account name').fill('pebble');
      await account.getByLabel('Directory', { exact: true }).selectOption('custom');
      // A directory that is not there: the error lands at the URL.
      await account.getByLabel('Directory URL').fill(`https://127.0.0.1:${await freePort()}/dir`);
      await account.getByRole('button', { name: 'Register account' }).click();
      await account
        .locator('.field.invalid')
        .filter({ has: page.getByLabel('Directory URL') })
        .getByText(/could not be reached/)
        .waitFor({ timeout: 20_000 });
      await account.getByLabel('Directory URL').fill(pebble.directoryUrl);
      await account.getByLabel('Directory CA (PEM)').fill(pebble.directoryCaPem);
      await account.getByRole('button', { name: 'Register account' }).click();
      await account.waitFor({ state: 'detached' });
      expect(await dialog.getByLabel('ACME account').locator('option:checked').textContent()).toBe('pebble');
      await dialog.getByLabel('Challenge').selectOption('http-01');
      await dialog.getByRole('button', { name: 'Order certificate' }).click();
      await dialog.waitFor({ state: 'detached' });
      const site = page.getByTestId('certificate-site');
      await site
        .getByText('ready')
        .waitFor({ timeout: 30_000 })
        .catch(async (err) => {
          const state = await control.request('GET', '/api/v1/tls/certificates', { cookie: controlCookie });
          throw new Error(`${err}\n${state.text}\n${pebble?.output().slice(-1500)}`);
        });
      await site.getByText(/Pebble/).waitFor();

      // tls-alpn-01 with no https listener where the CA looks: error, with the cause in words.
      await page.getByRole('button', { name: 'Add certificate' }).click();
      await dialog.getByLabel('Source').selectOption('acme');
      await dialog.getByLabel('Name').fill('failing');
      await dialog.getByLabel('Hosts').fill('fail.console.test');
      await dialog.getByLabel('Challenge').selectOption('tls-alpn-01');
      await dialog.getByRole('button', { name: 'Order certificate' }).click();
      await dialog.waitFor({ state: 'detached' });
      const failing = page.getByTestId('certificate-failing');
      await failing.getByText('error').first().waitFor({ timeout: 30_000 });
      expect(await failing.getByTestId('last-error').textContent()).toMatch(
        /tls-alpn-01 authorization for fail\.console\.test failed/,
      );
      await failing.getByText(/next attempt in/).waitFor();
      await screenshot(page, 'tls-acme');
      expect(tab.errors).toEqual([]);
    } finally {
      await pebble?.close();
    }
  }, 90_000);

  it('edits an ACME account and a DNS provider, whose token is kept unless typed and asked for with another API host', async () => {
    let pebble: Pebble | undefined;
    try {
      pebble = await startPebble({ httpPort: await freePort(), tlsPort: await freePort() });
      await ok(
        control.request('POST', '/api/v1/tls/acme/accounts', {
          cookie: controlCookie,
          body: {
            name: 'edit-me',
            directoryUrl: pebble.directoryUrl,
            directoryCaPem: pebble.directoryCaPem,
            email: 'first@example.test',
          },
        }),
      );
      const provider = await ok(
        control.request('POST', '/api/v1/tls/dns-providers', {
          cookie: controlCookie,
          body: {
            name: 'cf-edit',
            type: 'cloudflare',
            apiToken: 'first-token',
            apiBaseUrl: 'http://127.0.0.1:1234/client/v4',
          },
        }),
      );
      const { page } = tab;
      await openTls(page);
      await page.getByRole('button', { name: 'Edit edit-me' }).click();
      const account = page.getByRole('dialog', { name: 'Edit ACME account' });
      expect(await account.getByLabel('E-mail').inputValue()).toBe('first@example.test');
      await account.getByLabel('Account name').fill('edited');
      await account.getByLabel('E-mail').fill('second@example.test');
      await account.getByRole('button', { name: 'Save account' }).click();
      await account.waitFor({ state: 'detached' });
      const accounts = page.getByTestId('accounts-table');
      await accounts.getByText('second@example.test').waitFor();
      await accounts.getByRole('cell', { name: 'edited', exact: true }).waitFor();

      await page.getByRole('button', { name: 'Edit cf-edit' }).click();
      const dialog = page.getByRole('dialog', { name: 'Edit DNS provider' });
      await dialog.getByLabel('API base URL').fill('http://127.0.0.1:5678/client/v4');
      await dialog.getByRole('button', { name: 'Save provider' }).click();
      // Another API host: the stored token is not carried there.
      await dialog
        .locator('.field.invalid')
        .filter({ has: page.getByLabel('Cloudflare API token') })
        .getByText(/another apiBaseUrl|new apiBaseUrl/)
        .waitFor();
      await dialog.getByLabel('Cloudflare API token').fill('second-token');
      await dialog.getByRole('button', { name: 'Save provider' }).click();
      await dialog.waitFor({ state: 'detached' });
      await page.getByTestId('providers-table').getByText('http://127.0.0.1:5678/client/v4').waitFor();
      const providers = await ok(
        control.request('GET', '/api/v1/tls/dns-providers', { cookie: controlCookie }),
      );
      expect(providers.providers).toEqual([
        expect.objectContaining({ id: provider.provider.id, apiBaseUrl: 'http://127.0.0.1:5678/client/v4' }),
      ]);
      expect(JSON.stringify(providers)).not.toContain('second-token');
      expect(tab.errors).toEqual([]);
    } finally {
      await pebble?.close();
    }
  }, 90_000);

  it('works on a remote environment: its certificates, created there', async () => {
    const remoteToken = await remote.createToken(remoteCookie, 'tls-console-access');
    await ok(
      remote.request('POST', '/api/v1/tls/certificates', {
        cookie: remoteCookie,
        body: { name: 'only-on-remote', source: 'self-signed', hosts: ['remote.test'] },
      }),
    );
    await registerEnvironment(
      { server: control, cookie: controlCookie },
      { url: remote.url, accessToken: remoteToken },
      { name: 'remote-tls' },
    );
    const { page } = tab;
    await page.goto('/');
    await page.getByLabel('Environment').selectOption({ label: 'remote-tls · TRUSTED' });
    await page.getByTestId('scope').getByText('remote-tls').waitFor();
    await page.getByRole('link', { name: 'TLS' }).click();
    await page.getByTestId('certificate-only-on-remote').getByText('ready').waitFor();
    expect(await page.getByTestId('certificates-table').textContent()).not.toContain('uploaded');

    await page.getByRole('button', { name: 'Add certificate' }).click();
    const dialog = page.getByRole('dialog', { name: 'Add certificate' });
    await dialog.getByLabel('Source').selectOption('self-signed');
    await dialog.getByLabel('Name').fill('made-from-control');
    await dialog.getByLabel('Hosts').fill('made.remote.test');
    await dialog.getByRole('button', { name: 'Save' }).click();
    await dialog.waitFor({ state: 'detached' });
    await page.getByTestId('certificate-made-from-control').getByText('ready').waitFor();
    const onRemote = await ok(remote.request('GET', '/api/v1/tls/certificates', { cookie: remoteCookie }));
    expect(onRemote.certificates.map((c: { name: string }) => c.name)).toContain('made-from-control');
    const onControl = await ok(control.request('GET', '/api/v1/tls/certificates', { cookie: controlCookie }));
    expect(onControl.certificates.map((c: { name: string }) => c.name)).not.toContain('made-from-control');
    expect(tab.errors).toEqual([]);
  });
});
