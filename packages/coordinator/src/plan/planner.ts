import {
  parseTableRef, displayName, notFound, applyMethodToProto, BINARY_KEY_TYPES,
  type pb, type ApplyMethod, type TaskMessage, type CopyFormat,
} from '@syncflow/shared';
import { orderLevels, type FkEdge } from './graph.js';
import { tableChecks } from './checks.js';
import type { PlanRecord } from '../store/jobs.js';
import type { Baseline } from '../store/change-baselines.js';

export interface PlanInput {
  jobId: string;
  source: pb.Schema__Output;
  target: pb.Schema__Output;
  tables: readonly string[];           // as the user typed them; empty = all source tables
  mode: 'upsert' | 'mirror';
  batchBytes: number;
  from: { name: string; sealed_url: string; group: string };
  to: { name: string; sealed_url: string; group: string };
  snapshotId: string;
  trace: Record<string, string>;
  /** Parts of big tables (plan/split.ts): key boundaries, or a keyless table's size in blocks. */
  splits?: ReadonlyMap<string, TableSplit>;
  /** Keep the indexes and FKs of empty target tables during the load (default: set them aside, rebuild after). */
  keepIndexes?: boolean;
  createMissing?: boolean;
  onBadRow?: 'fail' | 'skip' | 'quarantine';
  /** Diff re-sync of tables whose target has rows: 'auto' (default), 'hash' (always hash both sides) or 'off' (ship every row). */
  diff?: 'auto' | 'hash' | 'off';
  /** The job snapshot's change slot point and the pair's change baselines ("schema.name"): diffs from tracked changes. */
  changes?: { lsn: string; baselines: ReadonlyMap<string, Baseline> };
  /** Initial loads as binary COPY where the types allow: 'auto' (default), or 'text' always. */
  copyFormat?: 'auto' | 'text';
}

export interface TableSplit { boundaries: string[][]; blocks: number; parts: number }

export interface Planned {
  plan: pb.Plan;
  record: PlanRecord;
  tasks: { id: string; level: number; schema: string; table: string; method: ApplyMethod; rowEstimate: number; message: TaskMessage }[];
}

const keyOf = (t: { schema: string; name: string }) => `${t.schema}.${t.name}`;

/** One task per table (the first part of a table cut into ranges): for what concerns a table whole. */
export function wholeTables<T extends { schema: string; table: string }>(tasks: readonly T[]): T[] {
  return tasks.filter((t, i, all) => all.findIndex((x) => x.schema === t.schema && x.table === t.table) === i);
}

/**
 * Builds the plan of a sync from both schemas: which tables, in which FK level, by which apply
 * method, which constraints are set aside, which sequences follow. Refuses, before anything is
 * written, a table missing on either side or columns the target lacks.
 */
