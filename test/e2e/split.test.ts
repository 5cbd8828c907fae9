import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestStack, databaseHashes, diffHashes, waitFor, type PgCluster, startRegions, stopRegions } from '../harness/index.js';
import { Api } from '../harness/api.js';
import type { pb } from '../../packages/shared/src/index.js';

// Big tables are cut into key ranges (keyless ones into block ranges) that load as separate tasks.
let stack: TestStack;
let api: Api;
let a: PgCluster;
let b: PgCluster;

const SCHEMA = `
  CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL);
  CREATE TABLE orders (region text NOT NULL, id int NOT NULL, customer_id bigint NOT NULL REFERENCES customers(id), note text,
                       PRIMARY KEY (region, id));
  CREATE TABLE clicks (at timestamptz, url text);`;

beforeAll(async () => {
  ({ stack, api, a, b } = await startRegions({ agentEnv: { SYNCFLOW_AGENT_CONCURRENCY: '3' } }));
  await a.createDatabase('shop', SCHEMA + `
    INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 30000) g;
    INSERT INTO orders SELECT (ARRAY['eu','us','ap'])[1 + g % 3], g, 1 + g % 30000, CASE WHEN g % 7 = 0 THEN NULL ELSE 'n' || g END FROM generate_series(1, 60000) g;
    INSERT INTO clicks SELECT timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second', '/p/' || (g % 500) FROM generate_series(1, 40000) g;
    INSERT INTO clicks SELECT * FROM clicks WHERE url = '/p/7';
    ANALYZE;`);
  await b.createDatabase('shop', SCHEMA);
  await api.connection('a', a, 'shop', 'a');
  await api.connection('b', b, 'shop', 'b');
});

afterAll(() => stopRegions({ stack, api }));

async function sync(mode: string, extra: object = {}): Promise<pb.Job__Output> {
  const job = await api.call<pb.Job__Output>('StartSync', { from: 'a', to: 'b', mode, split_rows: 10_000, batch_bytes: 64 * 1024, ...extra });
  const done = await api.waitJob(job.id);
  expect(done.state, done.error).toBe('JOB_STATE_COMPLETED');
  return done;
}

/** `job report`: one line per table, its parts' counts summed, every table verified as a whole. */
async function expectOneLinePerTable(job: pb.Job__Output): Promise<pb.JobReport__Output> {
  const r = await stack.cli(['job', 'report', job.id, '--json']);
  expect(r.code, r.stderr).toBe(0);
  const rep = JSON.parse(r.stdout) as pb.JobReport__Output;
  const tables = [...new Set(job.tasks.map((t) => t.table))].sort();
  expect(rep.tables.map((t) => t.table).sort()).toEqual(tables);
  for (const t of rep.tables) {
    const parts = job.tasks.filter((x) => x.table === t.table);
    expect(t.rows_read, t.table).toBe(String(parts.reduce((s, x) => s + Number(x.rows), 0)));
    expect(t.bytes, t.table).toBe(String(parts.reduce((s, x) => s + Number(x.bytes), 0)));
    expect(t.verification, t.table).toMatch(/^match: /);
    expect(Number(t.duration_ms), t.table).toBeGreaterThan(0);
  }
  return rep;
}

