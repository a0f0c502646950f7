/**
 * scripts/install-test-deps.sh, the first step of `npm test`: it installs the
 * Debian packages the suite drives when they are missing. Run here with a PATH
 * that holds only stubs (apt-get and sudo record their calls), so the real
 * packages of this machine are hidden and nothing is installed.
 */
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';

const SCRIPT = path.resolve(import.meta.dirname, '../../scripts/install-test-deps.sh');
const run = promisify(execFile);
/** The script's PACKAGES list: package name and what proves it installed. */
const PACKAGES = [...readFileSync(SCRIPT, 'utf8').matchAll(/^\s+"(\S+)\s+(\S+)"/gm)].map((m) => ({
  name: m[1]!,
  probe: m[2]!,
}));
/** A probe by absolute path cannot be hidden by PATH: it counts as this machine has it. */
const presentByPath = (probe: string) => {
  if (!probe.startsWith('/')) return false;
  const [head, ...rest] = probe.split('*');
  if (rest.length === 0) return existsSync(probe);
  const parent = head!.replace(/\/$/, '');
  return (
    existsSync(parent) && readdirSync(parent).some((v) => existsSync(path.join(parent, v) + rest.join('*')))
  );
};
/** What the script should install when PATH holds only `stubbed` commands. */
const expectedMissing = (stubbed: string[]) =>
  PACKAGES.filter((p) => !stubbed.includes(p.probe) && !presentByPath(p.probe)).map((p) => p.name);
const onPath = PACKAGES.filter((p) => !p.probe.startsWith('/')).map((p) => p.probe);

let dir: string | undefined;
afterEach(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

async function stubDir(options: {
  apt: boolean;
  commands?: string[];
}): Promise<{ bin: string; log: string }> {
  dir = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-deps-'));
  const bin = path.join(dir, 'bin');
  const log = path.join(dir, 'calls.log');
  await mkdir(bin);
  await writeFile(log, '');
  const stub = async (name: string, body: string) => {
    await writeFile(path.join(bin, name), `#!/bin/bash\n${body}\n`);
    await chmod(path.join(bin, name), 0o755);
  };
  if (options.apt) await stub('apt-get', `echo "apt-get $*" >> ${JSON.stringify(log)}`);
  await stub('sudo', `echo "sudo" >> ${JSON.stringify(log)}; exec "$@"`);
  for (const command of options.commands ?? []) await stub(command, 'exit 0');
  return { bin, log };
}

async function runScript(bin: string): Promise<{ code: number; stderr: string }> {
  try {
    const { stderr } = await run('/bin/bash', [SCRIPT], { env: { PATH: bin } });
    return { code: 0, stderr };
  } catch (err) {
    const failed = err as { code: number; stderr: string };
    return { code: failed.code, stderr: failed.stderr };
  }
}

const aptCalls = async (log: string) =>
  (await readFile(log, 'utf8')).split('\n').filter((line) => line.startsWith('apt-get'));

describe('install-test-deps.sh', () => {
  it('installs every missing package with one apt-get install after an update', async () => {
    const { bin, log } = await stubDir({ apt: true });
    const result = await runScript(bin);
    expect(result.code).toBe(0);
    const calls = await aptCalls(log);
    expect(calls[0]).toBe('apt-get update -qq');
    expect(calls).toHaveLength(2);
    const installed = calls[1]!.replace('apt-get install -y -qq --no-install-recommends ', '').split(' ');
    expect(PACKAGES.map((p) => p.name)).toContain('chromium');
    expect(installed).toEqual(expectedMissing([]));
  });

  it('installs only what is missing, and nothing when all is there', async () => {
    const some = onPath.filter((probe) => probe !== 'chromium');
    const { bin, log } = await stubDir({ apt: true, commands: some });
    expect((await runScript(bin)).code).toBe(0);
    expect((await aptCalls(log)).at(-1)).toBe(
      `apt-get install -y -qq --no-install-recommends ${expectedMissing(some).join(' ')}`,
    );
    expect(expectedMissing(some)).toContain('chromium');

    const all = await stubDir({ apt: true, commands: onPath });
    expect((await runScript(all.bin)).code).toBe(0);
    const rest = expectedMissing(onPath);
    expect(await aptCalls(all.log)).toEqual(
      rest.length === 0
        ? []
        : ['apt-get update -qq', `apt-get install -y -qq --no-install-recommends ${rest.join(' ')}`],
    );
  });

  it('fails naming the packages when there is no apt-get to install them', async () => {
    const { bin } = await stubDir({ apt: false });
    const result = await runScript(bin);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('chromium');
    expect(result.stderr).toContain('apt-get not found');
  });
});
