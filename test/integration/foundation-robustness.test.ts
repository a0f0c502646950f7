import { readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { DATABASE_FILE_NAME } from '../../src/storage/lowdb-store.js';
import { startTestServer, type TestServer } from '../helpers/server.js';

let server: TestServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

describe('bad input', () => {
  it('answers malformed JSON, oversized bodies, wrong types and unknown routes with 4xx and keeps serving', async () => {
    server = await startTestServer();
    const cookie = await server.setupAdmin();
    const malformed = await server.request('POST', '/api/v1/tokens', {
      cookie,
      rawBody: '{"name": ',
      headers: { 'content-type': 'application/json' },
    });
    expect(malformed.status).toBe(400);
    expect(malformed.json.error.code).toBe('VALIDATION_FAILED');
    const huge = await server.request('POST', '/api/v1/tokens', {
      cookie,
      rawBody: JSON.stringify({ name: 'x'.repeat(2 * 1024 * 1024) }),
      headers: { 'content-type': 'application/json' },
    });
    expect(huge.status).toBe(413);
    expect(huge.json.error.code).toBe('PAYLOAD_TOO_LARGE');
    const array = await server.request('POST', '/api/v1/tokens', { cookie, body: [1, 2] });
    expect(array.status).toBe(400);
    const text = await server.request('POST', '/api/v1/tokens', {
      cookie,
      rawBody: 'name=x',
      headers: { 'content-type': 'text/plain' },
    });
    expect(text.status).toBeGreaterThanOrEqual(400);
    expect(text.status).toBeLessThan(500);
    expect(text.json.error.code).toBeTypeOf('string');
    const proto = await server.request('POST', '/api/v1/tokens', {
      cookie,
      rawBody: '{"name":"p","__proto__":{"admin":true}}',
      headers: { 'content-type': 'application/json' },
    });
    expect(proto.status).toBe(400);
    const unknown = await server.request('GET', '/api/v1/nothing-here', { cookie });
    expect(unknown.status).toBe(404);
    expect(unknown.json.error.code).toBe('NOT_FOUND');
    const ok = await server.request('GET', '/api/v1/tokens', { cookie });
    expect(ok.status).toBe(200);
    expect(ok.json.tokens).toEqual([]);
  });

  it('never writes secrets to its log', async () => {
    server = await startTestServer();
    const cookie = await server.setupAdmin();
    const token = await server.createToken(cookie);
    await server.request('GET', '/api/v1/auth/me', { token });
    const logs = server.logs.join('\n');
    expect(logs).toContain('"route":"/api/v1/auth/me"');
    expect(logs).not.toContain(token);
    expect(logs).not.toContain(cookie.split('=')[1]);
  });
});

describe('storage', () => {
  it('refuses a corrupt database at start-up and leaves the file untouched', async () => {
    server = await startTestServer({ keepDataDir: true });
    await server.setupAdmin();
    const { dataDir } = server;
    await server.close();
    server = undefined;
    const file = path.join(dataDir, DATABASE_FILE_NAME);
    const corrupt = '{"schemaVersion": 1, "users": [ {"id": ';
    await writeFile(file, corrupt);
    await expect(startTestServer({ dataDir })).rejects.toThrow(
      /cannot open the database .*p2pstream\.json.*not valid JSON/,
    );
    expect(await readFile(file, 'utf8')).toBe(corrupt);
    await rm(dataDir, { recursive: true, force: true });
  });

  it('refuses a database from a newer schema', async () => {
    server = await startTestServer({ keepDataDir: true });
    const { dataDir } = server;
    await server.close();
    server = undefined;
    const file = path.join(dataDir, DATABASE_FILE_NAME);
    const doc = JSON.parse(await readFile(file, 'utf8'));
    doc.schemaVersion = 99;
    await writeFile(file, JSON.stringify(doc));
    await expect(startTestServer({ dataDir })).rejects.toThrow(/schema version 99/);
    await rm(dataDir, { recursive: true, force: true });
  });

  it('refuses a secrets key readable by others', async () => {
    server = await startTestServer({ keepDataDir: true });
    const { dataDir } = server;
    await server.close();
    server = undefined;
    const { chmod } = await import('node:fs/promises');
    await chmod(path.join(dataDir, 'secrets.key'), 0o644);
    await expect(startTestServer({ dataDir })).rejects.toThrow(/secrets key .* readable by other users/);
    await rm(dataDir, { recursive: true, force: true });
  });
});
