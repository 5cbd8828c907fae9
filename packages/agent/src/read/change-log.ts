import { CHANGE_SLOT, invalidArgument, toSyncflowError, type Logger, type Sql } from '@syncflow/shared';
import { withPinnedTextForms } from './text-forms.js';
import { LineSplitter, TAB, decodeOutputField } from './copy-text.js';

/**
 * Diff re-sync from tracked changes, on the source: the keys of the rows changed between a table's
 * last sync and this job, decoded from the change slot the last sync created with its snapshot
 * (read/snapshot.ts). The slot is only peeked (never advanced), up to this job's consistent point,
 * so decoding is repeatable and every transaction the last snapshot did not hold, and this one does,
 * is in the range. The keys are candidates: the task ships the rows of these keys as they are in this
 * job's snapshot (work/diff-plan.ts changedKeys), so a key changed and changed back, or deleted,
 * comes out right.
 *
 * test_decoding prints one line per row change: `table <schema>.<name>: INSERT|UPDATE|DELETE: ...`
 * with `column[type]:value` pairs (a changed key as `old-key: ... new-tuple: ...`), or TRUNCATE.
 * A table whose changes cannot name every changed key (no primary key, a replica identity other
 * than its key, a key value left out as unchanged TOAST, a TRUNCATE) is reported unusable and its
 * task hashes every row instead.
 */

/**
 * Characters of each change line read (its key columns come first in most tables); the rest is left in
 * the database. Lines are read at FIRST_LINE first; the tables whose key a line printed past that are
 * read again at MAX_LINE (a wide row's hex and JSON cost the agent memory and time for nothing).
 */
const FIRST_LINE = 2_048;
export const MAX_LINE = 16_384;

/** Decodes held (a job's tasks share one; a job after it decodes again). */
const MAX_DECODES = 4;
const TTL_MS = 30 * 60_000;

export type TableChanges = { keys: (string | null)[][] } | { unusable: string };

/** A table's changed keys, each once (by its text, see #pass), and the list handed to its tasks (built once). */
interface TableLog { key: string[] | null; keys: Map<string, (string | null)[]>; list?: (string | null)[][]; unusable?: string }
interface Decoded {
  tables: Map<string, TableLog>; overflow: boolean; changes: number;
  /** ms from the start until the transaction began (a pooled connection), and until the slot's first changes arrived. */
  began: number; firstRows: number;
  /** Reads of the slot (a second one for tables whose key lines print late), and the ms spent parsing their lines. */
  passes: number; parseMs: number;
}

/** A table's map key: names never hold a NUL. */
const tableKey = (schema: string, table: string) => `${schema}\u0000${table}`;

export class ChangeLog {
  readonly #decodes = new Map<string, { at: number; decoded: Promise<Decoded> }>();
  /** `maxKeys`: changed keys kept per decode, over all tables; past this, hashing is cheaper than fetching them. */
  constructor(private log: Logger, private maxKeys = 1_000_000) {}

  /** Starts decoding the slot up to `upto` now (ExportSnapshot's decode_slots); the tasks that ask later share it. */
  prefetch(sql: Sql, slot: string, upto: string): void {
    assertChangeSlots([slot]);
    this.#decode(sql, slot, upto).catch((e) => this.log.warn({ slot, err: (e as Error).message }, 'decoding a change slot ahead failed; the tasks decode it again'));
  }

  /** The changed keys of one table between the slot's point and `upto`, in key column order. */
  async changesFor(sql: Sql, slot: string, upto: string, schema: string, table: string, keyColumns: readonly string[]): Promise<TableChanges> {
    assertChangeSlots([slot]);
    let decoded: Decoded;
    try {
      decoded = await this.#decode(sql, slot, upto);
    } catch (e) {
      return { unusable: `decoding change slot ${slot} failed: ${toSyncflowError(e).message}` };
    }
    if (decoded.overflow) return { unusable: `more than ${this.maxKeys} changed rows since the last sync` };
    const t = decoded.tables.get(tableKey(schema, table));
    if (!t) return { keys: [] };
    if (t.unusable) return { unusable: t.unusable };
    if (!t.key || t.key.join('\0') !== keyColumns.join('\0')) return { unusable: 'the task\'s key is not the table\'s primary key' };
    // One list per table, shared by its parts (read only): they pick their key range from it.
    return { keys: (t.list ??= [...t.keys.values()]) };
  }

