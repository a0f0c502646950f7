/**
 * Public TLS on replicas sharing PostgreSQL: a certificate stored on one
 * replica is served by every replica's https listeners (and gone from all
 * when deleted), an ACME order runs on one replica while the CA validates
 * through another one's listener, and a renewal due on both runs once.
 */
import { once } from 'node:events';
import { connect as tlsConnect } from 'node:tls';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PostgresStore } from '../../src/storage/postgres-store.js';
import type { ListenerRecord } from '../../src/storage/schema.js';
import { createCertificate } from '../../src/tls/certificates.js';
import { type Pebble, startPebble } from '../helpers/pebble.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { type ReplicaSet, startReplicas } from '../helpers/replicas.js';
import type { TestServer } from '../helpers/server.js';
import { eventually } from '../helpers/wait.js';

const TLS_TIMINGS = { checkIntervalMs: 100, retryBaseMs: 400, filePollMs: 1000, dnsPropagationMs: 0 };

let postgres: TestPostgres;
let set: ReplicaSet | undefined;
let pebble: Pebble | undefined;
let bare: PostgresStore | undefined;

beforeAll(async () => {
  postgres = await startPostgres();
}, 60_000);
afterEach(async () => {
  await set?.close();
  set = undefined;
  await bare?.close();
  bare = undefined;
  await pebble?.close();
  pebble = undefined;
});
afterAll(async () => {
  await postgres?.close();
});

interface Cluster {
  a: TestServer;
  b: TestServer;
  token: string;
  /** Each replica's own ports for the shared http and https listeners. */
  ports: { a: { http: number; https: number }; b: { http: number; https: number } };
}

/**
 * Two replicas and one http and one https listener for both. Two replicas on
 * one host cannot bind one port, so the listeners are stored with port 0
 * (through a bare store on the database: the API asks for a real port) and
 * each replica binds its own.
 */
async function startCluster(): Promise<Cluster> {
  const databaseUrl = await postgres.createDatabase();
  set = await startReplicas(2, { databaseUrl, config: { tls: TLS_TIMINGS } });
  const [a, b] = set.replicas as [TestServer, TestServer];
  const token = await a.createToken(await a.setupAdmin());
  bare = await PostgresStore.open({ url: databaseUrl });
  const now = new Date().toISOString();
  const listener = (id: string, fields: Partial<ListenerRecord>): ListenerRecord => ({
    id,
    name: id,
    bindAddress: '127.0.0.1',
    port: 0,
    enabled: true,
    createdAt: now,
    updatedAt: now,
    ...fields,
  });
  await bare.update((db) => {
    db.proxy.listeners.push(
      listener('web', { protocol: 'http', redirectHttps: true }),
      listener('web-tls', { protocol: 'https' }),
    );
    db.proxy.routes.push({
      id: 'site',
      listenerId: 'web-tls',
      host: null,
      pathPrefix: '/',
      priority: 0,
      target: { type: 'static', status: 200, contentType: 'text/plain', body: 'site' },
      createdAt: now,
      updatedAt: now,
    });
  });
  const portsOf = (s: TestServer) => ({
    http: s.server.dataPlanePort('web') ?? 0,
    https: s.server.dataPlanePort('web-tls') ?? 0,
  });
  await eventually(() => [portsOf(a), portsOf(b)].every((p) => p.http > 0 && p.https > 0));
  return { a, b, token, ports: { a: portsOf(a), b: portsOf(b) } };
}

/** The fingerprint of the certificate an https port serves for `servername`, or the handshake's error. */
async function served(port: number, servername: string): Promise<string> {
  const socket = tlsConnect({ host: '127.0.0.1', port, servername, rejectUnauthorized: false });
  socket.on('error', () => {});
  try {
    await once(socket, 'secureConnect');
    return socket.getPeerX509Certificate()!.fingerprint256;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? String(err);
  } finally {
    socket.destroy();
  }
}

async function certificateOn(s: TestServer, token: string, id: string) {
  const res = await s.request('GET', `/api/v1/tls/certificates/${id}`, { token });
  return res.json.certificate as {
    status: string;
    fingerprintSha256: string | null;
    lastError: string | null;
  };
}

