import { PendingBytes, type CutBatch } from './copy-text.js';

/**
 * COPY binary format helpers (pure). A stream is a header (11-byte signature, int32 flags, int32
 * length of a header extension + the extension), then tuples (int16 field count; per field an int32
 * length, -1 for NULL, and that many bytes), then a trailer (int16 -1). All integers big-endian.
 * Batches carry tuples only: the target frames each one with BINARY_HEADER and BINARY_TRAILER.
 */
export const BINARY_SIGNATURE = Buffer.from('PGCOPY\n\xff\r\n\0', 'latin1');
/** A header without OIDs and without extension: what the target puts before each batch. */
export const BINARY_HEADER = Buffer.concat([BINARY_SIGNATURE, Buffer.alloc(8)]);
export const BINARY_TRAILER = Buffer.from([0xff, 0xff]);

const OIDS_FLAG = 1 << 16;

/**
 * The length of the binary COPY header at the start of `buf`, 0 while it is incomplete; throws on a
 * stream that is not binary COPY, or one with OIDs.
 */
export function binaryHeaderLength(buf: Buffer): number {
  if (buf.length < 19) return 0;
  if (!buf.subarray(0, 11).equals(BINARY_SIGNATURE)) throw new Error('not a binary COPY stream (bad signature)');
  if (buf.readInt32BE(11) & OIDS_FLAG) throw new Error('binary COPY stream with OIDs is not supported');
  const len = 19 + buf.readInt32BE(15);
  return buf.length < len ? 0 : len;
}

/**
 * Cuts a binary COPY stream into batches of whole tuples, by the rule of RowBatcher (copy-text.ts):
 * a batch ends at the end of the first tuple that brings it to `targetBytes` or more — a rule on the
 * bytes only, so a re-read of the same snapshot yields the same batches whatever the chunking.
 * Tuples are walked by their length words (no allocation per field), and only once a cut is
 * possible; batches are slices of the driver's buffers.
 */
export class TupleBatcher {
  #pending = new PendingBytes();
  #header = true;  // the stream's header is not consumed yet
  #ended = false;  // the trailer was seen (and dropped)
  #pos = 0;        // pending offset of the first tuple not walked yet
  #tuples = 0;     // whole tuples in [0, #pos)
  #firstEnd = 0;
  #lastStart = 0;
  #need = 0;       // pending bytes needed before the walk can go on
  constructor(private targetBytes: number) {}

  setTarget(bytes: number) { this.targetBytes = bytes; }

  /** Feeds a chunk; returns the batches it completes. */
  push(chunk: Buffer): CutBatch[] {
    if (this.#ended) {
      if (chunk.length) throw new Error('binary COPY stream has bytes after its trailer');
      return [];
    }
    this.#pending.push(chunk);
    if (this.#header && !this.#readHeader()) return [];
    const out: CutBatch[] = [];
    while (!this.#ended && this.#pending.size >= this.targetBytes && this.#pending.size >= this.#need) {
      const buf = this.#pending.flat();
      const end = this.#walk(buf, this.targetBytes);
      if (end < 0) break;
      out.push(this.#take(buf, end));
    }
    return out;
  }

  /** The rest at end of stream: whole tuples up to the trailer. */
  end(): CutBatch | undefined {
    if (this.#header) throw new Error('binary COPY stream ended inside its header');
    const buf = this.#pending.flat();
    if (!this.#ended) this.#walk(buf, Infinity);
    if (!this.#ended) throw new Error('binary COPY stream ended inside a tuple, or without its trailer');
    const batch = this.#tuples ? this.#take(this.#pending.flat(), this.#pos) : undefined;
    this.#pending.keep(Buffer.alloc(0));
    return batch;
  }

  #readHeader(): boolean {
    const buf = this.#pending.flat();
    const len = binaryHeaderLength(buf);
    if (!len) return false;
    this.#pending.keep(buf.subarray(len));
    this.#header = false;
    return true;
  }

  /**
   * Walks tuples from #pos; returns the end of the first tuple that reaches `target`, or -1 when the
   * bytes run out (#need says how many are wanted) or the trailer comes (#ended, and it is dropped).
   */
  #walk(buf: Buffer, target: number): number {
    let pos = this.#pos;
    const len = buf.length;
    for (;;) {
      if (pos + 2 > len) { this.#need = pos + 2; break; }
      const n = buf.readInt16BE(pos);
      if (n === -1) {
        if (pos + 2 !== len) throw new Error('binary COPY stream has bytes after its trailer');
        this.#ended = true;
        this.#pending.keep(buf.subarray(0, pos));
        break;
      }
      if (n < 0) throw new Error(`binary COPY tuple with ${n} fields`);
      let p = pos + 2;
      let f = 0;
      for (; f < n && p + 4 <= len; f++) {
        const l = buf.readInt32BE(p);
        p += l > 0 ? 4 + l : 4;
      }
      if (f < n) { this.#need = p + 4; break; }
      if (p > len) { this.#need = p; break; }
      if (this.#tuples === 0) this.#firstEnd = p;
      this.#lastStart = pos;
      this.#tuples++;
      pos = p;
      if (p >= target) { this.#pos = pos; return p; }
    }
    this.#pos = pos;
    return -1;
  }

  #take(buf: Buffer, end: number): CutBatch {
    const data = this.#pending.take(buf, end);
    const batch = { data, rows: this.#tuples, firstRow: data.subarray(0, this.#firstEnd), lastRow: data.subarray(this.#lastStart) };
    this.#pos = 0; this.#tuples = 0; this.#firstEnd = 0; this.#lastStart = 0; this.#need = 0;
    return batch;
  }
}

/** Tuples in a batch of binary COPY tuples (no header or trailer). */
export function countTuples(data: Buffer): number {
  let pos = 0, n = 0;
  while (pos < data.length) {
    const fields = data.readInt16BE(pos);
    pos += 2;
    for (let f = 0; f < fields; f++) {
      const l = data.readInt32BE(pos);
      pos += l > 0 ? 4 + l : 4;
    }
    n++;
  }
  return n;
}

/**
 * The first fields of one tuple as the text PostgreSQL prints for them; NULL → null. `types` are the
 * pg_catalog type names of those fields, each one of BINARY_KEY_TYPES (the planner sends nothing else).
 */
export function tupleKeys(tuple: Buffer, types: readonly string[]): (string | null)[] {
  const out: (string | null)[] = [];
  let p = 2;
  for (const t of types) {
    const l = tuple.readInt32BE(p);
    p += 4;
    if (l < 0) { out.push(null); continue; }
    out.push(decodeKey(tuple, p, l, t));
    p += l;
  }
  return out;
}

function decodeKey(b: Buffer, p: number, l: number, type: string): string {
  switch (type) {
    case 'int2': return String(b.readInt16BE(p));
    case 'int4': return String(b.readInt32BE(p));
    case 'int8': return b.readBigInt64BE(p).toString();
    case 'text': case 'varchar': return b.toString('utf8', p, p + l);
    case 'uuid': {
      const h = b.toString('hex', p, p + l);
      return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
    }
    default: throw new Error(`key type ${type} cannot be read from binary COPY`);
  }
}
