import { describe, expect, it } from 'vitest';
import { parseChange, UNCHANGED_TOAST } from '../../packages/agent/src/read/change-log.js';
import { IntegerKeys } from '../../packages/agent/src/read/keys.js';

/** test_decoding lines as PostgreSQL 15 prints them (captured from a real slot). */
describe('change log: test_decoding lines', () => {
  it('an UPDATE that keeps its key: the new row', () => {
    const c = parseChange(`table public.t: UPDATE: id[bigint]:3 v[text]:'it''s' n[numeric]:1.50 b[boolean]:true`);
    expect(c.tables).toEqual([{ schema: 'public', table: 't' }]);
    expect(c.op).toBe('UPDATE');
    expect([...c.tuples[0]!]).toEqual([['id', '3'], ['v', 'it\'s'], ['n', '1.50'], ['b', 'true']]);
  });

  it('an UPDATE that changes its key: old key, then the new row', () => {
    const c = parseChange(`table public.t: UPDATE: old-key: id[bigint]:5 new-tuple: id[bigint]:100 v[text]:'x5'`);
    expect(c.tuples.map((t) => t.get('id'))).toEqual(['5', '100']);
  });

  it('quoted names, composite keys, spaces and quotes in values, arrays, bit strings, null and unchanged TOAST', () => {
    const c = parseChange(`table "My Schema"."We ""ird": INSERT: a[integer]:1 "b c"[text]:'a b''c' arr[integer[]]:'{1,2}' bits[bit(3)]:B'101' x[text]:null big[text]:unchanged-toast-datum`);
    expect(c.tables).toEqual([{ schema: 'My Schema', table: 'We "ird' }]);
    const t = c.tuples[0]!;
    expect(t.get('a')).toBe('1');
    expect(t.get('b c')).toBe('a b\'c');
    expect(t.get('arr')).toBe('{1,2}');
    expect(t.get('bits')).toBe('101');
    expect(t.get('x')).toBeNull();
    expect(t.get('big')).toBe(UNCHANGED_TOAST);
  });

  it('DELETE with and without the replica identity, TRUNCATE of several tables', () => {
    expect([...parseChange(`table public.t: DELETE: id[bigint]:4`).tuples[0]!]).toEqual([['id', '4']]);
    expect(parseChange(`table public.events: DELETE: (no-tuple-data)`).tuples).toEqual([]);
    const tr = parseChange(`table public.a, public."B": TRUNCATE: (no-flags)`);
    expect(tr.op).toBe('TRUNCATE');
    expect(tr.tables).toEqual([{ schema: 'public', table: 'a' }, { schema: 'public', table: 'B' }]);
  });

  it('with the tables\' keys known, reads a row only until it holds its key (the rest of a wide row is not parsed)', () => {
    const keyOf = (schema: string, table: string) => (table === 't' ? ['b', 'id'] : null);
    // Past the key columns the line is not read: the broken value after them is never seen.
    const c = parseChange(`table public.t: UPDATE: id[bigint]:3 b[text]:'x' v[text]:'unterminated`, false, keyOf);
    expect([...c.tuples[0]!]).toEqual([['id', '3'], ['b', 'x']]);
    // A key change: the old key whole, the new row up to its key.
    const k = parseChange(`table public.t: UPDATE: old-key: id[bigint]:5 b[text]:'y' new-tuple: b[text]:'z' id[bigint]:6 v[text]:'w'`, false, keyOf);
    expect(k.tuples.map((t) => [...t])).toEqual([[['id', '5'], ['b', 'y']], [['b', 'z'], ['id', '6']]]);
    // A table without a key is read whole.
    expect([...parseChange(`table public.u: INSERT: x[int]:1 y[int]:2`, false, keyOf).tuples[0]!]).toEqual([['x', '1'], ['y', '2']]);
    // Skipped tables: only the table and the operation are read (the broken row after them is never seen).
    const skipped = parseChange(`table public.u: INSERT: x[int]:'unterminated`, false, keyOf, (_s, t) => t === 'u');
    expect(skipped).toEqual({ tables: [{ schema: 'public', table: 'u' }], op: 'INSERT', tuples: [] });
    expect(parseChange(`table public.t: DELETE: id[bigint]:4`, false, keyOf, (_s, t) => t === 'u').tuples).toHaveLength(1);
  });

  it('refuses what it does not understand instead of guessing', () => {
    expect(() => parseChange(`table public.t: MERGE: id[bigint]:1`)).toThrow(/operation/);
    expect(() => parseChange(`table public.t: INSERT: id[bigint]:'open`)).toThrow(/unterminated/);
  });
});

describe('the keys of a task (integer keys, without a round trip)', () => {
  const int8 = { schema: 'pg_catalog', name: 'int8' };
  const int4 = { schema: 'pg_catalog', name: 'int4' };
  it('keeps the keys inside (after, upto], each once, in key order', () => {
    const keys = [['10', '2'], ['3', '1'], ['10', '2'], ['10', '1'], ['-4', '9'], ['11', '0'], ['9223372036854775807', '1'], ['007', '1']];
    const ints = IntegerKeys.of([int8, int4], keys)!;
    expect(ints.between(['3', '1'], ['10', '2'])).toEqual([['7', '1'], ['10', '1'], ['10', '2']]);
    expect(ints.between(null, null)).toEqual([['-4', '9'], ['3', '1'], ['7', '1'], ['10', '1'], ['10', '2'], ['11', '0'], ['9223372036854775807', '1']]);
    expect(ints.between(['10', '2'], undefined)).toEqual([['11', '0'], ['9223372036854775807', '1']]);
    expect(ints.between(null, ['-4', '9'])).toEqual([['-4', '9']]);
    expect(ints.between(['11', '0'], ['10', '0'])).toEqual([]);
    expect(ints.between(['x', '1'], null)).toBeUndefined();
    // Short values compare as numbers, long ones as BigInt: exactly, across the two, each once.
    const mixed = IntegerKeys.of([int8], [['9007199254740993'], ['-0'], ['0'], ['-9223372036854775808'], ['999999999999999'], ['9007199254740992']])!;
    expect(mixed.between(null, null)).toEqual([['-9223372036854775808'], ['0'], ['999999999999999'], ['9007199254740992'], ['9007199254740993']]);
    expect(mixed.between(['9007199254740992'], null)).toEqual([['9007199254740993']]);
  });
  it('parses a list once, for the types it was asked with', () => {
    const list = [['2', '1'], ['1', '1']];
    const once = IntegerKeys.of([int8, int4], list);
    expect(IntegerKeys.of([int8, int4], list)).toBe(once);
    expect(IntegerKeys.of([{ schema: 'pg_catalog', name: 'text' }, int4], list)).toBeUndefined();
    expect(IntegerKeys.of([int8, int4], list)!.between(null, null)).toEqual([['1', '1'], ['2', '1']]);
  });
  it('leaves other key types, and values that are not plain integers, to the database', () => {
    expect(IntegerKeys.of([{ schema: 'pg_catalog', name: 'text' }], [['a']])).toBeUndefined();
    expect(IntegerKeys.of([{ schema: 'public', name: 'int8' }], [['1']])).toBeUndefined();
    expect(IntegerKeys.of([int8], [['1e3']])).toBeUndefined();
    expect(IntegerKeys.of([int8], [[null]])).toBeUndefined();
  });
});
