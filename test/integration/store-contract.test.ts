/**
 * The Store contract, run against both implementations: lowdb on a temp file
 * and PostgreSQL (a real server started for this file). Then what only a
 * shared database has: several stores (replicas) on one PostgreSQL.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { documentLayout } from '../../src/storage/document-layout.js';
import { LowdbStore } from '../../src/storage/lowdb-store.js';
import { PostgresStore, StoreUnavailableError } from '../../src/storage/postgres-store.js';
import {
  type ApiTokenRecord,
  emptyDatabase,
  type RouteRecord,
  SCHEMA_VERSION,
} from '../../src/storage/schema.js';
import { DEFERRED_WRITE_MS, type Store } from '../../src/storage/store.js';
import { useCleanups } from '../helpers/cleanup.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { eventually } from '../helpers/wait.js';

let postgres: TestPostgres;
beforeAll(async () => {
  postgres = await startPostgres();
}, 60_000);
afterAll(async () => {
  await postgres?.close();
});

interface Backend {
  name: string;
  /** A fresh location (temp dir or database). */
  location(): Promise<string>;
  open(location: string): Promise<Store>;
}

const cleanups = useCleanups();

function track<T extends Store>(store: T): T {
  cleanups.push(() => store.close().catch(() => {}));
  return store;
}

const BACKENDS: Backend[] = [
  {
    name: 'lowdb',
    async location() {
      const dir = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-contract-'));
      cleanups.push(() => rm(dir, { recursive: true, force: true }));
      return dir;
    },
    open: (dir) => LowdbStore.open(dir),
  },
  {
    name: 'PostgreSQL',
    location: () => postgres.createDatabase(),
    open: (url) => PostgresStore.open({ url }),
  },
];

function token(id: string, name = id): ApiTokenRecord {
  return { id, name, tokenHash: 'h', enabled: true, expiresAt: null, lastUsedAt: null, createdAt: '' };
}

function route(id: string, priority: number): RouteRecord {
  return {
    id,
    listenerId: 'l1',
    host: null,
    pathPrefix: `/${id}`,
    priority,
    target: {
      type: 'static',
      status: 200,
      contentType: 'text/plain',
      body: `body of ${id} \u0000 with a NUL`,
    },
    createdAt: '',
    updatedAt: '',
  };
}

