import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import type { AppError } from '../../src/errors.js';

function refusal(env: Record<string, string>): AppError {
  try {
    loadConfig(env);
  } catch (err) {
    return err as AppError;
  }
  throw new Error('accepted');
}

describe('cluster settings', () => {
  it('keeps one process on lowdb without a database or NATS URL', () => {
    const config = loadConfig({});
    expect(config.databaseUrl).toBeNull();
    expect(config.natsUrl).toBeNull();
  });

  it('takes postgres:// and postgresql:// database URLs and several NATS servers', () => {
    const config = loadConfig({
      P2PSTREAM_DATABASE_URL: 'postgresql://p2p:secret@db.internal:5432/p2pstream',
      P2PSTREAM_NATS_URL: 'nats://n1:4222, tls://n2:4222',
    });
    expect(config.databaseUrl).toBe('postgresql://p2p:secret@db.internal:5432/p2pstream');
    expect(config.natsUrl).toBe('nats://n1:4222, tls://n2:4222');
    expect(
      loadConfig({ P2PSTREAM_DATABASE_URL: 'postgres:///p2pstream?host=/run/postgresql' }).databaseUrl,
    ).toBe('postgres:///p2pstream?host=/run/postgresql');
  });

  it('refuses another scheme naming the variable, without echoing the value', () => {
    const err = refusal({ P2PSTREAM_DATABASE_URL: 'mysql://root:hunter2@db/p2p' });
    expect(err.code).toBe('VALIDATION_FAILED');
    expect(err.details).toEqual({ field: 'P2PSTREAM_DATABASE_URL' });
    expect(err.message).not.toContain('hunter2');
    expect(
      refusal({ P2PSTREAM_DATABASE_URL: 'postgres://db/x', P2PSTREAM_NATS_URL: 'http://n1:4222' }).details,
    ).toEqual({
      field: 'P2PSTREAM_NATS_URL',
    });
  });

  it('refuses NATS without a shared database', () => {
    const err = refusal({ P2PSTREAM_NATS_URL: 'nats://127.0.0.1:4222' });
    expect(err.code).toBe('VALIDATION_FAILED');
    expect(err.details).toEqual({ field: 'P2PSTREAM_DATABASE_URL' });
  });
});

describe('reconciliation interval', () => {
  it('is 60 s unless P2PSTREAM_RECONCILE_SECONDS says otherwise, and refuses what is not whole seconds', () => {
    expect(loadConfig({}).reconcileIntervalMs).toBe(60_000);
    expect(loadConfig({ P2PSTREAM_RECONCILE_SECONDS: '5' }).reconcileIntervalMs).toBe(5000);
    expect(loadConfig({ P2PSTREAM_RECONCILE_SECONDS: '0' }).reconcileIntervalMs).toBe(0);
    for (const bad of ['-5', '2.5', '100000', 'hourly']) {
      const err = refusal({ P2PSTREAM_RECONCILE_SECONDS: bad });
      expect(err.code).toBe('VALIDATION_FAILED');
      expect(err.details).toEqual({ field: 'P2PSTREAM_RECONCILE_SECONDS' });
    }
  });
});
