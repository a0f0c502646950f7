/**
 * Browser test helpers: build the console once per test process, launch
 * Debian's Chromium headless through playwright-core, open a console page
 * that records page errors, and save screenshots under test-results/.
 * `useConsoleBrowser()` is the setup of a console test file in one call.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { type Browser, type BrowserContext, chromium, type Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll } from 'vitest';

const ROOT = path.resolve(import.meta.dirname, '../..');
/** Where the browser tests expect Chromium (`apt-get install -y chromium`); `CHROMIUM_PATH` overrides. */
export const CHROMIUM_PATH = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const SCREENSHOT_DIR = path.join(ROOT, 'test-results', 'screenshots');

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-quic',
  '--no-first-run',
];

let built: Promise<void> | null = null;

/** Runs scripts/build-console.mjs once per process (servers started afterwards serve the result). */
export function buildConsoleOnce(): Promise<void> {
  built ??= promisify(execFile)(process.execPath, [path.join(ROOT, 'scripts', 'build-console.mjs')], {
    cwd: ROOT,
  }).then(() => undefined);
  return built;
}

/**
 * Launches headless Chromium. Fails (never skips) with an install hint when
 * the browser is missing: the console tests must run in CI.
 */
export async function launchBrowser(): Promise<Browser> {
  if (!existsSync(CHROMIUM_PATH)) {
    throw new Error(
      `Chromium not found at ${CHROMIUM_PATH}: the console tests need it. ` +
        'Install it with `apt-get install -y chromium` (or set CHROMIUM_PATH).',
    );
  }
  return chromium.launch({ executablePath: CHROMIUM_PATH, args: CHROMIUM_ARGS });
}

export interface ConsolePage {
  context: BrowserContext;
  page: Page;
  /** Uncaught errors and console.error lines seen so far. */
  errors: string[];
}

export interface OpenConsoleOptions {
  colorScheme?: 'light' | 'dark';
  /**
   * A session cookie (`name=value`, as `setupAdmin()` returns it): the context
   * starts signed in, so tests that are not about logging in skip the form.
   */
  session?: string;
}

/**
 * A fresh browser context on `baseURL`. The test servers use self-signed
 * certificates; only this browser context ignores that (it holds no
 * credentials but the ones the test creates through it).
 */
export async function openConsole(
  browser: Browser,
  baseURL: string,
  options: OpenConsoleOptions = {},
): Promise<ConsolePage> {
  const context = await browser.newContext({
    baseURL,
    ignoreHTTPSErrors: true,
    colorScheme: options.colorScheme ?? 'light',
    viewport: { width: 1280, height: 800 },
  });
  context.setDefaultTimeout(10_000);
  if (options.session) {
    const eq = options.session.indexOf('=');
    await context.addCookies([
      {
        name: options.session.slice(0, eq),
        value: options.session.slice(eq + 1),
        url: baseURL,
        secure: true,
        httpOnly: true,
        sameSite: 'Strict',
      },
    ]);
  }
  const page = await context.newPage();
  const errors: string[] = [];
  page.on('pageerror', (err) => errors.push(`pageerror: ${err.message}`));
  page.on('console', (msg) => {
    // A failed fetch shows up as a console error; expected 4xx answers are not page bugs.
    if (msg.type() === 'error' && !/Failed to load resource/.test(msg.text())) errors.push(msg.text());
  });
  return { context, page, errors };
}

/** Saves a full-page screenshot as test-results/screenshots/NAME.png. */
export async function screenshot(page: Page, name: string): Promise<string> {
  await mkdir(SCREENSHOT_DIR, { recursive: true });
  const file = path.join(SCREENSHOT_DIR, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

export interface ConsoleBrowser {
  /** The browser (launched before the file's tests). */
  readonly browser: Browser;
  /** A console tab (see {@link openConsole}), closed after the test. */
  open(baseURL: string, options?: OpenConsoleOptions): Promise<ConsolePage>;
}

/**
 * A console test file's browser: call it first at the top of the file. Before
 * the file's tests (and so before the servers it starts, which read the built
 * console when they start) Chromium is launched and the console built; the
 * tabs a test opens are closed after it, the browser after the file.
 */
export function useConsoleBrowser(): ConsoleBrowser {
  let browser: Browser | undefined;
  const tabs: ConsolePage[] = [];
  beforeAll(async () => {
    [browser] = await Promise.all([launchBrowser(), buildConsoleOnce()]);
  });
  afterEach(async () => {
    for (const tab of tabs.splice(0)) await tab.context.close();
  });
  afterAll(async () => {
    await browser?.close();
  });
  return {
    get browser() {
      if (!browser) throw new Error('the browser starts in beforeAll');
      return browser;
    },
    async open(baseURL, options) {
      const tab = await openConsole(this.browser, baseURL, options);
      tabs.push(tab);
      return tab;
    },
  };
}
