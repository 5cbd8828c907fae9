import { describe, it, expect } from 'vitest';
import { narrowing, tableChecks, parseType } from '../../packages/coordinator/src/plan/checks.js';
import { splitRows, isDataError } from '../../packages/agent/src/apply/quarantine.js';

describe('pre-flight type narrowing', () => {
  it('names the conversions that lose data', () => {
    expect(narrowing('text', 'character varying(10)')?.message).toMatch(/values longer than 10 will be refused/);
    expect(narrowing('character varying(20)', 'character varying(10)')).not.toBeNull();
    expect(narrowing('character varying(5)', 'character varying(10)')).toBeNull();
    expect(narrowing('numeric(12,2)', 'numeric(8,2)')?.message).toMatch(/beyond 6 integer digits/);
    expect(narrowing('numeric(8,4)', 'numeric(8,2)')?.message).toMatch(/decimals beyond 2 are rounded/);
    expect(narrowing('numeric(8,2)', 'numeric(12,2)')).toBeNull();
    expect(narrowing('bigint', 'integer')?.message).toMatch(/out of integer range/);
    expect(narrowing('integer', 'bigint')).toBeNull();
    expect(narrowing('timestamp with time zone', 'timestamp without time zone')?.message).toMatch(/time zone is dropped/);
    expect(narrowing('double precision', 'real')).not.toBeNull();
    expect(narrowing('timestamp(6) with time zone', 'timestamp(0) with time zone')).not.toBeNull();
    expect(narrowing('integer', 'integer')).toBeNull();
    expect(parseType('character varying(10)[]')).toEqual({ base: 'varchar[]', args: [10] });
  });

  it('reports missing tables and columns as errors, with create_missing as info', () => {
    const col = (name: string, type: string) => ({ name, type, not_null: false, generated: false, identity: '', type_schema: 'pg_catalog', type_name: type });
    const src = { schema: 'public', name: 't', columns: [col('id', 'integer'), col('v', 'text')], primary_key: ['id'], key_kind: 'primary', foreign_keys: [], partitioned: false, row_estimate: '1', bytes: '1', has_rows: true, set_aside_by: '' };
    expect(tableChecks(src, undefined, { targetName: 'x', createMissing: false })).toMatchObject([{ severity: 'error', code: 'missing_table' }]);
    expect(tableChecks(src, undefined, { targetName: 'x', createMissing: true })).toMatchObject([{ severity: 'info', code: 'create_table' }]);
    const dst = { ...src, columns: [col('id', 'integer')] };
    expect(tableChecks(src, dst, { targetName: 'x', createMissing: false })).toMatchObject([{ severity: 'error', code: 'missing_column', column: 'v' }]);
    // Its keys set aside by a running load: refused outright (planned from its catalog, it would sync keyless).
    expect(tableChecks(src, { ...src, primary_key: [], set_aside_by: 'j1' }, { targetName: 'x', createMissing: false }))
      .toEqual([expect.objectContaining({ severity: 'error', code: 'set_aside', message: expect.stringMatching(/set aside by job j1/) })]);
  });
});

describe('bisecting a batch', () => {
  it('splits COPY text into rows at newlines only', () => {
    const rows = splitRows(Buffer.from('1\ta\\nb\n2\tc\n3\t\\N\n'));
    expect(rows.map((r) => r.toString())).toEqual(['1\ta\\nb\n', '2\tc\n', '3\t\\N\n']);
    expect(Buffer.concat(rows).toString()).toBe('1\ta\\nb\n2\tc\n3\t\\N\n');
  });
  it('treats SQLSTATE classes 22 and 23 as the row\'s fault, nothing else', () => {
    const pg = (code: string) => Object.assign(new Error('x'), { name: 'PostgresError', code, severity: 'ERROR' });
    expect(isDataError(pg('23502'))).toBe(true);
    expect(isDataError(pg('22001'))).toBe(true);
    expect(isDataError(pg('40001'))).toBe(false);
    expect(isDataError(pg('P0001'))).toBe(false);
  });
});
