/**
 * Hub scale: N idle agents connected to one control plane, against the same
 * number of bare `ws` connections over TLS to a bare `ws` server, in the same
 * run. The servers run in a child process each (bench/hub-scale-server.ts) so
 * their RSS is theirs alone; the clients are light in-process agents here that
 * speak the real envelopes (hello, pong, discover results): bench/light-agents.ts.
 *
 * Reported per N: memory per connection hub ÷ bare (the goal), connect time
 * hub ÷ bare, and the time for one discovery through every agent.
 */
import { type ChildProcess, fork } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import path from 'node:path';
import type WebSocket from 'ws';
import { type BenchRow, nowMs, spread } from './harness.js';
import { DIST } from './instances.js';
import { type LightCredentials, openLightConnection } from './light-agents.js';

export const SCALE_SERVER = path.join(DIST, 'bench', 'hub-scale-server.js');
export const IN_FLIGHT = 128;
/** Generous: connecting thousands at once measures the total time, not each handshake. */
export const CONNECT_TIMEOUT_MS = 60_000;

export interface HubScaleOptions {
  /** Agent counts (default 1,000, 5,000 and 10,000; quick: 200). */
  counts?: number[];
  /** Repetitions below 5,000 agents (default 3; one above: a connect of 10,000 takes a while). */
  repetitions?: number;
  quick?: boolean;
}

interface Started {
  url: string;
  ca: string;
  agents: LightCredentials[];
}

interface Measured {
  bytesPerConnection: number;
  /** JavaScript heap and external buffers per connection (the part of RSS the process's own objects hold). */
  heapPerConnection: number;
  connectMs: number;
  discoverMs: number;
  failed: number;
}

export function ask<T>(child: ChildProcess, message: unknown): Promise<T> {
  return new Promise((resolve, reject) => {
    const onMessage = (answer: T & { error?: string }) => {
      child.off('exit', onExit);
      if (answer.error) reject(new Error(answer.error));
      else resolve(answer);
    };
    const onExit = (code: number | null) => reject(new Error(`bench server exited with ${code}`));
    child.once('message', onMessage);
    child.once('exit', onExit);
    child.send(message as object);
  });
}

async function measureOnce(kind: 'hub' | 'bare', count: number): Promise<Measured> {
  const child = fork(SCALE_SERVER, [], {
    execArgv: ['--expose-gc'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const clients: WebSocket[] = [];
  try {
    const started = await ask<Started>(child, { cmd: 'start', kind, agents: count });
    const der = new Uint8Array(new X509Certificate(started.ca).raw);
    const before = await ask<{ rss: number; heap: number }>(child, { cmd: 'stats' });
    const t0 = nowMs();
    let next = 0;
    await Promise.all(
      Array.from({ length: IN_FLIGHT }, async () => {
        while (next < count) {
          const index = next++;
          const agent = kind === 'hub' ? started.agents[index] : undefined;
          const { ws } = await openLightConnection({
            url: started.url,
            ca: started.ca,
            der,
            handshakeTimeoutMs: CONNECT_TIMEOUT_MS,
            ...(agent ? { agent } : {}),
          });
          clients.push(ws);
        }
      }),
    );
    const connectMs = nowMs() - t0;
    let after = await ask<{ rss: number; heap: number; connections: number }>(child, { cmd: 'stats' });
    while (after.connections < count) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      after = await ask(child, { cmd: 'stats' });
    }
    let discoverMs = Number.NaN;
    let failed = 0;
    if (kind === 'hub') {
      // The light agents answer themselves: this measures the hub's path to each agent and back.
      ({ ms: discoverMs, failed } = await ask<{ ms: number; failed: number }>(child, {
        cmd: 'discoverEach',
        url: 'https://target.invalid:8081',
      }));
    }
    return {
      bytesPerConnection: (after.rss - before.rss) / count,
      heapPerConnection: (after.heap - before.heap) / count,
      connectMs,
      discoverMs,
      failed,
    };
  } finally {
    if (child.connected) await ask(child, { cmd: 'stop' }).catch(() => {});
    for (const ws of clients) ws.terminate();
    child.kill();
  }
}

/** Runs the hub-scale benchmark; see the module comment. */
export async function benchHubScale(options: HubScaleOptions = {}): Promise<BenchRow[]> {
  const counts = options.counts ?? (options.quick ? [200] : [1000, 5000, 10_000]);
  const rows: BenchRow[] = [];
  await measureOnce('bare', Math.min(100, counts[0] ?? 100)); // warm-up
  await measureOnce('hub', Math.min(100, counts[0] ?? 100));
  for (const count of counts) {
    const repetitions = options.quick ? 1 : count >= 5000 ? 1 : (options.repetitions ?? 3);
    const bare: Measured[] = [];
    const hub: Measured[] = [];
    for (let i = 0; i < repetitions; i++) {
      bare.push(await measureOnce('bare', count));
      hub.push(await measureOnce('hub', count));
    }
    const memory = spread(hub.map((h, i) => h.bytesPerConnection / bare[i]!.bytesPerConnection));
    const kb = (m: Measured[], key: 'bytesPerConnection' | 'heapPerConnection' = 'bytesPerConnection') =>
      Math.round(spread(m.map((x) => x[key])).median / 1024);
    const secs = (m: Measured[]) => (spread(m.map((x) => x.connectMs)).median / 1000).toFixed(1);
    const failed = hub.reduce((sum, h) => sum + h.failed, 0);
    rows.push(
      {
        group: 'hub scale',
        metric: `${count} idle agents: memory per connection, hub ÷ bare ws over TLS`,
        value: memory,
        unit: '×',
        goal: '≤ 1.15',
        met: memory.median <= 1.15,
        note: `RSS per connection: hub ${kb(hub)} KB, bare ${kb(bare)} KB (JS heap and buffers: hub ${kb(hub, 'heapPerConnection')} KB, bare ${kb(bare, 'heapPerConnection')} KB)`,
      },
      {
        group: 'hub scale',
        metric: `${count} idle agents: time to connect all, hub ÷ bare`,
        value: spread(hub.map((h, i) => h.connectMs / bare[i]!.connectMs)),
        unit: '×',
        note: `hub ${secs(hub)} s, bare ${secs(bare)} s`,
      },
      {
        group: 'hub scale',
        metric: `${count} idle agents: one discovery through each`,
        value: spread(hub.map((h) => h.discoverMs / 1000)),
        unit: 's',
        note: `${failed} failed`,
      },
    );
  }
  return rows;
}
