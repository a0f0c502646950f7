/**
 * The console in a real browser against a real server: first-run setup,
 * login and logout, API tokens, and a session that expires mid-use.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type ConsolePage, screenshot, useConsoleBrowser } from '../helpers/browser.js';
import {
  startTestServer,
  TEST_PASSWORD,
  TEST_SETUP_TOKEN,
  TEST_USERNAME,
  type TestServer,
} from '../helpers/server.js';

const consoleBrowser = useConsoleBrowser();
let server: TestServer;
let tab: ConsolePage;

beforeEach(async () => {
  server = await startTestServer();
  tab = await consoleBrowser.open(server.url);
});

afterEach(async () => {
  await server?.close();
});

async function logIn(password = TEST_PASSWORD) {
  const { page } = tab;
  await page.getByLabel('Username').fill(TEST_USERNAME);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Log in' }).click();
}

describe('console: setup, login, tokens', () => {
  it('creates the admin on first run, then logs out and back in', async () => {
    const { page } = tab;
    await page.goto('/');
    await page.waitForURL('**/setup');
    await expect(page.getByRole('heading', { name: 'Create the administrator' }).isVisible()).resolves.toBe(
      true,
    );
    await screenshot(page, 'setup');

    await page.getByLabel('Username').fill(TEST_USERNAME);
    await page.getByLabel('Password').fill(TEST_PASSWORD);
    await page.getByLabel('Setup code').fill('wrong-setup-code');
    await page.getByRole('button', { name: 'Create administrator' }).click();
    await page.getByRole('alert').first().waitFor();
    expect(await page.getByRole('heading', { name: 'Create the administrator' }).isVisible()).toBe(true);

    await page.getByLabel('Setup code').fill(TEST_SETUP_TOKEN);
    await page.getByRole('button', { name: 'Create administrator' }).click();
    await page.getByRole('heading', { name: 'Overview' }).waitFor();
    expect(await page.getByTestId('current-user').textContent()).toBe(TEST_USERNAME);
    expect(new URL(page.url()).pathname).toBe('/');
    await screenshot(page, 'overview-empty');

    await page.getByRole('button', { name: 'Log out' }).click();
    await page.getByRole('heading', { name: 'Log in' }).waitFor();
    await screenshot(page, 'login');
    // The session is gone on the server too: the API refuses the old cookie.
    const cookies = await tab.context.cookies();
    expect(cookies.find((c) => c.name === '__Host-p2pstream_session')).toBeUndefined();

    await logIn('not the password at all');
    await page.getByText(/INVALID_CREDENTIALS/).waitFor();
    await logIn();
    await page.getByRole('heading', { name: 'Overview' }).waitFor();
    expect(await page.getByTestId('current-user').textContent()).toBe(TEST_USERNAME);
    expect(tab.errors).toEqual([]);
  });

  it('creates an API token shown once, disables and deletes it', async () => {
    await server.setupAdmin();
    const { page } = tab;
    await page.goto('/settings/tokens');
    await page.waitForURL('**/login?next=%2Fsettings%2Ftokens');
    await logIn();
    await page.getByRole('heading', { name: 'API Tokens' }).waitFor();
    expect(new URL(page.url()).pathname).toBe('/settings/tokens');

    // The dialog is keyboard-usable: opened with Enter, focus inside, closed with Escape.
    await page.getByRole('button', { name: 'Create token' }).focus();
    await page.keyboard.press('Enter');
    const dialog = page.getByRole('dialog', { name: 'Create API token' });
    await dialog.waitFor();
    expect(await dialog.evaluate((d) => d.contains(d.ownerDocument.activeElement))).toBe(true);
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'detached' });

    await page.getByRole('button', { name: 'Create token' }).click();
    await page.getByLabel('Name').fill('ci-scripts');
    await page.getByRole('button', { name: 'Create', exact: true }).click();
    const shown = page.getByTestId('token-created');
    await shown.getByText('you will not see it again').waitFor();
    const token = (await shown.locator('pre').textContent())?.trim() ?? '';
    expect(token).toMatch(/^p2pat_[A-Za-z0-9_-]{43}$/);
    expect(await shown.getByRole('button', { name: /Copy/ }).isVisible()).toBe(true);
    await screenshot(page, 'token-created');

    // The token shown works against the API, and is never shown again.
    const me = await server.request('GET', '/api/v1/auth/me', { token });
    expect(me.status).toBe(200);
    expect(me.json.authMethod).toBe('apiToken');
    await shown.getByRole('button', { name: 'Done' }).click();
    const row = page.getByTestId('tokens-table').getByRole('row', { name: /ci-scripts/ });
    await row.waitFor();
    expect(await page.content()).not.toContain(token);
    await screenshot(page, 'tokens');

    await row.getByRole('button', { name: 'Disable ci-scripts' }).click();
    await row.getByText('disabled').waitFor();
    expect((await server.request('GET', '/api/v1/auth/me', { token })).status).toBe(401);
    await row.getByRole('button', { name: 'Enable ci-scripts' }).click();
    await row.getByText('enabled').waitFor();
    expect((await server.request('GET', '/api/v1/auth/me', { token })).status).toBe(200);

    await row.getByRole('button', { name: 'Delete ci-scripts' }).click();
    await page.getByTestId('confirm-dialog').getByRole('button', { name: 'Delete token' }).click();
    await row.waitFor({ state: 'detached' });
    expect((await server.request('GET', '/api/v1/auth/me', { token })).status).toBe(401);
    expect(tab.errors).toEqual([]);
  });

  it('sends an expired session back to login and returns to the page afterwards', async () => {
    await server.setupAdmin();
    const { page } = tab;
    await page.goto('/login');
    await logIn();
    await page.getByRole('heading', { name: 'Overview' }).waitFor();

    // The session ends on the server (as when it expires or is revoked elsewhere).
    const cookie = (await tab.context.cookies()).find((c) => c.name === '__Host-p2pstream_session')!;
    const logout = await server.request('POST', '/api/v1/auth/logout', {
      cookie: `${cookie.name}=${cookie.value}`,
    });
    expect(logout.status).toBe(204);

    await page.getByRole('link', { name: 'API Tokens' }).click();
    await page.waitForURL('**/login?next=%2Fsettings%2Ftokens');
    await logIn();
    await page.getByRole('heading', { name: 'API Tokens' }).waitFor();
    expect(new URL(page.url()).pathname).toBe('/settings/tokens');
    expect(tab.errors).toEqual([]);
  });

  it('is readable in dark mode', async () => {
    await server.setupAdmin();
    const dark = await consoleBrowser.open(server.url, { colorScheme: 'dark' });
    try {
      await dark.page.goto('/login');
      await dark.page.getByRole('heading', { name: 'Log in' }).waitFor();
      const colors = await dark.page.locator('body').evaluate((body) => {
        const style = body.ownerDocument.defaultView!.getComputedStyle(body);
        return { bg: style.backgroundColor, fg: style.color };
      });
      // Dark background, light text (from prefers-color-scheme, no toggle needed).
      expect(luminance(colors.bg)).toBeLessThan(0.1);
      expect(luminance(colors.fg)).toBeGreaterThan(0.6);
      await screenshot(dark.page, 'login-dark');
    } finally {
      await dark.context.close();
    }
  });

  it('keeps a login ?next= on this origin', async () => {
    await server.setupAdmin();
    const { page } = tab;
    await page.goto('/login?next=%2F%2Fevil.example%2Fx');
    await logIn();
    await page.getByRole('heading', { name: 'Overview' }).waitFor();
    expect(new URL(page.url()).origin).toBe(server.url);
    expect(new URL(page.url()).pathname).toBe('/');
  });
});

/** Relative luminance (0 black … 1 white) of a CSS `rgb(r, g, b)` colour. */
function luminance(color: string): number {
  const [r, g, b] = (color.match(/\d+(\.\d+)?/g) ?? []).slice(0, 3).map((c) => {
    const v = Number(c) / 255;
    return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * (r ?? 0) + 0.7152 * (g ?? 0) + 0.0722 * (b ?? 0);
}
