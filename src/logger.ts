/**
 * The pino logger. Secrets never reach it: known secret-bearing keys are
 * redacted as a second line of defence, but code must not log them at all.
 */
import { type DestinationStream, type Logger, pino } from 'pino';
import type { LogLevel } from './config.js';

export type { Logger } from 'pino';

const REDACT_PATHS = [
  'password',
  'token',
  'accessToken',
  'setupToken',
  '*.password',
  '*.token',
  '*.accessToken',
  '*.setupToken',
  'req.headers.authorization',
  'req.headers.cookie',
  'res.headers["set-cookie"]',
];

/** Creates the process logger; `destination` lets tests capture output. */
export function createLogger(level: LogLevel, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: undefined,
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      serializers: { err: pino.stdSerializers.err },
    },
    destination,
  );
}
