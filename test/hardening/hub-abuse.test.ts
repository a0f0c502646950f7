/**
 * Hostile clients of the hub, each contained to its own connection while a
 * well-behaved agent keeps relaying: a flood of unauthenticated upgrades
 * (from another loopback address, which ends up throttled), slowloris
 * upgrades that never finish their request, an agent answering for stream ids
 * it was never given, and an agent that never reads its connection.
 */
import type net from 'node:net';
import tls from 'node:tls';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startAgent } from '../../agent/agent.js';
import { createAgentExecutor } from '../../agent/main.js';
import type { AppError } from '../../src/errors.js';
import { createLogger } from '../../src/logger.js';
import type { RelayRequest, Transport } from '../../src/relay/transport.js';
import { createCertificate, type GeneratedCertificate } from '../../src/tls/certificates.js';
import { agentHeaders, type RawAgent, upgradeAgent } from '../helpers/agent.js';
import { type BareHub, startBareHub } from '../helpers/hub.js';
import { startTlsTarget, type TlsTarget } from '../helpers/tls-target.js';
import { eventually } from '../integration/proxy-helpers.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

let cert: GeneratedCertificate;
let target: TlsTarget;
beforeAll(async () => {
  cert = await createCertificate({ altNames: ['127.0.0.1'] });
  target = await startTlsTarget({ cert: cert.cert, key: cert.key });
});
afterAll(async () => {
  await target.close(2000);
});

function relayRequest(extra: Partial<RelayRequest> = {}): RelayRequest {
  return {
    url: `${target.url}/`,
    method: 'GET',
    headers: [],
    timeoutMs: 5000,
    trust: {
      fingerprintSha256: cert.fingerprintSha256,
      expectedHostname: '127.0.0.1',
      certificateDer: cert.der,
    },
    ...extra,
  };
}

async function relayOk(transport: Transport): Promise<boolean> {
  const response = await transport.request(relayRequest());
  let body = '';
  for await (const chunk of response.body) body += Buffer.from(chunk).toString();
  return response.status === 200 && body === 'ok';
}

/** A real in-process agent on the hub, and its transport. */
async function goodAgent(bare: BareHub) {
  const created = await bare.agents.create({ name: `good-${Math.random().toString(36).slice(2)}` });
  const agent = startAgent({
    managementUrl: bare.target.url,
    agentId: created.agent.id,
    agentToken: created.token,
    ca: bare.target.ca,
    createExecutor: createAgentExecutor,
    backoff: { initialMs: 20, maxMs: 100 },
    logger: createLogger('silent'),
  });
  cleanups.push(() => agent.close());
  await eventually(() => bare.hub.isConnected(created.agent.id));
  return { id: created.agent.id, transport: bare.hub.transportFor(created.agent.id) };
}

async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (err) {
    return (err as AppError).code ?? String(err);
  }
  return 'no error';
}

