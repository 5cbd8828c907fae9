import type { Sql } from '@syncflow/shared';

/** A table's last completed sync from one source to one target: its change slot and shape then, and whether the target then held exactly the source's rows. */
export interface Baseline { slot: string; shape: string; exact: boolean }

const keyOf = (schema: string, name: string) => `${schema}.${name}`;

/**
 * Change baselines and retired change slots in the control DB (migrations/004_changes.sql). A job
 * that completes records, for each table it synced in full, its own change slot as the table's
 * baseline; a slot no baseline refers to any more is retired, and dropped on the source by the
 * runner (run/changes.ts). Anything that changes a target table other than the next sync from the
 * same source (another source's job, a rollback) forgets the table's baselines, so its next re-sync
 * hashes both sides.
 */
export class ChangeBaselines {
  constructor(private sql: Sql) {}

  /** The baselines of the pair's tables, by "schema.name". */
  async forPair(from: string, to: string): Promise<Map<string, Baseline>> {
    const rows = await this.sql<{ schema_name: string; table_name: string; slot: string; shape: string; exact: boolean }[]>`
      SELECT schema_name, table_name, slot, shape, exact FROM change_baselines WHERE from_conn = ${from} AND to_conn = ${to}`;
    return new Map(rows.map((r) => [keyOf(r.schema_name, r.table_name), { slot: r.slot, shape: r.shape, exact: r.exact }]));
  }

  /**
   * Records `slot` as the baseline of `tables` (fully synced by job `jobId`) and retires the slots
   * left without a baseline. Idempotent (a finish that runs again records the same). Records nothing,
   * and says which job, when another job of the pair ran at the same time from an older snapshot: it
   * may have written older rows after this job's; the baselines before both still hold.
   */
  async record(jobId: string, from: string, to: string, slot: string, tables: readonly { schema: string; name: string; shape: string; exact: boolean }[]): Promise<string | null> {
    if (!slot || !tables.length) return null;
    return this.sql.begin(async (txAny) => {
      const tx = txAny as unknown as Sql;
      const [older] = await tx<{ id: string }[]>`
        SELECT k.id FROM jobs k JOIN jobs j ON j.id = ${jobId}
        WHERE k.id <> j.id AND k.from_conn = j.from_conn AND k.to_conn = j.to_conn AND k.created_at < j.created_at
          AND (k.finished_at IS NULL OR k.finished_at > j.created_at)
        LIMIT 1`;
      if (older) return older.id;
      const before = await tx<{ slot: string }[]>`SELECT DISTINCT slot FROM change_baselines WHERE from_conn = ${from} AND to_conn = ${to}`;
      for (const t of tables) {
        await tx`INSERT INTO change_baselines (from_conn, to_conn, schema_name, table_name, slot, shape, exact, job_id)
                 VALUES (${from}, ${to}, ${t.schema}, ${t.name}, ${slot}, ${t.shape}, ${t.exact}, ${jobId})
                 ON CONFLICT (from_conn, to_conn, schema_name, table_name)
                 DO UPDATE SET slot = excluded.slot, shape = excluded.shape, exact = excluded.exact, job_id = excluded.job_id, at = now()`;
      }
      await retireUnused(tx, from, before.map((r) => r.slot), jobId);
      return null;
    });
  }

  /** Forgets the baselines of these target tables (all sources but `keepFrom`); retires slots left unused. */
  async forgetTargetTables(to: string, tables: readonly { schema: string; name: string }[], keepFrom = ''): Promise<number> {
    if (!tables.length) return 0;
    return this.sql.begin(async (txAny) => {
      const tx = txAny as unknown as Sql;
      const gone = await tx<{ from_conn: string; slot: string }[]>`
        DELETE FROM change_baselines b USING unnest(${tables.map((t) => t.schema)}::text[], ${tables.map((t) => t.name)}::text[]) AS x(s, n)
        WHERE b.to_conn = ${to} AND b.schema_name = x.s AND b.table_name = x.n AND b.from_conn <> ${keepFrom}
        RETURNING b.from_conn, b.slot`;
      await retireForgotten(tx, gone);
      return gone.length;
    });
  }

  /** Forgets every baseline from or to a connection (it is being removed); returns the sources whose slots were retired. */
  async forgetConnection(name: string): Promise<string[]> {
    return this.sql.begin(async (txAny) => {
      const tx = txAny as unknown as Sql;
      const gone = await tx<{ from_conn: string; slot: string }[]>`
        DELETE FROM change_baselines WHERE from_conn = ${name} OR to_conn = ${name} RETURNING from_conn, slot`;
      return retireForgotten(tx, gone);
    });
  }

  /** Retires a job's own slot (`jobId` ending or never created) when no baseline took it. */
  async retireIfUnused(from: string, slot: string, jobId: string): Promise<void> {
    if (slot) await retireUnused(this.sql, from, [slot], jobId);
  }

  async retired(from: string): Promise<string[]> {
    const rows = await this.sql<{ slot: string }[]>`SELECT slot FROM retired_slots WHERE from_conn = ${from} ORDER BY at`;
    return rows.map((r) => r.slot);
  }

  async dropped(from: string, slots: readonly string[]): Promise<void> {
    if (slots.length) await this.sql`DELETE FROM retired_slots WHERE from_conn = ${from} AND slot = ANY(${slots as string[]}::text[])`;
  }
}

const NO_JOB = '00000000-0000-0000-0000-000000000000';

/** Retires the slots of deleted baselines that nothing else refers to, per source; returns those sources. */
async function retireForgotten(tx: Sql, gone: readonly { from_conn: string; slot: string }[]): Promise<string[]> {
  const sources = [...new Set(gone.map((g) => g.from_conn))];
  for (const from of sources) await retireUnused(tx, from, gone.filter((g) => g.from_conn === from).map((g) => g.slot));
  return sources;
}

/** Retires those of `slots` that no baseline and no running job of the source (but `endingJob`) refers to. */
async function retireUnused(tx: Sql, from: string, slots: readonly string[], endingJob = NO_JOB): Promise<void> {
  if (!slots.length) return;
  await tx`INSERT INTO retired_slots (from_conn, slot)
           SELECT ${from}, s FROM unnest(${[...new Set(slots)]}::text[]) AS s
           WHERE s <> '' AND NOT EXISTS (SELECT 1 FROM change_baselines b WHERE b.from_conn = ${from} AND b.slot = s)
             AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.from_conn = ${from} AND j.change_slot = s AND j.id <> ${endingJob} AND j.state IN ('pending', 'running', 'paused'))
           ON CONFLICT DO NOTHING`;
}