export function planSync(input: PlanInput): Planned {
  const selected = selectTables(input.source.tables, input.tables);
  const targetByKey = new Map(input.target.tables.map((t) => [keyOf(t), t]));

  // An empty target table loaded with its foreign keys set aside (the default) need not wait for its
  // parents: its FK edges do not order the load, they are checked once after it. Its tasks run beside
  // its parents' (no level tail leaves a core idle); should a parent fail, its foreign key comes back
  // NOT VALID when the loaded rows need parent rows still missing, validated after `job retry` (FinalizeTargetRequest.unfinished).
  const loadFree = new Set(input.keepIndexes ? [] : selected.filter((t) => targetByKey.get(keyOf(t))?.has_rows === false).map(keyOf));
  const edges: FkEdge[] = selected.filter((t) => !loadFree.has(keyOf(t)))
    .flatMap((t) => t.foreign_keys.map((fk) => ({ from: keyOf(t), to: `${fk.ref_schema}.${fk.ref_table}`, name: fk.name })));
  const levels = orderLevels(selected.map(keyOf), edges);
  const selectedKeys = new Set(selected.map(keyOf));
  const notes: string[] = [];
  for (const c of levels.cycles) {
    notes.push(`FK cycle or self-reference among ${c.join(', ')}: its foreign keys are set aside on the target during the load, then restored and validated`);
  }

  // hash_record_extended (typed hashing of diff re-sync) exists from PostgreSQL 14 on.
  const typedHash = [input.source.server_version, input.target.server_version].every((v) => parseInt(v, 10) >= 14);
  const checks: pb.PlanCheck[] = [];
  const missing: { schema: string; name: string }[] = [];
  const tablePlans: pb.TablePlan[] = [];
  const tasks: Planned['tasks'] = [];
  const shapes: Record<string, string> = {};
  selected.forEach((t, i) => {
    const name = displayName(t.schema, t.name);
    const found = targetByKey.get(keyOf(t));
    const tableChecksFound = tableChecks(t, found, { targetName: input.to.name, createMissing: Boolean(input.createMissing) });
    checks.push(...tableChecksFound);
    if (tableChecksFound.some((c) => c.severity === 'error')) return;
    // --create-missing: the table will be created from the source's definition, empty.
    if (!found) missing.push({ schema: t.schema, name: t.name });
    const tt = found ?? { ...t, has_rows: false };
    const columns = t.columns.filter((c) => !c.generated);
    const key = t.primary_key;
    const tableNotes: string[] = [];
    let method: ApplyMethod;
    if (!tt.has_rows) method = 'copy';
    else if (key.length) method = 'upsert';
    else method = input.mode === 'mirror' ? 'replace' : 'append';
    if (!key.length) {
      tableNotes.push(method === 'copy'
        ? 'no primary or unique key: copied whole, in physical order, within the job snapshot'
        : method === 'replace'
          ? 'no primary or unique key and the target has rows: mirror replaces the table content in the job'
          : 'no primary or unique key and the target has rows: only rows not already on the target are added');
    }
    if (t.key_kind === 'unique') tableNotes.push(`no primary key; the unique key (${key.join(', ')}) orders and matches rows`);
    const skipped = t.columns.filter((c) => c.generated).map((c) => c.name);
    if (skipped.length) tableNotes.push(`generated column(s) ${skipped.join(', ')} are computed by the target, not copied`);
    const outside = t.foreign_keys.filter((fk) => !selectedKeys.has(`${fk.ref_schema}.${fk.ref_table}`));
    for (const fk of outside) tableNotes.push(`references ${displayName(fk.ref_schema, fk.ref_table)}, which is not in this sync: its rows must already be on the target`);

    const level = levels.level.get(keyOf(t))!;
    const deferred = levels.deferred.filter((e) => e.from === keyOf(t));
    const ordered = [...key, ...columns.map((c) => c.name).filter((c) => !key.includes(c))];
    const keyTypes = key.map((k) => {
      const c = t.columns.find((x) => x.name === k)!;
      return { schema: c.type_schema, name: c.type_name };
    });
    const ranges = partsOf(input.splits?.get(keyOf(t)), method);
    // Diff re-sync: a target that already has rows is compared by hash buckets; only those that differ are shipped.
    const diffTable = method !== 'copy' && input.diff !== 'off';
    shapes[keyOf(t)] = shapeOf(columns, found);
    const baseline = input.changes?.baselines.get(keyOf(t));
    const tracked = trackedChanges(t, found, input);
    if (tracked && t.primary_key.length) tableNotes.push(`the target has rows: only the rows changed since the table's last sync (decoded from change slot ${tracked.slot}) are shipped (diff re-sync)`);
    else if (tracked) tableNotes.push(`the target has rows: unchanged since the table's last sync (decoded from change slot ${tracked.slot}), nothing is shipped; changed, both agents hash buckets of it and only differing buckets are shipped (diff re-sync; without a primary key its changes name no rows)`);
    else if (diffTable) tableNotes.push(`the target has rows: both agents hash buckets of the table next to their database and only differing buckets are shipped (diff re-sync${untrackedWhy(input, baseline, shapes[keyOf(t)]!)})`);
    if (method === 'copy' && !input.keepIndexes) tableNotes.push('empty on the target: its secondary indexes and foreign keys are set aside for the load and rebuilt after it');
    const format = method === 'copy' ? copyFormatOf(t, found, input) : { format: 'text' as const, why: '' };
    if (method === 'copy') {
      tableNotes.push(format.format === 'binary'
        ? 'rows travel as binary COPY: every column is a built-in type, the same on both sides'
        : `rows travel as COPY text: ${format.why}`);
    }
    if (ranges.length > 1) tableNotes.push(`cut into ${ranges.length} ${key.length ? 'key' : 'block'} ranges that load in parallel`);
    tablePlans.push({
      schema: t.schema, name: t.name, level, method: applyMethodToProto(method) as pb.ApplyMethod, key, key_kind: t.key_kind,
      row_estimate: t.row_estimate, bytes: t.bytes,
      depends_on: [...new Set(t.foreign_keys.map((fk) => `${fk.ref_schema}.${fk.ref_table}`).filter((r) => selectedKeys.has(r) && r !== keyOf(t)))],
      deferred_constraints: deferred.map((d) => d.name), notes: tableNotes, parts: ranges.length, copy_format: format.format,
    });
    ranges.forEach((r, p) => {
      const id = ranges.length > 1 ? `${input.jobId}/${i + 1}.${p + 1}` : `${input.jobId}/${i + 1}`;
      tasks.push({
        id, level, schema: t.schema, table: t.name, method, rowEstimate: Math.round(Number(t.row_estimate) / ranges.length),
        message: {
          v: 1, job_id: input.jobId, task_id: id, source: input.from, target: input.to, snapshot_id: input.snapshotId,
          schema: t.schema, table: t.name, columns: ordered, key_columns: key, key_types: keyTypes, method,
          mirror: input.mode === 'mirror', batch_bytes: input.batchBytes, trace: input.trace, max_attempts: 3, // the job sets its own attempts (start.ts)
          on_bad_row: input.onBadRow ?? 'quarantine', diff: diffTable, changes: tracked, diff_hashed: diffTable && typedHash ? hashedColumns(t, found) : [], row_estimate: Math.max(0, Math.round(Number(t.row_estimate) / ranges.length)),
          copy_format: format.format, ...r,
        },
      });
    });
  });

  const selectedSet = new Set(selected.map(keyOf));
  const record: PlanRecord = {
    levels: levels.count, tables: tablePlans, notes,
    deleteOrder: input.mode === 'mirror'
      ? [...selected].filter((t) => t.primary_key.length && targetByKey.get(keyOf(t))?.has_rows)
        .sort((a, b) => levels.level.get(keyOf(b))! - levels.level.get(keyOf(a))!)
        .map((t) => ({ schema: t.schema, name: t.name, key: t.primary_key.map((k) => ({ name: k, ...typeOf(t, k) })) }))
      : [],
    sequences: input.source.sequences.filter((s) => selectedSet.has(`${s.owned_by_schema}.${s.owned_by_table}`)).map((s) => ({ ...s })),
    deferred: levels.deferred.map((e) => {
      const [schema, table] = splitKey(e.from, selected);
      return { schema, table, name: e.name };
    }),
    loadTables: input.keepIndexes ? [] : wholeTables(tasks).filter((t) => t.method === 'copy').map((t) => ({ schema: t.schema, name: t.table })),
    sourceGroup: input.from.group, targetGroup: input.to.group,
    createTables: missing, postDdl: [], shapes,
  };
  // Over every selected table, planned or refused: what the job would move once the plan is fixed.
  const estimatedRows = selected.reduce((n, t) => n + Number(t.row_estimate), 0);
  const estimatedBytes = selected.reduce((n, t) => n + Number(t.bytes), 0);
  const plan: pb.Plan = {
    tables: tablePlans, levels: levels.count, notes, checks,
    estimated_rows: estimatedRows, estimated_bytes: estimatedBytes,
    // A rough figure: ~20 MB/s through COPY, stage and upsert on modest hardware, plus a second per table.
    estimated_seconds: Math.ceil(estimatedBytes / (20 * 1024 * 1024)) + selected.length,
  };
  return { plan, record, tasks };
}

