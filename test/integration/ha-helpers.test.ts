import { existsSync } from 'node:fs';
import { connect as natsConnect } from '@nats-io/transport-node';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { startNats } from '../helpers/nats.js';
import { startPostgres, TEST_PG_USER } from '../helpers/postgres.js';
import { portAccepts } from '../helpers/processes.js';

function processAlive(pid: number | undefined): boolean {
  if (pid === undefined) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('test helpers for the real PostgreSQL and nats-server', () => {
  it('runs PostgreSQL unprivileged on loopback, refuses a wrong password, and leaves no process, port or dir behind', async () => {
    const postgres = await startPostgres();
    const pid = postgres.pid();
    const url = await postgres.createDatabase();
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    const { rows } = await client.query('SELECT current_user AS "user", 1 + 1 AS two');
    expect(rows[0]).toEqual({ user: TEST_PG_USER, two: 2 });
    await client.end();
    const wrong = new pg.Client({ connectionString: url.replace(/:[^:@/]+@/, ':wrong@') });
    await expect(wrong.connect()).rejects.toThrow(/password authentication failed/);
    await wrong.end().catch(() => {});
    if (process.getuid?.() === 0) {
      // PostgreSQL would refuse to run as root: the server process belongs to someone else.
      const status = await import('node:fs/promises').then((fs) =>
        fs.readFile(`/proc/${pid}/status`, 'utf8'),
      );
      expect(status).not.toMatch(/^Uid:\s+0\s/m);
    }
    expect(existsSync(postgres.dir)).toBe(true);
    await postgres.close();
    expect(processAlive(pid)).toBe(false);
    expect(await portAccepts(postgres.port)).toBe(false);
    expect(existsSync(postgres.dir)).toBe(false);
  });

  it('runs nats-server with JetStream on loopback, stops and starts it on the same port, and closes it', async () => {
    const nats = await startNats();
    const nc = await natsConnect({ servers: nats.url });
    const sub = nc.subscribe('p2pstream.test', { max: 1 });
    nc.publish('p2pstream.test', 'hello');
    for await (const message of sub) expect(message.string()).toBe('hello');
    const info = await nc.request('$JS.API.INFO', undefined, { timeout: 5000 });
    expect(info.json<{ type: string }>().type).toBe('io.nats.jetstream.api.v1.account_info_response');
    await nc.close();

    await nats.stop();
    expect(await portAccepts(nats.port)).toBe(false);
    await nats.start();
    expect(await portAccepts(nats.port)).toBe(true);
    await nats.close();
    expect(await portAccepts(nats.port)).toBe(false);
    expect(existsSync(nats.dir)).toBe(false);
  });
});
