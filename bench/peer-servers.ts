/**
 * The proxies people pick instead of p2pstream, run for the peers benchmark:
 * Debian's nginx (as the upstream and as a `proxy_pass` peer) and Caddy
 * (`reverse_proxy` and `respond`), each a child process on 127.0.0.1 with its
 * configuration in a temporary directory, plus the wrk and curl load
 * generators. Missing packages are installed with apt-get (as root, or
 * through sudo) and every tool's version is reported.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { access, chmod, mkdir, mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { freePort } from '../scripts/local-services.js';

const run = promisify(execFile);

/** Debian packages the peers benchmark needs, by the command each provides. */
export const PEER_PACKAGES = {
  nginx: 'nginx',
  caddy: 'caddy',
  wrk: 'wrk',
  curl: 'curl',
} as const;

export type PeerCommand = keyof typeof PEER_PACKAGES;

/** Absolute paths of the peer tools and the versions installed. */
export interface PeerTools {
  nginx: string;
  caddy: string;
  wrk: string;
  curl: string;
  /** e.g. `nginx 1.22.1-9, caddy 2.6.2-5, wrk 4.1.0-3+b2, curl 7.88.1-10`. */
  versions: string;
}

const SEARCH_DIRS = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];

async function which(command: string): Promise<string | null> {
  const dirs = [...(process.env.PATH ?? '').split(':').filter(Boolean), ...SEARCH_DIRS];
  for (const dir of dirs) {
    const candidate = path.join(dir, command);
    try {
      await access(candidate, 1);
      return candidate;
    } catch {
      // not here
    }
  }
  return null;
}

/**
 * Finds nginx, caddy, wrk and curl; installs the missing ones with apt-get
 * (as root, or through sudo) and throws naming them when that is impossible.
 */
export async function ensurePeerTools(log: (line: string) => void = () => {}): Promise<PeerTools> {
  return ensureTools(['nginx', 'caddy', 'wrk', 'curl'], log);
}

/** {@link ensurePeerTools} for some of the tools only (e.g. the load generators wrk and curl). */
export async function ensureTools<C extends PeerCommand>(
  commands: readonly C[],
  log: (line: string) => void = () => {},
): Promise<Record<C, string> & { versions: string }> {
  let missing: C[] = [];
  for (const command of commands) if ((await which(command)) === null) missing.push(command);
  if (missing.length > 0) {
    const packages = missing.map((c) => PEER_PACKAGES[c]);
    const apt = await which('apt-get');
    const sudo = process.getuid?.() === 0 ? null : await which('sudo');
    if (apt === null || (process.getuid?.() !== 0 && sudo === null)) {
      throw new Error(`the benchmark needs ${packages.join(', ')} (Debian packages); install them`);
    }
    log(`installing ${packages.join(' ')} with apt-get`);
    const prefix = sudo === null ? [] : [sudo];
    const aptRun = async (args: string[]) => {
      const [file, ...rest] = [...prefix, apt, ...args];
      await run(file!, rest, {
        env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
        maxBuffer: 1 << 24,
      });
    };
    await aptRun(['update', '-q']);
    await aptRun(['install', '-y', '-q', '--no-install-recommends', ...packages]);
    missing = [];
    for (const command of commands) if ((await which(command)) === null) missing.push(command);
    if (missing.length > 0) throw new Error(`apt-get did not provide ${missing.join(', ')}`);
  }
  const tools = Object.fromEntries(
    await Promise.all(commands.map(async (c) => [c, (await which(c))!] as const)),
  ) as Record<C, string>;
  const versions = await Promise.all(commands.map(async (c) => `${c} ${await packageVersion(c, tools[c])}`));
  return { ...tools, versions: versions.join(', ') };
}

/** The Debian package version when dpkg knows the command's package, else the tool's own. */
async function packageVersion(command: PeerCommand, file: string): Promise<string> {
  try {
    const { stdout } = await run('dpkg-query', ['-W', `-f=\${Version}`, PEER_PACKAGES[command]]);
    if (stdout.trim() !== '') return stdout.trim();
  } catch {
    // not a dpkg system
  }
  const args = command === 'caddy' ? ['version'] : command === 'curl' ? ['-V'] : ['-v'];
  const result = await run(file, args).catch((err: { stdout?: string; stderr?: string }) => err);
  const text = `${result.stdout ?? ''}${result.stderr ?? ''}`;
  return /\d+\.\d+(\.\d+)?/.exec(text)?.[0] ?? 'unknown';
}

/** A free TCP port on 127.0.0.1: the one the project's scripts and tests use. */
export { freePort };

/** Resolves once something accepts connections on 127.0.0.1:port; rejects after `timeoutMs`. */
export async function waitForPort(port: number, child: ChildProcess, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null) {
      throw new Error(`${child.spawnfile} exited with ${child.exitCode}: ${outputs.get(child) ?? ''}`);
    }
    const ok = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on 127.0.0.1:${port} after ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** A peer server child process. */
export interface PeerServer {
  pid: number;
  stop(): Promise<void>;
}

