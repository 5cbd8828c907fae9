import postgres from 'postgres';
import { toSyncflowError, invalidArgument, scrubSecrets, type Logger } from '@syncflow/shared';
import { assertChangeSlots } from './change-log.js';

/** A snapshot id as pg_export_snapshot() makes them: checked before it is put into SET TRANSACTION SNAPSHOT. */
export const SNAPSHOT_ID = /^[0-9A-F]+-[0-9A-F]+(-[0-9]+)?$/i;

interface Held { sql: postgres.Sql; conn?: postgres.ReservedSql; id: string; since: number; change?: ChangeSlot }

/** A change slot created with the job snapshot: the snapshot holds every change committed before `lsn`, the slot every one after. */
export interface ChangeSlot { slot: string; lsn: string }
export interface Exported { id: string; change?: ChangeSlot; note?: string }

/**
 * Holds one exported snapshot per job so every reader of the job can SET TRANSACTION SNAPSHOT to it:
 * the replication connection that created the job's change slot, or an exporting transaction
 * (REPEATABLE READ, READ ONLY), open until the job releases it.
 */
export class SnapshotHolder {
  readonly #held = new Map<string, Held>();
  /** `slotWaitMs`: how long creating a change slot may wait for the transactions running on the source to end (it needs a point none spans). */
  constructor(private log: Logger, private slotWaitMs = 10_000, private maxAgeMs = 24 * 3600_000) {
    setInterval(() => void this.#expire(), 60_000).unref();
  }

  /**
   * The job's snapshot. With `changeSlot`, the snapshot of a new logical replication slot (plugin
   * test_decoding, which needs no publication and changes nothing on the source's tables), exported
   * by a replication connection held open for the job: the next re-sync decodes from the slot exactly
   * the changes this snapshot does not hold (read/change-log.ts). Where that cannot be done (wal_level
   * below logical, no REPLICATION privilege, no free WAL sender or slot, transactions that keep running
   * past SYNCFLOW_CHANGE_SLOT_WAIT_MS), a plain exported snapshot with a note saying why.
   */
  async export(jobId: string, url: string, changeSlot = ''): Promise<Exported> {
    const existing = this.#held.get(jobId);
    if (existing) return { id: existing.id, change: existing.change };
    let note: string | undefined;
    if (changeSlot) {
      assertChangeSlots([changeSlot]);
      try {
        return await this.#exportWithSlot(jobId, url, changeSlot);
      } catch (e) {
        note = `no change slot (the next re-sync hashes every row): ${scrubSecrets(toSyncflowError(e).message)}`;
        this.log.warn({ job: jobId, err: note }, 'change slot not created; plain job snapshot');
      }
    }
    return { id: await this.#exportPlain(jobId, url), note };
  }

  async #exportWithSlot(jobId: string, url: string, slot: string): Promise<Exported> {
    const name = `syncflow-snapshot-${slot}`;
    const sql = postgres(url, {
      max: 1, idle_timeout: 0, fetch_types: false, onnotice: () => undefined,
      connection: { application_name: name, replication: 'database' } as Record<string, string>,
    });
    let timedOut = false;
    const timer = setTimeout(() => { timedOut = true; void giveUp(); }, this.slotWaitMs);
    // The server keeps waiting (and would then make the slot) after the client hangs up: end its backend,
    // which drops a slot still being made.
    const giveUp = async () => {
      const other = postgres(url, { max: 1, idle_timeout: 1, onnotice: () => undefined });
      await other`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ${name} AND backend_type = 'walsender'`.catch(() => undefined);
      await other.end({ timeout: 1 }).catch(() => undefined);
      await sql.end({ timeout: 0 }).catch(() => undefined);
    };
    try {
      // A replication command takes no parameters: the slot name was checked (assertChangeSlots in export).
      const [row] = await sql.unsafe<{ consistent_point: string; snapshot_name: string }[]>(
        `CREATE_REPLICATION_SLOT ${slot} LOGICAL test_decoding EXPORT_SNAPSHOT`).simple();
      clearTimeout(timer);
      const change = { slot, lsn: row!.consistent_point };
      this.#held.set(jobId, { sql, id: row!.snapshot_name, since: Date.now(), change });
      this.log.info({ job: jobId, snapshot: row!.snapshot_name, slot, lsn: change.lsn }, 'exported job snapshot with a change slot');
      return { id: row!.snapshot_name, change };
    } catch (e) {
      clearTimeout(timer);
      await sql.end({ timeout: 1 }).catch(() => undefined);
      if (timedOut) throw new Error(`transactions running on the source kept the slot from being created for ${this.slotWaitMs / 1000} s`);
      throw toSyncflowError(e);
    }
  }

  async #exportPlain(jobId: string, url: string): Promise<string> {
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
    // A change slot outlives its snapshot: it is dropped when no table's last sync needs it (DropChangeSlots).
    await h.conn?.unsafe('COMMIT').catch(() => undefined);
    h.conn?.release();
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
