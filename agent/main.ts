/**
 * The agent daemon entry point (`p2pstream agent`): reads its settings from
 * the environment (see config.ts), runs until SIGTERM or SIGINT, then
 * cancels the in-flight streams and closes its connection. A bad setting
 * (an http:// MANAGEMENT_URL, a missing token, no way to verify the control
 * plane) throws before anything connects, so the process exits non-zero with
 * the message.
 */
import { createLogger } from '../src/logger.js';
import { EnvelopeExecutor } from '../src/relay/envelope-executor.js';
import { type EnvelopeHandlerFactory, startAgent } from './agent.js';
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
