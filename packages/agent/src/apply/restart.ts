import { ident, failedPrecondition, type Sql } from '@syncflow/shared';
import type { ApplySpec } from './batch.js';
import { dropFilter } from './diff-filter.js';

/**
 * Starts a keyless task over on the target when its job snapshot is gone (a keyless table cannot
 * resume by key, and a new snapshot may order its rows differently). One transaction deletes
 * what earlier attempts of this task applied together with their ledger rows, so a crash leaves
 * either the old state (the next attempt restarts again) or a clean table — never a mix.
 *  - copy: the target table was empty when the job was planned, so every row in it came from this
 *    task: all are deleted;
 *  - replace: the table's content is being replaced anyway: all are deleted;
 *  - append: only rows not already present are ever added, so re-reading adds nothing twice:
 *    only the ledger rows go.
 */
export async function restartTask(sql: Sql, spec: ApplySpec): Promise<void> {
  if (spec.key.columns.length > 0) throw failedPrecondition('only a keyless table is restarted', 'bad_restart');
  await sql.begin(async (txAny) => {
    const tx = txAny as unknown as Sql;
    // Serialises with a concurrent attempt of the same task (a late redelivery).
    await tx`SELECT pg_advisory_xact_lock(hashtext(${spec.jobId + '/' + spec.taskId}))`;
    if (spec.method === 'copy' || spec.method === 'replace') await tx`DELETE FROM ${ident(tx, spec.schema, spec.table)}`;
    await tx`DELETE FROM syncflow.ledger WHERE job_id = ${spec.jobId} AND task_id = ${spec.taskId}`;
    // Diff re-sync: the restarted task compares buckets again, against the table as it is now.
    await dropFilter(tx, spec.jobId, spec.taskId);
  });
}
