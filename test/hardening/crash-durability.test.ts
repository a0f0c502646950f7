import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fetch } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type BinServer, ensureBuilt, startBinServer } from '../helpers/bin.js';

let dataDir: string;
const servers: BinServer[] = [];

beforeAll(async () => {
  ensureBuilt();
  dataDir = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-crash-'));
}, 120_000);

afterAll(async () => {
  for (const s of servers) {
    if (s.child.exitCode === null) s.child.kill('SIGKILL');
    await s.dispatcher.close();
  }
  await rm(dataDir, { recursive: true, force: true });
});

describe('kill -9 in the middle of writes', () => {
  it('keeps every acknowledged write across repeated hard kills', async () => {
    const env = { P2PSTREAM_DATA_DIR: dataDir, P2PSTREAM_SETUP_TOKEN: 'crash-setup-code' };
    let cookie = '';
    const acknowledged = new Set<string>();
    for (let round = 0; round < 6; round++) {
      const server = await startBinServer(env);
      servers.push(server);
      const call = (method: string, p: string, body?: unknown) =>
        fetch(`${server.url}${p}`, {
          method,
          dispatcher: server.dispatcher,
          headers: { 'content-type': 'application/json', origin: server.url, cookie },
          ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        });
      if (round === 0) {
        const setup = await call('POST', '/api/v1/setup', {
          username: 'admin',
          password: 'crash test password',
          setupToken: 'crash-setup-code',
        });
        expect(setup.status).toBe(201);
        cookie = (setup.headers.get('set-cookie') ?? '').split(';')[0]!;
      }
      // The previous rounds' acknowledged tokens must all have survived the kill.
      const list = await call('GET', '/api/v1/tokens');
      expect(list.status).toBe(200);
      const names = new Set(
        ((await list.json()) as { tokens: { name: string }[] }).tokens.map((t) => t.name),
      );
      for (const name of acknowledged)
        expect(names.has(name), `${name} lost after round ${round - 1}`).toBe(true);

      // A stream of writes, cut by SIGKILL at a point that varies per round.
      const writes = Array.from({ length: 40 }, (_, i) => {
        const name = `r${round}-t${i}`;
        return call('POST', '/api/v1/tokens', { name }).then(
          (res) => {
            if (res.status === 201) acknowledged.add(name);
          },
          () => {},
        );
      });
      await new Promise((resolve) => setTimeout(resolve, 15 + round * 25));
      server.child.kill('SIGKILL');
      await Promise.all(writes);
      await server.exited;
    }
    const final = await startBinServer(env);
    servers.push(final);
    const res = await fetch(`${final.url}/api/v1/tokens`, {
      dispatcher: final.dispatcher,
      headers: { cookie },
    });
    const names = new Set(((await res.json()) as { tokens: { name: string }[] }).tokens.map((t) => t.name));
    for (const name of acknowledged) expect(names.has(name), `${name} lost`).toBe(true);
    expect(acknowledged.size).toBeGreaterThan(0);
    final.child.kill('SIGTERM');
    expect(await final.exited).toBe(0);
  }, 60_000);
});