  /**
   * Settles once the decodes running now have ended, or after `maxMs`. A table that hashes both sides
   * waits for it before it scans on this side: every tracked table of the job waits for the decode, and a hash
   * scan beside it (the agent's one thread summing digests, the source database scanning) slowed the
   * decode by half in the bench; a keyless table rarely holds up the job's end.
   */
  async idle(maxMs = 3_000): Promise<void> {
    const running = [...this.#running];
    if (!running.length) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.allSettled(running),
      new Promise((r) => { timer = setTimeout(r, maxMs); }),
    ]);
    clearTimeout(timer);
  }

  readonly #running = new Set<Promise<Decoded>>();

  #decode(sql: Sql, slot: string, upto: string): Promise<Decoded> {
    const id = `${slot}@${upto}`;
    const now = Date.now();
    for (const [k, d] of this.#decodes) if (now - d.at > TTL_MS) this.#decodes.delete(k);
    const held = this.#decodes.get(id);
    if (held) return held.decoded;
    while (this.#decodes.size >= MAX_DECODES) this.#decodes.delete(this.#decodes.keys().next().value!);
    const decoded = this.#run(sql, slot, upto);
    this.#decodes.set(id, { at: now, decoded });
    this.#running.add(decoded);
    decoded.catch(() => this.#decodes.delete(id)).finally(() => this.#running.delete(decoded));
    return decoded;
  }

  async #run(sql: Sql, slot: string, upto: string): Promise<Decoded> {
    const t0 = Date.now();
    // One peek of a slot at a time: another agent peeking the same slot makes PostgreSQL refuse (55006) for a moment.
    for (let attempt = 0; ; attempt++) {
      try {
        const d = await this.#peek(sql, slot, upto);
        this.log.info({ slot, upto, changes: d.changes, tables: d.tables.size, overflow: d.overflow, ms: Date.now() - t0, began_ms: d.began - t0, first_rows_ms: d.firstRows - t0, passes: d.passes, parse_ms: Math.round(d.parseMs) }, 'change slot decoded');
        return d;
      } catch (e) {
        if ((e as { code?: string }).code !== '55006' || attempt >= 60) throw e;
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  }

  async #peek(sqlPool: Sql, slot: string, upto: string): Promise<Decoded> {
    const out: Decoded = { tables: new Map(), overflow: false, changes: 0, began: 0, firstRows: 0, passes: 0, parseMs: 0 };
    await sqlPool.begin(async (txAny) => {
      const tx = txAny as unknown as Sql;
      out.began = Date.now();
      // Every table's key in one catalog query, before the COPY (this connection is then busy with it).
      const tables = await tablesInfo(tx);
      // Values print in pinned text forms, the ones the keys are read back in (buckets.ts typedKeys).
      await withPinnedTextForms(tx, async () => {
        const kept = { n: 0 };
        const later = await this.#pass(tx, slot, upto, FIRST_LINE, tables, out, kept, null);
        if (later.size && !out.overflow) await this.#pass(tx, slot, upto, MAX_LINE, tables, out, kept, later);
      });
    }).catch((e) => {
      if (!out.overflow) throw e; // else: the COPY cancelled past the key limit (every table hashes)
    });
    if (out.overflow) for (const t of out.tables.values()) t.keys.clear();
    return out;
  }

  /**
   * One read of the slot's changes, each line cut at `lineLength` characters: only the key is read,
   * and a change of huge rows (4 MB values print as 8 MB of hex) would otherwise cost the agent memory
   * and time for nothing (the COPY stream is read as it comes). The first read (`only` null)
   * takes every table; a table whose key a cut line does not hold is returned, to be read again with
   * longer lines (`only`: those tables).
   */
  async #pass(tx: Sql, slot: string, upto: string, lineLength: number, tables: Map<string, TableInfo>, out: Decoded, kept: { n: number },
    only: Set<string> | null): Promise<Set<string>> {
    const later = new Set<string>();
    // A line's table is looked up three times (its key, whether to skip it, its log), and lines come in
    // runs of one table: the last lookup is kept.
    let lastSchema = '', lastTable = '', lastInfo: TableInfo | undefined;
    const infoOf = (schema: string, table: string) => {
      if (schema !== lastSchema || table !== lastTable) {
        lastSchema = schema; lastTable = table; lastInfo = tables.get(tableKey(schema, table));
      }
      return lastInfo;
    };
    const keyOf = (schema: string, table: string) => infoOf(schema, table)?.key ?? null;
    /** A table (its root's tableKey) whose changes the other pass reads. */
    const otherPass = (k: string) => (only ? !only.has(k) : later.has(k));
    // Rows whose keys this pass cannot use are not parsed: keyless tables, tables found unusable, tables of the other pass.
    const skip = (schema: string, table: string) => {
      const info = infoOf(schema, table);
      if (!info?.key) return true;
      return otherPass(info.rootKey) || out.tables.get(info.rootKey)?.unusable !== undefined;
    };
    /** One change line: the keys it names, kept per table (past the key limit, `out.overflow`). */
    const take = (data: string, cut: boolean) => {
      if (!only) out.changes++;
      const change = parseChange(data, cut, keyOf, skip);
      for (const name of change.tables) {
        // A partition's changes count for the partitioned table the tasks sync. A table missing from
        // the catalog now (dropped or renamed since) has no key: it hashes, should a task name it.
        const info = infoOf(name.schema, name.table);
        const key = info?.key ?? null;
        const k = info?.rootKey ?? tableKey(name.schema, name.table);
        if (otherPass(k)) continue;
        let t = out.tables.get(k);
        if (!t) {
          t = { key, keys: new Map() };
          if (!t.key) t.unusable = 'the table changed since its last sync, and without a primary key its changes name no rows';
          out.tables.set(k, t);
        }
        if (t.unusable) continue;
        if (change.op === 'TRUNCATE') { t.unusable = 'the table was truncated since the last sync'; t.keys.clear(); continue; }
        const cols = t.key!;
        for (const tuple of change.tuples) {
          const values: (Value | undefined)[] = new Array(cols.length);
          let absent = false, toasted = false, nulls = false;
          for (let i = 0; i < cols.length; i++) {
            const v = tuple.get(cols[i]!);
            values[i] = v;
            if (v === undefined) absent = true;
            else if (v === UNCHANGED_TOAST) toasted = true;
            else if (v === null) nulls = true;
          }
          if (absent || toasted) {
            const keyCut = cut && absent;
            kept.n -= t.keys.size;
            t.keys.clear();
            if (keyCut && lineLength < MAX_LINE) { later.add(k); break; } // read again with longer lines
            t.unusable = keyCut
              ? `a ${change.op} since the last sync prints its primary key after ${lineLength} characters of other columns`
              : `a ${change.op} since the last sync does not name the row's primary key (replica identity)`;
            break;
          }
          // Each key once: its text itself, or its values joined by NUL (no text value holds one); a key with a null (never one of a primary key) as JSON.
          const id = nulls ? `\u0001${JSON.stringify(values)}` : cols.length === 1 ? values[0] as string : values.join('\u0000');
          if (t.keys.has(id)) continue;
          t.keys.set(id, values as (string | null)[]);
          if (++kept.n > this.maxKeys) { out.overflow = true; break; }
        }
      }
    };
    out.passes++;
    // One COPY streams the lines as PostgreSQL sends them (a cursor waited a round trip per fetch, and
    // built a row object per line). COPY takes no parameters: the slot, the end of the range and the
    // line length ride in transaction-local settings.
    await tx`SELECT set_config('syncflow.slot', ${slot}, true), set_config('syncflow.upto', ${upto}, true), set_config('syncflow.line', ${String(lineLength)}, true)`;
    const query = tx`COPY (
      SELECT left(data, current_setting('syncflow.line')::int), length(data) > current_setting('syncflow.line')::int
      FROM pg_logical_slot_peek_changes(current_setting('syncflow.slot'), current_setting('syncflow.upto')::pg_lsn, NULL, 'include-xids', '0', 'skip-empty-xacts', '1')
      WHERE data LIKE 'table %') TO STDOUT`;
    const stream = await query.readable();
    const lines = new LineSplitter();
    try {
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        // Past the key limit every table hashes: the rest of the changes are not read (the COPY is
        // cancelled, what is in flight drained; its transaction ends in an error #peek expects).
        if (out.overflow) continue;
        if (!only) out.firstRows ||= Date.now();
        const t0 = performance.now();
        for (const line of lines.push(chunk)) {
          const tab = line.lastIndexOf(TAB);
          take(decodeOutputField(line.subarray(0, tab)), line[tab + 1] === 0x74 /* t */);
          if (out.overflow) {
            void Promise.resolve((query as unknown as { cancel(): unknown }).cancel()).catch(() => undefined);
            break;
          }
        }
        out.parseMs += performance.now() - t0;
      }
      if (!out.overflow) lines.end();
    } finally {
      // As in table-reader.ts: resume postgres.js's socket in case the last chunk paused it.
      (stream as unknown as { _read?: () => void })._read?.();
    }
    return later;
  }
}

