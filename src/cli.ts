#!/usr/bin/env node
/**
 * The `p2pstream` command: the only place that reads process.env and argv,
 * installs signal handlers and decides exit codes.
 *
 *   p2pstream server                       management API, console, hub, proxy
 *   p2pstream agent                        the agent daemon
 *   p2pstream agent check [--json]         checks the agent's settings and links
 *   p2pstream users reset-password USER    offline admin recovery
 */
import { createInterface } from 'node:readline';
import { loadConfig } from './config.js';
import { AuthService } from './domain/auth-service.js';
import { AppError } from './errors.js';
import { createLogger } from './logger.js';
import { startServer } from './server.js';
import { serverHoldingDataDir } from './storage/data-dir.js';
import { LowdbStore } from './storage/lowdb-store.js';

const USAGE = `usage:
  p2pstream server                       run the management API, console, hub and proxy
  p2pstream agent                        run the agent daemon
  p2pstream agent check [--json]         check the agent's settings, control plane and targets (exit 0: all pass)
  p2pstream users reset-password USER    set a new password (reads it from stdin); revokes sessions
`;

async function runServer(): Promise<void> {
  const config = loadConfig(process.env);
  const logger = createLogger(config.logLevel);
  const server = await startServer(config, logger);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutting down');
    server.close().then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

async function readPassword(): Promise<string> {
  if (process.stdin.isTTY) process.stderr.write('new password (input is visible): ');
  const rl = createInterface({ input: process.stdin, terminal: false });
  for await (const line of rl) {
    rl.close();
    return line;
  }
  return '';
}

async function resetPassword(username: string | undefined): Promise<void> {
  if (!username) throw new AppError('VALIDATION_FAILED', 'a user name is required');
  const config = loadConfig(process.env);
  const holder = await serverHoldingDataDir(config.dataDir);
  if (holder !== null) {
    throw new AppError(
      'CONFLICT',
      `a p2pstream server (pid ${holder}) is running on ${config.dataDir}; stop it first, its next write would undo the reset`,
    );
  }
  const store = await LowdbStore.open(config.dataDir);
  try {
    const auth = new AuthService({ store, setupToken: '' });
    const user = await auth.resetPassword(username, await readPassword());
    process.stdout.write(`password of ${user.username} changed; their sessions were revoked\n`);
  } finally {
    await store.close();
  }
}

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'server':
      return runServer();
    case 'users':
      if (rest[0] === 'reset-password') return resetPassword(rest[1]);
      break;
    case 'agent': {
      if (rest[0] === 'check') {
        const flags = rest.slice(1);
        if (flags.some((flag) => flag !== '--json')) break;
        const { runAgentCheckFromEnv } = await import('../agent/main.js');
        const { exitCode } = await runAgentCheckFromEnv(process.env, { json: flags.includes('--json') });
        process.exitCode = exitCode;
        return;
      }
      if (rest.length > 0) break;
      const { runAgentFromEnv } = await import('../agent/main.js');
      return runAgentFromEnv(process.env);
    }
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE);
      return;
  }
  process.stderr.write(`unknown command: ${argv.join(' ')}\n${USAGE}`);
  process.exitCode = 2;
}

main(process.argv.slice(2)).catch((err: unknown) => {
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(`p2pstream: ${message}\n`);
  process.exit(1);
});
