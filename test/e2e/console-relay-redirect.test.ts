/**
 * The console never follows a relayed redirect: a remote environment that
 * answers its overview with a 307 to one of the control plane's own routes
 * (`/api/v1/auth/logout`) shows up as an error naming that target, the
 * browser sends nothing there, and the admin's session stays valid.
 */
import type { Request } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCertificate } from '../../src/tls/certificates.js';
import { screenshot, useConsoleBrowser } from '../helpers/browser.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { startTlsTarget, type TlsTarget } from '../helpers/tls-target.js';

const consoleBrowser = useConsoleBrowser();
let control: TestServer;
let cookie: string;
let remote: TlsTarget;

beforeAll(async () => {
  control = await startTestServer();
  cookie = await control.setupAdmin();
  const cert = await createCertificate({ altNames: ['127.0.0.1'] });
  remote = await startTlsTarget({
    cert: cert.cert,
    key: cert.key,
    handler: (req, res) => {
      if (req.url?.startsWith('/api/v1/overview')) {
        res.writeHead(307, { location: '/api/v1/auth/logout' }).end();
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"version":"remote","instanceId":"remote","uptimeSeconds":1}');
    },
  });
});

afterAll(async () => {
  await control?.close();
  await remote?.close();
});

describe('console: relayed redirects', () => {
  it('shows a relayed redirect as an error with its target and never follows it', async () => {
    const created = await control.request('POST', '/api/v1/environments', {
      cookie,
      body: { name: 'redirecting', url: remote.url, transport: 'direct', accessToken: 'p2pat_remote' },
    });
    expect(created.status).toBe(201);
    const id = created.json.environment.id as string;
    const discovered = await control.request('POST', `/api/v1/environments/${id}/discover`, { cookie });
    const trusted = await control.request('POST', `/api/v1/environments/${id}/trust`, {
      cookie,
      body: { fingerprintSha256: discovered.json.certificate.fingerprintSha256 },
    });
    expect(trusted.status).toBe(200);

    const tab = await consoleBrowser.open(control.url, { session: cookie });
    try {
      const { page } = tab;
      const requests: Request[] = [];
      page.on('request', (request) => requests.push(request));
      await page.goto('/');
      await page.getByLabel('Environment', { exact: true }).selectOption({ label: 'redirecting · TRUSTED' });
      const alert = page.getByRole('alert').filter({ hasText: 'REMOTE_REDIRECT' });
      await alert.waitFor();
      expect(await alert.textContent()).toContain('/api/v1/auth/logout');
      await screenshot(page, 'relayed-redirect');
      expect(requests.map((r) => new URL(r.url()).pathname)).not.toContain('/api/v1/auth/logout');
      // The session is intact.
      const me = await control.request('GET', '/api/v1/auth/me', { cookie });
      expect(me.status).toBe(200);
    } finally {
      await tab.context.close();
    }
  });
});
