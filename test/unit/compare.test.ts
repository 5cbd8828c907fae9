import { describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { compareTable, type Side } from '../../packages/coordinator/src/verify/compare.js';
import type { AgentLink } from '../../packages/coordinator/src/agents.js';

/**
 * verify/compare.ts against agents simulated in memory (HashRanges over a sorted key → row-hash
 * map, as packages/agent/src/read/hash-ranges.ts answers it): the counts equal a brute-force
 * comparison, neighbouring small differing ranges cost one call per side, and a deadline ends a
 * comparison whose agent never answers.
 */
type Rows = Map<number, string>;

function fakeAgents(data: Record<string, Rows>, calls: { n: number }, hang = new Set<string>(), hangOnce = new Set<string>()): AgentLink {
  return {
    async call(group: string, method: string, req: {
      lower?: { values: string[] } | null; upper?: { values: string[] } | null; splits?: number; bounds?: { values: string[] }[]; rows?: boolean;
    }) {
      expect(method).toBe('HashRanges');
      calls.n++;
      if (hang.has(group)) return new Promise(() => undefined);
      if (req.rows && hangOnce.delete(group)) return new Promise(() => undefined); // this answer is lost
      const keys = [...data[group]!.keys()].sort((a, b) => a - b);
      const lo = req.lower?.values.length ? Number(req.lower.values[0]) : null;
      const hi = req.upper?.values.length ? Number(req.upper.values[0]) : null;
      const within = (k: number, l: number | null, h: number | null) => (l === null || k > l) && (h === null || k <= h);
      const inRange = keys.filter((k) => within(k, lo, hi));
      if (req.rows) return { ranges: [], rows: inRange.map((k) => ({ key: { values: [String(k)] }, hash: data[group]!.get(k)!, count: '1' })) };
      let bounds = (req.bounds ?? []).map((b) => Number(b.values[0]));
      if (!bounds.length && (req.splits ?? 0) > 1) {
        const step = Math.max(1, Math.ceil(inRange.length / req.splits!));
        if (inRange.length > step) bounds = inRange.filter((_, i) => (i + 1) % step === 0 && i + 1 < inRange.length);
      }
      const ranges = [];
      let l = lo;
      for (const h of [...bounds, hi]) {
        const ks = inRange.filter((k) => within(k, l, h));
        ranges.push({ upper: h === null ? null : { values: [String(h)] }, rows: String(ks.length), hash: ks.map((k) => data[group]!.get(k)).join('') });
        l = h;
      }
      return { ranges, rows: [] };
    },
  } as unknown as AgentLink;
}

const side = (group: string): Side => ({ group, connection: { name: group, sealed_url: 'x' } });
const spec = (maxKeys = 0) => ({ schema: 'public', table: 't', columns: ['id', 'v'], key: [{ name: 'id', type_schema: 'pg_catalog', type_name: 'int4' }], maxKeys });

function brute(a: Rows, b: Rows) {
  let onlySource = 0, onlyTarget = 0, different = 0;
  for (const [k, h] of a) { if (!b.has(k)) onlySource++; else if (b.get(k) !== h) different++; }
  for (const k of b.keys()) if (!a.has(k)) onlyTarget++;
  return { onlySource, onlyTarget, different };
}

/** Keyless: agents answering HashRanges from a multiset of row contents, as hash-ranges.ts keylessHashes does; `listed` records the rows of each listing reply. */
function keylessAgents(data: Record<string, string[]>, listed: number[]): AgentLink {
  const md5 = (x: string) => createHash('md5').update(x).digest('hex');
  return {
    async call(group: string, method: string, req: { prefix_digits?: number; rows?: boolean; prefixes?: string[] }) {
      expect(method).toBe('HashRanges');
      const hashes = data[group]!.map(md5);
      if (req.prefix_digits) {
        const groups = new Map<string, string[]>();
        for (const h of hashes) { const p = h.slice(0, req.prefix_digits); groups.set(p, [...(groups.get(p) ?? []), h]); }
        return { ranges: [], rows: [], prefixes: [...groups].map(([prefix, hs]) => ({ prefix, rows: String(hs.length), hash: md5(hs.sort().join('')) })) };
      }
      const counts = new Map<string, number>();
      for (const h of hashes) if (!req.prefixes?.length || req.prefixes.some((p) => h.startsWith(p))) counts.set(h, (counts.get(h) ?? 0) + 1);
      listed.push(counts.size);
      return { ranges: [], rows: [...counts].map(([hash, n]) => ({ key: null, hash, count: String(n) })), prefixes: [] };
    },
  } as unknown as AgentLink;
}

function bruteMultiset(a: string[], b: string[]) {
  const count = (xs: string[]) => xs.reduce((m, x) => m.set(x, (m.get(x) ?? 0) + 1), new Map<string, number>());
  const ca = count(a), cb = count(b);
  let onlySource = 0, onlyTarget = 0, newOnTarget = 0;
  for (const [x, n] of ca) { const m = cb.get(x) ?? 0; if (n > m) onlySource += n - m; if (m === 0) newOnTarget += n; }
  for (const [x, m] of cb) { const n = ca.get(x) ?? 0; if (m > n) onlyTarget += m - n; }
  return { sourceRows: a.length, targetRows: b.length, onlySource, onlyTarget, newOnTarget, different: 0 };
}

describe('compareTable, keyless', () => {
  const keyless = { schema: 'public', table: 'ev', columns: ['at', 'kind'], key: [], maxKeys: 0 };

  it('counts like a brute-force multiset comparison, listing only the rows of differing groups', async () => {
    const a: string[] = [], b: string[] = [];
    for (let i = 0; i < 60_000; i++) { a.push(`r${i % 30_000}`); b.push(`r${i % 30_000}`); } // every content twice
    b.splice(100, 30);                           // one copy of 30 contents gone
    for (let i = 0; i < 20; i++) b.push(`t${i}`); // target only
    a.push('r5', 'r5');                          // a content four times on the source
    const listed: number[] = [];
    const r = await compareTable(keylessAgents({ a, b }, listed), side('a'), side('b'), keyless);
    expect({ sourceRows: r.sourceRows, targetRows: r.targetRows, onlySource: r.onlySource, onlyTarget: r.onlyTarget, newOnTarget: r.newOnTarget, different: r.different })
      .toEqual(bruteMultiset(a, b));
    // ~51 of 4 096 groups differ (~15 distinct hashes each): a few hundred hashes listed, not 30 000.
    expect(listed.reduce((x, y) => x + y, 0)).toBeLessThan(2_000);
  });

  it('lists nothing when the multisets are equal in another order', async () => {
    const a = Array.from({ length: 10_000 }, (_, i) => `r${i % 5_000}`);
    const listed: number[] = [];
    const r = await compareTable(keylessAgents({ a, b: [...a].reverse() }, listed), side('a'), side('b'), keyless);
    expect([r.onlySource, r.onlyTarget, r.sourceRows, r.targetRows]).toEqual([0, 0, 10_000, 10_000]);
    expect(listed).toEqual([]);
  });
});

describe('compareTable', () => {
  it('counts like a brute-force comparison, with differences spread over every range, in few calls', async () => {
    const a: Rows = new Map(), b: Rows = new Map();
    for (let k = 1; k <= 20_000; k++) a.set(k, `h${k}`);
    for (let k = 1; k <= 20_000; k++) if (k % 97 !== 0) b.set(k, k % 31 === 0 ? `changed${k}` : `h${k}`);
    for (let k = 30_000; k < 30_050; k++) b.set(k, `t${k}`);
    const calls = { n: 0 };
    const r = await compareTable(fakeAgents({ a, b }, calls), side('a'), side('b'), spec());
    expect({ onlySource: r.onlySource, onlyTarget: r.onlyTarget, different: r.different }).toEqual(brute(a, b));
    expect([r.sourceRows, r.targetRows]).toEqual([a.size, b.size]);
    // 64 ranges of ~312 rows, every one differing: compared in spans of up to 4,000 rows, not one call per range.
    expect(calls.n).toBeLessThan(30);
  });

  it('finds one changed row in a big table and names its key', async () => {
    const a: Rows = new Map(), b: Rows = new Map();
    for (let k = 1; k <= 200_000; k++) { a.set(k, `h${k}`); b.set(k, k === 123_457 ? 'x' : `h${k}`); }
    const r = await compareTable(fakeAgents({ a, b }, { n: 0 }), side('a'), side('b'), spec(5));
    expect(r.keys).toEqual({ onlySource: [], onlyTarget: [], different: ['(123457)'] });
    expect(r.different).toBe(1);
  });

  it('tries a call over a range of known size again when its answer does not come', async () => {
    const a: Rows = new Map(), b: Rows = new Map();
    for (let k = 1; k <= 1_000; k++) { a.set(k, `h${k}`); if (k !== 500) b.set(k, `h${k}`); }
    const calls = { n: 0 };
    const r = await compareTable(fakeAgents({ a, b }, calls, new Set(), new Set(['b'])), side('a'), side('b'), spec(), { callBaseMs: 200 });
    expect(r.onlySource).toBe(1);
  });

  it('ends with an error naming the group when an agent never answers before the deadline', async () => {
    const a: Rows = new Map([[1, 'x']]);
    const t0 = Date.now();
    const p = compareTable(fakeAgents({ a, b: a }, { n: 0 }, new Set(['b'])), side('a'), side('b'), spec(), { deadline: Date.now() + 300 });
    await expect(p).rejects.toMatchObject({ code: 'deadline_exceeded', message: expect.stringMatching(/group "b"/) });
    expect(Date.now() - t0).toBeLessThan(5_000);
  });
});
