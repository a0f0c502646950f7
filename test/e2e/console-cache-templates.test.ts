/**
 * The Cache and Templates pages in a real browser against real instances: a
 * template written in the editor with its live preview in a sandboxed iframe,
 * used as a route's error page, refused deletion while in use; a cache rule
 * added through the editor, answers counted in the stats, purge, settings
 * refused with the field named — on Local and on a remote environment
 * reached through the control plane.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
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
let origin: Server;
let originUrl: string;
let originHits = 0;
let tab: ConsolePage;

/** A listener routing everything to the test origin; answers its port and route id. */
async function publicListener(server: TestServer, cookie: string, name: string) {
  const port = await freePort();
  const listener = await ok(
    server.request('POST', '/api/v1/proxy/listeners', {
      cookie,
      body: { name, bindAddress: '127.0.0.1', port },
    }),
  );
  const route = await ok(
    server.request('POST', '/api/v1/proxy/routes', {
      cookie,
      body: { listenerId: listener.listener.id, target: { type: 'upstream', url: originUrl } },
    }),
  );
  return { port, routeId: route.route.id as string };
}

async function get(port: number, pathname: string) {
  const res = await fetch(`http://127.0.0.1:${port}${pathname}`);
  return { status: res.status, cacheStatus: res.headers.get('cache-status'), text: await res.text() };
}

beforeAll(async () => {
  origin = createServer((req, res) => {
    originHits++;
    if (req.url?.startsWith('/down')) {
      req.socket.destroy();
      return;
    }
    res.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'max-age=300' });
    res.end(`origin ${req.url}`);
  });
  await new Promise<void>((resolve) => origin.listen(0, '127.0.0.1', resolve));
  originUrl = `http://127.0.0.1:${(origin.address() as AddressInfo).port}`;
  [control, remote] = await Promise.all([startTestServer(), startTestServer()]);
  [controlCookie, remoteCookie] = await Promise.all([control.setupAdmin(), remote.setupAdmin()]);
});

afterAll(async () => {
  await Promise.all([control?.close(), remote?.close()]);
  origin?.closeAllConnections();
  await new Promise<void>((resolve) => origin?.close(() => resolve()));
});

beforeEach(async () => {
  tab = await consoleBrowser.open(control.url, { session: controlCookie });
});

