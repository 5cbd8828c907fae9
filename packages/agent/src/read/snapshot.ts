import postgres from 'postgres';
import { toSyncflowError, invalidArgument, type Logger } from '@syncflow/shared';

/** A snapshot id as pg_export_snapshot() makes them: checked before it is put into SET TRANSACTION SNAPSHOT. */
export const SNAPSHOT_ID = /^[0-9A-F]+-[0-9A-F]+(-[0-9]+)?$/i;

interface Held { sql: postgres.Sql; conn: postgres.ReservedSql; id: string; since: number }

/**
 * Holds one exporting transaction per job (REPEATABLE READ, READ ONLY) so every reader of the job
 * can SET TRANSACTION SNAPSHOT to it. The transaction stays open until the job releases it.
 */
export class SnapshotHolder {
  readonly #held = new Map<string, Held>();
  constructor(private log: Logger, private maxAgeMs = 24 * 3600_000) {
    setInterval(() => void this.#expire(), 60_000).unref();
  }

  async export(jobId: string, url: string): Promise<string> {
    const existing = this.#held.get(jobId);
    if (existing) return existing.id;
    const sql = postgres(url, { max: 1, idle_timeout: 0, onnotice: () => undefined, connection: { application_name: `syncflow-snapshot-${jobId.slice(0, 8)}` } });
    try {
      const conn = await sql.reserve();
      await conn.unsafe('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      const [row] = await conn<{ id: string }[]>`SELECT pg_export_snapshot() AS id`;
      this.#held.set(jobId, { sql, conn, id: row!.id, since: Date.now() });
      this.log.info({ job: jobId, snapshot: row!.id }, 'exported job snapshot');
      return row!.id;
    } catch (e) {
      await sql.end({ timeout: 1 }).catch(() => undefined);
      throw toSyncflowError(e, 'exporting the job snapshot');
    }
  }

  async release(jobId: string): Promise<void> {
    const h = this.#held.get(jobId);
    if (!h) return;
    this.#held.delete(jobId);
    await h.conn.unsafe('COMMIT').catch(() => undefined);
    h.conn.release();
    await h.sql.end({ timeout: 2 }).catch(() => undefined);
    this.log.info({ job: jobId }, 'released job snapshot');
  }

  async releaseAll(): Promise<void> {
    await Promise.all([...this.#held.keys()].map((j) => this.release(j)));
  }

  async #expire() {
    for (const [job, h] of this.#held) if (Date.now() - h.since > this.maxAgeMs) await this.release(job);
  }
}

export function assertSnapshotId(id: string): void {
  if (!SNAPSHOT_ID.test(id)) throw invalidArgument(`snapshot id ${JSON.stringify(id)} is malformed`);
}

/**
 * Makes a REPEATABLE READ transaction read the exported snapshot `id`. SET TRANSACTION SNAPSHOT
 * takes a literal only: the id is checked against pg_export_snapshot's format first, the one
 * place syncflow puts a value into SQL text.
 */
export async function useSnapshot(tx: { unsafe(q: string): PromiseLike<unknown> }, id: string): Promise<void> {
  assertSnapshotId(id);
  await tx.unsafe(`SET TRANSACTION SNAPSHOT '${id}'`);
}
