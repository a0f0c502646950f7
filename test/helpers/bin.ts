/** Runs the built `p2pstream` bin as a child process (real process, real signals). */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Agent } from 'undici';

export const ROOT = path.resolve(import.meta.dirname, '../..');
export const BIN = path.join(ROOT, 'dist/src/cli.js');

/** Builds the bin when it is missing (as `npm install` does). */
export function ensureBuilt(): void {
  if (existsSync(BIN)) return;
  const build = spawnSync('npm', ['run', 'build'], { cwd: ROOT, stdio: 'inherit' });
  if (build.status !== 0) throw new Error('npm run build failed');
}

export interface BinServer {
  child: ChildProcess;
  url: string;
  output(): string;
  /** An HTTPS dispatcher trusting the server's generated certificate. */
  dispatcher: Agent;
  exited: Promise<number | null>;
}

/** Starts `p2pstream server` on 127.0.0.1:0 and waits for its listening line. */
export async function startBinServer(env: Record<string, string>): Promise<BinServer> {
  const child = spawn(process.execPath, [BIN, 'server'], {
    env: { PATH: process.env.PATH ?? '', MANAGEMENT_ADDR: '127.0.0.1', MANAGEMENT_PORT: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const url = await new Promise<string>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      out += chunk.toString();
      const match = /management listening on (https:\/\/[^"\s]+)/.exec(out);
      if (match) resolve(match[1]!);
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    void exited.then((code) => reject(new Error(`server exited with ${code}: ${out}`)));
  });
  const dataDir = env.P2PSTREAM_DATA_DIR;
  if (!dataDir) throw new Error('P2PSTREAM_DATA_DIR is required');
  const cert = await readFile(path.join(dataDir, 'management-cert.pem'), 'utf8');
  const dispatcher = new Agent({ connect: { ca: cert, servername: 'localhost' } });
  return { child, url, output: () => out, dispatcher, exited };
}
