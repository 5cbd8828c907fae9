import { SyncflowError, ErrorKind, displayName, type pb } from '@syncflow/shared';
import type { AgentLink } from '../agents.js';

/**
 * Compares one table on two databases without moving rows: both agents hash key ranges (count and
 * md5 of row md5s in key order); equal ranges are done, differing ones are split again (by the
 * side holding more rows) until they are small, then compared key by key. Cost: one pass over
 * each side plus work proportional to the differences. Keyless tables are compared as multisets
 * of row hashes (compareKeyless). Used by verify, by dry run (counts only) and by job reports.
 */
export interface Side { group: string; connection: { name: string; sealed_url: string }; snapshotId?: string }
export interface CompareSpec {
  schema: string;
  table: string;
  columns: string[];                                   // key columns first
  key: { name: string; type_schema: string; type_name: string }[];
  maxKeys: number;                                     // keys listed per kind; 0 = counts only
}
export interface CompareResult {
  sourceRows: number;
  targetRows: number;
  onlySource: number;      // rows (keys) the target lacks: inserts
  onlyTarget: number;      // rows (keys) only the target has: mirror deletes
  different: number;       // same key, different row: updates
  newOnTarget: number;     // keyless: source rows whose content is nowhere on the target (what append inserts)
  keys: { onlySource: string[]; onlyTarget: string[]; different: string[] };
}

const ROW_LIMIT = 4000;
/** Keyless: row hashes grouped by their first 3 hex digits (at most 4 096 groups a side). */
const PREFIX_DIGITS = 3;
/** Keyless: rows of differing groups listed per call and side, at most (unless one group alone holds more). */
const LIST_ROWS = 50_000;
const SPLITS = 64;
const DEADLINE_MS = 30 * 60_000;
const CALL_BASE_MS = 60_000;
const CALL_MS_PER_ROW = 0.1;

/**
 * `deadline` (epoch ms) bounds the whole comparison: each call gets what is left as its gRPC
 * deadline (at most DEADLINE_MS) and is given up, with the agent lookup before it, a second after
 * that, so a call that never answers ends the comparison with an error instead of holding its caller.
 * A call over a range whose size both sides already reported is also given a time of its own
 * (a minute plus 100 µs a row) and, all calls being read-only, tried once more when it passes.
 */
