/**
 * COPY text format helpers (pure). Rows end with "\n"; fields are separated by "\t";
 * a field "\N" is NULL; backslash escapes (\b \f \n \r \t \v \\ \NNN octal \xHH) stand for bytes.
 * Newlines and tabs inside values are always escaped, so these bytes are exact row/field boundaries.
 */
const NL = 0x0a;
export const TAB = 0x09;
const BS = 0x5c;

/** Decodes the first `n` fields of one row (without its trailing newline) to text; NULL → null. */
export function leadingFields(row: Buffer, n: number): (string | null)[] {
  const out: (string | null)[] = [];
  let start = 0;
  for (let i = 0; i <= row.length && out.length < n; i++) {
    if (i === row.length || row[i] === TAB) {
      out.push(decodeField(row.subarray(start, i)));
      start = i + 1;
    }
  }
  if (out.length < n) throw new Error(`COPY row has ${out.length} fields, expected at least ${n}`);
  return out;
}

export function decodeField(f: Buffer): string | null {
  if (f.length === 2 && f[0] === BS && f[1] === 0x4e /* N */) return null;
  if (!f.includes(BS)) return f.toString('utf8');
  const bytes: number[] = [];
  for (let i = 0; i < f.length; i++) {
    const c = f[i]!;
    if (c !== BS || i + 1 >= f.length) { bytes.push(c); continue; }
    const e = f[++i]!;
    switch (e) {
      case 0x62: bytes.push(0x08); break; // \b
      case 0x66: bytes.push(0x0c); break; // \f
      case 0x6e: bytes.push(0x0a); break; // \n
      case 0x72: bytes.push(0x0d); break; // \r
      case 0x74: bytes.push(0x09); break; // \t
      case 0x76: bytes.push(0x0b); break; // \v
      case 0x78: { // \xH or \xHH
        let v = 0, k = 0;
        while (k < 2 && i + 1 < f.length && isHex(f[i + 1]!)) { v = v * 16 + parseInt(String.fromCharCode(f[++i]!), 16); k++; }
        if (k === 0) bytes.push(0x78); else bytes.push(v);
        break;
      }
      default:
        if (e >= 0x30 && e <= 0x37) { // \N, \NN, \NNN octal
          let v = e - 0x30, k = 1;
          while (k < 3 && i + 1 < f.length && f[i + 1]! >= 0x30 && f[i + 1]! <= 0x37) { v = v * 8 + (f[++i]! - 0x30); k++; }
          bytes.push(v & 0xff);
        } else bytes.push(e); // \\ and any other escaped char stands for itself
    }
  }
  return Buffer.from(bytes).toString('utf8');
}

const isHex = (c: number) => (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x46) || (c >= 0x61 && c <= 0x66);

export interface CutBatch {
  data: Buffer;
  rows: number;
  firstRow: Buffer;
  lastRow: Buffer;
}

/**
 * The bytes a batcher holds that are not cut into a batch yet: the driver's chunks, joined only when
 * a cut is looked for. Batches are slices, not copies: the chunks are the driver's fresh buffers
 * (never written again), and a batch only lives until its ack; copying every byte once more cost a
 * tenth of the reader's CPU.
 */
export class PendingBytes {
  #chunks: Buffer[] = [];
  size = 0;

  push(chunk: Buffer): void {
    this.#chunks.push(chunk);
    this.size += chunk.length;
  }

  /** All pending bytes as one buffer. */
  flat(): Buffer {
    if (this.#chunks.length > 1) this.#chunks = [Buffer.concat(this.#chunks, this.size)];
    return this.#chunks[0] ?? Buffer.alloc(0);
  }

  /** Keeps only `rest` (a slice of flat()) pending. */
  keep(rest: Buffer): void {
    this.#chunks = rest.length ? [rest] : [];
    this.size = rest.length;
  }

  /** Takes the first `end` bytes of flat() out; the rest stays pending. */
  take(buf: Buffer, end: number): Buffer {
    this.keep(buf.subarray(end));
    return buf.subarray(0, end);
  }
}

/**
 * Cuts a COPY byte stream into batches of whole rows. A batch ends at the end of the first row
 * that brings it to `targetBytes` or more — a rule that depends only on the bytes, never on how
 * the socket chunked them, so a re-read of the same snapshot yields the same batches.
 */
export class RowBatcher {
  #pending = new PendingBytes();
  #scanFrom = 0; // offset in the concatenated pending bytes already scanned for newlines
  constructor(private targetBytes: number) {}

  setTarget(bytes: number) { this.targetBytes = bytes; }

  /** Feeds a chunk; returns the batches it completes. */
  push(chunk: Buffer): CutBatch[] {
    this.#pending.push(chunk);
    const out: CutBatch[] = [];
    while (this.#pending.size >= this.targetBytes) {
      const buf = this.#pending.flat();
      // the first newline at or after targetBytes-1 ends the batch
      const from = Math.max(this.#scanFrom, this.targetBytes - 1);
      const cut = buf.indexOf(NL, from);
      if (cut < 0) { this.#scanFrom = buf.length; break; }
      out.push(this.#take(buf, cut + 1));
    }
    return out;
  }

  /** The rest at end of stream (always whole rows: COPY ends with a newline). */
  end(): CutBatch | undefined {
    if (this.#pending.size === 0) return undefined;
    const buf = this.#pending.flat();
    if (buf[buf.length - 1] !== NL) throw new Error('COPY stream ended inside a row');
    return this.#take(buf, buf.length);
  }

  #take(buf: Buffer, end: number): CutBatch {
    const data = this.#pending.take(buf, end);
    this.#scanFrom = 0;
    return { data, rows: countRows(data), ...edgeRows(data) };
  }
}

export function countRows(data: Buffer): number {
  let n = 0, i = -1;
  while ((i = data.indexOf(NL, i + 1)) >= 0) n++;
  return n;
}

function edgeRows(data: Buffer): { firstRow: Buffer; lastRow: Buffer } {
  const firstEnd = data.indexOf(NL);
  const lastStart = data.lastIndexOf(NL, data.length - 2) + 1;
  return { firstRow: data.subarray(0, firstEnd), lastRow: data.subarray(lastStart, data.length - 1) };
}

/**
 * A field as COPY TO writes it in text format, back to its text: COPY's output escapes only the
 * backslash, and the control characters \b \f \n \r \t \v (the others go out as they are).
 */
export function decodeOutputField(f: Buffer): string {
  const s = f.toString('utf8');
  return s.includes('\\') ? s.replace(/\\([\\bfnrtv])/g, (_, c: string) => OUTPUT_ESCAPES[c]!) : s;
}

const OUTPUT_ESCAPES: Record<string, string> = { '\\': '\\', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t', v: '\v' };

/** Cuts COPY text chunks into rows (without their newline), however the socket chunked them. */
export class LineSplitter {
  #rest: Buffer | null = null;

  /** The rows a chunk completes. */
  *push(chunk: Buffer): Generator<Buffer> {
    let start = 0;
    for (let nl = chunk.indexOf(NL); nl !== -1; nl = chunk.indexOf(NL, start)) {
      const head = chunk.subarray(start, nl);
      yield this.#rest ? Buffer.concat([this.#rest, head]) : head;
      this.#rest = null;
      start = nl + 1;
    }
    if (start < chunk.length) this.#rest = this.#rest ? Buffer.concat([this.#rest, chunk.subarray(start)]) : chunk.subarray(start);
  }

  /** Throws when the stream ended inside a row (COPY ends every row with a newline). */
  end(): void {
    if (this.#rest?.length) throw new Error('COPY stream ended inside a row');
  }
}
