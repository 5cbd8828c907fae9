import { describe, expect, it } from 'vitest';
import { BucketSums, CopyHashReader, TidLog, digestOf, rowValue } from '../../packages/agent/src/read/digest-builder.js';
import { DigestMemory } from '../../packages/agent/src/read/digest-cache.js';
import { bitmapOf, differingSlots, hasBit, tidArray, COARSE_SHIFT } from '../../packages/agent/src/read/buckets.js';

/** Deterministic pseudo-random 32-bit values. */
function rng(seed: number) {
  let s = seed >>> 0;
  return () => { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; return s; };
}

type Row = [number, number, number, number];
function rowsOf(n: number, seed = 1): Row[] {
  const r = rng(seed);
  return Array.from({ length: n }, () => [r(), r(), r(), r()] as Row);
}

function build(fineBits: number, rows: readonly Row[], keyed = true): BucketSums {
  const s = new BucketSums(fineBits);
  for (const [a, b, c, d] of rows) s.add(a, b, c, d, keyed);
  return s;
}

/** The binary COPY stream PostgreSQL sends for rows of one or two int8 fields. */
function copyBinary(rows: readonly Row[], fields: 1 | 2): Buffer {
  const parts = [Buffer.from('PGCOPY\n\xff\r\n\0', 'latin1'), Buffer.alloc(8)];
  for (const [a, b, c, d] of rows) {
    const t = Buffer.alloc(2 + 12 * fields);
    t.writeInt16BE(fields, 0);
    t.writeInt32BE(8, 2); t.writeUInt32BE(a, 6); t.writeUInt32BE(b, 10);
    if (fields === 2) { t.writeInt32BE(8, 14); t.writeUInt32BE(c, 18); t.writeUInt32BE(d, 22); }
    parts.push(t);
  }
  parts.push(Buffer.from([0xff, 0xff]));
  return Buffer.concat(parts);
}

/** The binary COPY stream of a keyless table's pass that keeps ctids: (bucket hash int8, ctid tid) per row. */
function copyBinaryWithTids(rows: readonly Row[]): Buffer {
  const parts = [Buffer.from('PGCOPY\n\xff\r\n\0', 'latin1'), Buffer.alloc(8)];
  rows.forEach(([a, b], i) => {
    const t = Buffer.alloc(2 + 12 + 10);
    t.writeInt16BE(2, 0);
    t.writeInt32BE(8, 2); t.writeUInt32BE(a, 6); t.writeUInt32BE(b, 10);
    t.writeInt32BE(6, 14); t.writeUInt32BE(1000 + (i >> 4), 18); t.writeUInt16BE(1 + (i & 15), 22); // block, offset
    parts.push(t);
  });
  parts.push(Buffer.from([0xff, 0xff]));
  return Buffer.concat(parts);
}