describe('public TLS on replicas', () => {
  it('serves a certificate uploaded on one replica on every replica, and on none once deleted on another', async () => {
    const { a, b, token, ports } = await startCluster();
    const made = await createCertificate({ altNames: ['upload.test'] });
    const created = await a.request('POST', '/api/v1/tls/certificates', {
      token,
      body: { name: 'upload', source: 'upload', certificatePem: made.cert, privateKeyPem: made.key },
    });
    expect(created.status, created.text).toBe(201);
    const fingerprint = created.json.certificate.fingerprintSha256 as string;
    expect(await served(ports.a.https, 'upload.test')).toBe(fingerprint);
    await eventually(async () => (await served(ports.b.https, 'upload.test')) === fingerprint);

    // Replaced on b: a serves the new one.
    const next = await createCertificate({ altNames: ['upload.test'] });
    const patched = await b.request('PATCH', `/api/v1/tls/certificates/${created.json.certificate.id}`, {
      token,
      body: { certificatePem: next.cert, privateKeyPem: next.key },
    });
    expect(patched.status, patched.text).toBe(200);
    expect(patched.json.certificate.fingerprintSha256).not.toBe(fingerprint);
    await eventually(
      async () => (await served(ports.a.https, 'upload.test')) === patched.json.certificate.fingerprintSha256,
    );

    // Deleted on b: neither serves it (no default certificate: the unrecognized_name alert).
    const deleted = await b.request('DELETE', `/api/v1/tls/certificates/${created.json.certificate.id}`, {
      token,
    });
    expect(deleted.status).toBe(204);
    const refused = 'ERR_SSL_TLSV1_UNRECOGNIZED_NAME';
    expect(await served(ports.b.https, 'upload.test')).toBe(refused);
    await eventually(async () => (await served(ports.a.https, 'upload.test')) === refused);
  });

  it('issues on one replica while the CA validates through the other, serves it on both, and renews a due certificate once', async () => {
    const { a, b, token, ports } = await startCluster();
    // The CA reaches replica a's listeners only.
    pebble = await startPebble({ httpPort: ports.a.http, tlsPort: ports.a.https });
    const account = await a.request('POST', '/api/v1/tls/acme/accounts', {
      token,
      body: { name: 'pebble', directoryUrl: pebble.directoryUrl, directoryCaPem: pebble.directoryCaPem },
    });
    expect(account.status, account.text).toBe(201);
    const accountId = account.json.account.id as string;
    await eventually(() => b.server.store.read().tls.acmeAccounts.length === 1);

    // Created on b, so b orders it: a answers the HTTP-01 validation from what b published.
    for (const [name, challenge] of [
      ['via-http', 'http-01'],
      ['via-alpn', 'tls-alpn-01'],
    ] as const) {
      const created = await b.request('POST', '/api/v1/tls/certificates', {
        token,
        body: { name, source: 'acme', hosts: [`${name}.test`], acmeAccountId: accountId, challenge },
      });
      expect(created.status, created.text).toBe(201);
      const id = created.json.certificate.id as string;
      let last: Awaited<ReturnType<typeof certificateOn>> | undefined;
      await eventually(async () => {
        last = await certificateOn(b, token, id);
        return last.status === 'ready' || last.status === 'error';
      }, 30_000);
      expect(last, pebble.output().slice(-2000)).toMatchObject({ status: 'ready', lastError: null });
      const fingerprint = last!.fingerprintSha256!;
      expect(await served(ports.b.https, `${name}.test`)).toBe(fingerprint);
      await eventually(async () => (await served(ports.a.https, `${name}.test`)) === fingerprint);
      // The answers are withdrawn everywhere once the order is done.
      await eventually(() => a.server.store.read().acmeChallenges.length === 0);
      const stored = a.server.store.read().tls.certificates.find((c) => c.id === id)!;
      expect(stored.orderLease ?? null).toBeNull();
    }

    // Due on both replicas at once: one of them takes the order, the other leaves it alone.
    const id = b.server.store.read().tls.certificates.find((c) => c.name === 'via-http')!.id;
    const before = (await certificateOn(a, token, id)).fingerprintSha256;
    const orders = () => pebble!.output().split('POST /order-plz').length - 1;
    const ordersBefore = orders();
    await bare!.update((db) => {
      const record = db.tls.certificates.find((c) => c.id === id)!;
      record.nextRenewalAt = new Date(Date.now() - 1000).toISOString();
    });
    let renewed = '';
    await eventually(async () => {
      const [onA, onB] = [await certificateOn(a, token, id), await certificateOn(b, token, id)];
      renewed = onA.fingerprintSha256 ?? '';
      return (
        onA.status === 'ready' &&
        onB.status === 'ready' &&
        renewed !== before &&
        onB.fingerprintSha256 === renewed
      );
    }, 30_000);
    expect(orders() - ordersBefore).toBe(1);
    const issuedLogs = [a, b].map(
      (s) =>
        s.logs.filter((l) => String(JSON.parse(l).msg).startsWith('certificate "via-http" issued')).length,
    );
    expect(issuedLogs[0]! + issuedLogs[1]!).toBe(2);
    expect(await served(ports.a.https, 'via-http.test')).toBe(renewed);
    await eventually(async () => (await served(ports.b.https, 'via-http.test')) === renewed);
  }, 120_000);
});
