import { createHash } from 'node:crypto';
import { createPool, describeDatabase, toSyncflowError, RateLimiter, type Sql, type Sealer, type Logger, type pb } from '@syncflow/shared';
import { Breaker, type BreakerOptions } from './breaker.js';

export interface PoolSettings {
  max: number;
  idleTimeoutS: number;
  breaker: BreakerOptions;
  /** What this agent writes into each database, at most (SYNCFLOW_DB_MAX_*; 0 = no limit). */
  writeLimit: { rowsPerS: number; bytesPerS: number };
}
type PoolEntry = { sql: Sql; db: string; breaker: Breaker; limiter: RateLimiter };

/**
 * One bounded pool per database this agent talks to, keyed by a hash of the URL (the URL itself
 * is never kept in a log or a map key), each behind its own circuit breaker. Sealed URLs arrive
 * with each task and RPC. An agent opens at most `max` connections to one database through its
 * pools; a job's snapshot holder (source side) opens one more of its own (see docs/reliability.md).
 */
export class Pools {
  readonly #pools = new Map<string, PoolEntry>();
  constructor(private sealer: Sealer, private settings: PoolSettings, private appName: string, private log: Logger) {}

  private get max(): number { return this.settings.max; }

  /** The pool for a sealed connection; opening it checks nothing (the first query does). */
  get(conn: pb.SealedConnection__Output | { name: string; sealed_url: string }): PoolEntry & { url: string } {
    const url = this.sealer.open(conn.sealed_url);
    const id = createHash('sha256').update(url).digest('hex');
    let p = this.#pools.get(id);
    if (!p) {
      const db = describeDatabase(url);
      const limiter = new RateLimiter();
      limiter.set(this.settings.writeLimit.rowsPerS, this.settings.writeLimit.bytesPerS);
      p = {
        sql: createPool(url, { max: this.max, idleTimeoutS: this.settings.idleTimeoutS, applicationName: this.appName }),
        db, breaker: new Breaker(this.settings.breaker, this.log, db), limiter,
      };
      this.#pools.set(id, p);
      this.log.info({ connection: conn.name, database: p.db, max: this.max }, 'opened database pool');
    }
    return { ...p, url };
  }

  /**
   * The pool after its breaker allows work: refuses at once (circuit_open, retryable) while the
   * database is known to be down; when the cooldown is over, one `SELECT 1` probes it.
   */
  async guarded(conn: pb.SealedConnection__Output | { name: string; sealed_url: string }): Promise<PoolEntry & { url: string }> {
    const p = this.get(conn);
    // Past dead connections: the first tries can land on pooled connections the database's restart
    // killed (57P01); seen opening the breaker again, for twice as long, right as the database was back.
    await p.breaker.guard(() => selectOne(p.sql));
    return p;
  }

  async closeAll(): Promise<void> {
    await Promise.all([...this.#pools.values()].map((p) => p.sql.end({ timeout: 5 }).catch(() => undefined)));
    this.#pools.clear();
  }
}

/** Errors of a pooled connection that the database's restart killed while it sat idle. */
const DEAD_CONNECTION = new Set(['57P01', 'CONNECTION_CLOSED', 'CONNECTION_ENDED', 'CONNECTION_DESTROYED', 'ECONNRESET', 'EPIPE']);

/**
 * `SELECT 1` on a pool. After a restart of the database every idle pooled connection is dead and each
 * is found out only when used: tried again past them (up to the pool's size), so the caller's next
 * queries get live ones.
 */
async function selectOne(sql: Sql): Promise<void> {
  const poolSize = (sql as unknown as { options?: { max?: number } }).options?.max ?? 10;
  for (let attempt = 1; ; attempt++) {
    try {
      await sql`SELECT 1`;
      return;
    } catch (e) {
      if (attempt <= poolSize && DEAD_CONNECTION.has(String((e as { code?: unknown }).code))) continue;
      throw e;
    }
  }
}

/** Runs a first query so a wrong URL or a down database fails with a typed error naming the connection. */
export async function checkReachable(sql: Sql, name: string): Promise<void> {
  await selectOne(sql).catch((e) => { throw toSyncflowError(e, `database of connection "${name}"`); });
}