describe('diff digests built in the agent', () => {
  it('keyless: a pass that keeps ctids sums the same digests and finds the rows of any set of buckets', () => {
    const fineBits = 9;
    const rows = rowsOf(1500, 11);
    const whole = copyBinaryWithTids(rows);
    for (const size of [1, 5, 23, 24, 25, 64, 4096]) {
      const s = new BucketSums(fineBits);
      s.tids = new TidLog(4000, 16);
      const r = new CopyHashReader(s, 2, s.tids);
      for (let o = 0; o < whole.length; o += size) r.push(whole.subarray(o, o + size));
      r.end();
      expect(s.rows).toBe(1500);
      expect(s.tids.rows).toBe(1500);
      expect(s.coarseDigests().equals(build(fineBits, rows, false).coarseDigests())).toBe(true);
      const wanted = new Set([3, 77, 200, 511]);
      const expected = rows.flatMap(([, b], i) => (wanted.has(b & (2 ** fineBits - 1)) ? [`(${1000 + (i >> 4)},${1 + (i & 15)})`] : []));
      expect(expected.length).toBeGreaterThan(0);
      expect(s.tids.select((bucket) => wanted.has(bucket), 10_000)).toEqual(expected);
      expect(s.tids.select((bucket) => wanted.has(bucket), expected.length - 1)).toBeNull(); // more than asked for: scan instead
      // The target keeps only the rows of the coarse buckets asked about, then the filter's fine buckets pick from them.
      const coarse = bitmapOf(2 ** (fineBits - COARSE_SHIFT), [...wanted].map((b) => b >>> COARSE_SHIFT));
      const kept = s.tids.only((bucket) => hasBit(coarse, bucket >>> COARSE_SHIFT));
      expect(kept.rows).toBeLessThan(1500);
      expect(kept.select((bucket) => wanted.has(bucket), 10_000)).toEqual(expected);
    }
    expect(tidArray(['(0,1)', '(12,7)'])).toBe('{"(0,1)","(12,7)"}');
  });

  it('keyless: past its row limit a ctid log keeps nothing, and says so', () => {
    const log = new TidLog(3, 1);
    for (let i = 0; i < 3; i++) log.add(i, i, 1);
    expect(log.select(() => true, 10)).toEqual(['(0,1)', '(1,1)', '(2,1)']);
    log.add(3, 3, 1);
    expect(log.overflow).toBe(true);
    expect(log.select(() => true, 10)).toBeNull();
    expect(log.only(() => true).overflow).toBe(true);
    expect(() => new CopyHashReader(new BucketSums(4), 1, log)).toThrow(/second field/);
  });

  it('gives the same digests whatever the row order', () => {
    const rows = rowsOf(5000);
    const shuffled = [...rows].reverse();
    for (let i = 0; i < shuffled.length; i += 7) { const j = (i * 31) % shuffled.length; [shuffled[i], shuffled[j]] = [shuffled[j]!, shuffled[i]!]; }
    const a = build(10, rows), b = build(10, shuffled);
    expect(a.coarseDigests().equals(b.coarseDigests())).toBe(true);
    const all = bitmapOf(a.coarseCount, Array.from({ length: a.coarseCount }, (_, i) => i));
    expect(a.fineDigests(all).equals(b.fineDigests(all))).toBe(true);
  });

  it('a changed, added or removed row changes exactly its bucket', () => {
    const rows = rowsOf(3000);
    const base = build(12, rows);
    const changed = rows.map((r, i) => (i === 100 ? [r[0], r[1], r[2], (r[3] + 1) >>> 0] as Row : r));
    const added = [...rows, [1, 2, 3, 4] as Row];
    const removed = rows.slice(1);
    for (const [other, row] of [[changed, rows[100]!], [added, [1, 2, 3, 4]], [removed, rows[0]!]] as const) {
      const o = build(12, other);
      expect(differingSlots(base.coarseDigests(), o.coarseDigests())).toEqual([(row[1] & (2 ** 12 - 1)) >>> COARSE_SHIFT]);
    }
  });

  it('keyless: duplicated rows do not cancel (two copies differ from none and from one)', () => {
    const rows = rowsOf(200, 7);
    const dup = rows[5]!;
    const none = build(8, rows.filter((_, i) => i !== 5), false);
    const one = build(8, rows, false);
    const two = build(8, [...rows, dup], false);
    const three = build(8, [...rows, dup, dup], false);
    const d = [none, one, two, three].map((s) => s.coarseDigests().toString('hex'));
    expect(new Set(d).size).toBe(4);
    // Two equal rows swapped for two other equal rows of the same bucket: still differs.
    const other: Row = [(dup[0] + 1) >>> 0, dup[1], dup[2], dup[3]]; // keyless: (hi, lo) is the whole-row hash; same low bits, same bucket
    const swapped = build(8, [...rows.filter((_, i) => i !== 5), other, other], false);
    expect(swapped.coarseDigests().equals(two.coarseDigests())).toBe(false);
  });

  it('coarse digests derived from the fine sums equal those computed from the rows directly', () => {
    const rows = rowsOf(4000, 3);
    const fineBits = 11;
    const s = build(fineBits, rows);
    // Reference: BigInt sums of the row values per coarse bucket.
    const count = new Map<number, number>(), sum = new Map<number, bigint>();
    for (const [a, b, c, d] of rows) {
      const [hi, lo] = rowValue(a, b, [c, d]);
      const cb = (b & (2 ** fineBits - 1)) >>> COARSE_SHIFT;
      count.set(cb, (count.get(cb) ?? 0) + 1);
      sum.set(cb, ((sum.get(cb) ?? 0n) + ((BigInt(hi) << 32n) | BigInt(lo))) & 0xffffffffffffffffn);
    }
    const expected = Buffer.alloc(s.coarseCount * 8);
    for (const [cb, n] of count) {
      const v = sum.get(cb)!;
      const [dh, dl] = digestOf(n, Number(v >> 32n), Number(v & 0xffffffffn));
      expected.writeUInt32BE(dh, cb * 8); expected.writeUInt32BE(dl, cb * 8 + 4);
    }
    expect(s.coarseDigests().equals(expected)).toBe(true);
    // Fine digests of one coarse bucket: 16 slots, the non-empty ones matching their rows.
    const c0 = [...count.keys()][0]!;
    const fine = s.fineDigests(bitmapOf(s.coarseCount, [c0]));
    expect(fine.length).toBe(16 * 8);
    const nonEmpty = new Set(rows.map(([, b]) => b & (2 ** fineBits - 1)).filter((f) => f >>> COARSE_SHIFT === c0).map((f) => f & 15));
    for (let i = 0; i < 16; i++) expect(fine.readBigUInt64BE(i * 8) !== 0n).toBe(nonEmpty.has(i));
  });

  it('reads a binary COPY stream in chunks of any size, with rows split across chunks', () => {
    const rows = rowsOf(1000, 9);
    for (const fields of [1, 2] as const) {
      const whole = copyBinary(rows, fields);
      const direct = build(10, rows, fields === 2);
      for (const size of [1, 7, 26, 63, 64, 65, 100, 4096]) {
        const s = new BucketSums(10);
        const r = new CopyHashReader(s, fields);
        for (let o = 0; o < whole.length; o += size) r.push(whole.subarray(o, o + size));
        r.end();
        expect(s.rows).toBe(1000);
        expect(s.coarseDigests().equals(direct.coarseDigests())).toBe(true);
      }
      const cut = new CopyHashReader(new BucketSums(10), fields);
      cut.push(whole.subarray(0, whole.length - 2));
      expect(() => cut.end()).toThrow();
    }
  });
});