interface TableInfo { rootKey: string; key: string[] | null }

/**
 * Every table and partition of the database as the catalog has it now, by tableKey: the table a task
 * syncs (the root of its partition tree, for a partition) and its primary key columns in key order, or null.
 */
async function tablesInfo(sql: Sql): Promise<Map<string, TableInfo>> {
  const rows = await sql<{ schema: string; table: string; root_schema: string; root_table: string; cols: string[] | null }[]>`
    SELECT tn.nspname::text AS schema, r.relname::text AS table, n.nspname::text AS root_schema, c.relname::text AS root_table,
      (SELECT array_agg(a.attname::text ORDER BY k.i)
       FROM pg_index x CROSS JOIN LATERAL unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, i)
       JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
       WHERE x.indrelid = r.oid AND x.indisprimary) AS cols
    FROM pg_class r JOIN pg_namespace tn ON tn.oid = r.relnamespace
    JOIN pg_class c ON c.oid = coalesce(pg_partition_root(r.oid), r.oid) JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE r.relkind IN ('r', 'p') AND tn.nspname NOT IN ('pg_catalog', 'information_schema') AND tn.nspname NOT LIKE 'pg\_toast%'`;
  return new Map(rows.map((r) => [tableKey(r.schema, r.table), {
    rootKey: tableKey(r.root_schema, r.root_table), key: r.cols?.length ? r.cols : null,
  }]));
}

