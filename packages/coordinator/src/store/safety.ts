import type { Sql, pb } from '@syncflow/shared';

/** Rollbacks and job reports in the control DB (migration 003). */
export class SafetyStore {
  constructor(private sql: Sql) {}

  async rolledBack(jobId: string): Promise<{ at: string | null; rollback: pb.RollbackResult | null }> {
    const [r] = await this.sql<{ at: string | null; rollback: pb.RollbackResult | null }[]>`
      SELECT rolled_back_at::text AS at, rollback FROM jobs WHERE id = ${jobId}`;
    return r ?? { at: null, rollback: null };
  }

  /** Marks the job rolled back, and its kept report (made before) with the same time. */
  async markRolledBack(jobId: string, result: pb.RollbackResult): Promise<void> {
    await this.sql.begin(async (tx) => {
      await tx`UPDATE jobs SET rolled_back_at = now(), rollback = ${tx.json(result as never)} WHERE id = ${jobId}`;
      await tx`UPDATE job_reports r SET report = jsonb_set(r.report, '{rolled_back_at}', to_jsonb(j.rolled_back_at::text))
               FROM jobs j WHERE j.id = r.job_id AND r.job_id = ${jobId}`;
    });
  }

  /**
   * The kept report of the job's last end (none when the job runs again or ended again since it
   * was made); rolled_back_at always from the job, so a rollback during the report's making shows.
   */
  async report(jobId: string): Promise<pb.JobReport | null> {
    const [r] = await this.sql<{ report: pb.JobReport; rolled: string | null }[]>`
      SELECT r.report, j.rolled_back_at::text AS rolled FROM job_reports r JOIN jobs j ON j.id = r.job_id
      WHERE r.job_id = ${jobId} AND j.finished_at IS NOT NULL AND r.created_at >= j.finished_at`;
    if (!r) return null;
    return r.rolled ? { ...r.report, rolled_back_at: r.rolled } : r.report;
  }

  /** Keeps a report of the job's end `finishedAt` (jobs.finished_at as text); not when the job has another end by now. */
  async saveReport(jobId: string, report: pb.JobReport, finishedAt: string): Promise<boolean> {
    const rows = await this.sql`
      INSERT INTO job_reports (job_id, report)
      SELECT id, ${this.sql.json(report as never)} FROM jobs WHERE id = ${jobId} AND finished_at = ${finishedAt}::timestamptz
      ON CONFLICT (job_id) DO UPDATE SET report = excluded.report, created_at = now()`;
    return rows.count > 0;
  }
}
