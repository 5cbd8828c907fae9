import { displayName, failedPrecondition, type pb } from '@syncflow/shared';

/**
 * Pre-flight findings about one table pair: what is missing, what would be narrowed (values the
 * target cannot hold are refused by it, then quarantined or failed by the job's policy), what
 * happens to keyless tables. Pure: both sides come from the agents' introspection.
 */
export type Severity = 'error' | 'warning' | 'info';
export const check = (severity: Severity, code: string, table: string, column: string, message: string): pb.PlanCheck =>
  ({ severity, code, table, column, message });

interface ParsedType { base: string; args: number[] }

const ALIASES: Record<string, string> = {
  'character varying': 'varchar', character: 'char', 'timestamp with time zone': 'timestamptz',
  'timestamp without time zone': 'timestamp', 'time with time zone': 'timetz', 'time without time zone': 'time',
  'double precision': 'float8', real: 'float4', smallint: 'int2', integer: 'int4', bigint: 'int8', 'bit varying': 'varbit',
};

export function parseType(t: string): ParsedType {
  const m = /^(.*?)(?:\((\d+)(?:,(\d+))?\))?(\[\])?$/.exec(t.trim());
  const raw = (m?.[1] ?? t).trim();
  const args = [m?.[2], m?.[3]].filter((x): x is string => x !== undefined).map(Number);
  // "timestamp(3) with time zone": the precision sits in the middle
  const mid = /^(timestamp|time)\((\d+)\) (with|without) time zone$/.exec(t.trim());
  if (mid) return { base: ALIASES[`${mid[1]} ${mid[3]} time zone`]!, args: [Number(mid[2])] };
  return { base: (ALIASES[raw] ?? raw) + (m?.[4] ?? ''), args };
}

const INT_RANK: Record<string, number> = { int2: 1, int4: 2, int8: 3 };
const INT_DIGITS: Record<string, number> = { int2: 4, int4: 9, int8: 18 };

/** Why a source column's values may not fit the target column, or null when they always do. */
export function narrowing(sourceType: string, targetType: string): { severity: Severity; message: string } | null {
  if (sourceType === targetType) return null;
  const s = parseType(sourceType);
  const t = parseType(targetType);
  const lenTypes = ['varchar', 'char', 'bit', 'varbit'];
  if (lenTypes.includes(t.base) && t.args.length) {
    const sLen = ['text', 'varchar', 'char', 'bit', 'varbit'].includes(s.base) ? s.args[0] : undefined;
    if (sLen === undefined || sLen > t.args[0]!) {
      return { severity: 'warning', message: `narrower on the target: ${sourceType} → ${targetType}; values longer than ${t.args[0]} will be refused` };
    }
    return null;
  }
  if (t.base === 'numeric' && t.args.length) {
    const [tp, ts = 0] = t.args as [number, number?];
    if (s.base === 'numeric') {
      const [sp, ss = 0] = s.args as [number?, number?];
      if (sp === undefined) return { severity: 'warning', message: `narrower on the target: ${sourceType} → ${targetType}; values beyond ${tp - ts} integer digits are refused, extra decimals rounded` };
      const parts: string[] = [];
      if (sp - ss > tp - ts) parts.push(`values beyond ${tp - ts} integer digits are refused`);
      if (ss > ts) parts.push(`decimals beyond ${ts} are rounded`);
      return parts.length ? { severity: 'warning', message: `narrower on the target: ${sourceType} → ${targetType}; ${parts.join(', ')}` } : null;
    }
    if (s.base in INT_DIGITS && INT_DIGITS[s.base]! + 1 > tp - ts) {
      return { severity: 'warning', message: `narrower on the target: ${sourceType} → ${targetType}; large values are refused` };
    }
    if (['float4', 'float8'].includes(s.base)) return { severity: 'warning', message: `${sourceType} → ${targetType}: values are rounded or refused` };
    return null;
  }
  if (t.base in INT_RANK) {
    if (s.base in INT_RANK && INT_RANK[s.base]! > INT_RANK[t.base]!) {
      return { severity: 'warning', message: `narrower on the target: ${sourceType} → ${targetType}; values out of ${targetType} range will be refused` };
    }
    if (['numeric', 'float4', 'float8'].includes(s.base)) {
      return { severity: 'warning', message: `narrower on the target: ${sourceType} → ${targetType}; fractions are rounded and large values refused` };
    }
    if (s.base in INT_RANK) return null;
  }
  if (s.base === 'timestamptz' && t.base === 'timestamp') {
    return { severity: 'warning', message: `${sourceType} → ${targetType}: the time zone is dropped (values become local times of the target session)` };
  }
  if (s.base === 'float8' && t.base === 'float4') return { severity: 'warning', message: `narrower on the target: ${sourceType} → ${targetType}; precision is lost` };
  if (s.base === t.base) {
    // same type, different precision/length modifier (timestamp(6) → timestamp(0), …)
    if ((s.args[0] ?? Infinity) > (t.args[0] ?? Infinity)) return { severity: 'warning', message: `narrower on the target: ${sourceType} → ${targetType}` };
    return null;
  }
  return { severity: 'warning', message: `types differ: ${sourceType} on the source, ${targetType} on the target; values go through the target's input function and may be refused` };
}

