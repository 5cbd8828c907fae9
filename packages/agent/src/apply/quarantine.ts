import { toSyncflowError, savepoint, type Sql } from '@syncflow/shared';
import { leadingFields, decodeField } from '../read/copy-text.js';

export type BadRowPolicy = 'fail' | 'skip' | 'quarantine';
export const badRowPolicy = (s: string | undefined): BadRowPolicy => (s === 'fail' || s === 'skip' ? s : 'quarantine');

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
 * error and the policy allows, the bad rows are searched for, each try of a part in its own
 * savepoint, down to the single rows at fault; those go to syncflow.quarantine (same transaction
 * as the ledger row, so the batch stays exactly-once) and every other row is applied.
 * `apply(tx, data, stage)` is called with stage "sf_stage" for the whole batch, "sf_chunk" for parts.
 *
 * Every try costs a round of statements (savepoint, stage, COPY, upsert), so the search tries few
 * parts: the error of a failed part usually names the row at fault — the COPY line of a value the
 * column cannot hold, the "Failing row contains (…)" of a NOT NULL or CHECK violation, the key of
 * a foreign key or unique violation. The rows it points at are set apart and the rest is tried at
 * once (peeled); parts whose error names no row, or after a few peels of one part, are cut in
 * parts (eighths above 512 rows, else halves). A hint only picks what to try: a row is quarantined
 * only when applying it alone fails, with that error as its reason — except a row whose value the
 * COPY into the stage refused on its line, which is bad by itself, for that reason.
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
  /** Applies rows in their own savepoint: the error when the target refuses them, undefined when applied. */
  const attempt = async (rows: Buffer[]): Promise<unknown> => {
    try {
      const r = await savepoint(tx, (sp) => apply(sp, Buffer.concat(rows), 'sf_chunk'));
      out.inserted += r.inserted;
      out.updated += r.updated;
      return undefined;
    } catch (e) {
      if (!isDataError(e)) throw e;
      return e;
    }
  };
  /** `rows` were just applied together and refused with `err`. */
  const resolve = async (rows: Buffer[], err: unknown, peels: number): Promise<void> => {
    if (rows.length === 1) {
      await quarantineRow(tx, q, rows[0]!, err);
      out.quarantined++;
      return;
    }
    const hint = peels < MAX_PEELS ? suspects(rows, err) : null;
    if (hint && hint.rows.size < rows.length) {
      const rest = rows.filter((_, i) => !hint.rows.has(i));
      const suspect = rows.filter((_, i) => hint.rows.has(i));
      if (hint.certain) {
        // COPY refused this line's value for its column type: the row is bad by itself, for this reason.
        await quarantineRow(tx, q, suspect[0]!, err);
        out.quarantined++;
      }
      const restErr = await attempt(rest);
      if (restErr !== undefined) await resolve(rest, restErr, peels + 1);
      if (hint.certain) return;
      const suspectErr = await attempt(suspect);
      if (suspectErr !== undefined) await resolve(suspect, suspectErr, peels + 1);
      return;
    }
    const ways = rows.length > 512 ? 8 : 2;
    const size = Math.ceil(rows.length / ways);
    for (let i = 0; i < rows.length; i += size) {
      const part = rows.slice(i, i + size);
      const e = await attempt(part);
      if (e !== undefined) await resolve(part, e, 0);
    }
  };
  await resolve(splitRows(data), firstError, 0);
  return out;
}

/** Peels in a row before a part is cut in parts instead: each peel re-applies the rest of the part. */
const MAX_PEELS = 3;

/**
 * The rows of a refused part that its error points at (indices), or null when it names none.
 * `certain` for a COPY line: the stage column's type refused that row's own value. Otherwise a
 * guess, checked by applying: values are compared as text, and the server cuts long values in its
 * messages ("..." after 64 bytes).
 */
export function suspects(rows: readonly Buffer[], err: unknown): { rows: Set<number>; certain: boolean } | null {
  const e = (err ?? {}) as { where?: unknown; detail?: unknown };
  const where = typeof e.where === 'string' ? e.where : '';
  const detail = typeof e.detail === 'string' ? e.detail : '';
  // A value the stage column cannot hold: COPY names the line (1-based) of this part.
  const line = /^COPY [^,\n]+, line (\d+)\b/.exec(where);
  if (line) {
    const i = Number(line[1]) - 1;
    return i >= 0 && i < rows.length ? { rows: new Set([i]), certain: true } : null;
  }
  // NOT NULL, CHECK: the whole row (every column of the target, in its order); "null" for NULL.
  const failing = /^Failing row contains \((.*)\)\.$/s.exec(detail);
  if (failing) return guess(matching(rows, failing[1]!.split(', '), true));
  // Foreign key, unique: the key's values.
  const key = /^Key \((.*)\)=\((.*)\) (?:is not present in table|already exists)/s.exec(detail);
  if (key) {
    const values = key[2]!.split(', ');
    return values.length === key[1]!.split(', ').length ? guess(matching(rows, values, false)) : null;
  }
  return null;
}

const guess = (rows: Set<number> | null) => (rows ? { rows, certain: false } : null);

/**
 * Rows whose fields fit the quoted values: `whole` (a failing row): every field of the row is
 * one of the values (the target may have more columns); else every value is one of the row's fields.
 */
function matching(rows: readonly Buffer[], values: string[], whole: boolean): Set<number> | null {
  const out = new Set<number>();
  // A cheap filter before decoding: a key value not cut by the server appears in the row's bytes
  // (not for a whole row: its longest value may be of a target-only column).
  const needle = whole ? undefined : values.map((v) => (v.endsWith('...') ? v.slice(0, -3) : v)).filter((v) => v !== 'null' && /^[\x20-\x5b\x5d-\x7e]+$/.test(v))
    .sort((a, b) => b.length - a.length)[0];
  const probe = needle ? Buffer.from(needle) : null;
  for (let i = 0; i < rows.length; i++) {
    if (probe && rows[i]!.indexOf(probe) < 0) continue;
    const fields = allFields(rows[i]!);
    if (fields && (whole ? within(fields, values) : within(values, fields.map((f) => f ?? 'null')))) out.add(i);
  }
  return out.size ? out : null;
}

/** Each of `items` matches a different one of `pool` (multiset inclusion; a pool value ending in "..." matches a longer item it starts). */
function within(items: readonly (string | null)[], pool: readonly string[]): boolean {
  const left = [...pool];
  for (const it of items) {
    const v = it ?? 'null';
    let j = left.indexOf(v);
    if (j < 0) j = left.findIndex((p) => p.endsWith('...') && v.length > p.length - 3 && v.startsWith(p.slice(0, -3)));
    if (j < 0) return false;
    left.splice(j, 1);
  }
  return true;
}

function allFields(row: Buffer): (string | null)[] | null {
  const body = row[row.length - 1] === 0x0a ? row.subarray(0, row.length - 1) : row;
  const out: (string | null)[] = [];
  try {
    let start = 0;
    for (let i = 0; i <= body.length; i++) {
      if (i === body.length || body[i] === 0x09) { out.push(decodeField(body.subarray(start, i))); start = i + 1; }
    }
  } catch { return null; }
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