const children = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});

/** Spawns a peer; the first 4 KiB of its stderr become `child.output` for error messages. */
function startChild(file: string, args: string[], env: NodeJS.ProcessEnv): ChildProcess {
  const child = spawn(file, args, { env, stdio: ['ignore', 'ignore', 'pipe'] });
  children.add(child);
  outputs.set(child, '');
  child.stderr!.on('data', (chunk: Buffer) => {
    const text = outputs.get(child) ?? '';
    if (text.length < 4096) outputs.set(child, text + chunk.toString());
  });
  child.once('exit', () => children.delete(child));
  return child;
}

const outputs = new WeakMap<ChildProcess, string>();

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

/** What the upstream nginx serves. */
export interface Upstream extends PeerServer {
  /** `http://127.0.0.1:PORT`: `2 ok` on every path but the download. */
  origin: string;
  /** Path of the download of `downloadBytes`. */
  downloadPath: string;
}

/**
 * The shared upstream: nginx with one worker answering `ok` (2 bytes,
 * text/plain) on every path, and a file of `downloadBytes` at `/download.bin`
 * (sendfile). Keep-alive connections are never closed by request count.
 */
export async function startUpstream(tools: PeerTools, dir: string, downloadBytes: number): Promise<Upstream> {
  const root = path.join(dir, 'upstream-root');
  await mkdir(root, { recursive: true });
  const file = await open(path.join(root, 'download.bin'), 'w');
  const block = Buffer.alloc(1 << 20, 0x61);
  for (let left = downloadBytes; left > 0; left -= block.length) {
    await file.write(left >= block.length ? block : block.subarray(0, left));
  }
  await file.close();
  const port = await freePort();
  const server = `
    server {
      listen 127.0.0.1:${port};
      location = /download.bin { root ${root}; default_type application/octet-stream; }
      location / { default_type text/plain; return 200 "ok"; }
    }`;
  const child = await startNginx(tools, dir, 'upstream', 1, server);
  return { ...child, origin: `http://127.0.0.1:${port}`, downloadPath: '/download.bin' };
}

/**
 * nginx as a reverse proxy to `origin`, configured the way its documentation
 * recommends for keep-alive upstreams (`proxy_http_version 1.1`, an empty
 * Connection header, an upstream `keepalive` pool), with the X-Forwarded-*
 * headers p2pstream and Caddy also send; Debian's worker count (`auto`).
 */
export async function startNginxProxy(
  tools: PeerTools,
  dir: string,
  origin: string,
): Promise<PeerServer & { url: string }> {
  const port = await freePort();
  const server = `
    upstream backend { server ${new URL(origin).host}; keepalive 64; keepalive_requests 1000000; }
    server {
      listen 127.0.0.1:${port};
      location / {
        proxy_pass http://backend;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Forwarded-Host $http_host;
      }
    }`;
  const child = await startNginx(tools, dir, 'proxy', 'auto', server);
  return { ...child, url: `http://127.0.0.1:${port}` };
}

async function startNginx(
  tools: PeerTools,
  dir: string,
  name: string,
  workers: number | 'auto',
  server: string,
): Promise<PeerServer> {
  const prefix = path.join(dir, `nginx-${name}`);
  await mkdir(prefix, { recursive: true });
  // nginx workers run as `nobody` when started as root: they must reach the files.
  await chmod(dir, 0o755);
  await chmod(prefix, 0o755);
  const conf = path.join(prefix, 'nginx.conf');
  await writeFile(
    conf,
    `worker_processes ${workers};
daemon off;
pid ${prefix}/nginx.pid;
error_log ${prefix}/error.log error;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  client_body_temp_path ${prefix}/client_body;
  proxy_temp_path ${prefix}/proxy;
  fastcgi_temp_path ${prefix}/fastcgi;
  uwsgi_temp_path ${prefix}/uwsgi;
  scgi_temp_path ${prefix}/scgi;
  ${server}
}
`,
  );
  const port = Number(/listen 127\.0\.0\.1:(\d+)/.exec(server)![1]);
  const child = startChild(tools.nginx, ['-p', prefix, '-e', path.join(prefix, 'error.log'), '-c', conf], {
    PATH: process.env.PATH ?? '',
  });
  await waitForPort(port, child);
  return { pid: child.pid!, stop: () => stopChild(child) };
}

/** Caddy with a `reverse_proxy` site, a `respond` site and, with a certificate, an https `reverse_proxy` site. */
export interface CaddyPeer extends PeerServer {
  proxyUrl: string;
  staticUrl: string;
  httpsUrl: string | null;
}

/**
 * Caddy with its defaults (no access log, admin endpoint and automatic HTTPS
 * off so nothing else runs): `reverse_proxy` to `origin`, `respond "ok" 200`
 * and, when `tls` is given, the same `reverse_proxy` on https with that
 * certificate.
 */
