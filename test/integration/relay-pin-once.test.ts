/**
 * Capability `pin-once` between a relay client and an executor joined by two
 * relay peers over encoded frames: a pinned certificate crosses the
 * connection with the first head that needs it and later heads name it by
 * fingerprint; both sides start their set over at the same 65th certificate;
 * with a peer that does not announce the capability (an older agent or
 * control plane) every head carries the certificate, as before.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import type { AppError } from '../../src/errors.js';
import { createLogger } from '../../src/logger.js';
import { decodeEnvelope } from '../../src/relay/codec.js';
import { MAX_KEPT_CERTIFICATES, type RequestHead } from '../../src/relay/envelope.js';
import { EnvelopeExecutor } from '../../src/relay/envelope-executor.js';
import { createFramePipe, type FrameTransport } from '../../src/relay/frame-transport.js';
import { CAPABILITY, CLOSE_CODE, DEFAULT_CAPABILITIES } from '../../src/relay/protocol.js';
import { RelayClient } from '../../src/relay/relay-client.js';
import { RelayPeer } from '../../src/relay/relay-peer.js';
import type { TrustMetadata } from '../../src/relay/transport.js';
import { createCertificate, type GeneratedCertificate } from '../../src/tls/certificates.js';
import { useCleanups } from '../helpers/cleanup.js';
import { freePort } from '../helpers/processes.js';
import { pinTo as pin, startTlsTarget, type TlsTarget } from '../helpers/tls-target.js';

const cleanups = useCleanups();
let good: GeneratedCertificate;
let target: TlsTarget;

beforeAll(async () => {
  good = await createCertificate({ altNames: ['127.0.0.1'] });
  target = await startTlsTarget({ cert: good.cert, key: good.key });
  return () => target.close();
});

const WITHOUT_PIN_ONCE = DEFAULT_CAPABILITIES.filter((c) => c !== CAPABILITY.PIN_ONCE);

/** Records the request heads as the executor's side decodes them, and their frame sizes. */
function recording(transport: FrameTransport, heads: Array<{ head: RequestHead; bytes: number }>) {
  const start = transport.start.bind(transport);
  transport.start = (receiver) =>
    start({
      ...receiver,
      frame: (bytes) => {
        const envelope = decodeEnvelope(bytes);
        if (envelope.payload.case === 'requestHead')
          heads.push({ head: envelope.payload.value, bytes: bytes.byteLength });
        receiver.frame(bytes);
      },
    });
  return transport;
}

/** A control-plane peer with a relay client and an agent peer with an executor. */
async function link(control: readonly string[], agent: readonly string[]) {
  const [controlEnd, agentEnd] = createFramePipe();
  const heads: Array<{ head: RequestHead; bytes: number }> = [];
  const logger = createLogger('silent');
  let client!: RelayClient;
  const controlPeer = new RelayPeer({
    transport: controlEnd,
    role: 'acceptor',
    logger,
    capabilities: control.filter((c) => c !== CAPABILITY.BATCH),
    keepalive: { intervalMs: 0 },
    streams: (context) => {
      client = new RelayClient({
        send: context.send,
        nextStreamId: context.nextStreamId,
        pinOnce: context.session.capabilities.has(CAPABILITY.PIN_ONCE),
      });
      return [client];
    },
  });
  const agentPeer = new RelayPeer({
    transport: recording(agentEnd, heads),
    role: 'initiator',
    logger,
    capabilities: agent.filter((c) => c !== CAPABILITY.BATCH),
    keepalive: { intervalMs: 0 },
    streams: (context) => [new EnvelopeExecutor({ send: context.send })],
  });
  cleanups.push(async () => {
    agentPeer.close(CLOSE_CODE.NORMAL, 'test over');
    controlPeer.close(CLOSE_CODE.NORMAL, 'test over');
    await Promise.all([agentPeer.done, controlPeer.done]);
  });
  const [session] = await Promise.all([controlPeer.whenReady, agentPeer.whenReady]);
  return { session, client, heads };
}

async function get(client: RelayClient, url: string, trust: TrustMetadata): Promise<number | string> {
  return client.request({ url, method: 'GET', headers: [], timeoutMs: 5000, trust }).then(
    async (response) => {
      for await (const _ of response.body);
      return response.status;
    },
    (err: AppError) => err.code,
  );
}

