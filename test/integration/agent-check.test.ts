/**
 * `p2pstream agent check` against a real control plane with a real agent
 * connected: every check passes and the running agent keeps its session;
 * a wrong token, a wrong pin, an unreachable target each fail their line
 * with the cause in words; the built bin prints JSON and exits 0 or 1.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CheckResult } from '../../agent/check.js';
import { runAgentCheckFromEnv } from '../../agent/main.js';
import { createCertificate, type GeneratedCertificate } from '../../src/tls/certificates.js';
import { createTestAgent, serverFingerprint, startTestAgent, type TestAgent } from '../helpers/agent.js';
import { BIN, ensureBuilt } from '../helpers/bin.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { closedPort, startTlsTarget, type TlsTarget } from '../helpers/tls-target.js';

let server: TestServer;
let cookie: string;
let credentials: { id: string; token: string };
let agent: TestAgent;
let target: TlsTarget;
let targetCert: GeneratedCertificate;
const tempDirs: string[] = [];

beforeAll(async () => {
  ensureBuilt();
  server = await startTestServer();
  cookie = await server.setupAdmin();
  credentials = await createTestAgent(server, cookie, 'edge-checked');
  agent = startTestAgent(server, credentials);
  await agent.connected();
  targetCert = await createCertificate({ commonName: 'app.internal', altNames: ['127.0.0.1'] });
  target = await startTlsTarget({ cert: targetCert.cert, key: targetCert.key });
}, 120_000);

afterAll(async () => {
  await agent?.close();
  await target?.close();
  await server?.close();
  await Promise.all(tempDirs.map((dir) => rm(dir, { recursive: true, force: true })));
});

function agentEnv(overrides: Record<string, string> = {}): Record<string, string> {
  return {
    MANAGEMENT_URL: server.url,
    AGENT_ID: credentials.id,
    AGENT_TOKEN: credentials.token,
    MANAGEMENT_FINGERPRINT: serverFingerprint(server),
    AGENT_ALLOWED_TARGETS: `127.0.0.1:${target.port},*.internal:8443`,
    ...overrides,
  };
}

async function check(env: Record<string, string>) {
  let output = '';
  const run = await runAgentCheckFromEnv(env, { write: (text) => (output += text), timeoutMs: 5000 });
  return { ...run, output };
}

function line(output: string, label: string): string {
  return output.split('\n').find((l) => l.slice(2).startsWith(label)) ?? '';
}

function result(results: CheckResult[], name: CheckResult['check']): CheckResult | undefined {
  return results.find((r) => r.check === name);
}

async function liveSession() {
  const res = await server.request('GET', `/api/v1/agents/${credentials.id}`, { cookie });
  expect(res.status).toBe(200);
  return {
    status: res.json.agent.status as string,
    sessions: (res.json.agent.connections as Array<{ id: string; endedAt: string | null }>).map((c) => ({
      id: c.id,
      endedAt: c.endedAt,
    })),
    sessionId: server.server.hub.sessionStats(credentials.id)?.sessionId ?? null,
  };
}

describe('p2pstream agent check', () => {
  it('passes every check and leaves the running agent connected on the same session', async () => {
    const before = await liveSession();
    expect(before.status).toBe('connected');
    const eventsBefore = agent.events.length;

    const run = await check(agentEnv());

    expect(run.results.map((r) => [r.check, r.ok])).toEqual([
      ['dns', true],
      ['tcp', true],
      ['tls', true],
      ['auth', true],
      ['clock', true],
      ['target', true],
    ]);
    expect(run.exitCode).toBe(0);
    const host = new URL(server.url).host;
    expect(line(run.output, 'DNS')).toMatch(/^✓ DNS +127\.0\.0\.1:\d+ {2}127\.0\.0\.1 is an address/);
    expect(line(run.output, 'TCP')).toMatch(/^✓ TCP .* connected to 127\.0\.0\.1:\d+ in \d+ ms/);
    expect(line(run.output, 'TLS')).toContain(
      `verified against MANAGEMENT_FINGERPRINT: CN=p2pstream management, issued by CN=p2pstream management`,
    );
    expect(line(run.output, 'TLS')).toContain(serverFingerprint(server));
    expect(line(run.output, 'Auth')).toContain(
      `${host}  WebSocket upgraded, authenticated as agent ${credentials.id}; protocol v1 (agent v1–v1, control plane`,
    );
    expect(line(run.output, 'Clock')).toMatch(
      /^✓ Clock .* the agent’s clock is \d+\.\d{3} s (ahead of|behind) the control plane’s \(± \d+\.\d{3} s\)$/,
    );
    expect(Math.abs(result(run.results, 'clock')?.clock?.skewMs ?? Number.NaN)).toBeLessThan(30_000);
    // The target entry that names one host is dialled and its certificate shown; `*.internal:8443` is not.
    const targetLine = line(run.output, 'Target');
    expect(targetLine).toContain(`127.0.0.1:${target.port}  TLS handshake done: CN=app.internal`);
    expect(targetLine).toContain('issued by CN=app.internal');
    expect(targetLine).toMatch(/expires \d{4}-\d{2}-\d{2} \(in 36\d days\)/);
    expect(targetLine).toContain(`SHA-256 ${targetCert.fingerprintSha256}`);
    expect(run.results.filter((r) => r.check === 'target')).toHaveLength(1);
    // The discovery handshake writes no application byte to the target.
    expect(target.receivedBytes).toBe(0);
    expect(run.output).not.toContain(credentials.token);

    // The running agent was neither replaced nor disturbed: same session, no new one recorded.
    const after = await liveSession();
    expect(after).toEqual(before);
    expect(after.sessionId).not.toBeNull();
    expect(agent.events.slice(eventsBefore)).toEqual([]);
    expect(agent.agent.state).toBe('connected');
    expect(server.logs.some((l) => l.includes('agent check connection answered'))).toBe(true);
  });

  it('fails authentication with a wrong token, in words, and exits non-zero', async () => {
    const before = await liveSession();
    const run = await check(agentEnv({ AGENT_TOKEN: `p2pag_${'z'.repeat(43)}` }));
    expect(run.exitCode).toBe(1);
    expect(result(run.results, 'tls')?.ok).toBe(true);
    expect(result(run.results, 'auth')).toMatchObject({ ok: false, code: 'UNAUTHENTICATED' });
    expect(line(run.output, 'Auth')).toMatch(
      /^✗ Auth .*authentication refused \(401\): check AGENT_ID and AGENT_TOKEN/,
    );
    expect(line(run.output, 'Clock')).toMatch(/^✗ Clock .*not checked: no welcome from the control plane/);
    expect(await liveSession()).toEqual(before);
  });

  it('fails TLS with the cause when the pinned fingerprint is not the control plane’s', async () => {
    const wrongPin = Array(32).fill('AB').join(':');
    const run = await check(agentEnv({ MANAGEMENT_FINGERPRINT: wrongPin }));
    expect(run.exitCode).toBe(1);
    expect(result(run.results, 'tcp')?.ok).toBe(true);
    expect(result(run.results, 'tls')).toMatchObject({ ok: false, code: 'CERTIFICATE_CHANGED' });
    expect(line(run.output, 'TLS')).toContain(
      `✗ TLS    ${new URL(server.url).host}  the control plane presented a certificate with fingerprint ${serverFingerprint(server)}, not the MANAGEMENT_FINGERPRINT ${wrongPin}`,
    );
    // Nothing after an unverified handshake is tried: the token is never sent.
    expect(result(run.results, 'auth')).toMatchObject({ ok: false, code: 'NOT_CHECKED' });
    expect(line(run.output, 'Auth')).toContain('not checked: the control plane’s certificate did not verify');
  });

  it('fails TLS against a CA bundle that did not sign the control plane’s certificate', async () => {
    const otherCa = await createCertificate({ commonName: 'Other CA', altNames: [], isCa: true });
    const run = await check(
      agentEnv({ MANAGEMENT_FINGERPRINT: '', MANAGEMENT_CA_FILE: await caFile(otherCa.cert) }),
    );
    expect(run.exitCode).toBe(1);
    expect(result(run.results, 'tls')).toMatchObject({ ok: false, code: 'CERTIFICATE_CHANGED' });
    expect(line(run.output, 'TLS')).toMatch(
      /the control plane's certificate does not verify against MANAGEMENT_CA_FILE \(.+\); it presented CN=p2pstream management, issued by CN=p2pstream management/,
    );
  });

  it('fails the line of an allowed target that nothing answers on, and only that line', async () => {
    const port = await closedPort();
    const run = await check(
      agentEnv({ AGENT_ALLOWED_TARGETS: `127.0.0.1:${target.port} 127.0.0.1:${port}` }),
    );
    expect(run.exitCode).toBe(1);
    const targets = run.results.filter((r) => r.check === 'target');
    expect(targets.map((r) => [r.subject, r.ok])).toEqual([
      [`127.0.0.1:${target.port}`, true],
      [`127.0.0.1:${port}`, false],
    ]);
    expect(run.results.filter((r) => !r.ok)).toHaveLength(1);
    expect(targets[1]?.code).toBe('ECONNREFUSED');
    expect(run.output).toContain(
      `✗ Target 127.0.0.1:${port}  no TLS handshake: connection refused (ECONNREFUSED): nothing listens on that port, or a firewall rejects`,
    );
  });

  it('reports settings that do not load as one failed line', async () => {
    const run = await check(agentEnv({ MANAGEMENT_URL: 'http://127.0.0.1:1' }));
    expect(run.exitCode).toBe(1);
    expect(run.output).toMatch(/^✗ Config environment {2}MANAGEMENT_URL must use https:\/\//);
  });

  it('runs as `p2pstream agent check --json` from the built bin: a JSON list, exit 0 or 1', async () => {
    const pass = await runBin(['agent', 'check', '--json'], agentEnv());
    expect(pass.code).toBe(0);
    const parsed = JSON.parse(pass.stdout) as CheckResult[];
    expect(Array.isArray(parsed)).toBe(true);
    expect(parsed.map((r) => r.check)).toEqual(['dns', 'tcp', 'tls', 'auth', 'clock', 'target']);
    expect(parsed.every((r) => r.ok && typeof r.message === 'string' && typeof r.subject === 'string')).toBe(
      true,
    );
    expect(parsed.find((r) => r.check === 'target')?.certificate).toMatchObject({
      subject: 'CN=app.internal',
      issuer: 'CN=app.internal',
      fingerprintSha256: targetCert.fingerprintSha256,
    });
    expect(parsed.find((r) => r.check === 'clock')?.clock).toMatchObject({
      skewMs: expect.any(Number),
      roundTripMs: expect.any(Number),
    });

    const fail = await runBin(['agent', 'check'], agentEnv({ AGENT_TOKEN: `p2pag_${'y'.repeat(43)}` }));
    expect(fail.code).toBe(1);
    expect(fail.stdout).toMatch(/^✗ Auth .*authentication refused \(401\)/m);
    expect(agent.agent.state).toBe('connected');
  });
});

async function caFile(pem: string): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'p2pstream-check-'));
  tempDirs.push(dir);
  const file = path.join(dir, 'ca.pem');
  await writeFile(file, pem);
  return file;
}

function runBin(
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number | null; stdout: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      env: { PATH: process.env.PATH ?? '', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
    });
    child.on('exit', (code) => resolve({ code, stdout }));
  });
}
