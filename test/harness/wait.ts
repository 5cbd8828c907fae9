import { setTimeout as sleep } from 'node:timers/promises';

export interface WaitForOptions {
  /** What is awaited, for the error message ("timed out waiting for <what>"). */
  what: string;
  /** Default 30 000 ms. */
  timeoutMs?: number;
  /** Default 100 ms. */
  intervalMs?: number;
}

/**
 * Polls `condition` until it returns true. A condition that throws counts as false (the last error is
 * attached as the cause of the timeout).
 */
export async function waitFor(condition: () => Promise<boolean> | boolean, opts: WaitForOptions): Promise<void> {
  const { what, timeoutMs = 30_000, intervalMs = 100 } = opts;
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      if (await condition()) return;
      lastError = undefined;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      throw new Error(`timed out waiting for ${what} (${timeoutMs} ms)`, lastError === undefined ? undefined : { cause: lastError });
    }
    await sleep(intervalMs);
  }
}

export { sleep };
