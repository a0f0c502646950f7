/**
 * Editing ACME accounts and DNS providers (PATCH): what may change, the
 * contact updated at a real directory (pebble), secrets sealed at rest and
 * never answered, and each bad input a 400 naming its field with the stored
 * record intact.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { loadSecretsBox } from '../../src/storage/secrets-box.js';
import { type Pebble, startPebble } from '../helpers/pebble.js';
import { freePort } from '../helpers/processes.js';
import { startTestServer, type TestServer } from '../helpers/server.js';

const servers: TestServer[] = [];
let pebble: Pebble | undefined;

afterEach(async () => {
  for (const s of servers.splice(0)) await s.close();
  await pebble?.close();
  pebble = undefined;
});

async function start(): Promise<{ s: TestServer; token: string }> {
  const s = await startTestServer();
  servers.push(s);
  return { s, token: await s.createToken(await s.setupAdmin()) };
}

describe('editing ACME accounts and DNS providers', () => {
  it('changes an account’s name, contact (at the directory) and directory CA; never its directory, nor the EAB of a registered one', async () => {
    const { s, token } = await start();
    pebble = await startPebble({ httpPort: await freePort(), tlsPort: await freePort() });
    const create = async (name: string) => {
      const res = await s.request('POST', '/api/v1/tls/acme/accounts', {
        token,
        body: {
          name,
          directoryUrl: pebble!.directoryUrl,
          email: 'first@example.test',
          directoryCaPem: pebble!.directoryCaPem,
        },
      });
      expect(res.status, res.text).toBe(201);
      return res.json.account as { id: string; accountUrl: string; updatedAt: string };
    };
    const account = await create('pebble');
    await create('other');
    const patch = (body: unknown, id = account.id) =>
      s.request('PATCH', `/api/v1/tls/acme/accounts/${id}`, { token, body });

    const renamed = await patch({ name: 'pebble-main', email: 'second@example.test' });
    expect(renamed.status, renamed.text).toBe(200);
    expect(renamed.json.account).toMatchObject({
      id: account.id,
      name: 'pebble-main',
      email: 'second@example.test',
      directoryUrl: pebble.directoryUrl,
      hasDirectoryCa: true,
      accountUrl: account.accountUrl,
    });
    expect((await patch({ directoryUrl: pebble.directoryUrl })).status).toBe(200);

    for (const [body, field] of [
      [{ email: 'not-an-email' }, 'email'],
      [{ directoryUrl: 'https://acme.example/directory' }, 'directoryUrl'],
      [{ directoryUrl: 'letsencrypt' }, 'directoryUrl'],
      [{ eab: { kid: 'kid-1', hmacKey: 'c2VjcmV0LWhtYWMta2V5' } }, 'eab'],
      [{ directoryCaPem: 'not a certificate' }, 'directoryCaPem'],
      [{ name: '' }, 'name'],
    ] as const) {
      const res = await patch(body);
      expect(res.status, JSON.stringify(body)).toBe(400);
      expect(res.json.error.code).toBe('VALIDATION_FAILED');
      expect(res.json.error.details.field).toBe(field);
    }
    const taken = await patch({ name: 'other' });
    expect(taken.status).toBe(409);
    expect(taken.json.error.code).toBe('CONFLICT');
    expect((await patch({ name: 'x' }, 'no-such-account')).status).toBe(404);

    // The directory is asked first: when it cannot be reached, nothing changes.
    await pebble.close();
    pebble = undefined;
    const unreachable = await patch({ email: 'third@example.test' });
    expect(unreachable.status).toBe(400);
    expect(unreachable.json.error.details.field).toBe('email');
    expect(unreachable.json.error.message).toMatch(/could not be reached|ECONNREFUSED/);
    // The CA is not needed for the rest.
    const noCa = await patch({ directoryCaPem: null });
    expect(noCa.status).toBe(200);
    expect(noCa.json.account.hasDirectoryCa).toBe(false);

    const listed = (await s.request('GET', '/api/v1/tls/acme/accounts', { token })).json.accounts;
    expect(listed.find((a: { id: string }) => a.id === account.id)).toMatchObject({
      name: 'pebble-main',
      email: 'second@example.test',
      hasDirectoryCa: false,
      accountUrl: account.accountUrl,
    });
  }, 90_000);

  it('replaces a DNS provider’s token sealed and never answered, and asks for it again with a new API host', async () => {
    const { s, token } = await start();
    const created = await s.request('POST', '/api/v1/tls/dns-providers', {
      token,
      body: {
        name: 'cf',
        type: 'cloudflare',
        apiToken: 'first-token-value',
        apiBaseUrl: 'http://127.0.0.1:1234/client/v4',
      },
    });
    expect(created.status).toBe(201);
    const id = created.json.provider.id as string;
    const patch = (body: unknown) => s.request('PATCH', `/api/v1/tls/dns-providers/${id}`, { token, body });
    const secrets = await loadSecretsBox(s.dataDir);
    const storedToken = () => {
      const record = s.server.store.read().tls.dnsProviders.find((p) => p.id === id)!;
      return secrets.open('dns-provider-token', id, record.apiTokenSealed);
    };

    const renamed = await patch({ name: 'cloudflare' });
    expect(renamed.status).toBe(200);
    expect(renamed.json.provider).toMatchObject({ name: 'cloudflare', hasApiToken: true });
    // Another path on the same origin keeps the token.
    const samePlace = await patch({ apiBaseUrl: 'http://127.0.0.1:1234/other/v4' });
    expect(samePlace.status).toBe(200);
    expect(storedToken()).toBe('first-token-value');

    // Another origin without the token: refused, nothing changed.
    for (const apiBaseUrl of ['http://127.0.0.1:5678/client/v4', null]) {
      const moved = await patch({ apiBaseUrl });
      expect(moved.status).toBe(400);
      expect(moved.json.error.details.field).toBe('apiToken');
    }
    expect(s.server.store.read().tls.dnsProviders.find((p) => p.id === id)!.apiBaseUrl).toBe(
      'http://127.0.0.1:1234/other/v4',
    );

    const replaced = await patch({ apiToken: 'second-token-value', apiBaseUrl: null });
    expect(replaced.status).toBe(200);
    expect(replaced.json.provider).toMatchObject({ apiBaseUrl: null, hasApiToken: true });
    expect(storedToken()).toBe('second-token-value');

    for (const [body, field] of [
      [{ apiToken: '' }, 'apiToken'],
      [{ apiBaseUrl: 'http://dns.example/client/v4', apiToken: 'x' }, 'apiBaseUrl'],
      [{ apiBaseUrl: 'not a url', apiToken: 'x' }, 'apiBaseUrl'],
    ] as const) {
      const res = await patch(body);
      expect(res.status, JSON.stringify(body)).toBe(400);
      expect(res.json.error.code).toBe('VALIDATION_FAILED');
      expect(res.json.error.details.field).toBe(field);
    }
    for (const body of [{ type: 'route53' }, { name: 'x'.repeat(129) }, { apiToken: 7 }]) {
      const res = await patch(body);
      expect(res.status, JSON.stringify(body)).toBe(400);
      expect(res.json.error.code).toBe('VALIDATION_FAILED');
    }
    expect(storedToken()).toBe('second-token-value');

    const answers = [
      created.text,
      renamed.text,
      replaced.text,
      (await s.request('GET', '/api/v1/tls/dns-providers', { token })).text,
    ];
    for (const text of answers) {
      expect(text).not.toContain('first-token-value');
      expect(text).not.toContain('second-token-value');
    }
    await s.server.store.flush();
    const onDisk = await readFile(path.join(s.dataDir, 'p2pstream.json'), 'utf8');
    expect(onDisk).not.toContain('second-token-value');
    expect(onDisk).not.toContain('first-token-value');
  });
});
