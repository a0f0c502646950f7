/**
 * The data dir's own guards: it must not be readable by other users (checked
 * at start, like the secrets key), and a running server marks it with a lock
 * file so offline tools (`users reset-password`) refuse to write beside it.
 */
import { constants, promises as fs } from 'node:fs';
import path from 'node:path';
import { AppError } from '../errors.js';

/** The lock file a running server keeps in its data dir: `{"pid": N}`. */
export const SERVER_LOCK_FILE_NAME = 'server.lock';

/**
 * Refuses a data dir that group or others may read, write or enter
 * (VALIDATION_FAILED naming the mode and the fix).
 */
export async function assertPrivateDataDir(dataDir: string): Promise<void> {
  const stat = await fs.stat(dataDir);
  if ((stat.mode & 0o077) !== 0) {
    throw new AppError(
      'VALIDATION_FAILED',
      `the data dir ${dataDir} is accessible to other users (mode ${(stat.mode & 0o777).toString(8)}); run chmod 700 on it`,
    );
  }
}

/** The pid of a live server holding `dataDir`, or null (no lock, or one left by a process that is gone). */
export async function serverHoldingDataDir(dataDir: string): Promise<number | null> {
  let text: string;
  try {
    text = await fs.readFile(path.join(dataDir, SERVER_LOCK_FILE_NAME), 'utf8');
  } catch {
    return null;
  }
  const pid = Number((JSON.parse(text || '{}') as { pid?: unknown }).pid);
  if (!Number.isInteger(pid) || pid <= 0) return null;
  try {
    process.kill(pid, 0);
    return pid;
  } catch (err) {
    // EPERM: it exists but belongs to someone else, so it is alive.
    return (err as NodeJS.ErrnoException).code === 'EPERM' ? pid : null;
  }
}

/** Marks `dataDir` as held by this process; returns the release function (removes the lock if still ours). */
export async function lockDataDir(dataDir: string): Promise<() => Promise<void>> {
  const file = path.join(dataDir, SERVER_LOCK_FILE_NAME);
  const handle = await fs.open(file, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC, 0o600);
  try {
    await handle.writeFile(JSON.stringify({ pid: process.pid }));
  } finally {
    await handle.close();
  }
  return async () => {
    try {
      const held = JSON.parse(await fs.readFile(file, 'utf8')) as { pid?: unknown };
      if (held.pid === process.pid) await fs.rm(file, { force: true });
    } catch {
      // Already gone.
    }
  };
}
