/**
 * Stream reconciliation over a real hub: an agent that forgets a stream gets
 * it closed on both ends after two stream lists, the caller is told, and the
 * leak is counted on the agent and its session.
 */
import { describe, expect, it } from 'vitest';
import { AppError } from '../../src/errors.js';
import { PROTOCOL_VERSION } from '../../src/relay/envelope.js';
import { agentHeaders, createTestAgent, type RawAgent, upgradeAgent } from '../helpers/agent.js';
import { useCleanups } from '../helpers/cleanup.js';
import { startBareHub } from '../helpers/hub.js';
import { startTestServer } from '../helpers/server.js';
import { eventually } from '../helpers/wait.js';

const cleanups = useCleanups();

const PIN = Array(32).fill('AB').join(':');

/** A raw agent that answered pings and said hello with only `reconcile`, welcomed by the hub. */
async function reconcilingAgent(
  target: Parameters<typeof upgradeAgent>[0],
  agentId: string,
  token: string,
  agentVersion: string,
): Promise<RawAgent> {
  const upgraded = await upgradeAgent(target, agentHeaders(agentId, token), { answerPings: true });
  if (!upgraded.ok) throw new Error(`refused: ${upgraded.status}`);
  const raw = upgraded.socket;
  cleanups.push(() => raw.close());
  raw.send({
    streamId: 0,
    payload: {
      case: 'hello',
      value: { protocolVersion: PROTOCOL_VERSION, agentVersion, capabilities: ['reconcile'] },
    },
  });
  await eventually(() => raw.received.some((e) => e.payload.case === 'welcome'));
  return raw;
}

describe('stream reconciliation', () => {
  it('closes a stream the agent forgot, fails its caller and counts the leak', async () => {
    const bare = await startBareHub({ reconcileIntervalMs: 40 });
    cleanups.push(() => bare.close());
    const created = await bare.agents.create({ name: 'forgetful' });
    const raw = await reconcilingAgent(bare.target, created.agent.id, created.token, 'forgetful');
    // The hub opens a stream; this agent takes the head and then behaves as if it had never seen it.
    const pending = bare.hub
      .transportFor(created.agent.id)
      .request({
        url: 'https://127.0.0.1:9/api/v1/system/info',
        method: 'GET',
        headers: [],
        timeoutMs: 60_000,
        trust: { fingerprintSha256: PIN, expectedHostname: '127.0.0.1' },
      })
      .then(
        () => null,
        (err: unknown) => err as AppError,
      );
    await eventually(() => raw.received.some((e) => e.payload.case === 'requestHead'));
    const head = raw.received.find((e) => e.payload.case === 'requestHead');
    expect(head?.streamId).toBe(2);
    const sendList = () =>
      raw.send({ streamId: 0, payload: { case: 'streamSet', value: { streamIds: [], leakedTotal: 0 } } });
    sendList();
    // One list that lacks the stream is not enough: handled (the pong comes after it), the stream lives.
    await raw.roundTrip();
    expect(bare.hub.sessionStats(created.agent.id)?.activeStreams).toBe(1);
    sendList();
    const err = await pending;
    expect(err).toBeInstanceOf(AppError);
    expect(err?.code).toBe('PROTOCOL_ERROR');
    expect(bare.hub.sessionStats(created.agent.id)?.activeStreams).toBe(0);
    // The agent side is told: a cancel on that stream.
    await eventually(() => raw.received.some((e) => e.streamId === 2 && e.payload.case === 'cancel'));
    // The hub sends its own lists too (with its count once it has one), and the count is on the agent and its session.
    const hubList = () => raw.received.filter((e) => e.payload.case === 'streamSet').at(-1)?.payload;
    await eventually(() => expect(hubList()).toMatchObject({ value: { streamIds: [], leakedTotal: 1 } }));
    const view = bare.agents.get(created.agent.id);
    expect(view.leakedStreams).toBe(1);
    expect(view.connections[0]?.leakedStreams).toBe(1);
    // The agent's own count (reported in its lists) adds to it.
    raw.send({ streamId: 0, payload: { case: 'streamSet', value: { streamIds: [], leakedTotal: 2 } } });
    await eventually(() => bare.agents.get(created.agent.id).leakedStreams === 3);
    expect(bare.hub.isConnected(created.agent.id)).toBe(true);
  });

  it('runs at the interval P2PSTREAM_RECONCILE_SECONDS sets, and not at all with 0', async () => {
    const listsFrom = async (seconds: string) => {
      const server = await startTestServer({ env: { P2PSTREAM_RECONCILE_SECONDS: seconds } });
      cleanups.push(() => server.close());
      const created = await createTestAgent(server, await server.setupAdmin());
      const raw = await reconcilingAgent(server, created.id, created.token, 'listener');
      return { raw, lists: () => raw.received.filter((e) => e.payload.case === 'streamSet').length };
    };
    // Every second: two lists arrive well within the default wait (60 s would send none).
    const often = await listsFrom('1');
    await eventually(() => expect(often.lists()).toBeGreaterThanOrEqual(2), { timeoutMs: 10_000 });
    // Off on the control plane's side: by the time the other server has sent two, this one sent none.
    const never = await listsFrom('0');
    const before = often.lists();
    await eventually(() => expect(often.lists()).toBeGreaterThanOrEqual(before + 2), { timeoutMs: 10_000 });
    await never.raw.roundTrip();
    expect(never.lists()).toBe(0);
  });
});