describe('console: templates and cache', () => {
  it('writes a template with a live sandboxed preview, uses it as an error page and refuses to delete it', async () => {
    const { page } = tab;
    const { port, routeId } = await publicListener(control, controlCookie, 'public');
    await page.goto('/templates');
    await page.getByText('No templates yet.').waitFor();
    await page.getByRole('button', { name: 'Add template' }).click();
    const editor = page.getByTestId('template-editor');
    await editor.getByLabel('Name').fill('oops');
    await editor
      .getByLabel('Body')
      .fill(
        '<h1 id="t">{{host}} failed with {{status}}</h1><script>parent.document.title="pwned"</script>{{nope}}',
      );
    // The preview is rendered by the instance with sample values, in a sandbox where scripts do not run.
    const frame = page.frameLocator('[data-testid="template-preview"]');
    await frame.locator('#t').filter({ hasText: 'www.example.com failed with 502' }).waitFor();
    expect(await page.getByTestId('template-preview').getAttribute('sandbox')).toBe('');
    await editor
      .getByTestId('template-warnings')
      .getByText(/\{\{nope\}\}/)
      .waitFor();
    expect(await page.title()).not.toBe('pwned');
    await screenshot(page, 'template-editor');
    await editor.getByRole('button', { name: 'Save template' }).click();
    await editor.waitFor({ state: 'detached' });
    const row = page.locator('tr[data-template="oops"]');
    await row.getByText('unused').waitFor();
    const template = (await ok(control.request('GET', '/api/v1/templates', { cookie: controlCookie })))
      .templates[0];

    // Used as the route's error page: a 502 renders it.
    await ok(
      control.request('PATCH', `/api/v1/proxy/routes/${routeId}`, {
        cookie: controlCookie,
        body: { errorTemplateId: template.id },
      }),
    );
    const failed = await get(port, '/down');
    expect(failed.status).toBe(502);
    expect(failed.text).toContain('127.0.0.1 failed with 502');
    await page.reload();
    await row
      .getByTestId('used-by')
      .getByText(/route .*error pages/)
      .waitFor();
    await row.getByRole('button', { name: 'Delete oops' }).click();
    await page.getByTestId('confirm-dialog').getByRole('button', { name: 'Delete template' }).click();
    await page
      .getByTestId('confirm-dialog')
      .getByRole('alert')
      .getByText(/used by route/)
      .waitFor();
    // The only console message: the browser refusing the template's script in the sandbox.
    expect(tab.errors).toEqual([expect.stringContaining('Blocked script execution')]);
  });

  it('adds a cache rule, shows hits and misses, purges, and names the field of a refused setting', async () => {
    const { page } = tab;
    const { port } = await publicListener(control, controlCookie, 'cached');
    await page.goto('/cache');
    const rules = page.getByTestId('cache-rules');
    await rules.getByText('No cache rules yet.').waitFor();
    await rules.getByRole('button', { name: 'Add cache rule' }).click();
    const editor = page.getByTestId('cache-rule-editor');
    await editor.getByLabel('Name').fill('assets');
    await editor.getByLabel('Match expression').fill('path_prefix(path, "/assets"');
    await editor.getByRole('button', { name: 'Save rule' }).click();
    await editor
      .locator('.field.invalid')
      .filter({ has: page.getByLabel('Match expression') })
      .getByRole('alert')
      .waitFor();
    await editor.getByLabel('Match expression').fill('path_prefix(path, "/assets")');
    await editor.getByRole('button', { name: 'Save rule' }).click();
    await editor.waitFor({ state: 'detached' });
    await rules.locator('li[data-rule="assets"]').getByText('path_prefix(path, "/assets")').waitFor();

    const before = originHits;
    expect((await get(port, '/assets/app.js')).cacheStatus).toContain('fwd=miss');
    expect((await get(port, '/assets/app.js')).cacheStatus).toContain('hit');
    expect((await get(port, '/page')).cacheStatus).toBeNull();
    expect(originHits - before).toBe(2);
    await page.reload();
    const stats = page.getByTestId('cache-stats');
    await stats.getByText('50.0 %').waitFor();

    // Purge everything: the next request is a miss again.
    const purge = page.getByTestId('cache-purge');
    await purge.getByRole('button', { name: 'Purge' }).click();
    await purge.getByText('Purged 1 entry.').waitFor();
    expect((await get(port, '/assets/app.js')).cacheStatus).toContain('fwd=miss');

    // A setting the instance refuses comes back at its field, and nothing changes.
    const settings = page.getByTestId('cache-settings');
    await settings.getByLabel('Disk (MiB)').fill('16000000');
    await settings.getByRole('button', { name: 'Save settings' }).click();
    await settings
      .locator('.field.invalid')
      .filter({ has: page.getByLabel('Disk (MiB)') })
      .getByRole('alert')
      .waitFor();
    expect(
      (await ok(control.request('GET', '/api/v1/cache/settings', { cookie: controlCookie }))).diskMiB,
    ).toBe(1024);
    await screenshot(page, 'cache');
    expect(tab.errors).toEqual([]);
  });

  it('manages the cache and templates of a remote environment through the control plane', async () => {
    const { port } = await publicListener(remote, remoteCookie, 'remote-public');
    const accessToken = await remote.createToken(remoteCookie, 'control-plane');
    await registerEnvironment(
      { server: control, cookie: controlCookie },
      { url: remote.url, accessToken: accessToken },
      { name: 'remote' },
    );
    const { page } = tab;
    await page.goto('/cache');
    await page.getByLabel('Environment', { exact: true }).selectOption({ label: 'remote · TRUSTED' });
    await page.getByTestId('scope').getByText('remote').waitFor();
    const rules = page.getByTestId('cache-rules');
    await rules.getByText('No cache rules yet.').waitFor();
    await rules.getByRole('button', { name: 'Add cache rule' }).click();
    const editor = page.getByTestId('cache-rule-editor');
    await editor.getByLabel('Name').fill('everything');
    await editor.getByRole('button', { name: 'Save rule' }).click();
    await editor.waitFor({ state: 'detached' });
    // Stored and applied on the remote, not here.
    expect(
      (await ok(remote.request('GET', '/api/v1/cache/rules', { cookie: remoteCookie }))).rules,
    ).toHaveLength(1);
    expect(
      (await ok(control.request('GET', '/api/v1/cache/rules', { cookie: controlCookie }))).rules.map(
        (r: { name: string }) => r.name,
      ),
    ).not.toContain('everything');
    await get(port, '/r');
    expect((await get(port, '/r')).cacheStatus).toContain('hit');

    await page.getByRole('link', { name: 'Templates' }).click();
    await page.getByText('No templates yet.').waitFor();
    await page.getByRole('button', { name: 'Add template' }).click();
    const templateEditor = page.getByTestId('template-editor');
    await templateEditor.getByLabel('Name').fill('remote page');
    await page.frameLocator('[data-testid="template-preview"]').locator('h1').waitFor();
    await templateEditor.getByRole('button', { name: 'Save template' }).click();
    await templateEditor.waitFor({ state: 'detached' });
    await page.locator('tr[data-template="remote page"]').waitFor();
    expect(
      (await ok(remote.request('GET', '/api/v1/templates', { cookie: remoteCookie }))).templates,
    ).toHaveLength(1);
    expect(tab.errors).toEqual([]);
  });
});