/**
 * A diff of the table from the changes tracked since its last sync into this target (decoded from that
 * sync's change slot; for a table without a primary key only whether it changed at all), or null: the
 * target has no rows (a load), `--diff off|hash`, no baseline, its columns changed since, or a mirror
 * after an upsert (which left deleted rows).
 */
export function trackedChanges(t: pb.Table__Output, target: pb.Table__Output | undefined, input: Pick<PlanInput, 'diff' | 'mode' | 'changes'>): TaskMessage['changes'] {
  const baseline = input.changes?.baselines.get(keyOf(t));
  if (!input.changes || !baseline || !target?.has_rows || input.diff === 'off' || input.diff === 'hash') return null;
  if (baseline.shape !== shapeOf(t.columns.filter((c) => !c.generated), target) || !(baseline.exact || input.mode === 'upsert')) return null;
  return { slot: baseline.slot, upto: input.changes.lsn };
}

/** A table's synced columns with their types on both sides: a change baseline holds only while this stays the same. */
function shapeOf(columns: readonly pb.Column__Output[], target: pb.Table__Output | undefined): string {
  const typeOn = (t: pb.Table__Output | undefined, name: string) => {
    const c = t?.columns.find((x) => x.name === name);
    return c ? `${c.type_schema}.${c.type_name}` : '';
  };
  return JSON.stringify(columns.map((c) => [c.name, `${c.type_schema}.${c.type_name}`, typeOn(target, c.name)]));
}

