/**
 * A stored access token stays where the admin put it. Moving an environment
 * to another origin, another transport or another agent needs the token in
 * the same request (400 VALIDATION_FAILED naming `accessToken` otherwise) and
 * resets trust to UNTRUSTED; the old token never reaches the new origin or the
 * newly bound agent, even after the new place is discovered and trusted.
 */
import { describe, expect, it } from 'vitest';
import type { EnvelopeHandlerFactory } from '../../agent/agent.js';
import { createAgentExecutor } from '../../agent/main.js';
import { createCertificate } from '../../src/tls/certificates.js';
import { createTestAgent, startTestAgent } from '../helpers/agent.js';
import { useCleanups } from '../helpers/cleanup.js';
import { startTlsTarget } from '../helpers/tls-target.js';
import {
  discoverAndTrust,
  eventually,
  type Instance,
  registerEnvironment,
  startInstance,
} from './environment-helpers.js';

const cleanups = useCleanups();

const instance = (options: Parameters<typeof startInstance>[0] = {}): Promise<Instance> =>
  startInstance(options, cleanups);

const OLD_TOKEN = `p2pat_${'o'.repeat(43)}`;
const NEW_TOKEN = `p2pat_${'n'.repeat(43)}`;

/** An agent whose executor records the headers of every request head it is handed. */
async function recordingAgent(control: Instance) {
  const credentials = await createTestAgent(control.server, control.cookie);
  const heads: string[] = [];
  const createExecutor: EnvelopeHandlerFactory = (options) => {
    const executor = createAgentExecutor(options);
    const receive = executor.receive.bind(executor);
    executor.receive = (envelope) => {
      if (envelope.payload.case === 'requestHead') heads.push(JSON.stringify(envelope.payload.value.headers));
      receive(envelope);
    };
    return executor;
  };
  const agent = startTestAgent(control.server, credentials, { createExecutor });
  cleanups.push(() => agent.close());
  await agent.connected();
  await eventually(() => control.server.server.hub.isConnected(credentials.id));
  return { id: credentials.id, heads };
}

async function patch(control: Instance, id: string, body: Record<string, unknown>) {
  return control.server.request('PATCH', `/api/v1/environments/${id}`, { token: control.token, body });
}

async function relayedCall(control: Instance, id: string) {
  return control.server.request('GET', '/api/v1/system/info', {
    token: control.token,
    headers: { 'x-p2pstream-environment': id },
  });
}

describe('token custody on PATCH of an environment', () => {
  it('a new origin needs the token in the same request; the old one never reaches it', async () => {
    const control = await instance();
    const target = await instance();
    const id = await registerEnvironment(control, { url: target.server.url, accessToken: OLD_TOKEN });
    const cert = await createCertificate({ altNames: ['127.0.0.1'] });
    const other = await startTlsTarget({ cert: cert.cert, key: cert.key });
    cleanups.push(() => other.close());

    const refused = await patch(control, id, { url: other.url });
    expect([refused.status, refused.json.error.code]).toEqual([400, 'VALIDATION_FAILED']);
    expect(refused.json.error.details).toEqual({ field: 'accessToken' });
    const unchanged = await control.server.request('GET', `/api/v1/environments/${id}`, {
      token: control.token,
    });
    expect(unchanged.json.environment).toMatchObject({ url: target.server.url, trustState: 'TRUSTED' });

    // A path on the same origin is not a move.
    const samePlace = await patch(control, id, { url: `${target.server.url}/p2p` });
    expect(samePlace.status).toBe(200);

    const moved = await patch(control, id, { url: other.url, accessToken: NEW_TOKEN });
    expect(moved.status).toBe(200);
    expect(moved.json.environment).toMatchObject({
      url: other.url,
      trustState: 'UNTRUSTED',
      certificate: null,
    });
    await discoverAndTrust(control, id);
    expect((await relayedCall(control, id)).status).toBe(200);
    const seen = other.received().toString('latin1');
    expect(seen).toContain(`Bearer ${NEW_TOKEN}`);
    expect(seen).not.toContain(OLD_TOKEN);
  });

  it('a change of transport needs the token; the agent never sees the old one', async () => {
    const control = await instance();
    const target = await instance();
    const agent = await recordingAgent(control);
    const id = await registerEnvironment(control, { url: target.server.url, accessToken: OLD_TOKEN });

    const refused = await patch(control, id, { transport: 'agent', agentId: agent.id });
    expect([refused.status, refused.json.error.code, refused.json.error.details]).toEqual([
      400,
      'VALIDATION_FAILED',
      { field: 'accessToken' },
    ]);
    const moved = await patch(control, id, { transport: 'agent', agentId: agent.id, accessToken: NEW_TOKEN });
    expect(moved.status).toBe(200);
    expect(moved.json.environment).toMatchObject({ transport: 'agent', trustState: 'UNTRUSTED' });
    const untrusted = await relayedCall(control, id);
    expect(untrusted.json.error.code).toBe('ENVIRONMENT_UNTRUSTED');
    await discoverAndTrust(control, id);
    await relayedCall(control, id);
    expect(agent.heads.join('\n')).toContain(NEW_TOKEN);
    expect(agent.heads.join('\n')).not.toContain(OLD_TOKEN);
  });

  it('a change of agent needs the token; the new agent never sees the old one', async () => {
    const control = await instance();
    const target = await instance();
    const first = await recordingAgent(control);
    const second = await recordingAgent(control);
    const id = await registerEnvironment(
      control,
      { url: target.server.url, accessToken: OLD_TOKEN },
      { transport: 'agent', agentId: first.id },
    );
    await relayedCall(control, id);
    expect(first.heads.join('\n')).toContain(OLD_TOKEN);

    const refused = await patch(control, id, { agentId: second.id });
    expect([refused.status, refused.json.error.details]).toEqual([400, { field: 'accessToken' }]);
    const moved = await patch(control, id, { agentId: second.id, accessToken: NEW_TOKEN });
    expect(moved.json.environment).toMatchObject({ agentId: second.id, trustState: 'UNTRUSTED' });
    await discoverAndTrust(control, id);
    await relayedCall(control, id);
    expect(second.heads.join('\n')).toContain(NEW_TOKEN);
    expect(second.heads.join('\n')).not.toContain(OLD_TOKEN);
  });
});
