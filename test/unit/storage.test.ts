import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  DATABASE_FILE_NAME,
  DatabaseUnreadableError,
  DatabaseWriteError,
  LowdbStore,
} from '../../src/storage/lowdb-store.js';
import { type Database, emptyDatabase, SCHEMA_VERSION } from '../../src/storage/schema.js';
import { createSecretsBox, loadSecretsBox, SECRETS_KEY_FILE_NAME } from '../../src/storage/secrets-box.js';
import { DEFERRED_WRITE_MS } from '../../src/storage/store.js';
import { eventually } from '../helpers/wait.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-store-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('LowdbStore', () => {
  it('creates a versioned database, and what an update acknowledged is there after reopening', async () => {
    const store = await LowdbStore.open(dir);
    expect(store.read().schemaVersion).toBe(SCHEMA_VERSION);
    const instanceId = store.read().instance.id;
    await Promise.all(
      Array.from({ length: 50 }, (_, i) =>
        store.update((db) => {
          db.apiTokens.push({
            id: `t${i}`,
            name: `n${i}`,
            tokenHash: 'h',
            enabled: true,
            expiresAt: null,
            lastUsedAt: null,
            createdAt: '',
          });
        }),
      ),
    );
    await store.close();
    const reopened = await LowdbStore.open(dir);
    expect(reopened.read().apiTokens).toHaveLength(50);
    expect(reopened.read().instance.id).toBe(instanceId);
  });

  it('acknowledges each update only once it is on disk, and serialises a burst a few times, not once per update', async () => {
    const store = await LowdbStore.open(dir);
    const file = path.join(dir, DATABASE_FILE_NAME);
    const stringify = vi.spyOn(JSON, 'stringify');
    const onDisk: boolean[] = [];
    try {
      await Promise.all(
        Array.from({ length: 100 }, async (_, i) => {
          await store.update((db) => {
            db.apiTokens.push({
              id: `burst-${i}`,
              name: `n${i}`,
              tokenHash: 'h',
              enabled: true,
              expiresAt: null,
              lastUsedAt: null,
              createdAt: '',
            });
          });
          onDisk[i] = (await readFile(file, 'utf8')).includes(`"burst-${i}"`);
        }),
      );
      expect(stringify.mock.calls.length).toBeLessThan(10);
    } finally {
      stringify.mockRestore();
    }
    expect(onDisk.filter(Boolean)).toHaveLength(100);
    await store.close();
  });

  it('persists deferred bookkeeping in one later write, or at once on flush', async () => {
    const store = await LowdbStore.open(dir);
    const file = path.join(dir, DATABASE_FILE_NAME);
    const stringify = vi.spyOn(JSON, 'stringify');
    try {
      for (let i = 0; i < 50; i++) {
        store.updateSoon((db) => {
          db.instance.createdAt = `deferred-${i}`;
        });
      }
      // Applied in memory at once, not yet written.
      expect(store.read().instance.createdAt).toBe('deferred-49');
      expect(await readFile(file, 'utf8')).not.toContain('deferred-');
      expect(stringify).not.toHaveBeenCalled();
      await store.flush();
      expect(stringify.mock.calls.length).toBe(1);
    } finally {
      stringify.mockRestore();
    }
    expect(await readFile(file, 'utf8')).toContain('"deferred-49"');
    store.updateSoon((db) => {
      db.instance.createdAt = 'by-the-timer';
    });
    // Written by the timer, without a flush.
    await eventually(async () => expect(await readFile(file, 'utf8')).toContain('"by-the-timer"'), {
      timeoutMs: DEFERRED_WRITE_MS + 5000,
    });
    await store.close();
  });

  it('writes nothing when a mutation throws', async () => {
    const store = await LowdbStore.open(dir);
    const before = await readFile(path.join(dir, DATABASE_FILE_NAME), 'utf8');
    await expect(
      store.update(() => {
        throw new Error('refused');
      }),
    ).rejects.toThrow('refused');
    expect(await readFile(path.join(dir, DATABASE_FILE_NAME), 'utf8')).toBe(before);
  });

  it('leaves memory as it was when a mutation throws halfway, so memory and disk stay equal', async () => {
    const store = await LowdbStore.open(dir);
    await store.update((db) => {
      db.instance.id = 'kept';
    });
    await expect(
      store.update((db) => {
        db.instance.id = 'half-done';
        db.apiTokens.push({
          id: 't',
          name: 'n',
          tokenHash: 'h',
          enabled: true,
          expiresAt: null,
          lastUsedAt: null,
          createdAt: '',
        });
        throw new Error('refused after changing things');
      }),
    ).rejects.toThrow('refused after changing things');
    expect(store.read().instance.id).toBe('kept');
    expect(store.read().apiTokens).toEqual([]);
    // The next write carries nothing of the failed mutation.
    await store.update((db) => {
      db.users = [];
    });
    const onDisk = JSON.parse(await readFile(path.join(dir, DATABASE_FILE_NAME), 'utf8'));
    expect(onDisk).toEqual(JSON.parse(JSON.stringify(store.read())));
    await store.close();
  });

  it('reports a failed write from flush and close, and clears it once a write succeeds', async () => {
    const setId = (id: string) => (db: Database) => {
      db.instance.id = id;
    };
    const store = await LowdbStore.open(dir);
    const file = path.join(dir, DATABASE_FILE_NAME);
    // A directory where the file should be: the atomic rename onto it fails.
    await rm(file);
    await mkdir(file);
    await expect(store.update(setId('lost'))).rejects.toThrow();
    store.updateSoon(setId('also lost'));
    await expect(store.flush()).rejects.toBeInstanceOf(DatabaseWriteError);
    await expect(store.flush()).rejects.toThrow(`cannot write the database ${file}`);

    await rm(file, { recursive: true });
    await store.update(setId('written'));
    await expect(store.flush()).resolves.toBeUndefined();
    await rm(file);
    await mkdir(file);
    store.updateSoon(setId('lost at close'));
    await expect(store.close()).rejects.toBeInstanceOf(DatabaseWriteError);
    await expect(store.update(() => {})).rejects.toThrow('the store is closed');
  });

  it('migrates an unversioned document and keeps its data', async () => {
    await writeFile(
      path.join(dir, DATABASE_FILE_NAME),
      JSON.stringify({ instance: { id: 'old-instance', createdAt: '2025-01-01T00:00:00.000Z' }, users: [] }),
    );
    const store = await LowdbStore.open(dir);
    expect(store.read().schemaVersion).toBe(SCHEMA_VERSION);
    expect(store.read().instance.id).toBe('old-instance');
    expect(store.read().environments).toEqual([]);
    const onDisk = JSON.parse(await readFile(path.join(dir, DATABASE_FILE_NAME), 'utf8'));
    expect(onDisk.schemaVersion).toBe(SCHEMA_VERSION);
  });

  it('fills a top-level collection that a current-version document written by an older build lacks', async () => {
    const { proxy: _dropped, ...older } = emptyDatabase('older-build');
    await writeFile(path.join(dir, DATABASE_FILE_NAME), JSON.stringify(older));
    const store = await LowdbStore.open(dir);
    expect(store.read().instance.id).toBe('older-build');
    expect(store.read().proxy).toEqual({ listeners: [], routes: [] });
  });

  it('refuses a file that is not a JSON object and names it', async () => {
    const file = path.join(dir, DATABASE_FILE_NAME);
    await writeFile(file, '[1,2,3]');
    const err = await LowdbStore.open(dir).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DatabaseUnreadableError);
    expect((err as DatabaseUnreadableError).file).toBe(file);
    expect(await readFile(file, 'utf8')).toBe('[1,2,3]');
  });
});

