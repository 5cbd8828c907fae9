import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestStack, type PgCluster, startRegions, stopRegions } from '../harness/index.js';
import { Api } from '../harness/api.js';
import type { pb } from '../../packages/shared/src/index.js';

/**
 * Row validation with quarantine: the target is stricter than the source (NOT NULL, varchar(8),
 * CHECK, FK). 37 bad rows spread over 200,000 end in syncflow.quarantine with their reason; every
 * other row is applied; the job completes.
 */
let stack: TestStack;
let api: Api;
let a: PgCluster;
let b: PgCluster;

const N = 200_000;
// 10 NULL names, 10 codes too long, 9 negative amounts, 8 owners that do not exist: 37 rows.
const nullName = Array.from({ length: 10 }, (_, i) => 1_000 + i * 19_937);
const longCode = Array.from({ length: 10 }, (_, i) => 2_003 + i * 19_811);
const negative = Array.from({ length: 9 }, (_, i) => 3_007 + i * 21_001);
const noOwner = Array.from({ length: 8 }, (_, i) => 4_001 + i * 24_989);
const bad = [...nullName, ...longCode, ...negative, ...noOwner].sort((x, y) => x - y);

beforeAll(async () => {
  expect(new Set(bad).size).toBe(37);
  ({ stack, api, a, b } = await startRegions());
  await a.createDatabase('app', `
    CREATE TABLE owners (id int PRIMARY KEY);
    INSERT INTO owners SELECT generate_series(1, 1000);
    CREATE TABLE accounts (id int PRIMARY KEY, name text, code text, amount int, owner_id int);
    INSERT INTO accounts SELECT g, 'n' || g, 'c' || (g % 1000), g % 5000, 1 + g % 1000 FROM generate_series(1, ${N}) g;
    UPDATE accounts SET name = NULL WHERE id = ANY('{${nullName}}');
    UPDATE accounts SET code = 'much too long for varchar(8)' WHERE id = ANY('{${longCode}}');
    UPDATE accounts SET amount = -5 WHERE id = ANY('{${negative}}');
    UPDATE accounts SET owner_id = 5000 + id WHERE id = ANY('{${noOwner}}');`);
  await b.createDatabase('app', `
    CREATE TABLE owners (id int PRIMARY KEY);
    INSERT INTO owners SELECT generate_series(1, 1000);
    CREATE TABLE accounts (id int PRIMARY KEY, name text NOT NULL, code varchar(8), amount int CHECK (amount >= 0),
                           owner_id int REFERENCES owners(id));
    -- a few rows already there: the upsert path is bisected too
    INSERT INTO accounts SELECT g, 'old', 'old', 0, 1 FROM generate_series(1, 5000) g;`);
  await api.connection('src', a, 'app', 'a');
  await api.connection('dst', b, 'app', 'b');
});

afterAll(() => stopRegions({ stack, api }));

describe('quarantine', () => {
  it('the plan warns about the stricter target, with a precise report', async () => {
    const plan = await api.call<pb.Plan__Output>('PlanSync', { from: 'src', to: 'dst', tables: ['accounts'] });
    const warnings = plan.checks.filter((c) => c.severity === 'warning').map((c) => `${c.code} ${c.column}`);
    expect(warnings).toEqual(expect.arrayContaining(['narrowing code', 'not_null name']));
    expect(plan.checks.some((c) => c.severity === 'error')).toBe(false);
  });

  it('37 bad rows of 200,000 are quarantined with their reason, all the others are applied', { timeout: 700_000 }, async () => {
    const r = await stack.cli(['sync', 'start', '--from', 'src', '--to', 'dst', '--tables', 'accounts', '--wait'], { timeoutMs: 600_000 });
    expect(r.code, r.stderr + r.stdout.slice(-3000)).toBe(0);
    expect(r.stdout).toMatch(/37 row\(s\) refused by the target were quarantined: syncflow job rejects [0-9a-f-]{36}/);
    const jobId = /job ([0-9a-f-]{36}) started/.exec(r.stdout)![1]!;

    const q = await b.sql('app')<{ id: number; sqlstate: string; row: string }[]>`
      SELECT key[1]::int AS id, sqlstate, convert_from(row_data, 'UTF8') AS row FROM syncflow.quarantine WHERE job_id = ${jobId} ORDER BY 1`;
    expect(q.map((x) => x.id)).toEqual(bad);
    const reason = new Map(q.map((x) => [x.id, x.sqlstate]));
    for (const id of nullName) expect(reason.get(id)).toBe('23502');
    for (const id of longCode) expect(reason.get(id)).toBe('22001');
    for (const id of negative) expect(reason.get(id)).toBe('23514');
    for (const id of noOwner) expect(reason.get(id)).toBe('23503');
    expect(q.find((x) => x.id === longCode[0])!.row).toBe(`${longCode[0]}\tn${longCode[0]}\tmuch too long for varchar(8)\t${longCode[0]! % 5000}\t${1 + (longCode[0]! % 1000)}\n`);

    // every other row is there, equal to the source; the bad ones kept their old value or are absent
    const rowsOf = async (sql: ReturnType<PgCluster['sql']>) => (await sql<{ n: string; h: string }[]>`
      SELECT count(*)::text AS n, md5(string_agg(t::text, ',' ORDER BY id)) AS h FROM accounts t WHERE NOT (id = ANY(${bad}))`)[0]!;
    expect(await rowsOf(b.sql('app'))).toEqual(await rowsOf(a.sql('app')));
    const [{ n }] = await b.sql('app')<{ n: number }[]>`SELECT count(*)::int AS n FROM accounts WHERE id = ANY(${bad})`;
    expect(n).toBe(bad.filter((id) => id <= 5000).length); // old rows the bad updates could not replace

    const rejects = await stack.cli(['job', 'rejects', jobId, '--json']);
    expect(rejects.code, rejects.stderr).toBe(0);
    const list = JSON.parse(rejects.stdout) as pb.RejectList__Output;
    expect(list.total).toBe('37');
    expect(list.counts).toEqual([{ schema: 'public', table: 'accounts', rows: '37' }]);
    const text = await stack.cli(['job', 'rejects', jobId]);
    expect(text.stdout).toMatch(/violates check constraint/);
    expect(text.stdout).not.toContain('much too long'); // row values only with --rows

    const report = await stack.cli(['job', 'report', jobId, '--json']);
    expect(report.code, report.stderr).toBe(0);
    const rep = JSON.parse(report.stdout) as pb.JobReport__Output;
    const t = rep.tables.find((x) => x.table === 'accounts')!;
    expect(t.quarantined).toBe('37');
    expect(Number(t.inserted) + Number(t.updated)).toBe(N - 37);
    expect(t.updated).toBe(String(5000 - bad.filter((id) => id <= 5000).length));
    expect(t.verification).toMatch(/^differs: .*37/);

    // the logs never carry row values
    expect(stack.logs()).not.toContain('much too long');
  });
});