/** Checks of one selected source table against its target table (absent: missing on the target). */
export function tableChecks(t: pb.Table__Output, tt: pb.Table__Output | undefined, opts: { targetName: string; createMissing: boolean }): pb.PlanCheck[] {
  const name = displayName(t.schema, t.name);
  const out: pb.PlanCheck[] = [];
  if (tt?.set_aside_by) {
    // Its catalog lacks the keys meanwhile: planned from it, the table would sync as a keyless one.
    out.push(check('error', 'set_aside', name, '', `table ${name}: its indexes and keys on target "${opts.targetName}" are set aside by job ${tt.set_aside_by} and not rebuilt yet: wait for that job to end or cancel it (either rebuilds them); if it has ended, \`syncflow job logs ${tt.set_aside_by}\` says why they were not`));
    return out;
  }
  if (!tt) {
    out.push(opts.createMissing
      ? check('info', 'create_table', name, '', `table ${name} does not exist on target "${opts.targetName}": it will be created from the source's definition (--create-missing)`)
      : check('error', 'missing_table', name, '', `table ${name} does not exist on target "${opts.targetName}" (create it first, e.g. from pg_dump --schema-only, or use --create-missing)`));
    return out;
  }
  const targetCols = new Map(tt.columns.map((c) => [c.name, c]));
  for (const c of t.columns.filter((x) => !x.generated)) {
    const tc = targetCols.get(c.name);
    if (!tc) { out.push(check('error', 'missing_column', name, c.name, `table ${name}: target lacks column ${c.name} (${c.type})`)); continue; }
    if (tc.generated) { out.push(check('error', 'generated_on_target', name, c.name, `table ${name}: column ${c.name} is generated on the target but not on the source`)); continue; }
    const n = narrowing(c.type, tc.type);
    if (n) out.push(check(n.severity, 'narrowing', name, c.name, `table ${name}, column ${c.name}: ${n.message}`));
    if (!c.not_null && tc.not_null) out.push(check('warning', 'not_null', name, c.name, `table ${name}, column ${c.name}: NOT NULL on the target only; rows with NULL will be refused`));
  }
  const sourceCols = new Set(t.columns.map((c) => c.name));
  for (const tc of tt.columns) {
    if (!sourceCols.has(tc.name) && !tc.generated) out.push(check('info', 'extra_column', name, tc.name, `table ${name}: column ${tc.name} exists only on the target; inserted rows get its default`));
  }
  const key = t.primary_key;
  if (key.length && !sameSet(key, tt.primary_key)) {
    const msg = `table ${name}: the target has no primary or unique key on (${key.join(', ')})` + (tt.primary_key.length ? `; its key is (${tt.primary_key.join(', ')})` : '');
    out.push(tt.has_rows
      ? check('error', 'key_mismatch', name, '', `${msg}, needed to upsert into a non-empty table`)
      : check('warning', 'key_mismatch', name, '', `${msg}; the table is empty, so it is copied, but later upserts will be refused`));
  }
  if (!key.length) {
    const what = !tt.has_rows ? 'copied whole, within the job snapshot'
      : 'the target has rows: upsert adds only rows not already there (compared by their whole text), mirror replaces the table content';
    out.push(check('warning', 'no_key', name, '', `table ${name} has no primary or unique key: ${what}; its rows are matched by content in rollback and verify`));
  }
  return out;
}

const sameSet = (a: readonly string[], b: readonly string[]) => a.length === b.length && a.every((x) => b.includes(x));

/** StartSync refuses a plan with any error, naming them all in one message. */
export function assertNoErrors(checks: readonly pb.PlanCheck[]): void {
  const errors = checks.filter((c) => c.severity === 'error');
  if (errors.length) throw failedPrecondition(errors.map((c) => c.message).join('; '), errors[0]!.code === 'privilege' ? 'privilege' : 'schema_mismatch');
}
