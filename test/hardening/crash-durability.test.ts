import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fetch } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type BinServer, ensureBuilt, startBinServer } from '../helpers/bin.js';

let dataDir: string;
const servers: BinServer[] = [];
const dirs: string[] = [];

beforeAll(async () => {
  ensureBuilt();
  dataDir = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-crash-'));
}, 120_000);

afterAll(async () => {
  for (const s of servers) {
    if (s.child.exitCode === null) s.child.kill('SIGKILL');
    await s.dispatcher.close();
  }
  for (const dir of [dataDir, ...dirs]) await rm(dir, { recursive: true, force: true });
});

/** JSON calls to `server` as the admin whose session cookie `cookie()` gives. */
function caller(server: BinServer, cookie: () => string) {
  return (method: string, p: string, body?: unknown) =>
    fetch(`${server.url}${p}`, {
      method,
      dispatcher: server.dispatcher,
      headers: { 'content-type': 'application/json', origin: server.url, cookie: cookie() },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
}

/** Starts the server binary on `env`; killed after the file if still running. */
async function startRound(env: Record<string, string>): Promise<BinServer> {
  const server = await startBinServer(env);
  servers.push(server);
  return server;
}

/** Runs the first-run setup through `call` and returns the admin's session cookie. */
async function setupAdmin(call: ReturnType<typeof caller>): Promise<string> {
  const setup = await call('POST', '/api/v1/setup', {
    username: 'admin',
    password: 'crash test password',
    setupToken: 'crash-setup-code',
  });
  expect(setup.status).toBe(201);
  return (setup.headers.get('set-cookie') ?? '').split(';')[0]!;
}

describe('kill -9 in the middle of writes', () => {
  it('keeps every acknowledged write across repeated hard kills', async () => {
    const env = { P2PSTREAM_DATA_DIR: dataDir, P2PSTREAM_SETUP_TOKEN: 'crash-setup-code' };
    let cookie = '';
    const acknowledged = new Set<string>();
    for (let round = 0; round < 6; round++) {
      const server = await startRound(env);
      const call = caller(server, () => cookie);
      if (round === 0) cookie = await setupAdmin(call);
      // The previous rounds' acknowledged tokens must all have survived the kill.
      const list = await call('GET', '/api/v1/tokens');
      expect(list.status).toBe(200);
      const names = new Set(
        ((await list.json()) as { tokens: { name: string }[] }).tokens.map((t) => t.name),
      );
      for (const name of acknowledged)
        expect(names.has(name), `${name} lost after round ${round - 1}`).toBe(true);

      // A stream of writes, cut by SIGKILL at a point that varies per round (once one was
      // acknowledged, so a busy machine cannot turn a round into a kill before any write).
      let firstAck: () => void = () => {};
      const acked = new Promise<void>((resolve) => {
        firstAck = resolve;
      });
      const writes = Array.from({ length: 40 }, (_, i) => {
        const name = `r${round}-t${i}`;
        return call('POST', '/api/v1/tokens', { name }).then(
          (res) => {
            if (res.status === 201) {
              acknowledged.add(name);
              firstAck();
            }
          },
          () => {},
        );
      });
      await Promise.race([acked, Promise.all(writes)]);
      await new Promise((resolve) => setTimeout(resolve, round * 10));
      server.child.kill('SIGKILL');
      await Promise.all(writes);
      await server.exited;
    }
    const final = await startRound(env);
    const res = await fetch(`${final.url}/api/v1/tokens`, {
      dispatcher: final.dispatcher,
      headers: { cookie },
    });
    const names = new Set(((await res.json()) as { tokens: { name: string }[] }).tokens.map((t) => t.name));
    for (const name of acknowledged) expect(names.has(name), `${name} lost`).toBe(true);
    expect(acknowledged.size).toBeGreaterThan(0);
    final.child.kill('SIGTERM');
    expect(await final.exited).toBe(0);
  }, 180_000);

  it('keeps the last acknowledged environment update across repeated hard kills', async () => {
    const envDir = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-crash-env-'));
    dirs.push(envDir);
    const env = { P2PSTREAM_DATA_DIR: envDir, P2PSTREAM_SETUP_TOKEN: 'crash-setup-code' };
    let cookie = '';
    let environmentId = '';
    let lastAcked: string | null = null;
    let inFlight: string | null = null;
    for (let round = 0; round < 5; round++) {
      const server = await startRound(env);
      const call = caller(server, () => cookie);
      if (round === 0) {
        cookie = await setupAdmin(call);
        const created = await call('POST', '/api/v1/environments', {
          name: 'start',
          url: 'https://127.0.0.1:9',
          transport: 'direct',
          accessToken: 'p2pat_crash-test-access-token',
        });
        expect(created.status).toBe(201);
        environmentId = ((await created.json()) as { environment: { id: string } }).environment.id;
        lastAcked = 'start';
      }
      // The stored name is the last acknowledged one, or the one in flight when the process died.
      const read = await call('GET', `/api/v1/environments/${environmentId}`);
      expect(read.status).toBe(200);
      const stored = ((await read.json()) as { environment: { name: string; hasAccessToken: boolean } })
        .environment;
      expect([lastAcked, inFlight]).toContain(stored.name);
      expect(stored.hasAccessToken).toBe(true);
      lastAcked = stored.name;
      inFlight = null;

      // Sequential updates (name and timeout), cut by SIGKILL after a varying number of them.
      const stopAfter = 3 + round * 4;
      let done = 0;
      const updates = (async () => {
        for (let i = 0; ; i++) {
          const name = `r${round}-u${i}`;
          inFlight = name;
          const res = await call('PATCH', `/api/v1/environments/${environmentId}`, {
            name,
            timeoutMs: 1000 + i,
          }).catch(() => null);
          if (!res) return;
          expect(res.status).toBe(200);
          lastAcked = name;
          inFlight = null;
          if (++done === stopAfter) server.child.kill('SIGKILL');
        }
      })();
      await updates;
      await server.exited;
    }
    const final = await startRound(env);
    const res = await fetch(`${final.url}/api/v1/environments/${environmentId}`, {
      dispatcher: final.dispatcher,
      headers: { cookie },
    });
    expect([lastAcked, inFlight]).toContain(
      ((await res.json()) as { environment: { name: string } }).environment.name,
    );
    final.child.kill('SIGTERM');
    expect(await final.exited).toBe(0);
  }, 180_000);
});
