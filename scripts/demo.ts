/**
 * `npm run demo`: the whole environments feature on loopback in one command.
 *
 * Starts a control plane and a second instance (each with its own temp data
 * dir), and an agent daemon (`p2pstream agent`, a child process) connected to
 * the control plane. On the second instance it creates an API token for the
 * control plane and a small public proxy with some live traffic. On the
 * control plane it registers the second instance twice, once direct and once
 * through the agent, discovers, trusts and tests both.
 *
 * It also publishes a private app through the agent (README "Publishing a
 * private service through an agent"): a small HTTP app on the second site,
 * bound on loopback, that the agent may reach (AGENT_ALLOWED_TARGETS names it
 * and the second instance, nothing else); on the control plane a backend whose
 * member is that agent and the app's URL, and a route to it on the control
 * plane's public listener. Then it prints the console URL, the login and the
 * app's public URL, and runs until Ctrl-C (which removes the temp data dirs).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes, X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer as createHttpServer, type Server } from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Agent, fetch } from 'undici';
import { loadConfig } from '../src/config.js';
import { createLogger } from '../src/logger.js';
import { type RunningServer, startServer } from '../src/server.js';
import { freePort } from './local-services.js';

const USERNAME = 'admin';
const AGENT_CONNECT_TIMEOUT_MS = 30_000;
const CLI = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'src', 'cli.js');

interface Instance {
  name: string;
  server: RunningServer;
  dataDir: string;
  /** Calls the instance's API as its admin (session cookie); throws on an error answer. */
  // biome-ignore lint/suspicious/noExplicitAny: the demo reads API answers freely
  api(method: string, pathname: string, body?: unknown): Promise<{ status: number; json: any }>;
  dispatcher: Agent;
}

function step(message: string): void {
  process.stdout.write(`  • ${message}\n`);
}

