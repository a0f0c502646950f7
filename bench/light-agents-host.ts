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
 * connections, none on that replica; attempts and failed ones since `lost`,
 * and the failed ones by kind: error code, refusing status or timeout; this
 * process's CPU time and longest event loop delay since `lost`),
 * `{cmd: 'stop'}`. Every answer is one message back.
 */
import { X509Certificate } from 'node:crypto';
import { monitorEventLoopDelay } from 'node:perf_hooks';
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
let failuresBy: Record<string, number> = {};
let cpuAtLost = process.cpuUsage();
const loopDelay = monitorEventLoopDelay({ resolution: 20 });

/** A failed attempt's kind: the error code, the refusing status, or a timeout. */
function failureKind(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string') return code;
  const message = err instanceof Error ? err.message : String(err);
  const status = /upgrade refused with (\d+)/.exec(message);
  if (status) return `HTTP ${status[1]}`;
  if (/timed out|no welcome/i.test(message)) return 'timeout';
  return message.slice(0, 60);
}

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
          onFailure: (_url, err) => {
            if (!counting) return;
            failures++;
            const why = failureKind(err);
            failuresBy[why] = (failuresBy[why] ?? 0) + 1;
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

// A profiled run (BENCH_NODE_ARGS=--cpu-prof) writes its profile on exit; a plain SIGTERM would not.
process.on('SIGTERM', () => process.exit(0));

process.on('message', (message: Message) => {
  const answer = async (): Promise<unknown> => {
    switch (message.cmd) {
      case 'start':
        return start(message.ca, message.agents);
      case 'lost':
        counting = true;
        attempts = 0;
        failures = 0;
        failuresBy = {};
        cpuAtLost = process.cpuUsage();
        loopDelay.reset();
        loopDelay.enable();
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
          failuresBy,
          cpuMs: (({ user, system }) => (user + system) / 1000)(process.cpuUsage(cpuAtLost)),
          loopDelayMaxMs: loopDelay.max / 1e6,
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
