/**
 * ProxyConfigService's rollback: when a change was applied to the data plane
 * but could not be saved, the data plane is put back; when that fails too,
 * it is logged with both causes rather than lost.
 */
import { describe, expect, it } from 'vitest';
import { ProxyConfigService, type ProxyRuntime } from '../../src/domain/proxy-config-service.js';
import type { Database, ListenerRecord } from '../../src/storage/schema.js';
import { emptyDatabase } from '../../src/storage/schema.js';
import { MemoryStore } from '../../src/storage/store.js';
import { captureLogs } from '../helpers/log-capture.js';

/** A store whose next update fails, as a full disk would make it. */
class FailingStore extends MemoryStore {
  failNext = false;
  override async update<T>(mutate: (db: Database) => T): Promise<T> {
    if (this.failNext) {
      this.failNext = false;
      throw new Error('disk full');
    }
    return super.update(mutate);
  }
}

function setup(runtime: Partial<ProxyRuntime>) {
  const logs = captureLogs();
  const store = new FailingStore(emptyDatabase('instance-1'));
  const started: string[] = [];
  const proxy = new ProxyConfigService({
    store,
    logger: logs.logger,
    runtime: {
      startListener: async (listener: Readonly<ListenerRecord>) => {
        started.push(`${listener.id}:${listener.port}`);
      },
      stopListener: async () => {},
      setRoutes: () => {},
      listenerStatus: () => ({ running: true, error: null }),
      ...runtime,
    },
  });
  return { logs, store, proxy, started };
}

describe('ProxyConfigService rollback', () => {
  it('logs a listener it could not stop after its creation was not saved, with both causes', async () => {
    const { logs, store, proxy } = setup({
      stopListener: async () => {
        throw new Error('port stuck');
      },
    });
    store.failNext = true;
    await expect(proxy.createListener({ name: 'web', port: 8080 })).rejects.toThrow('disk full');
    expect(store.read().proxy.listeners).toEqual([]);
    const entry = logs.entries().find((e) => e.msg.startsWith('the listener could not be put back'));
    expect(entry).toMatchObject({ level: 50, err: { message: 'port stuck' }, saveError: 'disk full' });
    expect(typeof entry.listenerId).toBe('string');
  });

  it('puts a changed listener back as saved, and logs when that fails', async () => {
    let failRestart = false;
    const { logs, store, proxy, started } = setup({
      startListener: async (listener: Readonly<ListenerRecord>) => {
        if (failRestart && listener.port === 8080) throw new Error('address in use');
        started.push(`${listener.id}:${listener.port}`);
      },
    });
    const listener = await proxy.createListener({ name: 'web', port: 8080 });
    store.failNext = true;
    await expect(proxy.updateListener(listener.id, { port: 8081 })).rejects.toThrow('disk full');
    // Rolled back: started again on the saved port, and nothing logged.
    expect(started).toEqual([`${listener.id}:8080`, `${listener.id}:8081`, `${listener.id}:8080`]);
    expect(logs.entries()).toEqual([]);

    failRestart = true;
    store.failNext = true;
    await expect(proxy.updateListener(listener.id, { port: 8082 })).rejects.toThrow('disk full');
    expect(store.read().proxy.listeners[0]?.port).toBe(8080);
    expect(logs.entries()).toEqual([
      expect.objectContaining({
        listenerId: listener.id,
        err: expect.objectContaining({ message: 'address in use' }),
        saveError: 'disk full',
      }),
    ]);
  });
});
