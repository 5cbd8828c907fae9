import { toSyncflowError, type Sql } from '@syncflow/shared';
import { leadingFields } from '../read/copy-text.js';

export type BadRowPolicy = 'fail' | 'skip' | 'quarantine';
export const badRowPolicy = (s: string | undefined): BadRowPolicy => (s === 'fail' || s === 'skip' ? s : 'quarantine');

type WithSavepoint = Sql & { savepoint<T>(fn: (sp: Sql) => Promise<T>): Promise<T> };
const savepoint = <T>(tx: Sql, fn: (sp: Sql) => Promise<T>): Promise<T> => (tx as WithSavepoint).savepoint(fn);

export interface ChunkCounts { inserted: number; updated: number }
export interface QuarantineTarget { jobId: string; taskId: string; seq: number; schema: string; table: string; keyCount: number; policy: BadRowPolicy }

/** SQLSTATE classes 22 (data exception) and 23 (integrity constraint violation): the row's fault, not the system's. */
export function isDataError(e: unknown): boolean {
  const code = toSyncflowError(e).code;
  return /^2[23][0-9A-Z]{3}$/.test(code);
}

/** COPY text rows of a batch: every row ends with "\n" (newlines inside values are escaped), so rows are byte slices. */
export function splitRows(data: Buffer): Buffer[] {
  const rows: Buffer[] = [];
  let start = 0;
  for (let i = data.indexOf(0x0a); i !== -1; i = data.indexOf(0x0a, start)) {
    rows.push(data.subarray(start, i + 1));
    start = i + 1;
  }
  if (start < data.length) rows.push(data.subarray(start));
  return rows;
}

/**
 * Applies a batch's rows with `apply` inside a SAVEPOINT. When the target refuses them with a data
 * error and the policy allows, the rows are split in parts (eighths, then halves), recursively, each part in its own
 * savepoint, down to the single rows at fault; those go to syncflow.quarantine (same transaction
 * as the ledger row, so the batch stays exactly-once) and every other row is applied.
 * `apply(tx, data, stage, last)` is called with stage "sf_stage" for the whole batch, "sf_chunk" for parts.
 */
export async function applyBisecting(
  tx: Sql, q: QuarantineTarget, data: Buffer,
  apply: (tx: Sql, data: Buffer, stage: string) => Promise<ChunkCounts>,
  onBisect: (tx: Sql) => Promise<void>,
): Promise<ChunkCounts & { quarantined: number }> {
  let firstError: unknown;
  try {
    const r = await savepoint(tx, (sp) => apply(sp, data, 'sf_stage'));
    return { ...r, quarantined: 0 };
  } catch (e) {
    if (q.policy === 'fail' || !isDataError(e)) throw e;
    firstError = e;
  }
  await onBisect(tx);
  const out = { inserted: 0, updated: 0, quarantined: 0 };
  const go = async (rows: Buffer[], err: unknown): Promise<void> => {
    if (rows.length === 1) {
      await quarantineRow(tx, q, rows[0]!, err);
      out.quarantined++;
      return;
    }
    // Large parts are cut in eighths, small ones in halves: with bad rows spread over a big batch,
    // every half of the first levels still holds one, so eighths re-apply far fewer good rows.
    const ways = rows.length > 512 ? 8 : 2;
    const size = Math.ceil(rows.length / ways);
    const parts: Buffer[][] = [];
    for (let i = 0; i < rows.length; i += size) parts.push(rows.slice(i, i + size));
    for (const part of parts) {
      try {
        const r = await savepoint(tx, (sp) => apply(sp, Buffer.concat(part), 'sf_chunk'));
        out.inserted += r.inserted;
        out.updated += r.updated;
      } catch (e) {
        if (!isDataError(e)) throw e;
        await go(part, e);
      }
    }
  };
  await go(splitRows(data), firstError);
  return out;
}

async function quarantineRow(tx: Sql, q: QuarantineTarget, row: Buffer, e: unknown): Promise<void> {
  const err = toSyncflowError(e);
  let key: string[] | null = null;
  try {
    const k = q.keyCount ? leadingFields(row.subarray(0, row.length - (row[row.length - 1] === 0x0a ? 1 : 0)), q.keyCount) : [];
    if (k.length && k.every((v) => v !== null && !v.includes('\u0000'))) key = k as string[];
  } catch { key = null; }
  // The message can quote a value (e.g. invalid input syntax): it stays in the target's quarantine table, never in a log.
  await tx`INSERT INTO syncflow.quarantine (job_id, task_id, seq, schema_name, table_name, sqlstate, message, key, row_data)
           VALUES (${q.jobId}, ${q.taskId}, ${q.seq}, ${q.schema}, ${q.table}, ${err.code}, ${err.message.replace(/\u0000/g, '')}, ${key},
                   ${q.policy === 'skip' ? null : row})`;
}
