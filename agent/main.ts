/**
 * The agent daemon entry point (`p2pstream agent`): reads its settings from
 * the environment (see config.ts), runs until SIGTERM or SIGINT, then
 * cancels the in-flight streams and closes its connection. A bad setting
 * (an http:// MANAGEMENT_URL, a missing token, no way to verify the control
 * plane) throws before anything connects, so the process exits non-zero with
 * the message.
 *
 * `p2pstream agent check [--json]` runs agent/check.ts with the same
 * settings: one ✓/✗ line per check (or a JSON array), exit code 0 only when
 * every check passed.
 */

import { toAppError } from '../src/errors.js';
import { createLogger } from '../src/logger.js';
import { EnvelopeExecutor } from '../src/relay/envelope-executor.js';
import { type EnvelopeHandlerFactory, startAgent } from './agent.js';
import { type AgentCheckOptions, type CheckResult, checkAgent, formatCheckResults } from './check.js';
import { loadAgentConfig } from './config.js';

/** The relay's envelope executor, as the agent runs it (one per connection). */
export const createAgentExecutor: EnvelopeHandlerFactory = (options) =>
  new EnvelopeExecutor({
    send: options.send,
    allowedTargets: options.allowedTargets ?? null,
    maxStreams: options.maxStreams,
    maxChunkBytes: options.maxChunkBytes,
    defaultWindowBytes: options.defaultWindowBytes,
    logger: options.logger,
    isCongested: options.isCongested,
  });

/** Runs the agent until a termination signal; resolves once it has shut down. */
export async function runAgentFromEnv(env: NodeJS.ProcessEnv): Promise<void> {
  const config = loadAgentConfig(env);
  const logger = createLogger(config.logLevel);
  logger.info(
    {
      managementUrls: config.managementUrls,
      agentId: config.agentId,
      verification: config.ca !== null ? 'ca-file' : 'fingerprint',
      allowedTargets: config.allowedTargets,
    },
    'p2pstream agent starting',
  );
  const agent = startAgent({
    managementUrl: config.managementUrl,
    managementUrls: config.managementUrls,
    agentId: config.agentId,
    agentToken: config.agentToken,
    ca: config.ca,
    fingerprint: config.fingerprint,
    allowedTargets: config.allowedTargets,
    reconcileIntervalMs: config.reconcileIntervalMs,
    logger,
    createExecutor: createAgentExecutor,
  });
  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = (signal: NodeJS.Signals) => {
      if (stopping) return;
      stopping = true;
      logger.info({ signal }, 'shutting down: cancelling in-flight requests');
      agent.close().then(resolve, (err: unknown) => {
        logger.error({ err }, 'shutdown failed');
        resolve();
      });
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
  logger.info('agent stopped');
}

/** Options of {@link runAgentCheckFromEnv}. */
export interface RunAgentCheckOptions extends AgentCheckOptions {
  /** Print a JSON array of the results instead of lines. */
  json?: boolean;
  /** Where the output goes; default stdout. */
  write?: (text: string) => void;
}

/**
 * `p2pstream agent check`: checks the agent's settings and links, prints the
 * results and returns the exit code (0 when every check passed, 1 otherwise;
 * settings that do not load are one failed `config` line).
 */
export async function runAgentCheckFromEnv(
  env: NodeJS.ProcessEnv,
  options: RunAgentCheckOptions = {},
): Promise<{ exitCode: number; results: CheckResult[] }> {
  const write = options.write ?? ((text: string) => process.stdout.write(text));
  let results: CheckResult[];
  try {
    results = await checkAgent(loadAgentConfig(env), options);
  } catch (err) {
    const error = toAppError(err);
    results = [
      { check: 'config', subject: 'environment', ok: false, message: error.message, code: error.code },
    ];
  }
  write(options.json ? `${JSON.stringify(results, null, 2)}\n` : formatCheckResults(results));
  return { exitCode: results.every((r) => r.ok) ? 0 : 1, results };
}
