/**
 * One way to undo what a test started: `const cleanups = useCleanups();` at
 * the top of a file, `cleanups.push(() => thing.close())` after each start.
 * After every test the cleanups run newest first (what was started last is
 * stopped first), each awaited, and the list empties.
 */
import { afterEach } from 'vitest';

export type Cleanup = () => Promise<void> | void;

export interface Cleanups {
  push(...cleanup: Cleanup[]): void;
  /** Adds cleanups that run after all the others (something every other cleanup needs alive). */
  unshift(...cleanup: Cleanup[]): void;
  /** Runs every cleanup now, newest first (afterEach does this by itself). */
  run(): Promise<void>;
}

export function useCleanups(): Cleanups {
  const list: Cleanup[] = [];
  const run = async () => {
    for (const cleanup of list.splice(0).reverse()) await cleanup();
  };
  afterEach(run);
  return {
    push: (...cleanup) => void list.push(...cleanup),
    unshift: (...cleanup) => void list.unshift(...cleanup),
    run,
  };
}
