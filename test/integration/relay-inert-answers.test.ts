/**
 * A remote's answer is data in the control plane's origin, never a document
 * acting in it: relayed answers carry `X-Content-Type-Options: nosniff` and
 * `Content-Security-Policy: sandbox`, lose the remote's CSP, Clear-Site-Data,
 * Access-Control-*, HSTS, Refresh and Set-Cookie; a redirect is reported
 * (REMOTE_REDIRECT, with its target) to a caller that asks, and an agent that
 * sends a status outside 100–599 breaks the protocol (502 PROTOCOL_ERROR).
 */
import { describe, expect, it } from 'vitest';
import { AppError } from '../../src/errors.js';
import { createCertificate } from '../../src/tls/certificates.js';
import { agentHeaders, createTestAgent, type RawAgent, upgradeAgent } from '../helpers/agent.js';
import { useCleanups } from '../helpers/cleanup.js';
import { startTlsTarget, type TlsTarget } from '../helpers/tls-target.js';
import { eventually } from '../helpers/wait.js';
import { type Instance, registerEnvironment, startInstance } from './environment-helpers.js';

const cleanups = useCleanups();

async function control(): Promise<Instance> {
  const started = await startInstance();
  cleanups.push(() => started.server.close());
  return started;
}

/** A remote that answers every path with hostile headers, and /api/v1/overview with a 307 to a local route. */
async function hostileRemote(): Promise<TlsTarget> {
  const cert = await createCertificate({ altNames: ['127.0.0.1'] });
  const target = await startTlsTarget({
    cert: cert.cert,
    key: cert.key,
    handler: (req, res) => {
      if (req.url?.startsWith('/api/v1/overview')) {
        res.writeHead(307, { location: '/api/v1/auth/logout' }).end();
        return;
      }
      res.writeHead(200, {
        'content-type': 'text/html',
        'content-security-policy': "default-src *; script-src 'unsafe-inline'",
        'content-security-policy-report-only': 'default-src *',
        'clear-site-data': '"cookies", "storage"',
        'access-control-allow-origin': '*',
        'access-control-allow-credentials': 'true',
        'strict-transport-security': 'max-age=63072000; includeSubDomains',
        refresh: '0; url=https://evil.example/',
        'set-cookie': 'p2pstream_session=stolen; Path=/',
        'x-content-type-options': 'sniff-away',
        'x-kept': 'yes',
      });
      res.end('<script>fetch("/api/v1/auth/logout", {method: "POST"})</script>');
    },
  });
  cleanups.push(() => target.close());
  return target;
}

describe('relayed answers are inert', () => {
  it('drops what would act in our origin and marks the answer nosniff and sandboxed', async () => {
    const cp = await control();
    const remote = await hostileRemote();
    const id = await registerEnvironment(cp, { url: remote.url, accessToken: 'p2pat_remote' });
    const res = await cp.server.request('GET', '/api/v1/system/info', {
      token: cp.token,
      headers: { 'x-p2pstream-environment': id },
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('x-content-type-options')).toBe('nosniff');
    expect(res.headers.get('content-security-policy')).toBe('sandbox');
    for (const name of [
      'content-security-policy-report-only',
      'clear-site-data',
      'access-control-allow-origin',
      'access-control-allow-credentials',
      'strict-transport-security',
      'refresh',
      'set-cookie',
    ]) {
      expect([name, res.headers.get(name)]).toEqual([name, null]);
    }
    expect(res.headers.get('x-kept')).toBe('yes');
  });

  it('passes a redirect on unfollowed, or reports it with its target when asked', async () => {
    const cp = await control();
    const remote = await hostileRemote();
    const id = await registerEnvironment(cp, { url: remote.url, accessToken: 'p2pat_remote' });
    const selected = { 'x-p2pstream-environment': id };
    const passed = await cp.server.request('GET', '/api/v1/overview', {
      token: cp.token,
      headers: selected,
      redirect: 'manual',
    });
    expect([passed.status, passed.headers.get('location')]).toEqual([307, '/api/v1/auth/logout']);
    const reported = await cp.server.request('GET', '/api/v1/overview', {
      token: cp.token,
      headers: { ...selected, 'x-p2pstream-redirects': 'report' },
      redirect: 'manual',
    });
    expect(reported.status).toBe(502);
    expect(reported.headers.get('location')).toBeNull();
    expect(reported.json.error).toMatchObject({
      code: 'REMOTE_REDIRECT',
      details: { status: 307, location: '/api/v1/auth/logout' },
    });
    expect(reported.json.error.message).toContain('/api/v1/auth/logout');
  });

  it('fails an agent-sent status outside 100–599 as a protocol error (502)', async () => {
    const cp = await control();
    const remote = await hostileRemote();
    const credentials = await createTestAgent(cp.server, cp.cookie);
    const result = await upgradeAgent(cp.server, agentHeaders(credentials.id, credentials.token));
    if (!result.ok) throw new Error(`upgrade refused: ${result.status}`);
    const raw: RawAgent = result.socket;
    cleanups.push(() => raw.close());
    await raw.handshake();
    const transport = cp.server.server.hub.transportFor(credentials.id);
    for (const status of [700, 99, 0, 1000]) {
      const before = raw.received.length;
      const pending = transport.request({
        url: `${remote.url}/api/v1/system/info`,
        method: 'GET',
        headers: [],
        timeoutMs: 5000,
        trust: {
          fingerprintSha256: 'AB'.repeat(32).replace(/(..)(?=.)/g, '$1:'),
          expectedHostname: '127.0.0.1',
        },
      });
      await eventually(() => raw.received.slice(before).some((e) => e.payload.case === 'requestHead'));
      const head = raw.received.slice(before).find((e) => e.payload.case === 'requestHead');
      if (!head) throw new Error('no request head reached the agent');
      raw.send({ streamId: head.streamId, payload: { case: 'responseHead', value: { status } } });
      const err = await pending.then(
        () => null,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(AppError);
      expect([status, (err as AppError).code, (err as AppError).status]).toEqual([
        status,
        'PROTOCOL_ERROR',
        502,
      ]);
    }
  });
});
