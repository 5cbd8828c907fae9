import { describe, it, expect } from 'vitest';
import { RowBatcher, LineSplitter, decodeField, decodeOutputField, leadingFields } from '../../packages/agent/src/read/copy-text.js';

describe('COPY text decoding', () => {
  it('undoes every escape and tells NULL from the text \\N', () => {
    expect(decodeField(Buffer.from('\\N'))).toBeNull();
    expect(decodeField(Buffer.from('\\\\N'))).toBe('\\N');
    expect(decodeField(Buffer.from('a\\tb\\nc\\\\d\\r'))).toBe('a\tb\nc\\d\r');
    expect(decodeField(Buffer.from('\\101\\x42'))).toBe('AB');
    expect(decodeField(Buffer.from(''))).toBe('');
    expect(decodeField(Buffer.from('naïve 東京 🎉'))).toBe('naïve 東京 🎉');
  });

  it('reads the leading key fields of a row', () => {
    expect(leadingFields(Buffer.from('12\tab\\tc\trest'), 2)).toEqual(['12', 'ab\tc']);
  });
});

describe('RowBatcher', () => {
  const rows = Array.from({ length: 1000 }, (_, i) => `${i}\t${'x'.repeat(i % 37)}\n`).join('');
  const all = Buffer.from(rows);

  function cut(chunkSize: number) {
    const b = new RowBatcher(500);
    const out: Buffer[] = [];
    for (let i = 0; i < all.length; i += chunkSize) out.push(...b.push(all.subarray(i, i + chunkSize)).map((x) => x.data));
    const tail = b.end();
    if (tail) out.push(tail.data);
    return out;
  }

  it('cuts at row ends, the same batches whatever the chunking', () => {
    const a = cut(7), b = cut(4096), c = cut(1);
    expect(Buffer.concat(a).equals(all)).toBe(true);
    expect(a.map((x) => x.toString('hex'))).toEqual(b.map((x) => x.toString('hex')));
    expect(a.map((x) => x.toString('hex'))).toEqual(c.map((x) => x.toString('hex')));
    for (const x of a) expect(x[x.length - 1]).toBe(0x0a);
    expect(a.length).toBeGreaterThan(10);
  });

  it('keeps a row larger than the target whole', () => {
    const b = new RowBatcher(10);
    const big = Buffer.from(`1\t${'y'.repeat(100)}\n2\tz\n`);
    const out = b.push(big);
    expect(out[0]!.rows).toBe(1);
    expect(out[0]!.lastRow.toString()).toBe(`1\t${'y'.repeat(100)}`);
    expect(b.end()!.rows).toBe(1);
  });
});

describe('COPY TO text output, read as lines', () => {
  it('undoes the escapes COPY writes, and only those', () => {
    // A bytea printed by test_decoding ('\x0a…'): COPY doubles its backslash.
    expect(decodeOutputField(Buffer.from(String.raw`table public.t: UPDATE: b[bytea]:'\\x0aff'`))).toBe(String.raw`table public.t: UPDATE: b[bytea]:'\x0aff'`);
    expect(decodeOutputField(Buffer.from('a\\tb\\nc\\\\d\\r\\b\\f\\v'))).toBe('a\tb\nc\\d\r\b\f\v');
    expect(decodeOutputField(Buffer.from('naïve 東京 🎉'))).toBe('naïve 東京 🎉');
  });

  it('cuts rows however the chunks fall, and refuses a stream that ends inside one', () => {
    const text = Buffer.from('first\tf\nsecond, longer\tt\n\tf\nlast 東京\tf\n');
    for (const size of [1, 2, 3, 7, 100]) {
      const lines = new LineSplitter();
      const got: string[] = [];
      for (let i = 0; i < text.length; i += size) for (const l of lines.push(text.subarray(i, i + size))) got.push(l.toString());
      lines.end();
      expect(got).toEqual(['first\tf', 'second, longer\tt', '\tf', 'last 東京\tf']);
    }
    const cut = new LineSplitter();
    [...cut.push(Buffer.from('a\tf\nb'))];
    expect(() => cut.end()).toThrow(/inside a row/);
  });
});
