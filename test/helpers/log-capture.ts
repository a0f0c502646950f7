/** A pino logger whose JSON lines are kept for a test to read. */
import { Writable } from 'node:stream';
import { createLogger, type Logger } from '../../src/logger.js';

export interface CapturedLogs {
  logger: Logger;
  /** Every line logged so far, parsed. */
  // biome-ignore lint/suspicious/noExplicitAny: log lines are inspected freely
  entries(): any[];
}

export function captureLogs(level: 'debug' | 'info' | 'warn' | 'error' = 'info'): CapturedLogs {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk, _encoding, callback) {
      lines.push(...String(chunk).split('\n').filter(Boolean));
      callback();
    },
  });
  return { logger: createLogger(level, sink), entries: () => lines.map((line) => JSON.parse(line)) };
}
