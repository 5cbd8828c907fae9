import type { pb } from '@syncflow/shared';
import type { AgentLink } from '../agents.js';

/**
 * Compares one table on two databases without moving rows: both agents hash key ranges (count and
 * md5 of row md5s in key order); equal ranges are done, differing ones are split again (by the
 * side holding more rows) until they are small, then compared key by key. Cost: one pass over
 * each side plus work proportional to the differences. Keyless tables are compared as multisets
 * of row hashes. Used by verify, by dry run (counts only) and by job reports.
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
const SPLITS = 64;
const DEADLINE_MS = 30 * 60_000;

export async function compareTable(agents: AgentLink, src: Side, dst: Side, spec: CompareSpec): Promise<CompareResult> {
  const base = { schema: spec.schema, table: spec.table, columns: spec.columns, key: spec.key };
  const call = (side: Side, extra: Partial<pb.HashRangesRequest>) => agents.call<pb.HashRangesReply__Output>(side.group, 'HashRanges', {
    ...base, ...extra, connection: side.connection, snapshot_id: side.snapshotId ?? '',
  }, DEADLINE_MS);
  const out: CompareResult = { sourceRows: 0, targetRows: 0, onlySource: 0, onlyTarget: 0, different: 0, newOnTarget: 0, keys: { onlySource: [], onlyTarget: [], different: [] } };

  if (spec.key.length === 0) {
    const [a, b] = await Promise.all([call(src, { rows: true }), call(dst, { rows: true })]);
    const tc = new Map(b.rows.map((r) => [r.hash, Number(r.count)]));
    const sc = new Map(a.rows.map((r) => [r.hash, Number(r.count)]));
    for (const [h, n] of sc) {
      const m = tc.get(h) ?? 0;
      out.sourceRows += n;
      if (n > m) out.onlySource += n - m;
      if (m === 0) out.newOnTarget += n;
    }
    for (const [h, m] of tc) {
      out.targetRows += m;
      const n = sc.get(h) ?? 0;
      if (m > n) out.onlyTarget += m - n;
    }
    return out;
  }

  // Keys seen on one side only, with their row hash: reconciled at the end, so a key that two
  // differently collated databases put in different ranges still counts once.
  const onlyS = new Map<string, string>();
  const onlyT = new Map<string, string>();
  const diffKeys: string[] = [];
  let countedS = 0, countedT = 0;

  const rows = async (lower: pb.Key | null, upper: pb.Key | null) => {
    const [a, b] = await Promise.all([call(src, { rows: true, lower, upper }), call(dst, { rows: true, lower, upper })]);
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

  const walk = async (lower: pb.Key | null, upper: pb.Key | null, splitter: 'source' | 'target', depth: number, top: boolean): Promise<void> => {
    const [first, second] = splitter === 'source' ? [src, dst] : [dst, src];
    const a = await call(first, { lower, upper, splits: SPLITS });
    const bounds = a.ranges.slice(0, -1).map((r) => r.upper!).filter(Boolean);
    const b = await call(second, { lower, upper, bounds });
    const [sr, tr] = splitter === 'source' ? [a.ranges, b.ranges] : [b.ranges, a.ranges];
    if (top) {
      out.sourceRows = sr.reduce((n, r) => n + Number(r.rows), 0);
      out.targetRows = tr.reduce((n, r) => n + Number(r.rows), 0);
    }
    let lo = lower;
    for (let i = 0; i < sr.length; i++) {
      const s = sr[i]!, t = tr[i]!;
      const hi = s.upper ?? null;
      const ns = Number(s.rows), nt = Number(t.rows);
      if (ns === nt && s.hash === t.hash) { lo = hi; continue; }
      const wantKeys = spec.maxKeys > 0 && onlyS.size + onlyT.size + diffKeys.length < spec.maxKeys * 3;
      if (nt === 0 && !wantKeys) countedS += ns;
      else if (ns === 0 && !wantKeys) countedT += nt;
      else if (ns + nt <= ROW_LIMIT || sr.length === 1 || depth > 12) await rows(lo, hi);
      else await walk(lo, hi, ns >= nt ? 'source' : 'target', depth + 1, false);
      lo = hi;
    }
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