export const UNCHANGED_TOAST = Symbol('unchanged-toast-datum');
type Value = string | null | typeof UNCHANGED_TOAST;
export interface ParsedChange {
  tables: { schema: string; table: string }[];
  op: 'INSERT' | 'UPDATE' | 'DELETE' | 'TRUNCATE';
  /** The row images printed: one, or the old key and the new row of an UPDATE that changed the key. */
  tuples: Map<string, Value>[];
}

const malformed = (line: string, why: string) => new Error(`unexpected test_decoding output (${why}) near ${JSON.stringify(line.slice(0, 40))}`);

/**
 * Parses one test_decoding line that starts with `table `. Row values come back as their text forms
 * (type output functions). `cut`: the line was cut short (FIRST_LINE, MAX_LINE); its tuple holds the columns
 * printed whole before the cut, and the value the cut may have shortened is left out. `keyOf`: the
 * key columns of a table (null: none); the row's tuple is read only until it holds them all (keys
 * usually come first: the rest of a wide row is not parsed). `skip`: tables whose rows are not read at
 * all (their tuples come back empty; a decode skips keyless tables and those it already found unusable).
 */
export function parseChange(line: string, cut = false, keyOf?: (schema: string, table: string) => readonly string[] | null,
  skip?: (schema: string, table: string) => boolean): ParsedChange {
  const p = { s: line, i: 'table '.length };
  const tables: { schema: string; table: string }[] = [];
  for (;;) {
    const schema = identifier(p);
    if (p.s[p.i] !== '.') throw malformed(line, 'qualified table name');
    p.i++;
    tables.push({ schema, table: identifier(p) });
    if (p.s.startsWith(', ', p.i)) { p.i += 2; continue; }
    break;
  }
  if (!p.s.startsWith(': ', p.i)) throw malformed(line, 'after the table name');
  p.i += 2;
  const end = p.s.indexOf(':', p.i);
  const op = p.s.slice(p.i, end);
  if (op !== 'INSERT' && op !== 'UPDATE' && op !== 'DELETE' && op !== 'TRUNCATE') throw malformed(line, 'operation');
  p.i = end + 1;
  const tuples: Map<string, Value>[] = [];
  if (op !== 'TRUNCATE' && !(tables.length === 1 && skip?.(tables[0]!.schema, tables[0]!.table))) {
    if (p.s[p.i] === ' ') p.i++;
    if (p.s.startsWith('(no-tuple-data)', p.i)) return { tables, op, tuples };
    if (p.s.startsWith('old-key: ', p.i)) {
      p.i += 'old-key: '.length;
      tuples.push(tuple(p, 'new-tuple: ', cut));
      if (!p.s.startsWith('new-tuple: ', p.i)) {
        if (cut) return { tables, op, tuples: [...tuples, new Map()] };
        throw malformed(line, 'new tuple');
      }
      p.i += 'new-tuple: '.length;
    }
    tuples.push(tuple(p, null, cut, tables.length === 1 ? keyOf?.(tables[0]!.schema, tables[0]!.table) : null));
  }
  return { tables, op, tuples };
}

