/**
 * Real processes killed (SIGKILL) in the middle of relayed streams, through
 * an agent and directly:
 * - a target instance (the built `p2pstream server`) under live trace
 *   streams;
 * - a target process in the middle of large responses;
 * - the agent process (the built `p2pstream agent`) in the middle of a large
 *   response.
 * Each caller's stream ends at once (the relay cuts the connection once the
 * head is out), no stream stays open on the control plane or the agent, and
 * the next call answers ENVIRONMENT_UNREACHABLE or AGENT_OFFLINE.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fetch, request } from 'undici';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createCertificate, type GeneratedCertificate } from '../../src/tls/certificates.js';
import { createTestAgent, serverFingerprint, startTestAgent, type TestAgent } from '../helpers/agent.js';
import { BIN, type BinServer, ensureBuilt, startBinServer } from '../helpers/bin.js';
import { freePort } from '../helpers/processes.js';
import {
  eventually,
  type Instance,
  registerEnvironment,
  startInstance,
} from '../integration/environment-helpers.js';
import { openSse, proxyClient } from '../integration/proxy-helpers.js';

const MiB = 1024 * 1024;
const BULK_TARGET = path.join(import.meta.dirname, 'fixtures', 'bulk-target.mjs');

const cleanups: Array<() => Promise<void> | void> = [];
const children: ChildProcess[] = [];
afterEach(async () => {
  for (const child of children.splice(0)) if (child.exitCode === null) child.kill('SIGKILL');
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});
beforeAll(() => ensureBuilt(), 120_000);

function exited(child: ChildProcess): Promise<void> {
  return child.exitCode !== null || child.signalCode !== null
    ? Promise.resolve()
    : new Promise((resolve) => child.once('exit', () => resolve()));
}

/** A control plane (in process, so its counters can be read) with an admin. */
async function controlPlane(): Promise<Instance> {
  const control = await startInstance();
  cleanups.push(() => control.server.close());
  return control;
}

/** An in-process agent connected to `control`. */
async function inProcessAgent(control: Instance): Promise<{ id: string; agent: TestAgent }> {
  const created = await createTestAgent(control.server, control.cookie);
  const agent = startTestAgent(control.server, created);
  cleanups.push(() => agent.close());
  await agent.connected();
  return { id: created.id, agent };
}

/** The bulk target process; `cuts` lists the responses it saw cut before their end. */
async function bulkTarget(cert: GeneratedCertificate) {
  const child = spawn(process.execPath, [BULK_TARGET], {
    env: { PATH: process.env.PATH ?? '', TARGET_CERT: cert.cert, TARGET_KEY: cert.key },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.push(child);
  const cuts: number[] = [];
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (data: Buffer) => {
      out += data.toString();
      for (const match of out.matchAll(/^cut (\d+)$/gm)) cuts.push(Number(match[1]));
      out = out.slice(out.lastIndexOf('\n') + 1);
      const listening = /listening (\d+)/.exec(data.toString());
      if (listening) resolve(Number(listening[1]));
    });
    child.once('exit', (code) => reject(new Error(`bulk target exited with ${code}`)));
  });
  return { child, url: `https://127.0.0.1:${port}`, cuts };
}

/** A large relayed download, read until `bytes` are in; `rest()` reads on and tells how it ended. */
async function download(control: Instance, environmentId: string, bytes: number) {
  const res = await request(`${control.server.url}/api/v1/tokens?environment=${environmentId}`, {
    dispatcher: control.server.dispatcher,
    headers: { authorization: `Bearer ${control.token}` },
  });
  expect(res.statusCode).toBe(200);
  const body = res.body[Symbol.asyncIterator]();
  let received = 0;
  while (received < bytes) {
    const next = await body.next();
    if (next.done) throw new Error('the body ended early');
    received += (next.value as Buffer).length;
  }
  return {
    async rest(): Promise<'completed' | 'aborted'> {
      try {
        for (;;) if ((await body.next()).done) return 'completed';
      } catch {
        return 'aborted';
      }
    },
  };
}

async function codeOf(control: Instance, environmentId: string): Promise<[number, string]> {
  const res = await control.server.request('GET', '/api/v1/tokens', {
    token: control.token,
    headers: { 'x-p2pstream-environment': environmentId },
  });
  return [res.status, res.json?.error?.code];
}

