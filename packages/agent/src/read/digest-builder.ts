import { invalidArgument } from '@syncflow/shared';
import { COARSE_SHIFT, setBits } from './buckets.js';
import { binaryHeaderLength } from './copy-binary.js';

/**
 * Diff re-sync digests, built in the agent from one pass over the table: PostgreSQL streams each
 * row's (bucket hash, rest hash) as a binary COPY (buckets.ts), the agent adds the row into its fine
 * bucket — a count and a sum mod 2^64 of a mixed 64-bit row value — and derives coarse digests from
 * the fine sums. Addition makes the digest independent of row order; unlike an XOR, a duplicated row
 * (keyless tables) does not cancel, and the count changes with it. The row value is mixed
 * (a bijective 64-bit mix) before it is summed, so the XOR that combines column hashes inside a row
 * and the sum across rows do not cancel each other out. All arithmetic is 32-bit (Math.imul), no
 * BigInt per row.
 */

function fmix32(h: number): number {
  h ^= h >>> 16; h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13; h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** The two halves of the bijective 64-bit mix of (hi, lo): low = mixLow(hi, lo), high = mixHigh(hi, low). */
const mixLow = (hi: number, lo: number) => fmix32((lo ^ Math.imul(hi, 0x9e3779b1)) >>> 0);
const mixHigh = (hi: number, low: number) => fmix32((hi ^ Math.imul(low, 0x85ebca77) ^ 0x27d4eb2f) >>> 0);

/** The bijective 64-bit mix of (hi, lo), as [hi, lo]: each half is fmix32 of itself and the other. */
function mix64(hi: number, lo: number): [number, number] {
  const low = mixLow(hi, lo);
  return [mixHigh(hi, low), low];
}

/**
 * A row's value: mix(bucket hash XOR mix(rest hash)) for keyed tables, mix(bucket hash) for keyless
 * ones (their bucket hash covers every column). Returned as [hi, lo] (unsigned 32-bit halves). The
 * reference form of what addRow computes inline (the unit test checks one against the other).
 */
export function rowValue(bucketHi: number, bucketLo: number, rest: [number, number] | null): [number, number] {
  let hi = bucketHi >>> 0, lo = bucketLo >>> 0;
  if (rest) { const [rh, rl] = mix64(rest[0] >>> 0, rest[1] >>> 0); hi = (hi ^ rh) >>> 0; lo = (lo ^ rl) >>> 0; }
  return mix64(hi, lo);
}

/** A bucket's 8-byte digest from its row count and the sum of its row values mod 2^64; 0 only for an empty bucket. */
export function digestOf(count: number, sumHi: number, sumLo: number): [number, number] {
  if (count === 0) return [0, 0];
  const [h1, l1] = mix64(sumHi >>> 0, sumLo >>> 0);
  const [h, l] = mix64((h1 ^ 0x5bd1e995) >>> 0, (l1 ^ count) >>> 0);
  return h === 0 && l === 0 ? [0, 1] : [h, l];
}

/**
 * Adds one row into interleaved (count, sum hi, sum lo) fine buckets: rowValue spelled out with
 * locals, in a plain function; through a shared mix state (or an array per row) and a method call it
 * cost 2-3x per row (measured).
 */
function addRow(d: Uint32Array, mask: number, bucketHi: number, bucketLo: number, restHi: number, restLo: number, hasRest: boolean): void {
  let hi = bucketHi, lo = bucketLo;
  if (hasRest) {
    const rl = mixLow(restHi, restLo);
    hi = (hi ^ mixHigh(restHi, rl)) >>> 0; lo = (lo ^ rl) >>> 0;
  }
  const vl = mixLow(hi, lo);
  const vh = mixHigh(hi, vl);
  const i = 3 * (bucketLo & mask);
  const s = d[i + 2]! + vl;
  d[i + 2] = s >>> 0;
  d[i + 1] = (d[i + 1]! + vh + (s > 0xffffffff ? 1 : 0)) >>> 0;
  d[i]!++;
}

/**
 * Per fine bucket: row count and sum of row values mod 2^64 (12 bytes a bucket: 48 MiB at 2^22
 * buckets), interleaved (count, hi, lo) so that adding a row touches one cache line, not three.
 */
export class BucketSums {
  readonly data: Uint32Array;
  readonly mask: number;
  rows = 0;
  /** A keyless table's rows by fine bucket, when the pass was asked to keep them (TidLog). */
  tids: TidLog | null = null;

  constructor(readonly fineBits: number) {
    const n = 2 ** fineBits;
    this.data = new Uint32Array(3 * n);
    this.mask = n - 1;
  }

  static bytes(fineBits: number): number { return 12 * 2 ** fineBits; }

  /** Adds one row: its bucket hash and, for a keyed table with non-key columns, its rest hash (unsigned 32-bit halves). */
  add(bucketHi: number, bucketLo: number, restHi: number, restLo: number, hasRest: boolean): void {
    addRow(this.data, this.mask, bucketHi, bucketLo, restHi, restLo, hasRest);
    this.rows++;
  }

  get coarseCount(): number { return 2 ** (this.fineBits - COARSE_SHIFT); }

  /** Digests of every coarse bucket, 8 bytes each (big-endian, 0 = empty), from the sums of its 16 fine buckets. */
  coarseDigests(): Buffer {
    const per = 2 ** COARSE_SHIFT;
    const out = Buffer.alloc(this.coarseCount * 8);
    for (let c = 0; c < this.coarseCount; c++) {
      let n = 0, hi = 0, lo = 0;
      const d = this.data;
      for (let i = 3 * c * per; i < 3 * (c + 1) * per; i += 3) {
        n += d[i]!;
        const s = lo + d[i + 2]!;
        lo = s >>> 0;
        hi = (hi + d[i + 1]! + (s > 0xffffffff ? 1 : 0)) >>> 0;
      }
      const [dh, dl] = digestOf(n >>> 0, hi, lo);
      out.writeUInt32BE(dh, c * 8); out.writeUInt32BE(dl, c * 8 + 4);
    }
    return out;
  }

  /** Digests of the 16 fine buckets of each coarse bucket set in `coarse`, in ascending order, 8 bytes each. */
  fineDigests(coarse: Buffer): Buffer {
    const per = 2 ** COARSE_SHIFT;
    const asked = [...setBits(coarse, this.coarseCount)];
    const out = Buffer.alloc(asked.length * per * 8);
    let o = 0;
    for (const c of asked) {
      for (let f = c * per; f < (c + 1) * per; f++, o += 8) {
        const [dh, dl] = digestOf(this.data[3 * f]!, this.data[3 * f + 1]!, this.data[3 * f + 2]!);
        out.writeUInt32BE(dh, o); out.writeUInt32BE(dl, o + 4);
      }
    }
    return out;
  }
}

const u32 = (b: Buffer, o: number) => ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0;

/**
 * Where a keyless table's rows are, by fine bucket, kept from the pass that sums them: (fine bucket,
 * block, offset) per row, 12 bytes. A diff then reads (source) and deletes (target) the rows of the
 * buckets that differ by their ctids (a TID scan) instead of scanning and hashing every row again.
 * Bounded: past `maxRows` it keeps nothing (`overflow`), and the diff scans as before.
 */
export class TidLog {
  #data: Uint32Array;
  #n = 0;
  overflow = false;

  constructor(readonly maxRows: number, initialRows = 4096) {
    this.#data = new Uint32Array(3 * Math.max(1, Math.min(initialRows, maxRows)));
  }

  static bytes(rows: number): number { return 12 * rows; }

  get rows(): number { return this.#n; }

  add(bucket: number, block: number, offset: number): void {
    if (this.overflow) return;
    if (this.#n >= this.maxRows) { this.overflow = true; this.#data = new Uint32Array(0); this.#n = 0; return; }
    if (3 * this.#n === this.#data.length) {
      const grown = new Uint32Array(Math.min(2 * this.#data.length, 3 * this.maxRows));
      grown.set(this.#data);
      this.#data = grown;
    }
    const i = 3 * this.#n++;
    this.#data[i] = bucket; this.#data[i + 1] = block; this.#data[i + 2] = offset;
  }

  /** The ctids ("(block,offset)") of the rows whose fine bucket `wanted` accepts; null after an overflow or past `max` rows. */
  select(wanted: (bucket: number) => boolean, max: number): string[] | null {
    if (this.overflow) return null;
    const out: string[] = [];
    const d = this.#data;
    for (let i = 0; i < 3 * this.#n; i += 3) {
      if (!wanted(d[i]!)) continue;
      if (out.length === max) return null;
      out.push(`(${d[i + 1]},${d[i + 2]})`);
    }
    return out;
  }

  /** A log of only the rows whose fine bucket `keep` accepts (the target keeps those of the coarse buckets asked about). */
  only(keep: (bucket: number) => boolean, maxRows = this.maxRows): TidLog {
    const out = new TidLog(maxRows, 0);
    if (this.overflow) { out.overflow = true; return out; }
    const d = this.#data;
    for (let i = 0; i < 3 * this.#n; i += 3) if (keep(d[i]!)) out.add(d[i]!, d[i + 1]!, d[i + 2]!);
    return out;
  }
}

/**
 * Feeds a binary COPY into BucketSums, chunk by chunk (rows may straddle chunks): rows of one or two
 * non-NULL int8 fields — (bucket hash) or (bucket hash, rest hash) — or, with a TidLog (a keyless
 * table), (bucket hash, ctid), the row's place kept by its fine bucket.
 */
export class CopyHashReader {
  #pending: Buffer = Buffer.alloc(0);
  #header = false;
  #done = false;

  constructor(readonly sums: BucketSums, readonly fields: 1 | 2, readonly tids: TidLog | null = null) {
    if (tids && fields !== 2) throw invalidArgument('a ctid comes as the second field');
  }

  push(chunk: Buffer): void {
    let rest = chunk;
    if (this.#pending.length) {
      // A row (or the header) straddles chunks: completed with the first bytes of this chunk only,
      // not by copying the whole chunk behind it.
      const pend = this.#pending.length;
      const head = Buffer.concat([this.#pending, chunk.subarray(0, Math.min(chunk.length, 64))]);
      const used = this.#consume(head);
      if (used < pend || used === head.length && head.length - pend === chunk.length) {
        this.#pending = used < head.length ? Buffer.from(head.subarray(used)) : Buffer.alloc(0);
        return;
      }
      rest = chunk.subarray(used - pend);
    }
    const used = this.#consume(rest);
    this.#pending = used < rest.length ? Buffer.from(rest.subarray(used)) : Buffer.alloc(0);
  }

  /** Adds the whole rows at the start of `buf` (after the header, once); returns the bytes used. */
  #consume(buf: Buffer): number {
    let p = 0;
    if (!this.#header) {
      p = binaryHeaderLength(buf);
      if (!p) return 0;
      this.#header = true;
    }
    const tids = this.tids;
    // A tid is 6 bytes (block int4, offset int2), an int8 8.
    const second = tids ? 6 : 8;
    const rowBytes = this.fields === 2 ? 2 + 12 + 4 + second : 2 + 12;
    const { data, mask } = this.sums;
    const two = this.fields === 2;
    let rows = 0;
    if (this.#done) return p;
    const end = buf.length;
    while (p + 2 <= end) {
      const n = (buf[p]! << 8) | buf[p + 1]!;
      if (n === 0xffff) { this.#done = true; p += 2; break; } // the trailer (-1)
      if (n !== this.fields) throw invalidArgument(`binary COPY row has ${n} fields, expected ${this.fields}`);
      if (p + rowBytes > end) break;
      if (u32(buf, p + 2) !== 8 || (two && u32(buf, p + 14) !== second)) throw invalidArgument(`binary COPY field is not a non-NULL ${tids ? 'int8 or tid' : 'int8'}`);
      if (tids) {
        addRow(data, mask, u32(buf, p + 6), u32(buf, p + 10), 0, 0, false);
        tids.add(u32(buf, p + 10) & mask, u32(buf, p + 18), (buf[p + 22]! << 8) | buf[p + 23]!);
      } else if (two) addRow(data, mask, u32(buf, p + 6), u32(buf, p + 10), u32(buf, p + 18), u32(buf, p + 22), true);
      else addRow(data, mask, u32(buf, p + 6), u32(buf, p + 10), 0, 0, false);
      rows++;
      p += rowBytes;
    }
    this.sums.rows += rows;
    return p;
  }

  /** Throws unless the stream ended with the COPY trailer. */
  end(): void {
    if (!this.#done || this.#pending.length) throw invalidArgument('binary COPY stream ended early');
  }
}
