/**
 * Condition waits: a test waits for what it expects to happen, not for a
 * fixed time. The one `eventually` of the test suite.
 */

export interface EventuallyOptions {
  /** Give up (and fail) after this long; default 5 s. */
  timeoutMs?: number;
  /** Between checks; default 10 ms. */
  intervalMs?: number;
}

/**
 * Calls `check` until it holds: it returns `true`, or returns nothing without
 * throwing (assertions inside it may fail meanwhile). Rejects with its last
 * error, or a timeout, once `timeoutMs` passed. Only booleans and void are
 * accepted, so a count or a lookup cannot pass by being falsy or truthy.
 */
export async function eventually(
  check: () => boolean | undefined | Promise<boolean | undefined> | Promise<void> | void,
  options: EventuallyOptions | number = {},
): Promise<void> {
  const { timeoutMs = 5000, intervalMs = 10 } =
    typeof options === 'number' ? { timeoutMs: options } : options;
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown = null;
  for (;;) {
    try {
      if ((await check()) !== false) return;
      lastError = null;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      throw lastError ?? new Error(`the condition did not hold within ${timeoutMs} ms`);
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}