describe('hub abuse', () => {
  it('contains a flood of unauthenticated upgrades: 401 then 429 for that address, the good agent keeps relaying', async () => {
    const bare = await startBareHub();
    cleanups.push(() => bare.close());
    const good = await goodAgent(bare);
    const victim = await bare.agents.create({ name: 'victim' });

    // 300 concurrent upgrades with a wrong token, from 127.0.0.2, while the good agent relays.
    const statuses = new Map<number, number>();
    const flood = Array.from({ length: 300 }, () =>
      upgradeAgent(bare.target, agentHeaders(victim.agent.id, 'p2pag_wrong'), {
        localAddress: '127.0.0.2',
      }).then((result) => {
        const status = result.ok ? 101 : result.status;
        statuses.set(status, (statuses.get(status) ?? 0) + 1);
        if (result.ok) void result.socket.close();
      }),
    );
    const relayed = Array.from({ length: 20 }, () => relayOk(good.transport));
    await Promise.all(flood);
    expect(await Promise.all(relayed)).toEqual(Array(20).fill(true));
    expect(statuses.get(101)).toBeUndefined();
    expect((statuses.get(401) ?? 0) + (statuses.get(429) ?? 0)).toBe(300);
    expect(statuses.get(429)).toBeGreaterThan(0);

    // That address stays throttled even with the right token; another address is not affected.
    const blocked = await upgradeAgent(bare.target, agentHeaders(victim.agent.id, victim.token), {
      localAddress: '127.0.0.2',
    });
    expect(blocked.ok ? 101 : blocked.status).toBe(429);
    const fine = await upgradeAgent(bare.target, agentHeaders(victim.agent.id, victim.token), {
      answerPings: true,
    });
    if (!fine.ok) throw new Error(`refused with ${fine.status}`);
    cleanups.push(() => fine.socket.close());
    await fine.socket.handshake();
    expect(bare.hub.isConnected(good.id)).toBe(true);
  });

  it('keeps serving while 200 slowloris connections hold half-sent upgrade requests', async () => {
    const bare = await startBareHub();
    cleanups.push(() => bare.close());
    const sockets: tls.TLSSocket[] = [];
    cleanups.push(() => {
      for (const s of sockets) s.destroy();
    });
    await Promise.all(
      Array.from(
        { length: 200 },
        () =>
          new Promise<void>((resolve, reject) => {
            const socket = tls.connect({ host: '127.0.0.1', port: bare.port, ca: bare.target.ca }, () => {
              // The request line and one header, then nothing more.
              socket.write('GET /api/v1/agent/connect HTTP/1.1\r\nHost: 127.0.0.1\r\n');
              resolve();
            });
            socket.on('error', reject);
            sockets.push(socket);
          }),
      ),
    );
    const good = await goodAgent(bare);
    expect(await relayOk(good.transport)).toBe(true);
    const discovered = await good.transport.discover({ url: target.url, timeoutMs: 5000 });
    expect(discovered.certificate.fingerprintSha256).toBe(cert.fingerprintSha256);
    expect(sockets.filter((s) => !s.destroyed)).toHaveLength(200);
  });

  it('ignores envelopes for stream ids it never gave, and other streams go on', async () => {
    const bare = await startBareHub();
    cleanups.push(() => bare.close());
    const rogue = await bare.agents.create({ name: 'rogue' });
    const raw = await upgradeAgent(bare.target, agentHeaders(rogue.agent.id, rogue.token), {
      answerPings: true,
    });
    if (!raw.ok) throw new Error(`refused with ${raw.status}`);
    cleanups.push(() => raw.socket.close());
    await raw.socket.handshake();
    const good = await goodAgent(bare);

    for (const streamId of [7, 1000, 2 ** 31 - 1]) {
      raw.socket.send({ streamId, payload: { case: 'responseHead', value: { status: 200, headers: [] } } });
      raw.socket.send({ streamId, payload: { case: 'bodyChunk', value: { data: Buffer.alloc(1024, 1) } } });
      raw.socket.send({ streamId, payload: { case: 'windowUpdate', value: { bytes: 1 << 30 } } });
      raw.socket.send({ streamId, payload: { case: 'end', value: {} } });
    }
    expect(await relayOk(good.transport)).toBe(true);
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(bare.hub.isConnected(rogue.agent.id)).toBe(true);
    expect(bare.hub.sessionStats(rogue.agent.id)).toMatchObject({ activeStreams: 0, bufferedBytes: 0 });
  });

  it('cuts an agent that never reads, failing its streams with AGENT_OFFLINE, with hub memory bounded', async () => {
    const limit = 1024 * 1024;
    const bare = await startBareHub({ maxSendBufferBytes: limit });
    cleanups.push(() => bare.close());
    const stuck = await bare.agents.create({ name: 'stuck' });
    const raw: RawAgent = await upgradeAgent(bare.target, agentHeaders(stuck.agent.id, stuck.token)).then(
      (r) => {
        if (!r.ok) throw new Error(`refused with ${r.status}`);
        return r.socket;
      },
    );
    cleanups.push(() => raw.close());
    await raw.handshake();
    await eventually(() => bare.hub.isConnected(stuck.agent.id));
    // From now on the agent reads nothing: the kernel buffers fill, then the hub's queue.
    (raw.ws as unknown as { _socket: net.Socket })._socket.pause();
    const good = await goodAgent(bare);

    const transport = bare.hub.transportFor(stuck.agent.id);
    const body = Buffer.alloc(512 * 1024, 7);
    const codes = await Promise.all(
      Array.from({ length: 64 }, () =>
        codeOf(
          transport.request(
            relayRequest({ method: 'POST', body, headers: [['content-type', 'text/plain']] }),
          ),
        ),
      ),
    );
    expect(new Set(codes)).toEqual(new Set(['AGENT_OFFLINE']));
    expect(bare.hub.isConnected(stuck.agent.id)).toBe(false);
    expect(bare.agents.get(stuck.agent.id).connections[0]).toMatchObject({ endReason: 'not-reading' });
    expect(await relayOk(good.transport)).toBe(true);
  });
});
