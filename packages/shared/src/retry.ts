import { toSyncflowError, type SyncflowError } from './errors.js';

export interface RetryPolicy {
  attempts: number;      // total tries, including the first
  baseMs: number;
  maxMs: number;
}
export const DEFAULT_RETRY: RetryPolicy = { attempts: 3, baseMs: 200, maxMs: 10_000 };

/** Full-jitter exponential backoff: a random delay in [0, min(max, base·2^n)]. */
export function backoffMs(attempt: number, p: RetryPolicy = DEFAULT_RETRY): number {
  return Math.floor(Math.random() * Math.min(p.maxMs, p.baseMs * 2 ** attempt));
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Retries fn while the typed error says `retryable`, with backoff between attempts. */
export async function retry<T>(fn: (attempt: number) => Promise<T>, p: RetryPolicy = DEFAULT_RETRY,
  onRetry?: (e: SyncflowError, attempt: number, delayMs: number) => void): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (e) {
      const err = toSyncflowError(e);
      if (!err.retryable || attempt + 1 >= p.attempts) throw err;
      const delay = backoffMs(attempt + 1, p);
      onRetry?.(err, attempt + 1, delay);
      await sleep(delay);
    }
  }
}
