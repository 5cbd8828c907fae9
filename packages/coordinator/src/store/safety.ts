import type { Sql, pb } from '@syncflow/shared';

/** Rollbacks and job reports in the control DB (migration 003). */
export class SafetyStore {
  constructor(private sql: Sql) {}

  async rolledBack(jobId: string): Promise<{ at: string | null; rollback: pb.RollbackResult | null }> {
    const [r] = await this.sql<{ at: string | null; rollback: pb.RollbackResult | null }[]>`
      SELECT rolled_back_at::text AS at, rollback FROM jobs WHERE id = ${jobId}`;
    return r ?? { at: null, rollback: null };
  }

  async markRolledBack(jobId: string, result: pb.RollbackResult): Promise<void> {
    await this.sql`UPDATE jobs SET rolled_back_at = now(), rollback = ${this.sql.json(result as never)} WHERE id = ${jobId}`;
    // A report made before the rollback no longer describes the target.
    await this.sql`DELETE FROM job_reports WHERE job_id = ${jobId}`;
  }

  async report(jobId: string): Promise<pb.JobReport | null> {
    const [r] = await this.sql<{ report: pb.JobReport }[]>`SELECT report FROM job_reports WHERE job_id = ${jobId}`;
    return r?.report ?? null;
  }

  async saveReport(jobId: string, report: pb.JobReport): Promise<void> {
    await this.sql`INSERT INTO job_reports (job_id, report) VALUES (${jobId}, ${this.sql.json(report as never)})
                   ON CONFLICT (job_id) DO UPDATE SET report = excluded.report, created_at = now()`;
  }
}
