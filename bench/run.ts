/**
 * `npm run bench`: every p2pstream benchmark, each figure a ratio against a
 * baseline measured in the same run. Prints the machine, a Markdown table and
 * each row's note (absolute figures, load, CPU budget) and writes
 * bench/results.json.
 *
 *   npm run bench                         everything (about 10 minutes on 2 cores)
 *   npm run bench -- --quick              small counts, one repetition (a smoke run)
 *   npm run bench -- --only=latency,codec  chosen groups
 *   npm run bench -- --only=peers-rss --rss-minutes=10   a longer RSS run
 *
 * Groups: latency, throughput, streaming, trace-delivery, hub-scale, codec,
 * tracing, tls, policies, cache, peers, cluster, tunnel (public traffic through
 * an agent against proxying straight), peers-rss (5 minutes at full load: left
 * out of a quick run unless named with --only).
 */
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { benchCache } from './cache.js';
import { benchCluster } from './cluster.js';
import { benchCodec } from './codec.js';
import { type BenchRow, type MachineInfo, machineInfo, renderTable } from './harness.js';
import { benchHubScale } from './hub-scale.js';
import { benchPeers, benchPeersRss } from './peers.js';
import { benchPolicies } from './policies.js';
import { benchRelay } from './relay.js';
import { benchTls } from './tls.js';
import { benchTracing, tracingRows } from './tracing.js';
import { benchTunnel } from './tunnel.js';

export const GROUPS = [
  'latency',
  'throughput',
  'streaming',
  'trace-delivery',
  'hub-scale',
  'codec',
  'tracing',
  'tls',
  'policies',
  'cache',
  'peers',
  'peers-rss',
  'cluster',
  'tunnel',
] as const;
const RELAY_GROUPS = ['latency', 'throughput', 'streaming', 'trace-delivery'];

export interface RunOptions {
  quick?: boolean;
  only?: readonly string[];
  /** Minutes of the peers-rss run (default 5; a quarter minute in a quick run). */
  rssMinutes?: number;
  /** Progress lines (default none). */
  log?: (line: string) => void;
}