describe.each(BACKENDS)('the $name store', (backend) => {
  it('creates a versioned document, and what an update acknowledged is there after reopening', async () => {
    const where = await backend.location();
    const store = await backend.open(where);
    expect(store.read().schemaVersion).toBe(SCHEMA_VERSION);
    expect(store.read().instance.id).toMatch(/^[0-9a-f-]{36}$/);
    const instanceId = store.read().instance.id;
    const results = await Promise.all(
      Array.from({ length: 50 }, (_, i) =>
        store.update((db) => {
          db.apiTokens.push(token(`t${i}`));
          return i * 2;
        }),
      ),
    );
    expect(results).toEqual(Array.from({ length: 50 }, (_, i) => i * 2));
    expect(store.read().apiTokens).toHaveLength(50);
    await store.close();
    const reopened = track(await backend.open(where));
    expect(reopened.read().apiTokens.map((t) => t.id)).toEqual(Array.from({ length: 50 }, (_, i) => `t${i}`));
    expect(reopened.read().instance.id).toBe(instanceId);
  });

  it('rejects an update whose mutation throws and keeps nothing of it', async () => {
    const where = await backend.location();
    const store = await backend.open(where);
    await store.update((db) => {
      db.apiTokens.push(token('kept'));
    });
    await expect(
      store.update(() => {
        throw new Error('refused');
      }),
    ).rejects.toThrow('refused');
    // A throwing mutation among others does not take the others down.
    const [, second] = await Promise.allSettled([
      store.update(() => {
        throw new Error('refused too');
      }),
      store.update((db) => {
        db.apiTokens.push(token('second'));
        return 'ok';
      }),
    ]);
    expect(second).toEqual({ status: 'fulfilled', value: 'ok' });
    await store.close();
    const reopened = track(await backend.open(where));
    expect(reopened.read().apiTokens.map((t) => t.id)).toEqual(['kept', 'second']);
  });

  it('keeps nested collections, values and the order of records through changes and a reopen', async () => {
    const where = await backend.location();
    const store = await backend.open(where);
    await store.update((db) => {
      db.proxy.routes.push(route('a', 1), route('b', 2), route('c', 3), route('d', 4));
      db.traffic = { enabled: false, level: 'headers' };
    });
    await store.update((db) => {
      db.proxy.routes = db.proxy.routes.filter((r) => r.id !== 'b');
      db.proxy.routes.splice(1, 0, route('between', 5));
      db.proxy.routes.unshift(route('first', 0));
      db.proxy.routes[3]!.priority = 99;
    });
    const expected = ['first', 'a', 'between', 'c', 'd'];
    expect(store.read().proxy.routes.map((r) => r.id)).toEqual(expected);
    await store.close();
    const reopened = await backend.open(where);
    expect(reopened.read().proxy.routes.map((r) => r.id)).toEqual(expected);
    expect(reopened.read().proxy.routes[3]!.priority).toBe(99);
    expect(reopened.read().proxy.routes[1]!.target).toEqual(route('a', 1).target);
    expect(reopened.read().traffic).toEqual({ enabled: false, level: 'headers' });
    await reopened.update((db) => {
      db.proxy.routes.reverse();
    });
    await reopened.close();
    const again = track(await backend.open(where));
    expect(again.read().proxy.routes.map((r) => r.id)).toEqual([...expected].reverse());
  });

  it('keeps a collection whose elements have no ids', async () => {
    const where = await backend.location();
    const store = await backend.open(where);
    const plain = [{ note: 'no id' }, { note: 'none either' }] as unknown as RouteRecord[];
    await store.update((db) => {
      db.proxy.listeners = plain as never;
    });
    await store.close();
    const reopened = await backend.open(where);
    expect(reopened.read().proxy.listeners).toEqual(plain);
    await reopened.update((db) => {
      db.proxy.listeners = [];
    });
    await reopened.close();
    const again = track(await backend.open(where));
    expect(again.read().proxy.listeners).toEqual([]);
  });

  it('applies deferred bookkeeping at once and persists it on flush or within a second', async () => {
    const where = await backend.location();
    const store = await backend.open(where);
    const result = store.updateSoon((db) => {
      db.instance.createdAt = 'deferred';
      return 'applied';
    });
    expect(result).toBe('applied');
    expect(store.read().instance.createdAt).toBe('deferred');
    await store.flush();
    const peek = track(await backend.open(where));
    expect(peek.read().instance.createdAt).toBe('deferred');
    await peek.close();
    expect(() =>
      store.updateSoon(() => {
        throw new Error('refused');
      }),
    ).toThrow('refused');
    store.updateSoon((db) => {
      db.instance.createdAt = 'by-the-timer';
    });
    // Written by the timer (no flush, no close): seen by another open of the same place.
    await eventually(
      async () => {
        const later = await backend.open(where);
        try {
          expect(later.read().instance.createdAt).toBe('by-the-timer');
        } finally {
          await later.close();
        }
      },
      { timeoutMs: DEFERRED_WRITE_MS + 5000, intervalMs: 100 },
    );
    await store.close();
  });

  it('refuses updates once closed', async () => {
    const store = await backend.open(await backend.location());
    await store.close();
    await expect(store.update(() => {})).rejects.toThrow(/closed/);
  });
});

