/**
 * After a realistic run at debug level — setup, logins (good and bad), API
 * tokens, an agent created and rotated, an environment through that agent
 * with its access token changed, discovery, trust, relayed reads and writes,
 * a failed relayed call — no secret appears in any log line of the control
 * plane, the target or the agent, nor in any file of their data dirs. The
 * secrets key is created 0600, and a key group or others can read stops
 * start-up.
 */
import { chmod, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { createTestAgent, startTestAgent } from '../helpers/agent.js';
import { useCleanups } from '../helpers/cleanup.js';
import { startTestServer, TEST_PASSWORD, TEST_SETUP_TOKEN, type TestServer } from '../helpers/server.js';
import { discoverAndTrust, eventually } from '../integration/environment-helpers.js';

const cleanups = useCleanups();

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await filesUnder(full)));
    else out.push(full);
  }
  return out;
}

async function server(): Promise<TestServer> {
  const started = await startTestServer({ env: { LOG_LEVEL: 'debug' } });
  cleanups.push(() => started.close());
  return started;
}

describe('secrets scan', () => {
  it('finds no token, password or access token in logs or data dirs after a full run', async () => {
    const control = await server();
    const target = await server();
    const secrets: string[] = [TEST_PASSWORD, TEST_SETUP_TOKEN];

    const controlCookie = await control.setupAdmin();
    const targetCookie = await target.setupAdmin();
    const wrong = await control.request('POST', '/api/v1/auth/login', {
      body: { username: 'admin', password: 'not the password at all' },
    });
    expect(wrong.status).toBe(401);
    secrets.push('not the password at all');

    const apiToken = await control.createToken(controlCookie, 'scripts');
    secrets.push(apiToken);
    const firstAccess = await target.createToken(targetCookie, 'control-plane');
    const secondAccess = await target.createToken(targetCookie, 'control-plane-2');
    secrets.push(firstAccess, secondAccess);

    const created = await createTestAgent(control, controlCookie);
    secrets.push(created.token);
    const rotated = await control.request('POST', `/api/v1/agents/${created.id}/rotate`, { token: apiToken });
    expect(rotated.status).toBe(200);
    const agentToken = rotated.json.token as string;
    secrets.push(agentToken);
    // The old token is refused on the hub (and logged as a failure, without the token).
    const refusedAgent = startTestAgent(control, created);
    await refusedAgent.waitFor((e) => e.type === 'refused');
    await refusedAgent.close();
    const agent = startTestAgent(control, { id: created.id, token: agentToken });
    cleanups.push(() => agent.close());
    await agent.connected();

    const env = await control.request('POST', '/api/v1/environments', {
      token: apiToken,
      body: {
        name: 'remote',
        url: target.url,
        transport: 'agent',
        agentId: created.id,
        accessToken: firstAccess,
      },
    });
    expect(env.status).toBe(201);
    const id = env.json.environment.id as string;
    await discoverAndTrust({ server: control, cookie: controlCookie, token: apiToken }, id);
    const relayed = (method: string, pathname: string, body?: unknown) =>
      control.request(method, pathname, {
        token: apiToken,
        headers: { 'x-p2pstream-environment': id },
        ...(body === undefined ? {} : { body }),
      });
    expect((await relayed('GET', '/api/v1/tokens')).status).toBe(200);
    const remoteToken = await relayed('POST', '/api/v1/tokens', { name: 'made-through-the-relay' });
    expect(remoteToken.status).toBe(201);
    secrets.push(remoteToken.json.token as string);
    // Swap the access token; then one the target refuses (a REMOTE_UNAUTHORIZED path).
    expect(
      (
        await control.request('PATCH', `/api/v1/environments/${id}`, {
          token: apiToken,
          body: { accessToken: secondAccess },
        })
      ).status,
    ).toBe(200);
    expect(
      (await control.request('POST', `/api/v1/environments/${id}/test`, { token: apiToken })).json.ok,
    ).toBe(true);
    const refusedAccess = 'p2pat_thisTokenWasNeverIssuedByTheTargetAtAll000000';
    secrets.push(refusedAccess);
    await control.request('PATCH', `/api/v1/environments/${id}`, {
      token: apiToken,
      body: { accessToken: refusedAccess },
    });
    expect((await relayed('GET', '/api/v1/tokens')).json.error.code).toBe('REMOTE_UNAUTHORIZED');

    await control.server.store.flush();
    await target.server.store.flush();
    await eventually(() => agent.logs.length > 0);

    const logs = [...control.logs, ...target.logs, ...agent.logs];
    expect(logs.length).toBeGreaterThan(20);
    const files = [...(await filesUnder(control.dataDir)), ...(await filesUnder(target.dataDir))];
    expect(files.map((f) => path.basename(f))).toContain('p2pstream.json');
    const contents = await Promise.all(files.map(async (f) => [f, await readFile(f, 'latin1')] as const));
    for (const secret of secrets) {
      for (const line of logs)
        expect(line.includes(secret), `a log line holds a secret: ${line}`).toBe(false);
      for (const [file, text] of contents)
        expect(text.includes(secret), `${file} holds a secret`).toBe(false);
    }
    // No token shape at all in the logs, whatever its value.
    for (const line of logs) expect(line).not.toMatch(/p2p(at|ag)_[A-Za-z0-9_-]{20,}/);
    for (const dir of [control.dataDir, target.dataDir]) {
      expect((await stat(path.join(dir, 'secrets.key'))).mode & 0o777).toBe(0o600);
    }
  });

  it('creates the secrets key 0600 and refuses to start on one group or others can read', async () => {
    const dataDir = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-key-mode-'));
    cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
    const key = path.join(dataDir, 'secrets.key');
    await (await startTestServer({ dataDir })).close();
    expect((await stat(key)).mode & 0o777).toBe(0o600);
    for (const mode of [0o640, 0o604, 0o660]) {
      await chmod(key, mode);
      await expect(startTestServer({ dataDir }), mode.toString(8)).rejects.toThrow(
        /secrets key .* readable by other users/,
      );
    }
    await chmod(key, 0o600);
    const again = await startTestServer({ dataDir });
    await again.close();
  });
});