describe('a target instance killed under live trace streams', () => {
  it('ends the streams through the agent and direct at once, leaves none open, and the next call is ENVIRONMENT_UNREACHABLE', async () => {
    const control = await controlPlane();
    const { id: agentId, agent } = await inProcessAgent(control);

    // The target: the built server in its own process, with a proxy route to make traffic.
    const dataDir = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-killed-target-'));
    cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
    const target: BinServer = await startBinServer({
      P2PSTREAM_DATA_DIR: dataDir,
      P2PSTREAM_SETUP_TOKEN: 'killed-target-setup',
    });
    children.push(target.child);
    cleanups.push(() => target.dispatcher.close());
    const api = async (method: string, pathname: string, body: unknown, auth: Record<string, string>) => {
      const res = await fetch(`${target.url}${pathname}`, {
        method,
        dispatcher: target.dispatcher,
        headers: { 'content-type': 'application/json', origin: target.url, ...auth },
        body: JSON.stringify(body),
      });
      return { res, json: (await res.json()) as Record<string, unknown> };
    };
    const setup = await api(
      'POST',
      '/api/v1/setup',
      { username: 'admin', password: 'a target password', setupToken: 'killed-target-setup' },
      {},
    );
    const cookie = { cookie: (setup.res.headers.get('set-cookie') ?? '').split(';')[0]! };
    const accessToken = (await api('POST', '/api/v1/tokens', { name: 'control-plane' }, cookie)).json
      .token as string;
    const proxyPort = await freePort();
    const listener = await api(
      'POST',
      '/api/v1/proxy/listeners',
      { name: 'public', bindAddress: '127.0.0.1', port: proxyPort },
      cookie,
    );
    const route = await api(
      'POST',
      '/api/v1/proxy/routes',
      {
        listenerId: (listener.json.listener as { id: string }).id,
        pathPrefix: '/',
        target: { type: 'static', status: 200, contentType: 'text/plain', body: 'ok' },
      },
      cookie,
    );
    expect(route.res.status).toBe(201);

    const throughAgent = await registerEnvironment(
      control,
      { url: target.url, accessToken },
      { transport: 'agent', agentId },
    );
    const direct = await registerEnvironment(control, { url: target.url, accessToken });
    const readers = await Promise.all(
      [throughAgent, direct].map((env) =>
        openSse(control.server, `/api/v1/traffic/stream?environment=${env}`, control.token),
      ),
    );
    for (const reader of readers) cleanups.push(() => reader.close());
    const client = proxyClient();
    cleanups.push(() => client.close());
    // Traffic until both streams have shown an event (each subscribes when its request arrives).
    const statuses: number[] = [];
    await eventually(
      async () => {
        statuses.push((await client.send(proxyPort, `/before-the-kill/${statuses.length}`)).status);
        return readers.every((r) => r.messages.length > 0);
      },
      { timeoutMs: 15_000, intervalMs: 20 },
    );
    expect(statuses.filter((status) => status !== 200)).toEqual([]);
    expect(control.server.server.hub.sessionStats(agentId)?.activeStreams).toBe(1);
    expect(control.server.server.directStreams()).toBe(1);

    target.child.kill('SIGKILL');
    // Ends (a hung stream fails the test by its timeout).
    await Promise.all(readers.map((r) => r.ended));
    await eventually(() => control.server.server.hub.sessionStats(agentId)?.activeStreams === 0);
    await eventually(() => control.server.server.directStreams() === 0);
    await eventually(() => agent.agent.stats()?.activeStreams === 0);
    expect(control.server.server.hub.isConnected(agentId)).toBe(true);
    expect(await codeOf(control, throughAgent)).toEqual([502, 'ENVIRONMENT_UNREACHABLE']);
    expect(await codeOf(control, direct)).toEqual([502, 'ENVIRONMENT_UNREACHABLE']);
  }, 30_000);
});

describe('large responses cut by a killed process', () => {
  let cert: GeneratedCertificate;
  beforeAll(async () => {
    cert = await createCertificate({ altNames: ['127.0.0.1'] });
  });

  it('a killed target: both downloads abort at once, no stream stays open, then ENVIRONMENT_UNREACHABLE', async () => {
    const control = await controlPlane();
    const { id: agentId, agent } = await inProcessAgent(control);
    const target = await bulkTarget(cert);
    const throughAgent = await registerEnvironment(
      control,
      { url: target.url, accessToken: 'p2pat_any' },
      { transport: 'agent', agentId },
    );
    const direct = await registerEnvironment(control, { url: target.url, accessToken: 'p2pat_any' });
    const downloads = await Promise.all([throughAgent, direct].map((env) => download(control, env, 2 * MiB)));
    expect(control.server.server.hub.sessionStats(agentId)?.activeStreams).toBe(1);
    expect(control.server.server.directStreams()).toBe(1);

    target.child.kill('SIGKILL');
    expect(await Promise.all(downloads.map((d) => d.rest()))).toEqual(['aborted', 'aborted']);
    await eventually(() => control.server.server.hub.sessionStats(agentId)?.activeStreams === 0);
    await eventually(() => control.server.server.directStreams() === 0);
    await eventually(() => agent.agent.stats()?.activeStreams === 0);
    expect(agent.agent.stats()?.bufferedBytes).toBe(0);
    expect(await codeOf(control, throughAgent)).toEqual([502, 'ENVIRONMENT_UNREACHABLE']);
    expect(await codeOf(control, direct)).toEqual([502, 'ENVIRONMENT_UNREACHABLE']);
  });

  it('a killed agent process: the download aborts at once, the target sees its request cut, then AGENT_OFFLINE', async () => {
    const control = await controlPlane();
    const created = await createTestAgent(control.server, control.cookie);
    const agentProcess = spawn(process.execPath, [BIN, 'agent'], {
      env: {
        PATH: process.env.PATH ?? '',
        LOG_LEVEL: 'warn',
        MANAGEMENT_URL: control.server.url,
        AGENT_ID: created.id,
        AGENT_TOKEN: created.token,
        MANAGEMENT_FINGERPRINT: serverFingerprint(control.server),
      },
      stdio: 'ignore',
    });
    children.push(agentProcess);
    const hub = control.server.server.hub;
    await eventually(() => hub.isConnected(created.id), 10_000);
    const target = await bulkTarget(cert);
    const env = await registerEnvironment(
      control,
      { url: target.url, accessToken: 'p2pat_any' },
      { transport: 'agent', agentId: created.id },
    );
    const downloading = await download(control, env, 2 * MiB);
    expect(hub.sessionStats(created.id)?.activeStreams).toBe(1);

    agentProcess.kill('SIGKILL');
    expect(await downloading.rest()).toBe('aborted');
    await exited(agentProcess);
    expect(hub.isConnected(created.id)).toBe(false);
    expect(hub.sessionStats(created.id)).toBeNull();
    // The agent's connection to the target died with it.
    await eventually(() => target.cuts.length === 1);
    expect(await codeOf(control, env)).toEqual([503, 'AGENT_OFFLINE']);
  }, 30_000);
});