describe('the document layout', () => {
  it('has a slot for every top-level key of the schema, so an added collection needs no storage code', () => {
    const slots = documentLayout();
    const tops = new Set(slots.map((s) => s.path[0]));
    expect([...tops].sort()).toEqual(Object.keys(emptyDatabase('')).sort());
    expect(slots.find((s) => s.name === 'proxy.routes')?.kind).toBe('collection');
    expect(slots.find((s) => s.name === 'traffic')?.kind).toBe('value');
  });
});

describe('several PostgreSQL stores on one database (replicas)', () => {
  async function replicas(count: number): Promise<{ url: string; stores: PostgresStore[] }> {
    const url = await postgres.createDatabase();
    // Opened together: migrations run once, under the lock, and all see one instance.
    const stores = await Promise.all(Array.from({ length: count }, () => PostgresStore.open({ url })));
    for (const store of stores) track(store);
    return { url, stores };
  }

  it('migrates once when started together and shares one instance', async () => {
    const { url, stores } = await replicas(3);
    expect(new Set(stores.map((s) => s.read().instance.id)).size).toBe(1);
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    const { rows } = await client.query("SELECT value FROM p2pstream_meta WHERE key = 'sqlVersion'");
    await client.end();
    expect(Number(rows[0].value)).toBe(1);
  });

  it("applies another replica's changes, deletions and large batches, and tells its listeners", async () => {
    const {
      stores: [a, b],
    } = await replicas(2);
    const seen: string[][] = [];
    b!.onExternalChange((keys) => seen.push([...keys]));
    await a!.update((db) => {
      db.apiTokens.push(token('x'), token('y'));
    });
    await eventually(() => expect(b!.read().apiTokens.map((t) => t.id)).toEqual(['x', 'y']), 1000);
    expect(seen).toContainEqual(['apiTokens']);
    await a!.update((db) => {
      db.apiTokens = db.apiTokens.filter((t) => t.id !== 'x');
      db.traffic.level = 'detailed';
    });
    await eventually(() => {
      expect(b!.read().apiTokens.map((t) => t.id)).toEqual(['y']);
      expect(b!.read().traffic.level).toBe('detailed');
    }, 1000);
    // Too large for a notification: fetched by revision.
    await a!.update((db) => {
      for (let i = 0; i < 300; i++) db.apiTokens.push(token(`bulk-${i}`, `bulk token with a long name ${i}`));
    });
    await eventually(() => expect(b!.read().apiTokens).toHaveLength(301), 1000);
    expect(b!.revision).toBe(a!.revision);
  });

  it('runs each mutation on the latest document, so a name checked free on one replica is free on all', async () => {
    const {
      stores: [a, b, c],
    } = await replicas(3);
    const claim = (store: PostgresStore, id: string) =>
      store.update((db) => {
        if (db.apiTokens.some((t) => t.name === 'unique-name')) throw new Error('CONFLICT');
        db.apiTokens.push(token(id, 'unique-name'));
      });
    const outcomes = await Promise.allSettled([
      claim(a!, 'from-a'),
      claim(b!, 'from-b'),
      claim(c!, 'from-c'),
    ]);
    expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(1);
    // Concurrent additions of different records from every replica all survive.
    await Promise.all(
      [a!, b!, c!].flatMap((store, r) =>
        Array.from({ length: 20 }, (_, i) =>
          store.update((db) => {
            db.sessions.push({
              id: `s-${r}-${i}`,
              userId: 'u',
              tokenHash: 'h',
              createdAt: '',
              expiresAt: '',
            });
          }),
        ),
      ),
    );
    for (const store of [a!, b!, c!]) {
      await eventually(() => expect(store.read().sessions).toHaveLength(60), 1000);
      expect(store.read().apiTokens.filter((t) => t.name === 'unique-name')).toHaveLength(1);
    }
  });

  it("puts records another replica changed in their place, a few or many at once, beside this one's unwritten ones", async () => {
    const {
      stores: [a, b],
    } = await replicas(2);
    const ids = Array.from({ length: 30 }, (_, i) => `t-${i}`);
    await a!.update((db) => {
      db.apiTokens.push(...ids.map((id) => token(id)));
    });
    await eventually(() => expect(b!.read().apiTokens.map((t) => t.id)).toEqual(ids), 1000);
    // Added on b and not written yet: stays where it is while a's changes come in.
    b!.updateSoon((db) => {
      db.apiTokens.push(token('local'));
    });
    await a!.update((db) => {
      db.apiTokens[3]!.lastUsedAt = 'few';
    });
    await eventually(() => expect(b!.read().apiTokens[3]!.lastUsedAt).toBe('few'), 1000);
    await a!.update((db) => {
      for (const t of db.apiTokens.slice(10, 25)) t.lastUsedAt = `many ${t.id}`;
    });
    await eventually(() => expect(b!.read().apiTokens[24]!.lastUsedAt).toBe('many t-24'), 1000);
    expect(b!.read().apiTokens.map((t) => t.id)).toEqual([...ids, 'local']);
    expect(b!.read().apiTokens.filter((t) => t.lastUsedAt?.startsWith('many'))).toHaveLength(15);
    await b!.flush();
    await eventually(() => expect(a!.read().apiTokens.map((t) => t.id)).toEqual([...ids, 'local']), 1000);
  });

  it("merges another replica's change into a record this one changed but has not written yet, field by field", async () => {
    const {
      stores: [a, b],
    } = await replicas(2);
    await a!.update((db) => {
      db.apiTokens.push(token('shared'));
    });
    await eventually(() => expect(b!.read().apiTokens).toHaveLength(1), 1000);
    // Bookkeeping on b (deferred), a change of another field on a meanwhile.
    b!.updateSoon((db) => {
      db.apiTokens[0]!.lastUsedAt = 'used-on-b';
    });
    await a!.update((db) => {
      db.apiTokens[0]!.enabled = false;
    });
    await eventually(() => expect(b!.read().apiTokens[0]!.enabled).toBe(false), 1000);
    expect(b!.read().apiTokens[0]!.lastUsedAt).toBe('used-on-b');
    await b!.flush();
    await eventually(
      () => expect(a!.read().apiTokens[0]).toMatchObject({ enabled: false, lastUsedAt: 'used-on-b' }),
      1000,
    );
  });

  it("merges a list of records with ids element by element (an agent's sessions on two replicas)", async () => {
    const {
      stores: [a, b],
    } = await replicas(2);
    const session = (id: string) => ({ id, endedAt: null as string | null });
    await a!.update((db) => {
      db.apiTokens.push({ ...token('shared'), sessions: [session('old'), session('on-b')] } as never);
    });
    await eventually(() => expect(b!.read().apiTokens).toHaveLength(1), 1000);
    type WithSessions = { sessions: Array<ReturnType<typeof session>> };
    // b ends its session (deferred bookkeeping) while a starts another one and drops the oldest.
    b!.updateSoon((db) => {
      (db.apiTokens[0] as unknown as WithSessions).sessions[1]!.endedAt = 'ended-on-b';
    });
    await a!.update((db) => {
      const sessions = (db.apiTokens[0] as unknown as WithSessions).sessions;
      sessions.push(session('on-a'));
      sessions.shift();
    });
    const expected = [
      { id: 'on-b', endedAt: 'ended-on-b' },
      { id: 'on-a', endedAt: null },
    ];
    await eventually(
      () => expect((b!.read().apiTokens[0] as unknown as WithSessions).sessions).toEqual(expected),
      1000,
    );
    await b!.flush();
    await eventually(
      () => expect((a!.read().apiTokens[0] as unknown as WithSessions).sessions).toEqual(expected),
      1000,
    );
  });

  it('writes deferred changes of named records with any unnamed change made meanwhile, and one of a record deleted elsewhere writes nothing back', async () => {
    const {
      url,
      stores: [a, b],
    } = await replicas(2);
    await a!.update((db) => {
      db.apiTokens.push(token('one'), token('two'), token('three'));
    });
    await eventually(() => expect(b!.read().apiTokens).toHaveLength(3), 1000);
    const used = (id: string, at: string) =>
      b!.updateSoon(
        (db) => {
          const record = db.apiTokens.find((t) => t.id === id);
          if (record) record.lastUsedAt = at;
        },
        { collection: 'apiTokens', id },
      );
    used('one', 'named-1');
    used('three', 'named-3');
    await b!.flush();
    await eventually(
      () => expect(a!.read().apiTokens.map((t) => t.lastUsedAt)).toEqual(['named-1', null, 'named-3']),
      1000,
    );
    // A named change and an unnamed one in the same write: both reach the other replica.
    used('two', 'named-2');
    b!.updateSoon((db) => {
      db.traffic.level = 'detailed';
    });
    await b!.flush();
    await eventually(() => {
      expect(a!.read().apiTokens.map((t) => t.lastUsedAt)).toEqual(['named-1', 'named-2', 'named-3']);
      expect(a!.read().traffic.level).toBe('detailed');
    }, 1000);
    // Deleted on a while b's named change waits: it stays deleted everywhere.
    used('one', 'after-delete');
    await a!.update((db) => {
      db.apiTokens = db.apiTokens.filter((t) => t.id !== 'one');
    });
    await eventually(() => expect(b!.read().apiTokens.map((t) => t.id)).toEqual(['two', 'three']), 1000);
    await b!.flush();
    const peek = track(await PostgresStore.open({ url }));
    expect(peek.read().apiTokens.map((t) => t.id)).toEqual(['two', 'three']);
  });

  it('fails an update while PostgreSQL is unreachable and keeps the document as stored', async () => {
    const url = await postgres.createDatabase();
    const store = track(await PostgresStore.open({ url }));
    await store.update((db) => {
      db.apiTokens.push(token('stored'));
    });
    // Refuse new connections to its database and cut the ones it has, from the server side.
    const database = new URL(url).pathname.slice(1);
    const admin = new pg.Client({ connectionString: postgres.url });
    await admin.connect();
    await admin.query(`ALTER DATABASE "${database}" ALLOW_CONNECTIONS false`);
    await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1', [
      database,
    ]);
    await expect(
      store.update((db) => {
        db.apiTokens.push(token('lost'));
      }),
    ).rejects.toBeInstanceOf(StoreUnavailableError);
    expect(store.read().apiTokens.map((t) => t.id)).toEqual(['stored']);
    await admin.query(`ALTER DATABASE "${database}" ALLOW_CONNECTIONS true`);
    await admin.end();
    // Back: the next update goes through on a new connection.
    await store.update((db) => {
      db.apiTokens.push(token('after'));
    });
    expect(store.read().apiTokens.map((t) => t.id)).toEqual(['stored', 'after']);
  });

  it('reports deferred bookkeeping it could not write from flush, and writes it once PostgreSQL is back', async () => {
    const url = await postgres.createDatabase();
    const store = track(await PostgresStore.open({ url }));
    const database = new URL(url).pathname.slice(1);
    const admin = new pg.Client({ connectionString: postgres.url });
    await admin.connect();
    await admin.query(`ALTER DATABASE "${database}" ALLOW_CONNECTIONS false`);
    await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1', [
      database,
    ]);
    store.updateSoon((db) => {
      db.apiTokens.push(token('bookkeeping'));
    });
    await expect(store.flush()).rejects.toBeInstanceOf(StoreUnavailableError);
    await admin.query(`ALTER DATABASE "${database}" ALLOW_CONNECTIONS true`);
    await admin.end();
    await store.flush();
    await store.close();
    const reopened = track(await PostgresStore.open({ url }));
    expect(reopened.read().apiTokens.map((t) => t.id)).toEqual(['bookkeeping']);
  });
});