describe('digest memory', () => {
  it('keeps finished sums until taken, evicts the oldest for a new build, and waits when builds hold the budget', async () => {
    const m = new DigestMemory(100, 60_000);
    const r1 = await m.reserve(40);
    m.keep('a', new BucketSums(4), 40);
    const r2 = await m.reserve(40);
    m.keep('b', new BucketSums(4), 40);
    expect(m.usedBytes).toBe(80);
    // A third build evicts 'a' (oldest), not 'b'.
    const r3 = await m.reserve(40);
    expect(m.cachedKeys).toEqual(['b']);
    expect(m.take('a')).toBeNull();
    expect(m.take('b')).not.toBeNull();
    expect(m.take('b')).toBeNull();
    expect(m.usedBytes).toBe(40);
    // Two builds in flight hold 80: a fourth waits until one releases.
    const r4 = await m.reserve(40);
    let got = false;
    const p = m.reserve(40).then((r) => { got = true; return r; });
    await new Promise((r) => setTimeout(r, 10));
    expect(got).toBe(false);
    r3();
    (await p)();
    expect(got).toBe(true);
    r4();
    expect(m.usedBytes).toBe(0);
    void r1; void r2; // their reservations passed to the cache with keep()
  });

  it('expires cached sums', async () => {
    const m = new DigestMemory(100, 5);
    await m.reserve(10);
    m.keep('a', new BucketSums(4), 10);
    await new Promise((r) => setTimeout(r, 20));
    expect(m.take('a')).toBeNull();
    expect(m.usedBytes).toBe(0);
  });
});