/** What a head says of its certificate. */
function carried(head: RequestHead): string {
  const der = head.trust?.certificateDer?.byteLength ?? 0;
  if (head.trust?.useKeptCertificate) return der === 0 ? 'kept' : 'kept with bytes';
  if (head.trust?.keepCertificate) return der > 0 ? 'keep' : 'keep without bytes';
  return der > 0 ? 'whole' : 'none';
}

describe('relay capability pin-once', () => {
  it('sends a pinned certificate once per connection and names it afterwards', async () => {
    const { session, client, heads } = await link(DEFAULT_CAPABILITIES, DEFAULT_CAPABILITIES);
    expect(session.capabilities.has(CAPABILITY.PIN_ONCE)).toBe(true);
    for (let i = 0; i < 3; i++) expect(await get(client, target.url, pin(good))).toBe(200);
    expect(heads.map(({ head }) => carried(head))).toEqual(['keep', 'kept', 'kept']);
    // The certificate's bytes leave the later heads.
    expect(heads[0]!.bytes - heads[1]!.bytes).toBeGreaterThanOrEqual(good.der.byteLength);
    // A pin without a certificate (verified against the default roots) is not affected.
    const unanchored = { fingerprintSha256: good.fingerprintSha256, expectedHostname: '127.0.0.1' };
    expect(await get(client, target.url, unanchored)).toBe('ENVIRONMENT_UNTRUSTED');
    expect(carried(heads[3]!.head)).toBe('none');
  });

  it('starts the set over on both sides with the 65th certificate', async () => {
    const { client, heads } = await link(DEFAULT_CAPABILITIES, DEFAULT_CAPABILITIES);
    const certificates = await Promise.all(
      Array.from({ length: MAX_KEPT_CERTIFICATES + 1 }, () => createCertificate({ altNames: ['127.0.0.1'] })),
    );
    // Nothing listens there: a head whose certificate is found fails at the connect, not before.
    const closed = `https://127.0.0.1:${await freePort()}`;
    const call = (i: number) => get(client, closed, pin(certificates[i]!));
    for (let i = 0; i < MAX_KEPT_CERTIFICATES; i++) expect(await call(i)).toBe('ENVIRONMENT_UNREACHABLE');
    expect(await call(0)).toBe('ENVIRONMENT_UNREACHABLE');
    expect(carried(heads.at(-1)!.head)).toBe('kept');
    expect(await call(MAX_KEPT_CERTIFICATES)).toBe('ENVIRONMENT_UNREACHABLE');
    expect(carried(heads.at(-1)!.head)).toBe('keep');
    // The 65th started the set over: the first goes whole again, then is named again.
    expect(await call(1)).toBe('ENVIRONMENT_UNREACHABLE');
    expect(carried(heads.at(-1)!.head)).toBe('keep');
    expect(await call(1)).toBe('ENVIRONMENT_UNREACHABLE');
    expect(carried(heads.at(-1)!.head)).toBe('kept');
    expect(await get(client, target.url, pin(good))).toBe(200);
  });

  it('sends the certificate with every head when the agent does not announce it (an older agent)', async () => {
    const { session, client, heads } = await link(DEFAULT_CAPABILITIES, WITHOUT_PIN_ONCE);
    expect(session.capabilities.has(CAPABILITY.PIN_ONCE)).toBe(false);
    for (let i = 0; i < 3; i++) expect(await get(client, target.url, pin(good))).toBe(200);
    expect(heads.map(({ head }) => carried(head))).toEqual(['whole', 'whole', 'whole']);
  });

  it('takes whole certificates from a control plane that does not announce it (an older one)', async () => {
    const { session, client, heads } = await link(WITHOUT_PIN_ONCE, DEFAULT_CAPABILITIES);
    expect(session.capabilities.has(CAPABILITY.PIN_ONCE)).toBe(false);
    for (let i = 0; i < 3; i++) expect(await get(client, target.url, pin(good))).toBe(200);
    expect(heads.map(({ head }) => carried(head))).toEqual(['whole', 'whole', 'whole']);
  });
});