export async function compareTable(agents: AgentLink, src: Side, dst: Side, spec: CompareSpec, opts: { deadline?: number; callBaseMs?: number } = {}): Promise<CompareResult> {
  const base = { schema: spec.schema, table: spec.table, columns: spec.columns, key: spec.key };
  const started = Date.now();
  const late = (side: Side) => new SyncflowError(ErrorKind.Unavailable,
    `comparing ${displayName(spec.schema, spec.table)}: no answer from the agents of group "${side.group}" in time (after ${Math.round((Date.now() - started) / 1000)} s)`,
    { code: 'deadline_exceeded', retryable: true });
  const once = async (side: Side, extra: Partial<pb.HashRangesRequest>, capMs: number) => {
    // Without a deadline, each call may take DEADLINE_MS (a range of a huge table), as before.
    const left = Math.min(DEADLINE_MS, capMs, (opts.deadline ?? Infinity) - Date.now());
    if (left <= 0) throw late(side);
    let timer: NodeJS.Timeout | undefined;
    const reply = agents.call<pb.HashRangesReply__Output>(side.group, 'HashRanges', {
      ...base, ...extra, connection: side.connection, snapshot_id: side.snapshotId ?? '',
    }, left + 1_000);
    reply.catch(() => undefined);
    try {
      return await Promise.race([reply, new Promise<never>((_, reject) => { timer = setTimeout(() => reject(late(side)), left); timer.unref(); })]);
    } finally {
      clearTimeout(timer);
    }
  };
  /** `rows`: how many rows the call reads at most, when known. */
  const call = async (side: Side, extra: Partial<pb.HashRangesRequest>, rows?: number) => {
    if (rows === undefined) return once(side, extra, Infinity);
    const cap = (opts.callBaseMs ?? CALL_BASE_MS) + rows * CALL_MS_PER_ROW;
    try {
      return await once(side, extra, cap);
    } catch (e) {
      if ((e as SyncflowError).code !== 'deadline_exceeded' || (opts.deadline ?? Infinity) <= Date.now()) throw e;
      return once(side, extra, cap);
    }
  };
  const out: CompareResult = { sourceRows: 0, targetRows: 0, onlySource: 0, onlyTarget: 0, different: 0, newOnTarget: 0, keys: { onlySource: [], onlyTarget: [], different: [] } };

  if (spec.key.length === 0) return compareKeyless(call, src, dst, out);

  // Keys seen on one side only, with their row hash: reconciled at the end, so a key that two
  // differently collated databases put in different ranges still counts once.
  const onlyS = new Map<string, string>();
  const onlyT = new Map<string, string>();
  const diffKeys: string[] = [];
  let countedS = 0, countedT = 0;

  const rows = async (lower: pb.Key | null, upper: pb.Key | null, count: number) => {
    const [a, b] = await Promise.all([call(src, { rows: true, lower, upper }, count), call(dst, { rows: true, lower, upper }, count)]);
    const tm = new Map(b.rows.map((r) => [JSON.stringify(r.key?.values ?? []), r.hash]));
    for (const r of a.rows) {
      const k = JSON.stringify(r.key?.values ?? []);
      const h = tm.get(k);
      if (h === undefined) onlyS.set(k, r.hash);
      else {
        if (h !== r.hash) { out.different++; diffKeys.push(k); }
        tm.delete(k);
      }
    }
    for (const [k, h] of tm) onlyT.set(k, h);
  };

  /** `known`: the rows both sides reported for this range (undefined for the whole table). */
  const walk = async (lower: pb.Key | null, upper: pb.Key | null, splitter: 'source' | 'target', depth: number, top: boolean, known?: number): Promise<void> => {
    const [first, second] = splitter === 'source' ? [src, dst] : [dst, src];
    const a = await call(first, { lower, upper, splits: SPLITS }, known);
    const bounds = a.ranges.slice(0, -1).map((r) => r.upper!).filter(Boolean);
    const b = await call(second, { lower, upper, bounds }, known);
    const [sr, tr] = splitter === 'source' ? [a.ranges, b.ranges] : [b.ranges, a.ranges];
    if (top) {
      out.sourceRows = sr.reduce((n, r) => n + Number(r.rows), 0);
      out.targetRows = tr.reduce((n, r) => n + Number(r.rows), 0);
    }
    // Neighbouring small ranges that differ are compared key by key in one call per side (up to
    // ROW_LIMIT rows, equal ranges between them included): with differences spread over a table,
    // one call per range would make hundreds of calls where a few do.
    let span: { lo: pb.Key | null; hi: pb.Key | null; rows: number } | null = null;
    let between = 0; // rows of equal ranges after the span's last differing range
    const flush = async () => {
      if (span) await rows(span.lo, span.hi, span.rows);
      span = null;
      between = 0;
    };
    let lo = lower;
    for (let i = 0; i < sr.length; i++) {
      const s = sr[i]!, t = tr[i]!;
      const hi = s.upper ?? null;
      const ns = Number(s.rows), nt = Number(t.rows);
      if (ns === nt && s.hash === t.hash) {
        if (span && span.rows + between + ns + nt <= ROW_LIMIT) between += ns + nt;
        else await flush();
        lo = hi;
        continue;
      }
      const wantKeys = spec.maxKeys > 0 && onlyS.size + onlyT.size + diffKeys.length < spec.maxKeys * 3;
      if (nt === 0 && !wantKeys) { await flush(); countedS += ns; }
      else if (ns === 0 && !wantKeys) { await flush(); countedT += nt; }
      else if (ns + nt <= ROW_LIMIT) {
        if (span && span.rows + between + ns + nt <= ROW_LIMIT) { span.hi = hi; span.rows += between + ns + nt; between = 0; }
        else { await flush(); span = { lo, hi, rows: ns + nt }; }
      } else if (sr.length === 1 || depth > 12) { await flush(); await rows(lo, hi, ns + nt); }
      else { await flush(); await walk(lo, hi, ns >= nt ? 'source' : 'target', depth + 1, false, Math.max(ns, nt)); }
      lo = hi;
    }
    await flush();
  };
  await walk(null, null, 'source', 0, true);

  for (const [k, h] of [...onlyS]) {
    const th = onlyT.get(k);
    if (th === undefined) continue;
    onlyS.delete(k); onlyT.delete(k);
    if (th !== h) { out.different++; diffKeys.push(k); }
  }
  out.onlySource = onlyS.size + countedS;
  out.onlyTarget = onlyT.size + countedT;
  const show = (k: string) => `(${(JSON.parse(k) as string[]).join(', ')})`;
  out.keys = {
    onlySource: [...onlyS.keys()].slice(0, spec.maxKeys).map(show),
    onlyTarget: [...onlyT.keys()].slice(0, spec.maxKeys).map(show),
    different: diffKeys.slice(0, spec.maxKeys).map(show),
  };
  return out;
}