interface Cursor { s: string; i: number }

/** An identifier as quote_identifier prints it: bare, or in double quotes with "" for a quote. */
function identifier(p: Cursor): string {
  if (p.s[p.i] !== '"') {
    // [a-z_][a-z0-9_$]*, scanned by character code: the hottest path of a decode (a name per column printed).
    const start = p.i;
    let j = start;
    for (; j < p.s.length; j++) {
      const c = p.s.charCodeAt(j);
      const ok = (c >= 97 && c <= 122) || c === 95 || (j > start && ((c >= 48 && c <= 57) || c === 36));
      if (!ok) break;
    }
    if (j === start) throw malformed(p.s, 'identifier');
    p.i = j;
    return p.s.slice(start, j);
  }
  let out = '';
  for (let j = p.i + 1; j < p.s.length; j++) {
    if (p.s[j] === '"') {
      if (p.s[j + 1] === '"') { out += '"'; j++; continue; }
      p.i = j + 1;
      return out;
    }
    out += p.s[j];
  }
  throw malformed(p.s, 'unterminated quoted identifier');
}

/**
 * `name[type]:value` pairs separated by single spaces, up to the end or `stop`, or until it holds
 * every column of `enough`. In a line cut short (`cut`), parsing ends at the cut: a pair cut in two is
 * dropped, and so is a value that reaches the cut (it may go on beyond it).
 */
function tuple(p: Cursor, stop: string | null, cut = false, enough?: readonly string[] | null): Map<string, Value> {
  const row = new Map<string, Value>();
  let wanted = enough?.length ?? 0;
  while (p.i < p.s.length && !(stop && p.s.startsWith(stop, p.i)) && !(enough && wanted === 0)) {
    try {
      const name = identifier(p);
      if (p.s[p.i] !== '[') throw malformed(p.s, 'column type');
      const close = p.s.indexOf(']:', p.i);
      if (close < 0) throw malformed(p.s, 'column type');
      p.i = close + 2;
      const v = value(p);
      if (cut && p.i >= p.s.length) break;
      row.set(name, v);
      if (enough?.includes(name)) wanted--;
    } catch (e) {
      if (!cut) throw e;
      p.i = p.s.length; // the rest is the cut pair
      break;
    }
    if (p.s[p.i] === ' ') p.i++;
  }
  return row;
}

/**
 * A value as test_decoding prints it: `'…'` with '' for a quote (most types), `B'…'` (bit strings),
 * bare (numbers, true/false), `null`, or `unchanged-toast-datum`.
 */
function value(p: Cursor): Value {
  const s = p.s;
  if (s[p.i] === '\'' || (s[p.i] === 'B' && s[p.i + 1] === '\'')) {
    if (s[p.i] === 'B') p.i++;
    let out = '';
    for (let j = p.i + 1; ;) {
      const q = s.indexOf('\'', j);
      if (q < 0) throw malformed(s, 'unterminated quoted value');
      if (s[q + 1] === '\'') { out += s.slice(j, q + 1); j = q + 2; continue; }
      p.i = q + 1;
      return out + s.slice(j, q);
    }
  }
  let end = s.indexOf(' ', p.i);
  if (end < 0) end = s.length;
  const raw = s.slice(p.i, end);
  p.i = end;
  if (raw === 'null') return null;
  if (raw === 'unchanged-toast-datum') return UNCHANGED_TOAST;
  return raw;
}

/** Only syncflow's change slots (CHANGE_SLOT) are ever named in SQL or dropped. */
export function assertChangeSlots(slots: readonly string[]): void {
  for (const s of slots) if (!CHANGE_SLOT.test(s)) throw invalidArgument(`change slot name ${JSON.stringify(s)} is malformed (syncflow_ and 32 hex digits)`);
}

/** Drops change slots of this database by name; returns those gone afterwards. */
export async function dropChangeSlots(sql: Sql, slots: readonly string[]): Promise<string[]> {
  assertChangeSlots(slots);
  const gone: string[] = [];
  for (const slot of slots) {
    try {
      await sql`SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = ${slot} AND database = current_database()`;
      gone.push(slot);
    } catch (e) {
      // In use right now (a peek of another job, 55006): left for the next try.
      if ((e as { code?: string }).code !== '55006') throw e;
    }
  }
  return gone;
}