/** Why a diff table hashes both sides instead of decoding tracked changes, for its plan note. */
function untrackedWhy(input: PlanInput, baseline: Baseline | undefined, shape: string): string {
  if (input.diff === 'hash') return '; --diff hash';
  if (!input.changes) return '';
  if (!baseline) return '; no change slot from an earlier sync of this table';
  if (baseline.shape !== shape) return '; its columns changed since its last sync';
  return baseline.exact ? '' : '; its last sync was an upsert, which leaves rows deleted on the source';
}

/**
 * The parts one table is read in: key ranges (after, upto] between consecutive boundaries, or block
 * ranges of a keyless table. Keyless tables that replace or append must stay whole (one statement
 * decides what is already there), as must a table without a split.
 */
function partsOf(split: TableSplit | undefined, method: ApplyMethod): { range: TaskMessage['range']; blocks: TaskMessage['blocks'] }[] {
  const whole = [{ range: null, blocks: null }];
  if (!split || split.parts < 2) return whole;
  if (split.boundaries.length) {
    const edges: (string[] | null)[] = [null, ...split.boundaries, null];
    return edges.slice(1).map((upto, j) => ({ range: { after: edges[j]!, upto }, blocks: null }));
  }
  if (method !== 'copy' || split.blocks < split.parts) return whole;
  const step = Math.ceil(split.blocks / split.parts);
  return Array.from({ length: split.parts }, (_, j) => ({
    range: null, blocks: { from: j * step, to: j === split.parts - 1 ? null : (j + 1) * step },
  }));
}

/**
 * Built-in types whose binary form does not carry over between databases: the reg* types send the
 * object's OID (text sends its name, resolved again on the target); the others have no binary
 * input or output (aclitem), or refuse input (the planner statistics types, pg_node_tree).
 */
const NOT_BINARY = new Set([
  'regproc', 'regprocedure', 'regoper', 'regoperator', 'regclass', 'regtype', 'regrole', 'regnamespace',
  'regconfig', 'regdictionary', 'regcollation', 'aclitem', 'pg_node_tree', 'pg_ndistinct', 'pg_dependencies',
  'pg_mcv_list', 'pg_brin_bloom_summary', 'pg_brin_minmax_multi_summary', 'gtsvector', 'unknown',
]);

/**
 * The COPY format of an initial load (method copy). Binary COPY moves bytea as bytes rather than
 * hex, and numbers and timestamps without their text conversions, but it embeds type OIDs (arrays,
 * composites) and each type's own wire form: so only built-in (pg_catalog) types, the same type and
 * modifier on both sides, between servers of the same major version. Key columns must be of a type
 * whose binary form the source agent prints as PostgreSQL would (BINARY_KEY_TYPES): the first and
 * last key of each batch become checkpoints.
 */
function copyFormatOf(t: pb.Table__Output, target: pb.Table__Output | undefined, input: PlanInput): { format: CopyFormat; why: string } {
  const text = (why: string) => ({ format: 'text' as const, why });
  if (input.copyFormat === 'text') return text('the job asked for COPY text');
  const major = (v: string) => parseInt(v, 10);
  if (major(input.source.server_version) !== major(input.target.server_version)) return text('the servers run different major versions');
  for (const c of t.columns) {
    if (c.generated) continue;
    const tc = target ? target.columns.find((x) => x.name === c.name) : c; // --create-missing: created from the source's definition
    if (c.type_schema !== 'pg_catalog') return text(`column ${c.name} is of a type that is not built in (${c.type})`);
    if (NOT_BINARY.has(c.type_name.replace(/^_/, ''))) return text(`column ${c.name} is of type ${c.type}, whose binary form does not carry over`);
    if (!tc || tc.type !== c.type || tc.type_schema !== c.type_schema || tc.type_name !== c.type_name) {
      return text(`column ${c.name} has another type on the target`);
    }
  }
  for (const k of t.primary_key) {
    const c = t.columns.find((x) => x.name === k)!;
    if (!BINARY_KEY_TYPES.has(c.type_name)) return text(`key column ${k} is of type ${c.type}, whose binary form the agent does not read`);
  }
  const cols = t.columns.filter((c) => !c.generated);
  if (!cols.some((c) => c.type_name === 'bytea')) {
    const [textBytes, binaryBytes] = cols.reduce(([x, y], c) => {
      const [tx, bin] = VALUE_BYTES[c.type_name] ?? [1, 4];
      return [x + tx, y + bin];
    }, [0, 2]);
    if (binaryBytes > BINARY_BYTES_ALLOWANCE * textBytes) return text('binary would ship notably more bytes for these column types (small numbers)');
  }
  return { format: 'binary', why: '' };
}

