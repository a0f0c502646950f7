/**
 * Shared benchmark plumbing: repetitions with warm-up, percentiles,
 * min/median/max summaries, the machine description and the result table.
 * Every figure p2pstream reports is a ratio against a baseline measured in the
 * same run; absolute numbers are printed only for context.
 */
import os from 'node:os';

export interface Spread {
  min: number;
  median: number;
  max: number;
}

/** One reported figure: a ratio (or count) with its spread over repetitions and its goal. */
export interface BenchRow {
  group: string;
  metric: string;
  value: Spread;
  unit: string;
  /** Human-readable goal, e.g. `≤ 3.0`. */
  goal?: string;
  /** Whether the median meets the goal (undefined when there is none). */
  met?: boolean;
  note?: string;
}

export interface MachineInfo {
  cpus: number;
  cpuModel: string;
  memoryGiB: number;
  node: string;
  platform: string;
}

export function machineInfo(): MachineInfo {
  const cpus = os.cpus();
  return {
    cpus: cpus.length,
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    platform: `${os.platform()} ${os.release()}`,
  };
}

/** The value at quantile `q` (0–1) of an ascending array (nearest rank). */
export function percentile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank]!;
}

export function spread(values: readonly number[]): Spread {
  const sorted = [...values].sort((a, b) => a - b);
  return {
    min: sorted[0] ?? Number.NaN,
    median: percentile(sorted, 0.5),
    max: sorted[sorted.length - 1] ?? Number.NaN,
  };
}

/** Runs `once` `warmup` times unrecorded, then `repetitions` times; returns each result. */
export async function repeat<T>(
  once: () => Promise<T>,
  options: { warmup?: number; repetitions?: number } = {},
): Promise<T[]> {
  for (let i = 0; i < (options.warmup ?? 1); i++) await once();
  const results: T[] = [];
  for (let i = 0; i < (options.repetitions ?? 3); i++) results.push(await once());
  return results;
}

/**
 * The order of `items` in round `round` of an interleaved measurement: even
 * rounds rotate the list, odd rounds also reverse it. Rotation alone keeps
 * every item behind the same neighbour (a run that always follows a busy or
 * an idle one carries that bias into its ratio); reversing every other round
 * gives each item other neighbours, on both sides.
 */
export function roundOrder<T>(items: readonly T[], round: number): T[] {
  const rotated = items.map((_, i) => items[(round + i) % items.length]!);
  return round % 2 === 1 ? rotated.reverse() : rotated;
}

/** Runs `rounds` rounds, the modes in {@link roundOrder}: each leads in turn and follows each other. */
export async function interleaved<M extends string, R>(
  modes: readonly M[],
  rounds: number,
  run: (mode: M) => Promise<R>,
): Promise<Record<M, R[]>> {
  const results = Object.fromEntries(modes.map((m) => [m, [] as R[]])) as Record<M, R[]>;
  for (let round = 0; round < rounds; round++) {
    for (const mode of roundOrder(modes, round)) results[mode].push(await run(mode));
  }
  return results;
}

/** Nanosecond-resolution timer in milliseconds. */
export function nowMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

function fmt(n: number): string {
  if (!Number.isFinite(n)) return 'n/a';
  if (Math.abs(n) >= 1000) return n.toFixed(0);
  if (Math.abs(n) >= 10) return n.toFixed(1);
  return n.toFixed(2);
}

/** Renders rows as a Markdown table (also readable in a terminal). */
export function renderTable(rows: readonly BenchRow[]): string {
  const lines = [
    '| group | metric | median | min | max | unit | goal | met |',
    '| --- | --- | ---: | ---: | ---: | --- | --- | --- |',
  ];
  for (const r of rows) {
    const met = r.met === undefined ? '' : r.met ? 'yes' : '**no**';
    lines.push(
      `| ${r.group} | ${r.metric} | ${fmt(r.value.median)} | ${fmt(r.value.min)} | ${fmt(r.value.max)} | ${r.unit} | ${r.goal ?? ''} | ${met} |`,
    );
  }
  return lines.join('\n');
}
