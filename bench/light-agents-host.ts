/**
 * A child process running light agents of a control plane of several
 * replicas (bench/light-agents.ts, two connections each), for the cluster
 * bench: thousands of agents with two sockets each exceed what one process
 * may open, so the bench spreads them over a few of these.
 *
 * Messages from the parent: `{cmd: 'start', ca, agents: [{urls, agent}]}`
 * (answered once every agent has its two connections), `{cmd: 'lost',
 * replicaId}` (the connections on that replica, as they are now, and from now
 * on counting attempts), `{cmd: 'settled', replicaId}` (agents with two
 * connections, none on that replica; attempts and failed ones since `lost`),
 * `{cmd: 'stop'}`. Every answer is one message back.
 */
import { X509Certificate } from 'node:crypto';
import { LightAgent, type LightCredentials } from './light-agents.js';

type Message =
  | { cmd: 'start'; ca: string; agents: Array<{ urls: string[]; agent: LightCredentials }> }
  | { cmd: 'lost'; replicaId: string }
  | { cmd: 'settled'; replicaId: string }
  | { cmd: 'stop' };

/** Agents starting at once in one host (each opens two connections). */
const STARTING = 32;

const agents: LightAgent[] = [];
let counting = false;
let attempts = 0;
let failures = 0;

async function start(ca: string, list: Array<{ urls: string[]; agent: LightCredentials }>): Promise<unknown> {
  const der = new Uint8Array(new X509Certificate(ca).raw);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(STARTING, list.length) }, async () => {
      while (next < list.length) {
        const { urls, agent: credentials } = list[next++]!;
        const agent = new LightAgent({
          urls,
          ca,
          der,
          agent: credentials,
          onAttempt: () => {
            if (counting) attempts++;
          },
          onFailure: () => {
            if (counting) failures++;
          },
        });
        agents.push(agent);
        agent.start();
        while (!agent.settled) await new Promise((resolve) => setTimeout(resolve, 20));
      }
    }),
  );
  return {};
}

process.on('message', (message: Message) => {
  const answer = async (): Promise<unknown> => {
    switch (message.cmd) {
      case 'start':
        return start(message.ca, message.agents);
      case 'lost':
        counting = true;
        attempts = 0;
        failures = 0;
        return {
          lost: agents.flatMap((a) =>
            a
              .connections()
              .filter((c) => c.replicaId === message.replicaId)
              .map((c) => ({ urls: a.options.urls, url: c.url, otherUrl: c.otherUrl })),
          ),
        };
      case 'settled':
        return {
          settled: agents.filter(
            (a) => a.settled && a.connections().every((c) => c.replicaId !== message.replicaId),
          ).length,
          attempts,
          failures,
        };
      case 'stop':
        await Promise.all(agents.map((a) => a.close()));
        return {};
    }
  };
  answer().then(
    (value) => process.send!(value),
    (err: unknown) => process.send!({ error: err instanceof Error ? err.message : String(err) }),
  );
});