/**
 * Rough bytes of a typical value as COPY text (with its tab) and as COPY binary (with its 4-byte
 * length), for the types whose two forms differ in size; any other type (text, jsonb, arrays, …)
 * counts as [1, 4] on top of its content. bytea, hex in text, always goes binary when allowed.
 */
const VALUE_BYTES: Record<string, [text: number, binary: number]> = {
  int2: [3, 6], int4: [5, 8], int8: [7, 12], oid: [6, 8], bool: [2, 5], float4: [10, 8], float8: [18, 12], numeric: [8, 16],
  money: [8, 12], date: [11, 8], time: [16, 12], timetz: [22, 16], timestamp: [27, 12], timestamptz: [30, 12], interval: [18, 20], uuid: [37, 20],
};
/**
 * Binary is chosen unless it would ship more than this many times the text bytes (by VALUE_BYTES):
 * it spares both servers the text conversions (measured on the bench's orders: COPY out + in 2.6 s
 * of PostgreSQL CPU as text, 1.3 s as binary, for 17 % more bytes), but a table of small integers
 * and numerics doubles in size (order_items: 51 MB as text, 128 MB as binary), which costs more
 * in the agents and across a WAN than it saves in the databases.
 */
const BINARY_BYTES_ALLOWANCE = 1.25;

/**
 * Types whose equality is identity (equal values have equal text), so hashing them with their type's
 * own hash function finds every change the text would: not float (-0 = 0), interval ('1 day' =
 * '24 hours'), jsonb (1.0 = 1.00), text types (nondeterministic collations), nor numeric without a
 * fixed scale. Their text output costs more than their hash (int8, numeric, timestamptz, bytea's hex).
 */
const HASHED_TYPES = new Set(['int2', 'int4', 'int8', 'bool', 'bytea', 'uuid', 'date', 'timestamp', 'timestamptz', 'time', 'oid']);

/** Diff re-sync: the columns both sides hash by type (same type and modifier on both sides, in HASHED_TYPES). */
function hashedColumns(t: pb.Table__Output, target: pb.Table__Output | undefined): string[] {
  if (!target) return [];
  return t.columns.filter((c) => {
    const tc = target.columns.find((x) => x.name === c.name);
    if (!tc || tc.type !== c.type || tc.type_schema !== c.type_schema || tc.type_name !== c.type_name || c.type_schema !== 'pg_catalog' || c.generated) return false;
    return HASHED_TYPES.has(c.type_name) || (c.type_name === 'numeric' && /^numeric\(\d+,\d+\)$/.test(c.type));
  }).map((c) => c.name);
}

function typeOf(t: pb.Table__Output, col: string) {
  const c = t.columns.find((x) => x.name === col)!;
  return { type_schema: c.type_schema, type_name: c.type_name };
}

function splitKey(k: string, tables: pb.Table__Output[]): [string, string] {
  const t = tables.find((x) => keyOf(x) === k)!;
  return [t.schema, t.name];
}


/** Resolves the user's table list against the source (all when empty); unknown names are NOT_FOUND, all named at once. */
export function selectTables(all: pb.Table__Output[], wanted: readonly string[]): pb.Table__Output[] {
  if (wanted.length === 0) return all;
  const out: pb.Table__Output[] = [];
  const unknown: string[] = [];
  for (const w of wanted) {
    const ref = parseTableRef(w);
    const matches = all.filter((t) => t.name === ref.name && (ref.schema ? t.schema === ref.schema : true));
    const pick = matches.length > 1 && !ref.schema ? matches.filter((t) => t.schema === 'public') : matches;
    if (pick.length !== 1) { unknown.push(JSON.stringify(w) + (pick.length > 1 ? ' (ambiguous: name the schema)' : '')); continue; }
    if (!out.includes(pick[0]!)) out.push(pick[0]!);
  }
  if (unknown.length) throw notFound(`table(s) not found on the source: ${unknown.join(', ')}`);
  return out;
}
