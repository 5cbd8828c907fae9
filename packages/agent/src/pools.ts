import { createHash } from 'node:crypto';
import { createPool, describeDatabase, toSyncflowError, RateLimiter, type Sql, type Sealer, type Logger, type pb } from '@syncflow/shared';

/**
 * One bounded pool per database this agent talks to, keyed by a hash of the URL (the URL itself
 * is never kept in a log or a map key). Sealed URLs arrive with each task and RPC.
 */
export class Pools {
  readonly #pools = new Map<string, { sql: Sql; db: string; limiter: RateLimiter }>();
  constructor(private sealer: Sealer, private max: number, private appName: string, private log: Logger,
    private writeLimit = { rowsPerS: 0, bytesPerS: 0 }) {}

  /** The pool for a sealed connection; opening it checks nothing (the first query does). */
  get(conn: pb.SealedConnection__Output | { name: string; sealed_url: string }): { sql: Sql; db: string; url: string; limiter: RateLimiter } {
    const url = this.sealer.open(conn.sealed_url);
    const id = createHash('sha256').update(url).digest('hex');
    let p = this.#pools.get(id);
    if (!p) {
      // The limiter throttles what this agent writes into the database (SYNCFLOW_DB_MAX_*), whatever the job.
      const limiter = new RateLimiter();
      limiter.set(this.writeLimit.rowsPerS, this.writeLimit.bytesPerS);
      p = { sql: createPool(url, { max: this.max, applicationName: this.appName }), db: describeDatabase(url), limiter };
      this.#pools.set(id, p);
      this.log.info({ connection: conn.name, database: p.db, max: this.max }, 'opened database pool');
    }
    return { ...p, url };
  }

  async closeAll(): Promise<void> {
    await Promise.all([...this.#pools.values()].map((p) => p.sql.end({ timeout: 5 }).catch(() => undefined)));
    this.#pools.clear();
  }
}

/** Runs a first query so a wrong URL or a down database fails with a typed error naming the connection. */
export async function checkReachable(sql: Sql, name: string): Promise<void> {
  try {
    await sql`SELECT 1`;
  } catch (e) {
    throw toSyncflowError(e, `database of connection "${name}"`);
  }
}