/** Runs the selected groups in order; returns every row. */
export async function runBenchmarks(options: RunOptions = {}): Promise<BenchRow[]> {
  const quickDefault = GROUPS.filter((g) => g !== 'peers-rss');
  const only = options.only ?? (options.quick ? quickDefault : GROUPS);
  const unknown = only.filter((g) => !(GROUPS as readonly string[]).includes(g));
  if (unknown.length > 0)
    throw new Error(`unknown group ${unknown.join(', ')}; groups: ${GROUPS.join(', ')}`);
  const quick = options.quick ?? false;
  const repetitions = quick ? 1 : 3;
  const rows: BenchRow[] = [];
  const relayGroups = only.filter((g) => RELAY_GROUPS.includes(g));
  if (relayGroups.length > 0) {
    rows.push(
      ...(await benchRelay({
        only: relayGroups,
        repetitions,
        ...(quick
          ? {
              latencyCalls: 100,
              throughputSeconds: 1,
              concurrency: 8,
              streamMegabytes: 8,
              traceRequests: 500,
            }
          : {}),
      })),
    );
  }
  if (only.includes('hub-scale')) rows.push(...(await benchHubScale({ quick, repetitions })));
  if (only.includes('codec'))
    rows.push(...(await benchCodec({ repetitions, ...(quick ? { budgetMs: 50 } : {}) })));
  if (only.includes('tracing')) {
    rows.push(...tracingRows(await benchTracing(quick ? { requests: 300, rounds: 1 } : {})));
  }
  if (only.includes('tls')) {
    rows.push(
      ...(await benchTls(
        quick ? { requests: 300, handshakes: 60, rounds: 1, certificates: 100 } : { rounds: repetitions },
      )),
    );
  }
  if (only.includes('policies')) {
    rows.push(...(await benchPolicies(quick ? { requests: 300, rounds: 1, seconds: 2 } : {})));
  }
  if (only.includes('cache')) {
    rows.push(
      ...(await benchCache(
        quick ? { seconds: 1, rounds: 1, memoryMiB: 8, misses: 200 } : { rounds: repetitions },
      )),
    );
  }
  const log = options.log ?? (() => {});
  if (only.includes('peers')) {
    rows.push(
      ...(await benchPeers({ log, ...(quick ? { seconds: 1, rounds: 1, downloadMegabytes: 10 } : {}) })),
    );
  }
  if (only.includes('cluster')) {
    rows.push(
      ...(await benchCluster(
        quick
          ? { calls: 50, repetitions: 1, agentsPerReplica: 300, settleAgents: 300, log }
          : { repetitions, log },
      )),
    );
  }
  if (only.includes('tunnel')) {
    rows.push(
      ...(await benchTunnel({
        log,
        ...(quick ? { seconds: 1, rounds: 1, downloadMegabytes: 20 } : { rounds: repetitions }),
      })),
    );
  }
  if (only.includes('peers-rss')) {
    rows.push(...(await benchPeersRss({ log, minutes: options.rssMinutes ?? (quick ? 0.25 : 5) })));
  }
  return rows;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const quick = args.includes('--quick');
  const onlyArg = args.find((a) => a.startsWith('--only='));
  const only = onlyArg ? onlyArg.slice('--only='.length).split(',').filter(Boolean) : undefined;
  const rssArg = args.find((a) => a.startsWith('--rss-minutes='));
  const rssMinutes = rssArg ? Number(rssArg.slice('--rss-minutes='.length)) : undefined;
  if (rssMinutes !== undefined && !(rssMinutes > 0)) throw new Error('--rss-minutes takes a positive number');
  const machine = machineInfo();
  const startedAt = new Date().toISOString();
  process.stdout.write(
    `p2pstream bench${quick ? ' (quick)' : ''}: ${machine.cpus} × ${machine.cpuModel}, ${machine.memoryGiB} GiB, Node ${machine.node}, ${machine.platform}\n`,
  );
  const rows = await runBenchmarks({
    quick,
    ...(only ? { only } : {}),
    ...(rssMinutes ? { rssMinutes } : {}),
    log: (line) => process.stdout.write(`${line}\n`),
  });
  process.stdout.write(`\n${renderTable(rows)}\n`);
  const notes = rows.filter((r) => r.note);
  if (notes.length > 0) {
    process.stdout.write(
      `\nnotes:\n${notes.map((r) => `- ${r.group}, ${r.metric}: ${r.note}`).join('\n')}\n`,
    );
  }
  const out = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'bench', 'results.json');
  if (!quick) {
    const results = only
      ? await mergeResults(out, { startedAt, machine, rows })
      : { startedAt, machine, quick, rows };
    await writeFile(out, `${JSON.stringify(results, null, 2)}\n`);
    process.stdout.write(`\nwritten to bench/results.json\n`);
  }
  const missed = rows.filter((r) => r.met === false);
  if (missed.length > 0) process.stdout.write(`goals missed: ${missed.map((r) => r.metric).join('; ')}\n`);
}

interface ResultsRun {
  startedAt: string;
  machine: MachineInfo;
}

interface ResultsFile extends ResultsRun {
  quick: boolean;
  rows: BenchRow[];
  /** The run each group's rows come from, when they differ (a run with --only keeps the other groups' rows). */
  runs?: Record<string, ResultsRun>;
}

/**
 * The results of a run of chosen groups (--only) merged into the existing
 * file: the groups measured now replace theirs, the others keep their rows,
 * and `runs` says which run (time, machine) each group's rows come from.
 */
async function mergeResults(file: string, run: ResultsRun & { rows: BenchRow[] }): Promise<ResultsFile> {
  let previous: ResultsFile | null = null;
  try {
    previous = JSON.parse(await readFile(file, 'utf8')) as ResultsFile;
  } catch {
    // no earlier results: this run alone
  }
  const measured = new Set(run.rows.map((r) => r.group));
  const kept = (previous?.rows ?? []).filter((r) => !measured.has(r.group));
  const runs: Record<string, ResultsRun> = {};
  for (const row of kept) {
    runs[row.group] = previous?.runs?.[row.group] ?? {
      startedAt: previous!.startedAt,
      machine: previous!.machine,
    };
  }
  for (const group of measured) runs[group] = { startedAt: run.startedAt, machine: run.machine };
  return { startedAt: run.startedAt, machine: run.machine, quick: false, rows: [...kept, ...run.rows], runs };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  main().then(
    () => process.exit(0),
    (err: unknown) => {
      process.stderr.write(
        `bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
      );
      process.exit(1);
    },
  );
}
