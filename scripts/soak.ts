/**
 * `npm run soak -- [--minutes=10]`: mixed relayed calls and live trace streams
 * through an agent, with the agent process restarted at random (SIGTERM or
 * SIGKILL) every 15–45 s, on loopback with real processes. Prints, every
 * 30 s, the calls made, the errors by code and the RSS of the control plane,
 * the agent and the target; at the end, whether each RSS plateaued (the last
 * third of the run grew less than 10% over the middle third).
 *
 * AGENT_OFFLINE while the agent restarts is expected and counted apart, as is
 * a call cut in the middle of its response within 2 s of an agent stop (once
 * the head is out, a cut connection is the relay's only way to tell the
 * caller); any other error is reported as unexpected and makes the exit code 1.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Pool } from 'undici';
import { type Instance, registerEnvironment, sampleProcess, startInstance } from '../bench/instances.js';
import { freePort } from './local-services.js';

const CLI = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'src', 'cli.js');
const SAMPLE_EVERY_MS = 30_000;
/** A call cut this long after an agent stop was cut by that stop. */
const CUT_BY_STOP_MS = 2000;

function arg(name: string, fallback: number): number {
  const found = process.argv.find((a) => a.startsWith(`--${name}=`));
  return found ? Number(found.split('=')[1]) : fallback;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** The agent daemon, restartable with the same credentials. */
function agentDaemon(control: Instance, id: string, token: string) {
  let child: ChildProcess | null = null;
  const start = () => {
    child = spawn(process.execPath, [CLI, 'agent'], {
      env: {
        PATH: process.env.PATH ?? '',
        LOG_LEVEL: 'warn',
        MANAGEMENT_URL: control.url,
        AGENT_ID: id,
        AGENT_TOKEN: token,
        MANAGEMENT_FINGERPRINT: new X509Certificate(control.certificate).fingerprint256,
      },
      stdio: ['ignore', 'ignore', 'inherit'],
    });
  };
  const stop = async (signal: NodeJS.Signals) => {
    const running = child;
    if (!running || running.exitCode !== null) return;
    const exited = once(running, 'exit');
    running.kill(signal);
    await exited;
  };
  start();
  return {
    get pid() {
      return child?.pid ?? 0;
    },
    start,
    stop,
  };
}

async function main(): Promise<void> {
  const minutes = arg('minutes', 10);
  const endAt = Date.now() + minutes * 60_000;
  process.stdout.write(
    `p2pstream soak: ${minutes} min of relayed calls and trace streams through a restarting agent\n`,
  );
  const control = await startInstance('soak-control');
  const target = await startInstance('soak-target');
  const created = await control.api('POST', '/api/v1/agents', { name: 'soak-agent' });
  const agent = agentDaemon(control, created.json.agent.id, created.json.token);
  while (
    (await control.api('GET', `/api/v1/agents/${created.json.agent.id}`)).json.agent.status !== 'connected'
  ) {
    await sleep(50);
  }
  const accessToken = (await target.api('POST', '/api/v1/tokens', { name: 'control-plane' })).json
    .token as string;
  const env = await registerEnvironment(control, { url: target.url, accessToken }, created.json.agent.id);
  const proxyPort = await freePort();
  const listener = await target.api('POST', '/api/v1/proxy/listeners', {
    name: 'soak',
    bindAddress: '127.0.0.1',
    port: proxyPort,
  });
  await target.api('POST', '/api/v1/proxy/routes', {
    listenerId: listener.json.listener.id,
    pathPrefix: '/',
    target: { type: 'static', status: 200, contentType: 'text/plain', body: 'ok' },
  });

  const relayPool = control.pool(8);
  const headers = { authorization: `Bearer ${control.token}`, 'x-p2pstream-environment': env };
  const counts = { calls: 0, events: 0, streams: 0, restarts: 0 };
  const expected = new Map<string, number>();
  const unexpected = new Map<string, number>();
  const count = (map: Map<string, number>, key: string) => map.set(key, (map.get(key) ?? 0) + 1);
  const failure = (code: string) => count(code === 'AGENT_OFFLINE' ? expected : unexpected, code);
  /** When the agent was last being stopped (set as the stop begins and once it is done). */
  let agentStoppedAt = 0;

  const call = async (method: 'GET' | 'POST' | 'DELETE', pathname: string, body?: unknown) => {
    try {
      const res = await relayPool.request({
        method,
        path: pathname,
        headers: { ...headers, ...(body ? { 'content-type': 'application/json' } : {}) },
        ...(body ? { body: JSON.stringify(body) } : {}),
      });
      const text = await res.body.text();
      counts.calls++;
      if (res.statusCode >= 400) {
        failure((JSON.parse(text) as { error?: { code?: string } }).error?.code ?? `HTTP_${res.statusCode}`);
        // A console would not hammer an offline agent either.
        await sleep(100);
        return null;
      }
      return text ? JSON.parse(text) : null;
    } catch (err) {
      if (Date.now() - agentStoppedAt < CUT_BY_STOP_MS) count(expected, 'cut mid-response by an agent stop');
      else failure(`client: ${(err as Error).message}`);
      return null;
    }
  };

  const callers = Array.from({ length: 4 }, async (_, worker) => {
    for (let i = 0; Date.now() < endAt; i++) {
      if (worker === 0 && i % 10 === 0) {
        const made = await call('POST', '/api/v1/tokens', { name: `soak-${worker}-${i}` });
        if (made?.apiToken?.id) await call('DELETE', `/api/v1/tokens/${made.apiToken.id}`);
      } else {
        await call('GET', i % 2 ? '/api/v1/system/info' : '/api/v1/overview');
      }
    }
  });

  // Two consoles on the live trace stream through the agent; each reopens when its stream ends.
  const streamPool = control.pool(2);
  const readers = Array.from({ length: 2 }, async () => {
    while (Date.now() < endAt) {
      try {
        const res = await streamPool.request({ method: 'GET', path: '/api/v1/traffic/stream', headers });
        if (res.statusCode !== 200) {
          failure((JSON.parse(await res.body.text()) as { error?: { code?: string } }).error?.code ?? 'HTTP');
          await sleep(500);
          continue;
        }
        counts.streams++;
        const timer = setTimeout(() => res.body.destroy(), Math.max(0, endAt - Date.now()));
        try {
          for await (const chunk of res.body)
            counts.events += String(chunk).match(/(^|\n)id: /g)?.length ?? 0;
        } catch {
          // Cut by an agent restart (the stream ends) or by the end of the run.
        }
        clearTimeout(timer);
      } catch (err) {
        failure(`stream: ${(err as Error).message}`);
        await sleep(500);
      }
    }
  });

  const proxy = new Pool(`http://127.0.0.1:${proxyPort}`, { connections: 4 });
  const traffic = (async () => {
    for (let i = 0; Date.now() < endAt; i++) {
      const res = await proxy.request({ method: 'GET', path: `/soak/${i}` });
      await res.body.dump();
      await sleep(5);
    }
  })();

  const restarts = (async () => {
    while (Date.now() < endAt) {
      await sleep(Math.min(15_000 + Math.random() * 30_000, Math.max(0, endAt - Date.now())));
      if (Date.now() >= endAt) break;
      agentStoppedAt = Date.now();
      await agent.stop(Math.random() < 0.5 ? 'SIGKILL' : 'SIGTERM');
      agentStoppedAt = Date.now();
      await sleep(Math.random() * 2000);
      agent.start();
      counts.restarts++;
    }
  })();

  const samples: Array<{ minute: number; control: number; agent: number; target: number }> = [];
  const startedAt = Date.now();
  const mb = (bytes: number) => Math.round(bytes / 2 ** 20);
  const sampler = (async () => {
    while (Date.now() < endAt) {
      await sleep(Math.min(SAMPLE_EVERY_MS, Math.max(0, endAt - Date.now())));
      const [c, a, t] = await Promise.all(
        [control.pid, agent.pid, target.pid].map((pid) => sampleProcess(pid).catch(() => ({ rssBytes: 0 }))),
      );
      const sample = {
        minute: (Date.now() - startedAt) / 60_000,
        control: c!.rssBytes,
        agent: a!.rssBytes,
        target: t!.rssBytes,
      };
      samples.push(sample);
      process.stdout.write(
        `${sample.minute.toFixed(1).padStart(5)} min  calls ${counts.calls}  events ${counts.events}  streams ${counts.streams}  agent restarts ${counts.restarts}  AGENT_OFFLINE ${expected.get('AGENT_OFFLINE') ?? 0}  cut by a stop ${expected.get('cut mid-response by an agent stop') ?? 0}  unexpected ${[...unexpected.values()].reduce((a, b) => a + b, 0)}  RSS MB control ${mb(sample.control)} agent ${mb(sample.agent)} target ${mb(sample.target)}\n`,
      );
    }
  })();

  await Promise.all([...callers, ...readers, traffic, restarts, sampler]);
  await proxy.close();
  await agent.stop('SIGTERM');
  await control.stop();
  await target.stop();

  // Plateau: the last third of the samples against the middle third (the agent restarts, so its RSS is
  // judged the same way but from a fresh process each time; a sample taken while it was down, 0, is left out).
  const third = Math.floor(samples.length / 3);
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
  const running = (xs: number[]) => xs.filter((x) => x > 0);
  const verdicts = (['control', 'target', 'agent'] as const).map((key) => {
    const middle = mean(running(samples.slice(third, 2 * third).map((s) => s[key])));
    const last = mean(running(samples.slice(2 * third).map((s) => s[key])));
    const growth = middle > 0 ? last / middle - 1 : 0;
    return { key, growth, plateau: third === 0 || growth < 0.1 };
  });
  process.stdout.write(
    `\nsoak done: ${counts.calls} relayed calls, ${counts.events} trace events on ${counts.streams} streams, ${counts.restarts} agent restarts\n`,
  );
  process.stdout.write(
    `expected errors (agent restarting): ${JSON.stringify(Object.fromEntries(expected))}\n`,
  );
  process.stdout.write(`unexpected errors: ${JSON.stringify(Object.fromEntries(unexpected))}\n`);
  for (const v of verdicts) {
    process.stdout.write(
      `RSS ${v.key}: last third vs middle third ${(v.growth * 100).toFixed(1)}% → ${v.plateau ? 'plateau' : 'GROWING'}\n`,
    );
  }
  process.exit(unexpected.size === 0 && verdicts.every((v) => v.plateau) ? 0 : 1);
}

void main();