describe('secrets box', () => {
  it('creates a 0600 key once and opens what it sealed', async () => {
    const box = await loadSecretsBox(dir);
    const info = await stat(path.join(dir, SECRETS_KEY_FILE_NAME));
    expect(info.mode & 0o777).toBe(0o600);
    const sealed = box.seal('environment-access-token', 'env-1', 'p2pat_secret');
    expect(sealed).not.toContain('p2pat_secret');
    const again = await loadSecretsBox(dir);
    expect(again.open('environment-access-token', 'env-1', sealed)).toBe('p2pat_secret');
  });

  it('does not open a value bound to another record or purpose, or tampered with', () => {
    const box = createSecretsBox(Buffer.alloc(32, 7));
    const sealed = box.seal('environment-access-token', 'env-1', 'secret');
    expect(() => box.open('environment-access-token', 'env-2', sealed)).toThrow();
    expect(() => box.open('other-purpose', 'env-1', sealed)).toThrow();
    const parts = sealed.split('.');
    const flipped = Buffer.from(parts[3]!, 'base64url');
    flipped[0] = flipped[0]! ^ 1;
    parts[3] = flipped.toString('base64url');
    expect(() => box.open('environment-access-token', 'env-1', parts.join('.'))).toThrow();
    expect(() => createSecretsBox(Buffer.alloc(31))).toThrow(/32 bytes/);
  });
});
