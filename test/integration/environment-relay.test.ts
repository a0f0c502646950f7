/**
 * The environment relay between real instances on loopback (direct
 * transport): relayed reads and writes land on the target, local routes stay
 * local, credentials and hop-by-hop headers do not cross, and every blocked
 * or failing path answers with its code.
 */
import type { IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { fetch } from 'undici';
import { describe, expect, it } from 'vitest';
import { createCertificate } from '../../src/tls/certificates.js';
import { useCleanups } from '../helpers/cleanup.js';
import { startTlsTarget, type TlsTarget } from '../helpers/tls-target.js';
import { eventually } from '../helpers/wait.js';
import { type Instance, registerEnvironment, startInstance } from './environment-helpers.js';

const cleanups = useCleanups();

const instance = (options: Parameters<typeof startInstance>[0] = {}): Promise<Instance> =>
  startInstance(options, cleanups);

/** A control plane and a target with the environment registered, discovered and trusted. */
async function pair(options: { timeoutMs?: number } = {}) {
  const control = await instance();
  const target = await instance();
  const accessToken = await target.server.createToken(target.cookie, 'control-plane');
  const id = await registerEnvironment(control, { url: target.server.url, accessToken }, options);
  return { control, target, accessToken, id };
}

/** A recording HTTPS target (certificate for 127.0.0.1) trusted as an environment of `control`. */
async function recordingEnvironment(
  control: Instance,
  handler: Parameters<typeof startTlsTarget>[0]['handler'],
  options: { timeoutMs?: number } = {},
): Promise<{ target: TlsTarget; id: string }> {
  const cert = await createCertificate({ altNames: ['127.0.0.1'] });
  const target = await startTlsTarget({ cert: cert.cert, key: cert.key, ...(handler ? { handler } : {}) });
  // Closed after the control plane, whose pooled connections it waits for.
  cleanups.unshift(() => target.close());
  const id = await registerEnvironment(
    control,
    { url: target.url, accessToken: 'p2pat_the-environment-access-token' },
    options,
  );
  return { target, id };
}

const selected = (id: string) => ({ 'x-p2pstream-environment': id });

describe('environment relay', () => {
  it('relays reads and writes to the target, not locally', async () => {
    const { control, target, id } = await pair();
    const info = await control.server.request('GET', '/api/v1/system/info', {
      token: control.token,
      headers: selected(id),
    });
    const targetInfo = await target.server.request('GET', '/api/v1/system/info', { token: target.token });
    const localInfo = await control.server.request('GET', '/api/v1/system/info', { token: control.token });
    expect(info.status).toBe(200);
    expect(info.json.instanceId).toBe(targetInfo.json.instanceId);
    expect(info.json.instanceId).not.toBe(localInfo.json.instanceId);

    // A write through the environment (selected by query) creates the token on the target only.
    const created = await control.server.request('POST', `/api/v1/tokens?environment=${id}`, {
      token: control.token,
      body: { name: 'made-through-the-control-plane' },
    });
    expect(created.status).toBe(201);
    expect(created.json.token).toMatch(/^p2pat_/);
    const names = async (instance: Instance) =>
      (await instance.server.request('GET', '/api/v1/tokens', { token: instance.token })).json.tokens.map(
        (t: { name: string }) => t.name,
      );
    expect(await names(target)).toContain('made-through-the-control-plane');
    expect(await names(control)).not.toContain('made-through-the-control-plane');
    // The token made through the relay works on the target.
    expect(
      (await target.server.request('GET', '/api/v1/auth/me', { token: created.json.token })).status,
    ).toBe(200);

    // Errors of the target pass through with their status and body.
    const missing = await control.server.request(
      'PATCH',
      '/api/v1/tokens/00000000-0000-4000-8000-000000000000',
      {
        token: control.token,
        headers: selected(id),
        body: { name: 'x' },
      },
    );
    expect([missing.status, missing.json.error.code]).toEqual([404, 'NOT_FOUND']);
    const invalid = await control.server.request('POST', '/api/v1/tokens', {
      token: control.token,
      headers: selected(id),
      body: { name: '' },
    });
    expect([invalid.status, invalid.json.error.code]).toEqual([400, 'VALIDATION_FAILED']);
  });

  it('logs one line per relayed request, naming the environment, and one per local request', async () => {
    const control = await instance();
    const { id } = await recordingEnvironment(control, (_req, res) => res.end('{}'));
    const relayed = await control.server.request('GET', '/api/v1/system/info', {
      token: control.token,
      headers: selected(id),
    });
    expect(relayed.status).toBe(200);
    const local = await control.server.request('GET', '/api/v1/system/info', { token: control.token });
    expect(local.status).toBe(200);
    const lines = () =>
      control.server.logs
        .map((line) => JSON.parse(line) as Record<string, unknown>)
        .filter((entry) => entry.route === '/api/v1/system/info');
    await eventually(() => expect(lines()).toHaveLength(2));
    expect(lines()).toEqual([
      expect.objectContaining({
        msg: 'relayed request',
        environmentId: id,
        status: 200,
        outcome: 'complete',
      }),
      expect.objectContaining({ msg: 'request', status: 200 }),
    ]);
    expect(lines()[1]).not.toHaveProperty('environmentId');
  });

  it('carries Server-Timing on relayed responses and the same breakdown as the test timing, without hub', async () => {
    const { control, id } = await pair();
    const relayed = await control.server.request('GET', '/api/v1/system/info', {
      token: control.token,
      headers: selected(id),
    });
    expect(relayed.status).toBe(200);
    const header = relayed.headers.get('server-timing') ?? '';
    const steps = Object.fromEntries(
      header.split(',').map((part) => {
        const [name, dur] = part.trim().split(';dur=');
        return [name, Number(dur)];
      }),
    );
    expect(Object.keys(steps)).toEqual(['cp', 'dns', 'connect', 'tls', 'ttfb', 'total']);
    for (const value of Object.values(steps)) expect(value).toBeGreaterThanOrEqual(0);
    expect(steps.total).toBeGreaterThanOrEqual(steps.ttfb!);
    const tested = await control.server.request('POST', `/api/v1/environments/${id}/test`, {
      token: control.token,
    });
    expect(tested.status).toBe(200);
    const timing = tested.json.timing;
    expect(Object.keys(timing).sort()).toEqual(['connect', 'cp', 'dns', 'hub', 'tls', 'total', 'ttfb']);
    expect(timing.hub).toBeNull();
    // A pooled connection was reused: no connect and no handshake this time.
    expect([timing.connect, timing.tls]).toEqual([0, 0]);
    expect(timing.total).toBeGreaterThanOrEqual(timing.ttfb);
  });

  it('works for a caller logged in with a session cookie', async () => {
    const { control, target, id } = await pair();
    const me = await control.server.request('GET', '/api/v1/tokens', {
      cookie: control.cookie,
      headers: selected(id),
    });
    expect(me.status).toBe(200);
    const targetTokens = await target.server.request('GET', '/api/v1/tokens', { token: target.token });
    expect(me.json.tokens.map((t: { id: string }) => t.id)).toEqual(
      targetTokens.json.tokens.map((t: { id: string }) => t.id),
    );
  });

  it('serves local-only routes locally whatever environment is selected', async () => {
    const { control, id } = await pair();
    const list = await control.server.request('GET', '/api/v1/environments', {
      token: control.token,
      headers: selected(id),
    });
    expect(list.json.environments.map((e: { id: string }) => e.id)).toEqual(['local', id]);
    const me = await control.server.request('GET', `/api/v1/auth/me?environment=${id}`, {
      cookie: control.cookie,
    });
    expect(me.json).toMatchObject({ authMethod: 'session', user: { username: 'admin' } });
    const setup = await control.server.request('GET', '/api/v1/setup', { headers: selected(id) });
    expect(setup.json).toEqual({ setupRequired: false });
    // `local` selects this instance.
    const local = await control.server.request('GET', '/api/v1/tokens', {
      token: control.token,
      headers: selected('local'),
    });
    expect(local.json.tokens.map((t: { name: string }) => t.name)).toEqual(['admin-token']);
  });

  it('authenticates the caller locally before relaying', async () => {
    const { control, id } = await pair();
    const anonymous = await control.server.request('GET', '/api/v1/system/info', { headers: selected(id) });
    expect([anonymous.status, anonymous.json.error.code]).toEqual([401, 'UNAUTHENTICATED']);
    // The target's own token means nothing to the control plane.
    const foreign = await control.server.request('GET', '/api/v1/system/info', {
      token: 'p2pat_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA',
      headers: selected(id),
    });
    expect(foreign.status).toBe(401);
  });

  it('sends the access token in place of the caller credentials and keeps cookies and hop-by-hop headers out', async () => {
    const control = await instance();
    const seen: Array<{ method: string; url: string; headers: IncomingMessage['headers']; body: string }> =
      [];
    const { id } = await recordingEnvironment(control, (req, res) => {
      let body = '';
      req.setEncoding('utf8');
      req.on('data', (c: string) => {
        body += c;
      });
      req.on('end', () => {
        seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body });
        if (req.url?.startsWith('/api/v1/proxy/routes')) {
          res.writeHead(302, { location: 'https://elsewhere.example/next', 'set-cookie': 'stolen=1' });
          res.end();
          return;
        }
        res.writeHead(418, {
          'content-type': 'application/json',
          'set-cookie': 'remote=1; HttpOnly',
          'x-remote': 'yes',
          connection: 'keep-alive',
        });
        res.end('{"teapot":true}');
      });
    });
    const res = await control.server.request('POST', `/api/v1/tokens?a=1&environment=${id}&b=two%20words`, {
      cookie: control.cookie,
      body: { name: 'relayed' },
      headers: {
        'x-custom': 'stays',
        'last-event-id': '7',
        accept: 'application/json',
        connection: 'keep-alive',
      },
    });
    expect(res.status).toBe(418);
    expect(res.json).toEqual({ teapot: true });
    expect(res.headers.get('set-cookie')).toBeNull();
    expect(res.headers.get('x-remote')).toBe('yes');

    const request = seen.at(-1)!;
    expect(request.method).toBe('POST');
    expect(request.url).toBe('/api/v1/tokens?a=1&b=two%20words');
    expect(request.body).toBe('{"name":"relayed"}');
    expect(request.headers.authorization).toBe('Bearer p2pat_the-environment-access-token');
    expect(request.headers['content-type']).toBe('application/json');
    expect(request.headers['last-event-id']).toBe('7');
    expect(request.headers.cookie).toBeUndefined();
    expect(request.headers.origin).toBeUndefined();
    expect(request.headers['x-custom']).toBeUndefined();
    expect(request.headers['x-p2pstream-environment']).toBeUndefined();
    expect(request.headers.host).toMatch(/^127\.0\.0\.1:\d+$/);

    // A redirect comes back as it is, unfollowed.
    const before = seen.length;
    const redirect = await fetch(`${control.server.url}/api/v1/proxy/routes`, {
      headers: { authorization: `Bearer ${control.token}`, ...selected(id) },
      redirect: 'manual',
      dispatcher: control.server.dispatcher,
    });
    await redirect.arrayBuffer();
    expect(redirect.status).toBe(302);
    expect(redirect.headers.get('location')).toBe('https://elsewhere.example/next');
    expect(redirect.headers.get('set-cookie')).toBeNull();
    expect(seen.length).toBe(before + 1);
    expect(seen.at(-1)!.headers.authorization).toBe('Bearer p2pat_the-environment-access-token');
  });

  it('answers the test with the remote version and instance id and records it', async () => {
    const { control, target, id } = await pair();
    const res = await control.server.request('POST', `/api/v1/environments/${id}/test`, {
      token: control.token,
    });
    const targetInfo = await target.server.request('GET', '/api/v1/system/info', { token: target.token });
    expect(res.status).toBe(200);
    expect(res.json).toEqual({
      ok: true,
      latencyMs: expect.any(Number),
      remote: { version: targetInfo.json.version, instanceId: targetInfo.json.instanceId },
      timing: {
        cp: expect.any(Number),
        hub: null,
        dns: expect.any(Number),
        connect: expect.any(Number),
        tls: expect.any(Number),
        ttfb: expect.any(Number),
        total: expect.any(Number),
      },
    });
    const env = await control.server.request('GET', `/api/v1/environments/${id}`, { token: control.token });
    expect(env.json.environment.lastTest).toMatchObject({
      ok: true,
      error: null,
      latencyMs: expect.any(Number),
    });
  });

  it('turns a refused access token into 502 REMOTE_UNAUTHORIZED, for the relay and the test', async () => {
    const control = await instance();
    const target = await instance();
    const id = await registerEnvironment(control, {
      url: target.server.url,
      accessToken: 'p2pat_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB',
    });
    const res = await control.server.request('GET', '/api/v1/tokens', {
      token: control.token,
      headers: selected(id),
    });
    expect([res.status, res.json.error.code]).toEqual([502, 'REMOTE_UNAUTHORIZED']);
    const tested = await control.server.request('POST', `/api/v1/environments/${id}/test`, {
      token: control.token,
    });
    expect([tested.status, tested.json.error.code]).toEqual([502, 'REMOTE_UNAUTHORIZED']);
    const env = await control.server.request('GET', `/api/v1/environments/${id}`, { token: control.token });
    expect(env.json.environment.lastTest).toMatchObject({
      ok: false,
      error: { code: 'REMOTE_UNAUTHORIZED' },
    });

    // With the right token (PATCH) the same environment works.
    const good = await target.server.createToken(target.cookie, 'fixed');
    await control.server.request('PATCH', `/api/v1/environments/${id}`, {
      token: control.token,
      body: { accessToken: good },
    });
    const fixed = await control.server.request('GET', '/api/v1/tokens', {
      token: control.token,
      headers: selected(id),
    });
    expect(fixed.status).toBe(200);
  });

  it('blocks unknown, disabled and untrusted environments before anything leaves', async () => {
    const control = await instance();
    const { target, id } = await recordingEnvironment(control, undefined);
    const call = (envId: string) =>
      control.server.request('GET', '/api/v1/system/info', {
        token: control.token,
        headers: selected(envId),
      });

    const unknown = await call('00000000-0000-4000-8000-000000000000');
    expect([unknown.status, unknown.json.error.code]).toEqual([404, 'ENVIRONMENT_NOT_FOUND']);
    expect((await call('not-an-id')).json.error.code).toBe('ENVIRONMENT_NOT_FOUND');

    const bytesBefore = target.receivedBytes;
    const connectionsBefore = target.connections;
    await control.server.request('PATCH', `/api/v1/environments/${id}`, {
      token: control.token,
      body: { enabled: false },
    });
    const disabled = await call(id);
    expect([disabled.status, disabled.json.error.code]).toEqual([409, 'ENVIRONMENT_DISABLED']);
    const disabledTest = await control.server.request('POST', `/api/v1/environments/${id}/test`, {
      token: control.token,
    });
    expect(disabledTest.json.error.code).toBe('ENVIRONMENT_DISABLED');

    const untrusted = await registerEnvironment(
      control,
      { url: target.url, accessToken: 'p2pat_x' },
      { trust: false },
    );
    const refused = await call(untrusted);
    expect([refused.status, refused.json.error.code]).toEqual([412, 'ENVIRONMENT_UNTRUSTED']);
    expect(target.receivedBytes).toBe(bytesBefore);
    expect(target.connections).toBe(connectionsBefore);
  });

  it('answers AGENT_OFFLINE for an environment whose agent is not connected', async () => {
    const { control, id } = await pair();
    const agent = await control.server.request('POST', '/api/v1/agents', {
      token: control.token,
      body: { name: 'edge-offline' },
    });
    const switched = await control.server.request('PATCH', `/api/v1/environments/${id}`, {
      token: control.token,
      body: { transport: 'agent', agentId: agent.json.agent.id, accessToken: 'p2pat_through-the-agent' },
    });
    // A new path to the target: trust starts over (token custody).
    expect(switched.json.environment).toMatchObject({ transport: 'agent', trustState: 'UNTRUSTED' });
    const res = await control.server.request('GET', '/api/v1/system/info', {
      token: control.token,
      headers: selected(id),
    });
    // Not trusted over the new path yet: refused before the agent is even looked for.
    expect([res.status, res.json.error.code]).toEqual([412, 'ENVIRONMENT_UNTRUSTED']);
    const discover = await control.server.request('POST', `/api/v1/environments/${id}/discover`, {
      token: control.token,
    });
    expect([discover.status, discover.json.error.code]).toEqual([503, 'AGENT_OFFLINE']);
    const env = await control.server.request('GET', `/api/v1/environments/${id}`, { token: control.token });
    expect(env.json.environment.lastError).toMatchObject({ code: 'AGENT_OFFLINE' });
  });

  it('answers ENVIRONMENT_UNREACHABLE when the target is down and ENVIRONMENT_TIMEOUT when it does not answer', async () => {
    const { control, target, id } = await pair();
    await target.server.close();
    const down = await control.server.request('GET', '/api/v1/system/info', {
      token: control.token,
      headers: selected(id),
    });
    expect([down.status, down.json.error.code]).toEqual([502, 'ENVIRONMENT_UNREACHABLE']);

    const held: Array<() => void> = [];
    const { id: slow } = await recordingEnvironment(
      control,
      (_req, res) => {
        // Never answers until the test ends.
        held.push(() => res.destroy());
      },
      { timeoutMs: 1000 },
    );
    cleanups.push(async () => {
      for (const release of held) release();
    });
    const timedOut = await control.server.request('GET', '/api/v1/system/info', {
      token: control.token,
      headers: selected(slow),
    });
    expect([timedOut.status, timedOut.json.error.code]).toEqual([504, 'ENVIRONMENT_TIMEOUT']);
  });

  it('refuses a body over 1 MiB with PAYLOAD_TOO_LARGE and relays one just under it', async () => {
    const control = await instance();
    const sizes: number[] = [];
    const { id } = await recordingEnvironment(control, (req, res) => {
      let size = 0;
      req.on('data', (c: Buffer) => {
        size += c.length;
      });
      req.on('end', () => {
        sizes.push(size);
        res.writeHead(201, { 'content-type': 'application/json' });
        res.end('{}');
      });
    });
    const big = await control.server.request('POST', '/api/v1/tokens', {
      token: control.token,
      headers: { ...selected(id), 'content-type': 'application/json' },
      rawBody: Buffer.alloc(1024 * 1024 + 1, 0x20),
    });
    expect([big.status, big.json?.error?.code]).toEqual([413, 'PAYLOAD_TOO_LARGE']);
    expect(sizes).toEqual([]);
    const fits = await control.server.request('POST', '/api/v1/tokens', {
      token: control.token,
      headers: { ...selected(id), 'content-type': 'application/json' },
      rawBody: Buffer.alloc(1024 * 1024, 0x20),
    });
    expect(fits.status).toBe(201);
    expect(sizes).toEqual([1024 * 1024]);
  });

  it('cancels the remote request when the caller disconnects before the answer', async () => {
    const control = await instance();
    let remoteClosed = false;
    let arrived = false;
    const { target, id } = await recordingEnvironment(control, (req, res) => {
      arrived = true;
      res.on('close', () => {
        remoteClosed = true;
      });
      req.resume();
    });
    const req = httpsRequest(new URL('/api/v1/system/info', control.server.url), {
      ca: control.server.server.certificate,
      servername: 'localhost',
      agent: false,
      headers: { authorization: `Bearer ${control.token}`, ...selected(id) },
    });
    req.on('error', () => {});
    req.end();
    await eventually(() => arrived);
    req.destroy();
    await eventually(() => remoteClosed);
    await target.waitForOpenSockets(0);
  });
});
