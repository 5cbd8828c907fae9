import { describe, expect, it } from 'vitest';
import { TupleBatcher, tupleKeys, countTuples, BINARY_SIGNATURE } from '../../packages/agent/src/read/copy-binary.js';

/** One binary COPY tuple from raw field bytes (null = NULL). */
function tuple(fields: (Buffer | null)[]): Buffer {
  const parts: Buffer[] = [Buffer.alloc(2)];
  parts[0]!.writeInt16BE(fields.length);
  for (const f of fields) {
    const l = Buffer.alloc(4);
    l.writeInt32BE(f ? f.length : -1);
    parts.push(l);
    if (f) parts.push(f);
  }
  return Buffer.concat(parts);
}
const int = (bytes: 2 | 4 | 8, v: number | bigint) => {
  const b = Buffer.alloc(bytes);
  if (bytes === 2) b.writeInt16BE(Number(v)); else if (bytes === 4) b.writeInt32BE(Number(v)); else b.writeBigInt64BE(BigInt(v));
  return b;
};
function header(ext = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(8);
  h.writeInt32BE(ext.length, 4);
  return Buffer.concat([BINARY_SIGNATURE, h, ext]);
}
const trailer = Buffer.from([0xff, 0xff]);

describe('TupleBatcher', () => {
  const tuples = Array.from({ length: 1000 }, (_, i) => tuple([int(4, i), i % 5 === 0 ? null : Buffer.from('x'.repeat(i % 37)), Buffer.alloc(0)]));
  const body = Buffer.concat(tuples);
  // a header extension (allowed by the format, skipped) to check it is dropped too
  const stream = Buffer.concat([header(Buffer.from('ext!')), body, trailer]);

  function cut(chunkSize: number) {
    const b = new TupleBatcher(500);
    const out: { data: Buffer; rows: number; first: Buffer; last: Buffer }[] = [];
    const add = (x: { data: Buffer; rows: number; firstRow: Buffer; lastRow: Buffer }) => out.push({ data: Buffer.from(x.data), rows: x.rows, first: Buffer.from(x.firstRow), last: Buffer.from(x.lastRow) });
    for (let i = 0; i < stream.length; i += chunkSize) b.push(stream.subarray(i, i + chunkSize)).forEach(add);
    const tail = b.end();
    if (tail) add(tail);
    return out;
  }

  it('cuts at tuple ends only, the same batches whatever the chunking', () => {
    const a = cut(7), b = cut(4096), c = cut(1), d = cut(stream.length);
    expect(Buffer.concat(a.map((x) => x.data)).equals(body)).toBe(true);
    for (const other of [b, c, d]) expect(other.map((x) => x.data.toString('hex'))).toEqual(a.map((x) => x.data.toString('hex')));
    expect(a.length).toBeGreaterThan(10);
    expect(a.reduce((n, x) => n + x.rows, 0)).toBe(1000);
    // every batch is whole tuples, and each one ends at the first tuple reaching the target
    let t = 0;
    for (const x of a) {
      expect(countTuples(x.data)).toBe(x.rows);
      const mine = tuples.slice(t, t + x.rows);
      expect(Buffer.concat(mine).equals(x.data)).toBe(true);
      expect(x.first.equals(mine[0]!)).toBe(true);
      expect(x.last.equals(mine[mine.length - 1]!)).toBe(true);
      if (x !== a[a.length - 1]) expect(Buffer.concat(mine.slice(0, -1)).length).toBeLessThan(500);
      t += x.rows;
    }
  });

  it('keeps a tuple larger than the target whole', () => {
    const b = new TupleBatcher(50);
    const big = tuple([int(4, 1), Buffer.alloc(100, 0x79)]);
    const out = b.push(Buffer.concat([header(), big, tuple([int(4, 2), null]), trailer]));
    expect(out[0]!.rows).toBe(1);
    expect(out[0]!.data.equals(big)).toBe(true);
    expect(b.end()!.rows).toBe(1);
  });

  it('gives nothing for an empty table, and refuses a stream cut short', () => {
    const e = new TupleBatcher(100);
    e.push(Buffer.concat([header(), trailer]));
    expect(e.end()).toBeUndefined();
    const short = new TupleBatcher(100);
    short.push(Buffer.concat([header(), tuple([int(4, 1)]).subarray(0, 5)]));
    expect(() => short.end()).toThrow(/inside a tuple/);
    expect(() => new TupleBatcher(1).push(Buffer.from('PGCOPY\nXXXXXXXXXXXXXXXX'))).toThrow(/signature/);
  });
});

describe('binary key decoding', () => {
  it('prints keys as PostgreSQL does', () => {
    const t = tuple([
      int(2, -32768), int(4, -2147483648), int(8, -9223372036854775808n), int(8, 9007199254740993n),
      Buffer.from('naïve 東京 🎉\ttab'), Buffer.from(''), null,
      Buffer.from('a0eebc999c0b4ef8bb6d6bb9bd380a11', 'hex'), Buffer.from('rest'),
    ]);
    expect(tupleKeys(t, ['int2', 'int4', 'int8', 'int8', 'text', 'varchar', 'int4', 'uuid'])).toEqual([
      '-32768', '-2147483648', '-9223372036854775808', '9007199254740993', 'naïve 東京 🎉\ttab', '', null, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    ]);
    expect(tupleKeys(t, [])).toEqual([]);
    expect(() => tupleKeys(t, ['timestamptz'])).toThrow(/binary/);
  });
});
