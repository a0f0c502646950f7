/**
 * Faults on the relay path, with real processes and sockets:
 * - the agent's link goes silent (a loopback TCP relay stops forwarding but
 *   closes nothing): the hub's keepalive notices within its interval, the
 *   in-flight stream fails with AGENT_OFFLINE, the agent reconnects by itself;
 * - the target dies in the middle of a body: ENVIRONMENT_UNREACHABLE at once,
 *   no stream left open;
 * - the agent process is killed (SIGKILL) in the middle of a relayed event
 *   stream: the caller's stream ends at once, the target's subscriber goes
 *   away, and the next call is AGENT_OFFLINE.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import type http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { AgentEvent } from '../../agent/agent.js';
import type { AppError } from '../../src/errors.js';
import type { RelayResponse, Transport } from '../../src/relay/transport.js';
import { createCertificate, type GeneratedCertificate } from '../../src/tls/certificates.js';
import { createTestAgent, serverFingerprint } from '../helpers/agent.js';
import { BIN, ensureBuilt } from '../helpers/bin.js';
import { useCleanups } from '../helpers/cleanup.js';
import { startBareHub, startHubAgent } from '../helpers/hub.js';
import { pinTo, startTlsTarget, type TlsTarget } from '../helpers/tls-target.js';
import { eventually, registerEnvironment, startInstance } from '../integration/environment-helpers.js';
import { configureProxy, openSse, proxyClient } from '../integration/proxy-helpers.js';

const KEEPALIVE_MS = 100;
const cleanups = useCleanups();

/** A TCP relay on loopback; `freeze()` stops forwarding on the open connections without closing them. */
async function startLinkRelay(port: number) {
  const pairs = new Set<{ client: net.Socket; upstream: net.Socket; frozen: boolean }>();
  const server = net.createServer((client) => {
    const upstream = net.connect(port, '127.0.0.1');
    const pair = { client, upstream, frozen: false };
    pairs.add(pair);
    client.pipe(upstream);
    upstream.pipe(client);
    const drop = () => {
      // A frozen link carries nothing either way, not even the close of one side.
      if (pair.frozen) return;
      client.destroy();
      upstream.destroy();
      pairs.delete(pair);
    };
    for (const socket of [client, upstream]) {
      socket.on('error', drop);
      socket.on('close', drop);
    }
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as AddressInfo).port,
    /** Connections open now, frozen or not. */
    get connections() {
      return pairs.size;
    },
    freeze() {
      for (const pair of pairs) {
        pair.frozen = true;
        pair.client.unpipe(pair.upstream);
        pair.upstream.unpipe(pair.client);
        pair.client.pause();
        pair.upstream.pause();
      }
    },
    async close() {
      for (const pair of pairs) {
        pair.client.destroy();
        pair.upstream.destroy();
      }
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (err) {
    return (err as AppError).code ?? String(err);
  }
  return 'no error';
}

async function readAll(response: RelayResponse): Promise<void> {
  for await (const _chunk of response.body) {
    // Drained.
  }
}

describe('relay path faults (hub with a short keepalive, in-process agent, TLS target)', () => {
  let cert: GeneratedCertificate;
  let target: TlsTarget;
  /** Responses held open by the target, to end or cut on demand. */
  const held = new Set<http.ServerResponse>();

  beforeAll(async () => {
    cert = await createCertificate({ altNames: ['127.0.0.1'] });
    target = await startTlsTarget({
      cert: cert.cert,
      key: cert.key,
      handler: (req, res) => {
        res.writeHead(200, { 'content-type': 'text/plain' });
        if (req.url === '/hang') {
          res.write('first chunk');
          held.add(res);
          res.on('close', () => held.delete(res));
          return;
        }
        res.end('ok');
      },
    });
  });
  afterAll(async () => {
    for (const res of held) res.destroy();
    await target.close(2000);
  });

  async function setup() {
    const bare = await startBareHub({ keepaliveIntervalMs: KEEPALIVE_MS, keepaliveMaxMissed: 2 });
    const { hub } = bare;
    const relay = await startLinkRelay(bare.port);
    const events: AgentEvent[] = [];
    const { id, agent } = await startHubAgent(bare, {
      name: 'edge',
      managementUrl: `https://127.0.0.1:${relay.port}`,
      // The agent notices a silent control plane on its own as well.
      idleTimeoutMs: 4 * KEEPALIVE_MS,
    });
    agent.onEvent((event) => events.push(event));
    cleanups.push(async () => {
      await agent.close();
      await relay.close();
      await bare.close();
    });
    await eventually(() => hub.isConnected(id));
    const transport: Transport = hub.transportFor(id);
    const request = (path: string) =>
      transport.request({
        url: `${target.url}${path}`,
        method: 'GET',
        headers: [],
        timeoutMs: 5000,
        trust: pinTo(cert),
      });
    return { hub, id, relay, events, request };
  }

  it('notices a silent link within the keepalive, fails the stream with AGENT_OFFLINE, and the agent reconnects', async () => {
    const { hub, id, relay, events, request } = await setup();
    const response = await request('/hang');
    const reading = readAll(response);
    await eventually(() => held.size === 1);

    relay.freeze();
    // AGENT_OFFLINE from the keepalive (the request itself has no deadline that would end it).
    expect(await codeOf(reading)).toBe('AGENT_OFFLINE');
    expect(hub.isConnected(id)).toBe(false);

    // The agent finds the link dead too, drops what it was relaying and comes back by a new connection.
    await eventually(() => events.filter((e) => e.type === 'connected').length >= 2);
    await eventually(() => hub.isConnected(id));
    await eventually(() => held.size === 0);
    const again = await request('/');
    await readAll(again);
    expect(again.status).toBe(200);
    expect(hub.sessionStats(id)?.activeStreams).toBe(0);
  });

  it('fails a stream whose target dies mid-body with ENVIRONMENT_UNREACHABLE and leaves no stream open', async () => {
    const { hub, id, request } = await setup();
    const response = await request('/hang');
    const reading = readAll(response);
    await eventually(() => held.size === 1);
    expect(hub.sessionStats(id)?.activeStreams).toBe(1);
    for (const res of held) res.socket?.destroy();
    expect(await codeOf(reading)).toBe('ENVIRONMENT_UNREACHABLE');
    await eventually(() => hub.sessionStats(id)?.activeStreams === 0);
    expect(hub.isConnected(id)).toBe(true);
  });
});

describe('the agent process killed in the middle of a relayed event stream', () => {
  const children: ChildProcess[] = [];
  beforeAll(() => ensureBuilt(), 120_000);
  afterEach(() => {
    for (const child of children.splice(0)) if (child.exitCode === null) child.kill('SIGKILL');
  });

  it('ends the caller stream at once, the target loses its subscriber, the next call is AGENT_OFFLINE', async () => {
    const control = await startInstance();
    cleanups.push(() => control.server.close());
    const target = await startInstance();
    cleanups.push(() => target.server.close());
    const agentCreds = await createTestAgent(control.server, control.cookie);
    const child = spawn(process.execPath, [BIN, 'agent'], {
      env: {
        PATH: process.env.PATH ?? '',
        LOG_LEVEL: 'warn',
        MANAGEMENT_URL: control.server.url,
        AGENT_ID: agentCreds.id,
        AGENT_TOKEN: agentCreds.token,
        MANAGEMENT_FINGERPRINT: serverFingerprint(control.server),
      },
      stdio: 'ignore',
    });
    children.push(child);
    const hub = control.server.server.hub;
    await eventually(() => hub.isConnected(agentCreds.id), 10_000);
    const accessToken = await target.server.createToken(target.cookie, 'control-plane');
    const env = await registerEnvironment(
      control,
      { url: target.server.url, accessToken },
      { transport: 'agent', agentId: agentCreds.id },
    );
    const subscribers = async () =>
      (await target.server.request('GET', '/api/v1/traffic/settings', { token: target.token })).json
        .subscribers as number;
    const { port } = await configureProxy(target.server, target.token, {
      type: 'static',
      status: 200,
      contentType: 'text/plain',
      body: 'ok',
    });
    const client = proxyClient();
    cleanups.push(() => client.close());

    const reader = await openSse(control.server, `/api/v1/traffic/stream?environment=${env}`, control.token);
    cleanups.push(() => reader.close());
    await eventually(async () => (await subscribers()) === 1);
    await client.send(port, '/before-the-kill');
    await reader.until(() => reader.messages.some((m) => m.data.includes('/before-the-kill')));

    child.kill('SIGKILL');
    await reader.ended;
    expect(hub.isConnected(agentCreds.id)).toBe(false);
    expect(hub.sessionStats(agentCreds.id)).toBeNull();
    // The agent's connection to the target died with it, so the target's subscription ends.
    await eventually(async () => (await subscribers()) === 0);
    const next = await control.server.request('GET', '/api/v1/tokens', {
      token: control.token,
      headers: { 'x-p2pstream-environment': env },
    });
    expect(next.status).toBe(503);
    expect(next.json.error.code).toBe('AGENT_OFFLINE');
  }, 30_000);
});
