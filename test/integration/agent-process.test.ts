import { type ChildProcess, spawn } from 'node:child_process';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createTestAgent, serverFingerprint } from '../helpers/agent.js';
import { BIN, ensureBuilt } from '../helpers/bin.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { eventually } from '../helpers/wait.js';

const children: ChildProcess[] = [];

function runAgent(env: Record<string, string>) {
  const child = spawn(process.execPath, [BIN, 'agent'], {
    env: { PATH: process.env.PATH ?? '', LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  let out = '';
  child.stdout!.on('data', (chunk: Buffer) => {
    out += chunk.toString();
  });
  child.stderr!.on('data', (chunk: Buffer) => {
    out += chunk.toString();
  });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, output: () => out, exited };
}

function waitForOutput(output: () => string, pattern: RegExp, timeoutMs = 10_000): Promise<void> {
  return eventually(() => {
    if (!pattern.test(output())) throw new Error(`not seen in time: ${pattern}\n${output()}`);
  }, timeoutMs);
}

describe('p2pstream agent (the built bin)', () => {
  let server: TestServer;
  let cookie: string;

  beforeAll(async () => {
    ensureBuilt();
    server = await startTestServer();
    cookie = await server.setupAdmin();
  }, 120_000);
  afterEach(() => {
    for (const child of children.splice(0)) if (child.exitCode === null) child.kill('SIGKILL');
  });
  afterAll(async () => {
    await server?.close();
  });

  it('exits non-zero with a clear message for an http:// control plane', async () => {
    const run = runAgent({
      MANAGEMENT_URL: 'http://127.0.0.1:8081',
      AGENT_ID: '6f1c1f7e-8a39-4c3e-9d7e-0c4f4f0e7a11',
      AGENT_TOKEN: `p2pag_${'a'.repeat(43)}`,
      MANAGEMENT_FINGERPRINT: 'ab'.repeat(32),
    });
    expect(await run.exited).toBe(1);
    expect(run.output()).toMatch(/MANAGEMENT_URL must use https:\/\/; http:\/\/ is refused/);
  });

  it('exits non-zero when it has no way to verify the control plane', async () => {
    const run = runAgent({
      MANAGEMENT_URL: server.url,
      AGENT_ID: '6f1c1f7e-8a39-4c3e-9d7e-0c4f4f0e7a11',
      AGENT_TOKEN: `p2pag_${'a'.repeat(43)}`,
    });
    expect(await run.exited).toBe(1);
    expect(run.output()).toMatch(/MANAGEMENT_CA_FILE or MANAGEMENT_FINGERPRINT is required/);
  });

  it('connects, logs a 401 clearly for bad credentials, and stops cleanly on SIGTERM', async () => {
    const agent = await createTestAgent(server, cookie, 'edge-process');
    const env = {
      MANAGEMENT_URL: server.url,
      AGENT_ID: agent.id,
      MANAGEMENT_FINGERPRINT: serverFingerprint(server).replace(/:/g, '').toLowerCase(),
    };
    const good = runAgent({ ...env, AGENT_TOKEN: agent.token });
    await waitForOutput(good.output, /connected to the control plane/);
    expect(server.server.hub.isConnected(agent.id)).toBe(true);
    good.child.kill('SIGTERM');
    expect(await good.exited).toBe(0);
    expect(good.output()).not.toContain(agent.token);
    const res = await server.request('GET', `/api/v1/agents/${agent.id}`, { cookie });
    expect(res.json.agent.status).toBe('offline');
    expect(res.json.agent.connections[0].endReason).toBe('closed');

    const bad = runAgent({ ...env, AGENT_TOKEN: `p2pag_${'z'.repeat(43)}` });
    await waitForOutput(bad.output, /refused the agent credentials \(401\)/);
    bad.child.kill('SIGINT');
    expect(await bad.exited).toBe(0);
  });
});
