import { SyncflowError, ErrorKind, toSyncflowError, type Logger } from '@syncflow/shared';

export interface BreakerOptions {
  /** Consecutive connection-level failures that open the breaker. */
  threshold: number;
  /** First open period; doubles (up to maxCooldownMs) each time a half-open probe fails. */
  cooldownMs: number;
  maxCooldownMs?: number;
}

export type BreakerState = 'closed' | 'open' | 'half_open';

/**
 * A circuit breaker around one database's pool. After `threshold` consecutive connection-level
 * failures (the database is down or refusing connections: retryable errors other than
 * serialization conflicts) it refuses work at once for a cooldown instead of hammering the
 * database with connection attempts; then one probe (`SELECT 1`) is let through (half-open): its
 * success closes the breaker, its failure opens it again for twice as long.
 */
export class Breaker {
  #failures = 0;
  #openUntil = 0;
  #cooldown: number;
  #probe: Promise<void> | undefined;
  constructor(private opts: BreakerOptions, private log: Logger, private db: string) {
    this.#cooldown = opts.cooldownMs;
  }

  get state(): BreakerState {
    if (this.#failures < this.opts.threshold) return 'closed';
    return Date.now() < this.#openUntil ? 'open' : 'half_open';
  }

  /** Throws `circuit_open` (retryable) while open; runs the single half-open probe when the cooldown is over. */
  async guard(probe: () => Promise<unknown>): Promise<void> {
    const s = this.state;
    if (s === 'closed') return;
    if (s === 'open') throw this.#refusal();
    if (!this.#probe) {
      this.#probe = (async () => {
        try {
          await probe();
          this.success();
        } catch (e) {
          this.failure(e, true);
          throw this.#refusal();
        } finally {
          this.#probe = undefined;
        }
      })();
    }
    await this.#probe;
  }

  success(): void {
    if (this.#failures >= this.opts.threshold) this.log.info({ database: this.db }, 'circuit breaker closed: the database answers again');
    this.#failures = 0;
    this.#cooldown = this.opts.cooldownMs;
  }

  /** Counts a failure if it says the database itself is unreachable; other errors leave the breaker alone. */
  failure(e: unknown, probe = false): void {
    const err = toSyncflowError(e);
    if (!isConnectionLevel(err)) return;
    this.#failures++;
    if (this.#failures < this.opts.threshold) return;
    if (probe || this.#failures === this.opts.threshold) {
      if (probe) this.#cooldown = Math.min(this.#cooldown * 2, this.opts.maxCooldownMs ?? 60_000);
      this.#openUntil = Date.now() + this.#cooldown;
      this.log.warn({ database: this.db, code: err.code, open_ms: this.#cooldown }, 'circuit breaker open: not connecting to this database for a while');
    }
  }

  #refusal(): SyncflowError {
    const wait = Math.max(0, this.#openUntil - Date.now());
    return new SyncflowError(ErrorKind.Unavailable, `database ${this.db} is unreachable (circuit breaker open; next probe in ${wait} ms)`, { code: 'circuit_open', retryable: true, retryAfterMs: wait });
  }
}

/** Unreachable database: network errors, SQLSTATE class 08 and 57P0x (shutdown, cannot connect now, ...). */
export function isConnectionLevel(err: SyncflowError): boolean {
  if (err.code === 'circuit_open') return false;
  if (err.kind !== ErrorKind.Unavailable) return false;
  return !/^\d/.test(err.code) || err.code.startsWith('08') || err.code.startsWith('57P') || err.code.startsWith('53');
}
