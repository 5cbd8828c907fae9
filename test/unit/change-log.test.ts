import { describe, expect, it } from 'vitest';
import { parseChange, UNCHANGED_TOAST } from '../../packages/agent/src/read/change-log.js';
import { integerKeysInRange } from '../../packages/agent/src/work/diff-plan.js';

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

  it('refuses what it does not understand instead of guessing', () => {
    expect(() => parseChange(`table public.t: MERGE: id[bigint]:1`)).toThrow(/operation/);
    expect(() => parseChange(`table public.t: INSERT: id[bigint]:'open`)).toThrow(/unterminated/);
  });
});

describe('change log: the keys of a task (integer keys, without a round trip)', () => {
  const int8 = { schema: 'pg_catalog', name: 'int8' };
  const int4 = { schema: 'pg_catalog', name: 'int4' };
  it('keeps the keys inside (after, upto], each once, in key order', () => {
    const keys = [['10', '2'], ['3', '1'], ['10', '2'], ['10', '1'], ['-4', '9'], ['11', '0'], ['9223372036854775807', '1']];
    expect(integerKeysInRange({ key_types: [int8, int4], range: { after: ['3', '1'], upto: ['10', '2'] } }, keys)).toEqual([['10', '1'], ['10', '2']]);
    expect(integerKeysInRange({ key_types: [int8, int4], range: null }, keys)).toEqual(
      [['-4', '9'], ['3', '1'], ['10', '1'], ['10', '2'], ['11', '0'], ['9223372036854775807', '1']]);
    expect(integerKeysInRange({ key_types: [int8, int4], range: { after: ['10', '2'], upto: null } }, keys)).toEqual([['11', '0'], ['9223372036854775807', '1']]);
  });
  it('leaves other key types, and values that are not plain integers, to the database', () => {
    expect(integerKeysInRange({ key_types: [{ schema: 'pg_catalog', name: 'text' }], range: null }, [['a']])).toBeUndefined();
    expect(integerKeysInRange({ key_types: [int8], range: null }, [['1e3']])).toBeUndefined();
    expect(integerKeysInRange({ key_types: [int8], range: null }, [[null]])).toBeUndefined();
  });
});

describe('change log: lines cut at MAX_LINE', () => {
  const line = `table public.media: INSERT: id[bigint]:42 kind[text]:'image' data[bytea]:'\\x${'ab'.repeat(40)}' size[integer]:80`;
  it('keeps the columns printed whole before the cut and drops the value the cut may have shortened', () => {
    const cutInBytes = parseChange(line.slice(0, 70), true);
    expect(Object.fromEntries(cutInBytes.tuples[0]!)).toEqual({ id: '42', kind: 'image' });
    // a bare value that reaches the cut may go on beyond it: left out
    const cutInNumber = parseChange(line.slice(0, line.length - 1), true);
    expect(cutInNumber.tuples[0]!.has('size')).toBe(false);
    expect(cutInNumber.tuples[0]!.get('id')).toBe('42');
    // a key printed after the cut is missing, not guessed
    expect(parseChange(`table public.t: UPDATE: payload[text]:'${'x'.repeat(50)}' id[bigint]:7`.slice(0, 40), true).tuples[0]!.has('id')).toBe(false);
  });
  it('an UPDATE that changed its key keeps the old key even when the new tuple is cut', () => {
    const full = `table public.t: UPDATE: old-key: id[bigint]:1 new-tuple: id[bigint]:2 payload[text]:'${'y'.repeat(60)}'`;
    const c = parseChange(full.slice(0, full.indexOf('payload') + 20), true);
    expect(c.tuples.map((t) => t.get('id'))).toEqual(['1', '2']);
    const early = parseChange(full.slice(0, full.indexOf('new-tuple') + 4), true);
    expect(early.tuples[0]!.get('id')).toBe('1');
    expect(early.tuples[1]!.has('id')).toBe(false);
  });
});