describe('big tables in parts', () => {
  it('plans key ranges and block ranges and loads them into equal tables', async () => {
    const plan = await api.call<pb.Plan__Output>('PlanSync', { from: 'a', to: 'b', split_rows: 10_000 });
    const parts = Object.fromEntries(plan.tables.map((t) => [t.name, t.parts]));
    expect(parts.orders).toBeGreaterThanOrEqual(4);
    expect(parts.customers).toBeGreaterThanOrEqual(2);
    expect(parts.clicks).toBeGreaterThanOrEqual(2);
    const job = await sync('SYNC_MODE_UPSERT');
    const byTable = (name: string) => job.tasks.filter((t) => t.table === name);
    expect(byTable('orders').length).toBe(parts.orders);
    expect(byTable('orders').reduce((s, t) => s + Number(t.rows), 0)).toBe(60000);
    // SYNCFLOW_AGENT_CONCURRENCY holds with many parts queued at once: a task keeps its slot from
    // before its "started" to after its "done", so no more than 3 of the one source agent overlap.
    const edges = job.tasks.flatMap((t) => [[Date.parse(t.started_at), 1], [Date.parse(t.finished_at), -1]] as const)
      .sort((x, y) => x[0] - y[0] || x[1] - y[1]);
    let running = 0, most = 0;
    for (const [, d] of edges) most = Math.max(most, (running += d));
    expect(most, 'tasks running at once on the one source agent').toBeLessThanOrEqual(3);
    expect(diffHashes(await databaseHashes(a.sql('shop')), await databaseHashes(b.sql('shop')))).toEqual([]);

    // The report is made when the job ends and kept in the control DB, without anyone asking for it.
    let kept: pb.JobReport__Output | undefined;
    await waitFor(async () => {
      kept = (await a.sql('control')<{ report: pb.JobReport__Output }[]>`SELECT report FROM job_reports WHERE job_id = ${job.id}`)[0]?.report;
      return kept !== undefined;
    }, { timeoutMs: 120_000, what: 'the job report kept at the job end' });
    const rep = await expectOneLinePerTable(job);
    expect(kept!.tables.map((t) => t.table).sort()).toEqual(rep.tables.map((t) => t.table).sort());
    const orders = rep.tables.find((t) => t.table === 'orders')!;
    expect({ read: orders.rows_read, inserted: orders.inserted, updated: orders.updated }).toEqual({ read: '60000', inserted: '60000', updated: '0' });
    expect(orders.verification).toBe('match: 60000 rows');
    expect(rep.tables.find((t) => t.table === 'customers')!.verification).toBe('match: 30000 rows');
    expect(rep.tables.find((t) => t.table === 'clicks')!).toMatchObject({ rows_read: '40080', verification: 'match: 40080 rows' });
    // one line per table in the text form too
    const text = await stack.cli(['job', 'report', job.id]);
    expect(text.code, text.stderr).toBe(0);
    for (const name of ['orders', 'customers', 'clicks']) expect(text.stdout.split('\n').filter((l) => new RegExp(`^(public\\.)?${name} `).test(l)).length, text.stdout).toBe(1);

    // A re-sync of what was loaded decodes the tracked changes: a big table in 2 parts at most
    // (TRACKED_PARTS); a keyless one, hashed, stays whole.
    const again = Object.fromEntries((await api.call<pb.Plan__Output>('PlanSync', { from: 'a', to: 'b', split_rows: 10_000 })).tables.map((t) => [t.name, t]));
    expect(again.orders!.notes.join(' ')).toMatch(/decoded from change slot/);
    expect([again.orders!.parts, again.customers!.parts, again.clicks!.parts]).toEqual([2, 2, 1]);
  });

  it('mirrors changes across range edges: deletes at the ends of every range, updates and inserts', async () => {
    await a.exec('shop', `
      DELETE FROM orders WHERE id % 997 = 0 OR id IN (1, 2, 60000);
      UPDATE orders SET note = 'changed' WHERE id % 1009 = 0;
      INSERT INTO orders SELECT 'zz', g, 1, 'late' FROM generate_series(1, 50) g;
      DELETE FROM clicks WHERE url = '/p/9';`);
    await b.exec('shop', `INSERT INTO orders VALUES ('aa', 1, 1, 'only on the target'), ('mm', 5, 1, 'only on the target');`);
    // Rows written on the target by hand are not in the source's tracked changes: --diff hash finds them
    // (diff-resync.test.ts shows a --diff auto job missing such a write).
    const job = await sync('SYNC_MODE_MIRROR', { diff: 'hash' });
    expect(job.tasks.filter((t) => t.table === 'orders').length).toBeGreaterThanOrEqual(4);
    expect(diffHashes(await databaseHashes(a.sql('shop')), await databaseHashes(b.sql('shop')))).toEqual([]);
    const rep = await expectOneLinePerTable(job);
    const [{ n }] = await a.sql('shop')<{ n: string }[]>`SELECT count(*)::text AS n FROM orders`;
    expect(rep.tables.find((t) => t.table === 'orders')!.verification).toBe(`match: ${n} rows`);

    // A rollback after the report marks it; the counts stay what the job did.
    const rb = await stack.cli(['job', 'rollback', job.id]);
    expect(rb.code, rb.stderr).toBe(0);
    const after = await stack.cli(['job', 'report', job.id, '--json']);
    const marked = JSON.parse(after.stdout) as pb.JobReport__Output;
    expect(marked.rolled_back_at).not.toBe('');
    expect(marked.tables).toEqual(rep.tables);
    const [{ at }] = await a.sql('control')<{ at: string }[]>`SELECT report->>'rolled_back_at' AS at FROM job_reports WHERE job_id = ${job.id}`;
    expect(at).toBe(marked.rolled_back_at);
    const text = await stack.cli(['job', 'report', job.id]);
    expect(text.stdout).toMatch(/rolled back at .*\n.*as of the job's end, before the rollback/);
    // The summary of `sync start --wait`: one line per table too, with its number of parts.
    const cli = await stack.cli(['sync', 'start', '--from', 'a', '--to', 'b', '--mode', 'mirror', '--split-rows', '10000', '--batch-bytes', '64KiB', '--wait']);
    expect(cli.code, cli.stderr + cli.stdout.slice(-3000)).toBe(0);
    expect(cli.stdout).toMatch(/TABLE +PARTS +STATE/);
    for (const name of ['orders', 'customers', 'clicks']) {
      const lines = cli.stdout.split('\n').filter((l) => new RegExp(`^(public\\.)?${name} +\\d+ +done `).test(l));
      expect(lines.length, cli.stdout).toBe(1);
    }
  });
});
