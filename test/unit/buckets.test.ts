import { describe, expect, it } from 'vitest';
import {
  bitmapOf, setBits, countBits, differingSlots, packFilter, unpackFilter, keyFilter, fineBitsFor, MAX_FINE_BITS, COARSE_SHIFT,
} from '../../packages/agent/src/read/buckets.js';
import { deflateRawSync } from 'node:zlib';

describe('diff buckets (pure parts)', () => {
  it('sizes fine buckets at about one row each, within bounds', () => {
    expect(fineBitsFor(0)).toBe(COARSE_SHIFT);
    expect(fineBitsFor(1000)).toBe(10);
    expect(fineBitsFor(1024)).toBe(10);
    expect(fineBitsFor(1025)).toBe(11);
    expect(fineBitsFor(1e12)).toBe(MAX_FINE_BITS);
  });

  it('bitmaps hold exactly the buckets put in (bit n = byte n/8, bit n%8, as get_bit reads them)', () => {
    const set = [0, 7, 8, 9, 1023];
    const m = bitmapOf(1024, set);
    expect(m.length).toBe(128);
    expect(m[0]).toBe(0b1000_0001);
    expect(m[1]).toBe(0b0000_0011);
    expect([...setBits(m, 1024)]).toEqual(set);
    expect(countBits(m)).toBe(5);
  });

  it('packs a filter to a few bytes when sparse and unpacks it unchanged', () => {
    const m = bitmapOf(2 ** 20, [5, 99_999, 500_000]);
    const wire = packFilter({ fineBits: 20, bitmap: m, hashed: ['id'] });
    expect(wire.buckets.length).toBeLessThan(1000);
    const back = unpackFilter(wire)!;
    expect(back.fineBits).toBe(20);
    expect(back.bitmap.equals(m)).toBe(true);
    expect(back.hashed).toEqual(['id']);
    expect(unpackFilter(null)).toBeNull();
  });

  it('refuses a filter whose bitmap does not match its size', () => {
    expect(() => unpackFilter({ fine_bits: 12, buckets: packFilter({ fineBits: 10, bitmap: bitmapOf(1024, [1]), hashed: [] }).buckets })).toThrow();
  });

  it('packs a filter of keys (tracked changes) and unpacks it unchanged; refuses keys that are not tuples of strings', () => {
    const keys = [['1', 'a b'], ['22', 'it\'s'], ['3', '{"x": 1}']];
    const wire = packFilter(keyFilter(keys));
    expect(wire.fine_bits).toBe(0);
    expect(unpackFilter(wire)!.keys).toEqual(keys);
    expect(() => unpackFilter({ fine_bits: 0, buckets: Buffer.alloc(0), keys: deflateRawSync('{"not": "tuples"}') })).toThrow(/array of key tuples/);
    expect(() => unpackFilter({ fine_bits: 0, buckets: Buffer.alloc(0), keys: Buffer.from('not deflated') })).toThrow(/deflated JSON/);
  });

  it('finds the differing 8-byte digests', () => {
    const a = Buffer.alloc(32), b = Buffer.alloc(32);
    a.writeBigUInt64BE(1n, 8); b.writeBigUInt64BE(2n, 8);
    a.writeBigUInt64BE(7n, 24); b.writeBigUInt64BE(7n, 24);
    expect(differingSlots(a, b)).toEqual([1]);
    expect(() => differingSlots(a, Buffer.alloc(16))).toThrow();
  });
});