export async function startCaddy(
  tools: PeerTools,
  dir: string,
  origin: string,
  tls?: { certFile: string; keyFile: string },
): Promise<CaddyPeer> {
  const home = path.join(dir, 'caddy');
  await mkdir(home, { recursive: true });
  const [proxyPort, staticPort, httpsPort] = [await freePort(), await freePort(), await freePort()];
  const upstream = new URL(origin).host;
  const sites = [
    `http://127.0.0.1:${proxyPort} {\n  bind 127.0.0.1\n  reverse_proxy ${upstream}\n}`,
    `http://127.0.0.1:${staticPort} {\n  bind 127.0.0.1\n  respond "ok" 200\n}`,
  ];
  if (tls) {
    sites.push(
      `https://127.0.0.1:${httpsPort} {\n  bind 127.0.0.1\n  tls ${tls.certFile} ${tls.keyFile}\n  reverse_proxy ${upstream}\n}`,
    );
  }
  const caddyfile = path.join(home, 'Caddyfile');
  await writeFile(caddyfile, `{\n  admin off\n  auto_https off\n}\n${sites.join('\n')}\n`);
  const child = startChild(tools.caddy, ['run', '--config', caddyfile, '--adapter', 'caddyfile'], {
    PATH: process.env.PATH ?? '',
    HOME: home,
    XDG_DATA_HOME: path.join(home, 'data'),
    XDG_CONFIG_HOME: path.join(home, 'config'),
  });
  await waitForPort(proxyPort, child);
  await waitForPort(staticPort, child);
  if (tls) await waitForPort(httpsPort, child);
  return {
    pid: child.pid!,
    proxyUrl: `http://127.0.0.1:${proxyPort}`,
    staticUrl: `http://127.0.0.1:${staticPort}`,
    httpsUrl: tls ? `https://127.0.0.1:${httpsPort}` : null,
    stop: () => stopChild(child),
  };
}

/** A temporary directory for the peers' configurations, removed by `remove()`. */
export async function peersDir(): Promise<{ dir: string; remove(): Promise<void> }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-bench-peers-'));
  return { dir, remove: () => rm(dir, { recursive: true, force: true }) };
}

/** One wrk run's figures. */
export interface WrkResult {
  /** Requests completed. */
  requests: number;
  requestsPerSecond: number;
  p50Ms: number;
  p99Ms: number;
  /** Non-2xx/3xx answers plus socket errors (a correct run has none). */
  errors: number;
}

/**
 * Runs wrk (1 thread, `connections` keep-alive connections, `seconds`
 * long, latency distribution on) against `url` in its own process and parses
 * its report. Throws when wrk fails or saw no request.
 */
export async function runWrk(
  tools: Pick<PeerTools, 'wrk'>,
  url: string,
  connections: number,
  seconds: number,
): Promise<WrkResult> {
  const { stdout } = await run(
    tools.wrk,
    ['-t1', `-c${connections}`, `-d${seconds}s`, '--timeout', '10s', '--latency', url],
    { maxBuffer: 1 << 20 },
  );
  const rps = /Requests\/sec:\s+([\d.]+)/.exec(stdout);
  if (!rps || Number(rps[1]) === 0) throw new Error(`wrk ${url} measured nothing:\n${stdout}`);
  const non2xx = Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(stdout)?.[1] ?? 0);
  const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(stdout);
  const socketErrors = socket ? socket.slice(1).reduce((sum, n) => sum + Number(n), 0) : 0;
  return {
    requests: Number(/(\d+) requests in/.exec(stdout)?.[1] ?? 0),
    requestsPerSecond: Number(rps[1]),
    p50Ms: wrkPercentile(stdout, '50'),
    p99Ms: wrkPercentile(stdout, '99'),
    errors: non2xx + socketErrors,
  };
}

function wrkPercentile(report: string, percent: string): number {
  const match = new RegExp(`^\\s+${percent}(?:\\.0+)?%\\s+([\\d.]+)(us|ms|s)\\s*$`, 'm').exec(report);
  if (!match) throw new Error(`no ${percent}% latency in the wrk report:\n${report}`);
  const value = Number(match[1]);
  return match[2] === 'us' ? value / 1000 : match[2] === 's' ? value * 1000 : value;
}

/** One download's figures, measured by curl in its own process. */
export interface DownloadResult {
  bytes: number;
  megabytesPerSecond: number;
}

/** Downloads `url` with curl into /dev/null; throws when the size is not `expectedBytes`. */
export async function curlDownload(
  tools: Pick<PeerTools, 'curl'>,
  url: string,
  expectedBytes: number,
  options: { ca?: string; http1?: boolean } = {},
): Promise<DownloadResult> {
  const args = ['-sS', '--fail', '-o', '/dev/null', '-w', '%{size_download} %{time_total}'];
  if (options.ca) args.push('--cacert', options.ca);
  if (options.http1) args.push('--http1.1');
  const { stdout } = await run(tools.curl, [...args, url]);
  const [size, seconds] = stdout.trim().split(' ').map(Number) as [number, number];
  if (size !== expectedBytes) throw new Error(`download of ${url} gave ${size} bytes, not ${expectedBytes}`);
  return { bytes: size, megabytesPerSecond: size / 1e6 / seconds };
}