/** Starts an instance on 127.0.0.1 (any free port) and creates its admin. */
async function startInstance(name: string, password: string): Promise<Instance> {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), `p2pstream-demo-${name}-`));
  const setupToken = randomBytes(12).toString('base64url');
  const config = loadConfig({
    P2PSTREAM_DATA_DIR: dataDir,
    MANAGEMENT_ADDR: '127.0.0.1',
    MANAGEMENT_PORT: '0',
    P2PSTREAM_SETUP_TOKEN: setupToken,
    LOG_LEVEL: 'warn',
  });
  const server = await startServer(config, createLogger('error'));
  const dispatcher = new Agent({ connect: { ca: server.certificate, servername: 'localhost' } });
  let cookie = '';
  const api: Instance['api'] = async (method, pathname, body) => {
    const headers: Record<string, string> = { origin: server.url };
    if (cookie) headers.cookie = cookie;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(`${server.url}${pathname}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      dispatcher,
    });
    const text = await res.text();
    const setCookie = res.headers.get('set-cookie');
    if (setCookie) cookie = setCookie.split(';')[0]!;
    const json = text ? JSON.parse(text) : null;
    if (res.status >= 400) {
      throw new Error(
        `${name}: ${method} ${pathname} → ${res.status} ${json?.error?.code ?? ''} ${json?.error?.message ?? ''}`,
      );
    }
    return { status: res.status, json };
  };
  await api('POST', '/api/v1/setup', { username: USERNAME, password, setupToken });
  return { name, server, dataDir, api, dispatcher };
}

/**
 * Runs `p2pstream agent` as a child process, allowed to reach `allowedTargets`
 * (`host:port`) only; resolves once the control plane sees it connected.
 */
async function startAgentProcess(
  control: Instance,
  allowedTargets: string[],
): Promise<{ id: string; child: ChildProcess }> {
  const created = await control.api('POST', '/api/v1/agents', {
    name: 'demo-agent',
    labels: { site: 'loopback' },
  });
  const id = created.json.agent.id as string;
  const child = spawn(process.execPath, [CLI, 'agent'], {
    env: {
      MANAGEMENT_URL: control.server.url,
      AGENT_ID: id,
      AGENT_TOKEN: created.json.token as string,
      MANAGEMENT_FINGERPRINT: new X509Certificate(control.server.certificate).fingerprint256,
      AGENT_ALLOWED_TARGETS: allowedTargets.join(','),
      LOG_LEVEL: 'warn',
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  // A busy machine can take a while to start a Node process.
  const deadline = Date.now() + AGENT_CONNECT_TIMEOUT_MS;
  try {
    for (;;) {
      const agent = await control.api('GET', `/api/v1/agents/${id}`);
      if (agent.json.agent.status === 'connected') return { id, child };
      if (child.exitCode !== null) throw new Error(`the agent exited with code ${child.exitCode}`);
      if (Date.now() > deadline)
        throw new Error(`the agent did not connect within ${AGENT_CONNECT_TIMEOUT_MS / 1000} s`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  } catch (err) {
    // Not handed to the caller's cleanups yet: stop it here, or it would outlive the demo.
    if (child.exitCode === null) child.kill('SIGTERM');
    throw err;
  }
}

/** The private app of the second site: answers who it is and the path asked, on 127.0.0.1 (any free port). */
async function startPrivateApp(): Promise<{ server: Server; port: number }> {
  const server = createHttpServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' });
    res.end(`hello from the private app of the second site: ${req.method} ${req.url}\n`);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { server, port: (server.address() as { port: number }).port };
}

/**
 * Publishes the private app on the control plane's public listener `port`:
 * a backend whose one member is the agent and the app's URL in its network,
 * and a route to it. Resolves once a request through it is answered (the agent
 * announced tunnels), with the public URL.
 */
async function publishThroughAgent(
  control: Instance,
  agentId: string,
  appPort: number,
  port: number,
): Promise<string> {
  const listener = await control.api('POST', '/api/v1/proxy/listeners', {
    name: 'demo-public',
    bindAddress: '127.0.0.1',
    port,
  });
  const backend = await control.api('POST', '/api/v1/proxy/backends', {
    name: 'private-app',
    members: [{ type: 'agent', agentId, upstreamUrl: `http://127.0.0.1:${appPort}` }],
  });
  await control.api('POST', '/api/v1/proxy/routes', {
    listenerId: listener.json.listener.id,
    pathPrefix: '/',
    target: { type: 'backend', backendId: backend.json.backend.id },
  });
  const url = `http://127.0.0.1:${port}/`;
  const deadline = Date.now() + 15_000;
  const client = new Agent();
  try {
    for (;;) {
      const res = await fetch(url, { dispatcher: client }).catch(() => null);
      const ok = res?.status === 200;
      await res?.arrayBuffer();
      if (ok) return url;
      if (Date.now() > deadline)
        throw new Error(`the private app did not answer through the agent within 15 s`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  } finally {
    await client.close();
  }
}

/** Registers the target on the control plane, then discovers, trusts and tests it. */
async function registerEnvironment(
  control: Instance,
  body: Record<string, unknown>,
): Promise<{ id: string; fingerprint: string; latencyMs: number }> {
  const created = await control.api('POST', '/api/v1/environments', body);
  const id = created.json.environment.id as string;
  const discovered = await control.api('POST', `/api/v1/environments/${id}/discover`);
  const fingerprint = discovered.json.certificate.fingerprintSha256 as string;
  // A demo trusts what it just started; in real use, compare the fingerprint out of band first.
  await control.api('POST', `/api/v1/environments/${id}/trust`, { fingerprintSha256: fingerprint });
  const tested = await control.api('POST', `/api/v1/environments/${id}/test`);
  return { id, fingerprint, latencyMs: tested.json.latencyMs as number };
}

async function main(): Promise<void> {
  const password = `demo-${randomBytes(9).toString('base64url')}`;
  const cleanups: Array<() => Promise<void> | void> = [];
  let stopping = false;
  const stop = async (code: number) => {
    if (stopping) return;
    stopping = true;
    for (const cleanup of cleanups.reverse()) {
      try {
        await cleanup();
      } catch {
        // Best effort: the rest still gets cleaned up.
      }
    }
    process.exit(code);
  };
  process.on('SIGINT', () => void stop(0));
  process.on('SIGTERM', () => void stop(0));

  try {
    process.stdout.write('p2pstream demo: starting on loopback\n');
    const control = await startInstance('control', password);
    cleanups.push(() => rm(control.dataDir, { recursive: true, force: true }));
    cleanups.push(() => control.server.close());
    cleanups.push(() => control.dispatcher.close());
    step(`control plane at ${control.server.url}`);

    const second = await startInstance('second', password);
    cleanups.push(() => rm(second.dataDir, { recursive: true, force: true }));
    cleanups.push(() => second.server.close());
    cleanups.push(() => second.dispatcher.close());
    step(`second instance at ${second.server.url}`);

    // Something to look at on the second instance: a public listener with live traffic.
    const proxyPort = await freePort();
    const listener = await second.api('POST', '/api/v1/proxy/listeners', {
      name: 'demo-public',
      bindAddress: '127.0.0.1',
      port: proxyPort,
    });
    await second.api('POST', '/api/v1/proxy/routes', {
      listenerId: listener.json.listener.id,
      pathPrefix: '/',
      target: {
        type: 'static',
        status: 200,
        contentType: 'text/plain',
        body: 'hello from the second instance\n',
      },
    });
    const traffic = new Agent();
    cleanups.push(() => traffic.close());
    const paths = ['/', '/api/orders', '/api/users/42', '/health', '/static/app.js'];
    let n = 0;
    const timer = setInterval(() => {
      const pathname = paths[n++ % paths.length]!;
      fetch(`http://127.0.0.1:${proxyPort}${pathname}`, { dispatcher: traffic })
        .then((res) => res.arrayBuffer())
        .catch(() => {});
    }, 1500);
    cleanups.push(() => clearInterval(timer));
    step(`second instance proxy at http://127.0.0.1:${proxyPort}/ (a request every 1.5 s)`);

    const accessToken = (await second.api('POST', '/api/v1/tokens', { name: 'control-plane' })).json
      .token as string;
    step('API token for the control plane created on the second instance');

    const app = await startPrivateApp();
    cleanups.push(() => new Promise<void>((resolve) => app.server.close(() => resolve())));
    cleanups.push(() => app.server.closeAllConnections());
    step(`private app of the second site on 127.0.0.1:${app.port} (the agent may reach it)`);

    const secondAddress = new URL(second.server.url).host;
    const agent = await startAgentProcess(control, [secondAddress, `127.0.0.1:${app.port}`]);
    cleanups.push(async () => {
      if (agent.child.exitCode !== null) return;
      const exited = once(agent.child, 'exit');
      agent.child.kill('SIGTERM');
      await exited;
    });
    step(`agent ${agent.id} connected to the control plane (p2pstream agent, pid ${agent.child.pid})`);

    const direct = await registerEnvironment(control, {
      name: 'Second (direct)',
      url: second.server.url,
      transport: 'direct',
      accessToken,
    });
    step(`environment "Second (direct)" trusted and tested (${direct.latencyMs} ms)`);
    const viaAgent = await registerEnvironment(control, {
      name: 'Second (via agent)',
      url: second.server.url,
      transport: 'agent',
      agentId: agent.id,
      accessToken,
    });
    step(`environment "Second (via agent)" trusted and tested (${viaAgent.latencyMs} ms)`);

    const publicUrl = await publishThroughAgent(control, agent.id, app.port, await freePort());
    step(`private app published through the agent: backend "private-app", route / on ${publicUrl}`);

    const consoleUrl = control.server.url.replace('127.0.0.1', 'localhost');
    process.stdout.write(
      [
        '',
        `Console:   ${consoleUrl}/`,
        `Login:     ${USERNAME} / ${password}`,
        `Certificate (self-signed, accept it in the browser): SHA-256 ${new X509Certificate(control.server.certificate).fingerprint256}`,
        `           ${path.join(control.dataDir, 'management-cert.pem')}`,
        '',
        'Pick "Second (direct)" or "Second (via agent)" in the environment switcher: tokens, proxy,',
        "traffic and overview are then the second instance's, relayed with its pinned certificate.",
        `Second instance's own certificate: SHA-256 ${direct.fingerprint}`,
        '',
        `Private app:  ${publicUrl}`,
        "              the second site's app, published on the control plane's public listener through",
        '              the agent (backend "private-app" on the Proxy page of Local; Traffic names the agent).',
        '',
        'Ctrl-C stops everything and removes the temporary data dirs.',
        '',
      ].join('\n'),
    );
  } catch (err) {
    process.stderr.write(`demo failed: ${err instanceof Error ? err.message : String(err)}\n`);
    await stop(1);
  }
}

void main();