type HashCall = (side: Side, extra: Partial<pb.HashRangesRequest>, rows?: number) => Promise<pb.HashRangesReply__Output>;

/**
 * A keyless table as two multisets of row hashes: both sides group their row hashes by prefix (a
 * count and a digest per group, one scan each), and only the groups that differ are listed, hash by
 * hash with counts, LIST_ROWS rows a call at most (one more scan per call). Memory follows the
 * differences, not the table: listed whole, the 350 000 rows of the bench's keyless table took
 * ~200 MB of each agent and of the coordinator.
 */
async function compareKeyless(call: HashCall, src: Side, dst: Side, out: CompareResult): Promise<CompareResult> {
  const [a, b] = await Promise.all([call(src, { prefix_digits: PREFIX_DIGITS }), call(dst, { prefix_digits: PREFIX_DIGITS })]);
  const theirs = new Map(b.prefixes.map((g) => [g.prefix, g]));
  const differing: { prefix: string; rows: number }[] = [];
  for (const g of a.prefixes) {
    out.sourceRows += Number(g.rows);
    const t = theirs.get(g.prefix);
    if (!t || t.rows !== g.rows || t.hash !== g.hash) differing.push({ prefix: g.prefix, rows: Math.max(Number(g.rows), Number(t?.rows ?? 0)) });
  }
  const mine = new Set(a.prefixes.map((g) => g.prefix));
  for (const t of b.prefixes) {
    out.targetRows += Number(t.rows);
    if (!mine.has(t.prefix)) differing.push({ prefix: t.prefix, rows: Number(t.rows) });
  }
  // The differing groups in calls of at most LIST_ROWS rows a side.
  const chunks: { prefixes: string[]; rows: number }[] = [];
  for (const d of differing) {
    const last = chunks.at(-1);
    if (last && last.rows + d.rows <= LIST_ROWS) { last.prefixes.push(d.prefix); last.rows += d.rows; } else chunks.push({ prefixes: [d.prefix], rows: d.rows });
  }
  // Each listing scans the whole table again: its time allowance counts every row.
  const scanned = Math.max(out.sourceRows, out.targetRows);
  for (const c of chunks) {
    const [sa, tb] = await Promise.all([call(src, { rows: true, prefixes: c.prefixes }, scanned), call(dst, { rows: true, prefixes: c.prefixes }, scanned)]);
    const tc = new Map(tb.rows.map((r) => [r.hash, Number(r.count)]));
    for (const r of sa.rows) {
      const n = Number(r.count), m = tc.get(r.hash) ?? 0;
      if (n > m) out.onlySource += n - m;
      if (m === 0) out.newOnTarget += n;
      tc.delete(r.hash);
      if (m > n) out.onlyTarget += m - n;
    }
    for (const m of tc.values()) out.onlyTarget += m;
  }
  return out;
}
