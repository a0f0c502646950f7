/**
 * The Traffic Policy page in a real browser: rules added through the editor
 * (the expression checked as it is typed), applied by a real listener, shown
 * in the trace, toggled, tried with the "try a request" panel — on Local and
 * on a remote environment reached through the control plane.
 */
import type { Page } from 'playwright-core';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { type ConsolePage, screenshot, useConsoleBrowser } from '../helpers/browser.js';
import { freePort } from '../helpers/processes.js';
import { ok, startTestServer, type TestServer } from '../helpers/server.js';
import { registerEnvironment } from '../integration/environment-helpers.js';

const consoleBrowser = useConsoleBrowser();
let control: TestServer;
let remote: TestServer;
let controlCookie: string;
let remoteCookie: string;
let localPort: number;
let tab: ConsolePage;

async function publicListener(server: TestServer, cookie: string, name: string): Promise<number> {
  const port = await freePort();
  const listener = await ok(
    server.request('POST', '/api/v1/proxy/listeners', {
      cookie,
      body: { name, bindAddress: '127.0.0.1', port },
    }),
  );
  await ok(
    server.request('POST', '/api/v1/proxy/routes', {
      cookie,
      body: { listenerId: listener.listener.id, target: { type: 'static', status: 200, body: 'hello' } },
    }),
  );
  return port;
}

beforeAll(async () => {
  [control, remote] = await Promise.all([startTestServer(), startTestServer()]);
  [controlCookie, remoteCookie] = await Promise.all([control.setupAdmin(), remote.setupAdmin()]);
  localPort = await publicListener(control, controlCookie, 'public');
});

afterAll(async () => {
  await Promise.all([control?.close(), remote?.close()]);
});

beforeEach(async () => {
  tab = await consoleBrowser.open(control.url, { session: controlCookie });
});

async function status(port: number, pathname: string): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${port}${pathname}`);
  await res.arrayBuffer();
  return res.status;
}

async function tryRequest(page: Page, path: string) {
  const panel = page.getByTestId('try-request');
  await panel.getByLabel('Path').fill(path);
  await panel.getByRole('button', { name: 'Try' }).click();
  return panel.getByTestId('try-result');
}

describe('console: traffic policy', () => {
  it('adds a WAF rule whose expression is checked as it is typed, applies, traces, toggles and tries it', async () => {
    const { page } = tab;
    await page.goto('/policies');
    const card = page.getByTestId('policy-card-waf');
    await card.getByRole('button', { name: 'Add WAF rules' }).click();
    const editor = page.getByTestId('policy-editor');
    await editor.getByLabel('Name').fill('no admin');
    const expression = editor.getByLabel('Match expression');
    await expression.fill('path_prefix(path, "/admin") && usr == 1');
    // The instance answers while the admin types: the unknown variable is named, with its place.
    await editor
      .getByRole('alert')
      .filter({ hasText: /unknown variable.*usr.*column/i })
      .waitFor();
    expect(await expression.getAttribute('aria-invalid')).toBe('true');
    await screenshot(page, 'policy-expression-error');
    await expression.fill('path_prefix(path, "/admin")');
    await editor.getByText('Valid expression.').waitFor();
    await editor.getByLabel('Status').fill('451');
    await editor.getByRole('button', { name: 'Save' }).click();
    await editor.waitFor({ state: 'detached' });
    const row = card.locator('li[data-rule="no admin"]');
    await row.getByText('block 451').waitFor();
    expect(await status(localPort, '/admin/x')).toBe(451);
    expect(await status(localPort, '/public')).toBe(200);

    // The decision shows on the Traffic page.
    await page.getByRole('link', { name: 'Traffic', exact: true }).click();
    await page
      .getByTestId('policy-decisions')
      .filter({ hasText: 'waf · no admin → block' })
      .first()
      .waitFor();

    // A server-side refusal (duplicate name) lands at the field.
    await page.getByRole('link', { name: 'Traffic Policy' }).click();
    await card.getByRole('button', { name: 'Add WAF rules' }).click();
    await editor.getByLabel('Name').fill('no admin');
    await editor.getByLabel('Action').selectOption('log');
    await editor.getByRole('button', { name: 'Save' }).click();
    await editor
      .locator('.field.invalid')
      .filter({ has: page.getByLabel('Name') })
      .getByRole('alert')
      .waitFor();
    await editor.getByRole('button', { name: 'Cancel' }).click();

    // Try a request, then disable the rule and try again.
    let result = await tryRequest(page, '/admin/panel');
    await result.getByRole('row', { name: /waf no admin block answers 451/ }).waitFor();
    await row.getByRole('button', { name: 'Disable no admin' }).click();
    await row.getByText('disabled').waitFor();
    expect(await status(localPort, '/admin/x')).toBe(200);
    result = await tryRequest(page, '/admin/panel');
    await result.getByRole('row', { name: /waf — continue no WAF rule matches/ }).waitFor();
    await screenshot(page, 'traffic-policy');
    expect(tab.errors).toEqual([]);
  });

  it('edits the policies of a remote environment through the control plane', async () => {
    const remotePort = await publicListener(remote, remoteCookie, 'remote-public');
    const accessToken = await remote.createToken(remoteCookie, 'control-plane');
    await registerEnvironment(
      { server: control, cookie: controlCookie },
      { url: remote.url, accessToken: accessToken },
      { name: 'remote' },
    );
    const { page } = tab;
    await page.goto('/policies');
    await page.getByLabel('Environment', { exact: true }).selectOption({ label: 'remote · TRUSTED' });
    await page.getByTestId('scope').getByText('remote').waitFor();
    const card = page.getByTestId('policy-card-rate-limits');
    await card.getByText('No rules yet.').waitFor();
    await card.getByRole('button', { name: 'Add Rate limits' }).click();
    const editor = page.getByTestId('policy-editor');
    await editor.getByLabel('Name').fill('two per hour');
    await editor.getByLabel('Limit').fill('2');
    await editor.getByLabel('Window (seconds)').fill('3600');
    await editor.getByLabel('Key').fill('ip, cookie');
    await editor.getByRole('button', { name: 'Save' }).click();
    await editor
      .locator('.field.invalid')
      .filter({ has: page.getByLabel('Key') })
      .getByRole('alert')
      .waitFor();
    await editor.getByLabel('Key').fill('ip');
    await editor.getByRole('button', { name: 'Save' }).click();
    await editor.waitFor({ state: 'detached' });
    await card.locator('li[data-rule="two per hour"]').getByText('2 per 3600 s').waitFor();
    // Stored and applied on the remote, not here.
    expect(
      (await ok(remote.request('GET', '/api/v1/policies/rate-limits', { cookie: remoteCookie }))).rules,
    ).toHaveLength(1);
    expect(
      (await ok(control.request('GET', '/api/v1/policies/rate-limits', { cookie: controlCookie }))).rules,
    ).toHaveLength(0);
    expect(await status(remotePort, '/')).toBe(200);
    expect(await status(remotePort, '/')).toBe(200);
    expect(await status(remotePort, '/')).toBe(429);
    const result = await tryRequest(page, '/x');
    await result.getByRole('row', { name: /rate_limit two per hour count/ }).waitFor();
    expect(tab.errors).toEqual([]);
  });
});
