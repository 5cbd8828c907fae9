import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestStack, databaseHashes, diffHashes, type PgCluster, startRegions, stopRegions } from '../harness/index.js';
import { Api } from '../harness/api.js';
import { call, grpc, loadProtos, type pb } from '../../packages/shared/src/index.js';

/**
 * Pre-flight report, --create-missing, a protected target, dry run vs real run, verify.
 */
let stack: TestStack;
let api: Api;
let a: PgCluster;
let b: PgCluster;

const SOURCE = `
  CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email text UNIQUE, balance numeric(12,2) DEFAULT 0, created timestamptz);
  CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int NOT NULL REFERENCES customers(id), note varchar(40) DEFAULT 'none',
                       total numeric(12,2) CHECK (total >= 0));
  CREATE INDEX orders_customer ON orders (customer_id);
  INSERT INTO customers SELECT g, 'name ' || g, 'c' || g || '@example.com', g * 10.5, '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 day'
    FROM generate_series(1, 2000) g;
  INSERT INTO orders SELECT g, 1 + g % 2000, 'order ' || g, g % 500 FROM generate_series(1, 8000) g;`;

beforeAll(async () => {
  ({ stack, api, a, b } = await startRegions());
  await a.createDatabase('app', SOURCE);
  // a target with a missing column (email), a narrower type (balance) and a missing table (orders)
  await b.createDatabase('partial', 'CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, balance numeric(8,2), created timestamptz);');
  // a target with the same schema and different rows, for dry run
  await b.createDatabase('dst', SOURCE + `
    UPDATE customers SET name = 'renamed' WHERE id % 7 = 0;
    DELETE FROM orders WHERE id > 7000;
    DELETE FROM orders WHERE customer_id > 1900;
    DELETE FROM customers WHERE id > 1900;
    INSERT INTO customers VALUES (5001, 'target only', NULL, 0, NULL), (5002, 'target only', NULL, 0, NULL);
    UPDATE orders SET total = 1 WHERE id % 100 = 0 AND id <= 7000;`);
  await api.connection('src', a, 'app', 'a');
  await api.connection('partial', b, 'partial', 'b');
  await api.call('CreateConnection', { name: 'dst', url: b.url('dst'), group: 'b', protected: true });
});

afterAll(() => stopRegions({ stack, api }));

async function syncflowSchema(db: string): Promise<boolean> {
  const [r] = await b.sql(db)<{ e: boolean }[]>`SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'syncflow') AS e`;
  return r!.e;
}

describe('pre-flight', () => {
  it('plan reports a missing column, a narrower type and a missing table; start refuses; nothing is written', async () => {
    const plan = await api.call<pb.Plan__Output>('PlanSync', { from: 'src', to: 'partial' });
    const byCode = (code: string) => plan.checks.filter((c) => c.code === code);
    expect(byCode('missing_column')).toMatchObject([{ severity: 'error', table: 'public.customers', column: 'email' }]);
    expect(byCode('narrowing')).toMatchObject([{ severity: 'warning', table: 'public.customers', column: 'balance' }]);
    expect(byCode('narrowing')[0]!.message).toMatch(/numeric\(12,2\) → numeric\(8,2\); values beyond 6 integer digits are refused/);
    expect(byCode('missing_table')).toMatchObject([{ severity: 'error', table: 'public.orders' }]);
    expect(Number(plan.estimated_rows)).toBeGreaterThan(0);

    const r = await stack.cli(['sync', 'plan', '--from', 'src', '--to', 'partial']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/ERROR +table public.customers: target lacks column email \(text\)/);
    expect(r.stdout).toMatch(/WARNING +table public.customers, column balance: narrower on the target/);
    expect(r.stdout).toMatch(/ERROR +table public.orders does not exist on target "partial"/);
    expect(r.stdout).toMatch(/2 error\(s\): sync start will refuse this plan/);

    const s = await stack.cli(['sync', 'start', '--from', 'src', '--to', 'partial']);
    expect(s.code).toBe(1);
    expect(s.stderr).toMatch(/^syncflow: FAILED_PRECONDITION: .*email.*orders does not exist/);
    expect(await syncflowSchema('partial')).toBe(false);
    const [{ n }] = await b.sql('partial')<{ n: number }[]>`SELECT count(*)::int AS n FROM customers`;
    expect(n).toBe(0);
  });

  it('--create-missing creates the missing table (keys, checks, defaults, index, FK) and the sync succeeds', async () => {
    await b.exec('partial', 'DROP TABLE customers; CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email text UNIQUE, balance numeric(8,2), created timestamptz);');
    const plan = await api.call<pb.Plan__Output>('PlanSync', { from: 'src', to: 'partial', create_missing: true });
    expect(plan.checks.filter((c) => c.severity === 'error')).toEqual([]);
    expect(plan.checks.find((c) => c.code === 'create_table')?.table).toBe('public.orders');
    const r = await stack.cli(['sync', 'start', '--from', 'src', '--to', 'partial', '--create-missing', '--wait']);
    expect(r.code, r.stderr + r.stdout.slice(-2000)).toBe(0);
    const src = await databaseHashes(a.sql('app'));
    const dst = await databaseHashes(b.sql('partial'));
    expect(diffHashes(src, dst)).toEqual([]);
    const defs = await b.sql('partial')<{ def: string }[]>`
      SELECT conname || ' ' || pg_get_constraintdef(oid) AS def FROM pg_constraint WHERE conrelid = 'orders'::regclass
      UNION ALL SELECT indexdef FROM pg_indexes WHERE tablename = 'orders' ORDER BY 1`;
    const all = defs.map((d) => d.def).join('\n');
    expect(all).toMatch(/orders_customer_id_fkey FOREIGN KEY \(customer_id\) REFERENCES (public\.)?customers\(id\)/);
    expect(all).toMatch(/CHECK \(\(total >= \(0\)::numeric\)\)/);
    expect(all).toMatch(/orders_pkey PRIMARY KEY \(id\)/);
    expect(all).toMatch(/CREATE INDEX orders_customer ON public\.orders USING btree \(customer_id\)/);
    const [{ d }] = await b.sql('partial')<{ d: string }[]>`SELECT column_default AS d FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'note'`;
    expect(d).toMatch(/'none'/);
  });

  it('a protected target refuses a start without --confirm <its name>', async () => {
    for (const confirm of [undefined, 'src', 'DST']) {
      const args = ['sync', 'start', '--from', 'src', '--to', 'dst', ...(confirm ? ['--confirm', confirm] : [])];
      const r = await stack.cli(args);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/^syncflow: FAILED_PRECONDITION: target connection "dst" is protected: start again with --confirm dst/);
    }
    expect(await api.status('StartSync', { from: 'src', to: 'dst' })).toBe('FAILED_PRECONDITION');
    expect(await syncflowSchema('dst')).toBe(false);
    const plan = await api.call<pb.Plan__Output>('PlanSync', { from: 'src', to: 'dst' });
    expect(plan.checks.find((c) => c.code === 'protected')?.severity).toBe('warning');
  });
});

describe('dry run', () => {
  it('counts per table what a real mirror run then reports, writing nothing', async () => {
    const before = await databaseHashes(b.sql('dst'));
    const r = await stack.cli(['sync', 'start', '--from', 'src', '--to', 'dst', '--mode', 'mirror', '--dry-run', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const plan = JSON.parse(r.stdout) as pb.Plan__Output;
    expect(diffHashes(before, await databaseHashes(b.sql('dst')))).toEqual([]);
    expect(await syncflowSchema('dst')).toBe(false);
    const dry = new Map(plan.dry_run.map((t) => [t.table, t]));
    expect(dry.get('customers')).toMatchObject({ inserts: '100', deletes: '2' });
    expect(Number(dry.get('customers')!.updates)).toBe(271); // ids divisible by 7 up to 1900
    const job = await api.call<pb.Job__Output>('StartSync', { from: 'src', to: 'dst', mode: 'SYNC_MODE_MIRROR', confirm: 'dst' });
    expect((await api.waitJob(job.id)).state).toBe('JOB_STATE_COMPLETED');
    const report = await api.call<pb.JobReport__Output>('GetJobReport', { id: job.id });
    for (const t of report.tables) {
      const d = dry.get(t.table)!;
      expect({ table: t.table, inserted: t.inserted, updated: t.updated, deleted: t.deleted })
        .toEqual({ table: t.table, inserted: d.inserts, updated: d.updates, deleted: d.deletes });
      expect(t.verification).toMatch(/^match/);
    }
  });
});

describe('verify', () => {
  it('finds a single changed row in a 1-million-row table and names its key', async () => {
    const load = 'CREATE TABLE big (id bigint PRIMARY KEY, v int NOT NULL); INSERT INTO big SELECT g, g % 1000 FROM generate_series(1, 1000000) g; ANALYZE big;';
    await a.createDatabase('big');
    await b.createDatabase('big');
    await Promise.all([a.exec('big', load), b.exec('big', load)]);
    await b.exec('big', 'UPDATE big SET v = -1 WHERE id = 777777');
    await api.connection('big-a', a, 'big', 'a');
    await api.connection('big-b', b, 'big', 'b');
    const t0 = Date.now();
    const r = await stack.cli(['verify', '--from', 'big-a', '--to', 'big-b', '--json']);
    const ms = Date.now() - t0;
    expect(r.code, r.stderr).toBe(1);
    const rep = JSON.parse(r.stdout) as pb.VerifyReport__Output;
    expect(rep.match).toBe(false);
    expect(rep.tables).toMatchObject([{ table: 'big', source_rows: '1000000', target_rows: '1000000', different: ['(777777)'], only_source: [], only_target: [], differences: '1' }]);
    const text = await stack.cli(['verify', '--from', 'big-a', '--to', 'big-b', '--tables', 'big']);
    expect(text.stdout).toMatch(/big: different: \(777777\)/);
    console.log(`verify of 1,000,000 rows: ${ms} ms`);
  });

  it('compares a keyless table as multisets (duplicates counted), listing only the groups of row hashes that differ', async () => {
    // 300 000 rows, each content twice; the target lacks one copy of 40 contents and all of 10 others, and has 25 of its own.
    const rows = (order: string) => `INSERT INTO ev SELECT g % 150000, 'k' || (g % 150000) FROM generate_series(1, 300000) g ORDER BY g ${order};`;
    const load = `CREATE TABLE ev (at int NOT NULL, kind text NOT NULL); ${rows('ASC')}`;
    await a.createDatabase('ev');
    await b.createDatabase('ev');
    await Promise.all([a.exec('ev', load), b.exec('ev', load)]);
    await b.exec('ev', `DELETE FROM ev WHERE ctid IN (SELECT min(ctid) FROM ev WHERE at BETWEEN 1000 AND 1039 GROUP BY at);
      DELETE FROM ev WHERE at BETWEEN 2000 AND 2009;
      INSERT INTO ev SELECT -g, 'target only' FROM generate_series(1, 25) g;`);
    await api.connection('ev-a', a, 'ev', 'a');
    await api.connection('ev-b', b, 'ev', 'b');
    const r = await stack.cli(['verify', '--from', 'ev-a', '--to', 'ev-b', '--json']);
    expect(r.code, r.stderr).toBe(1);
    const rep = JSON.parse(r.stdout) as pb.VerifyReport__Output;
    // only on the source: 40 single copies + 10 contents x 2 copies; only on the target: 25 rows
    expect(rep.tables).toMatchObject([{ table: 'ev', source_rows: '300000', target_rows: String(300000 - 40 - 20 + 25), differences: String(60 + 25) }]);
    // equal multisets in a different physical order match
    await b.exec('ev', `TRUNCATE ev; ${rows('DESC')}`);
    const same = await stack.cli(['verify', '--from', 'ev-a', '--to', 'ev-b', '--json']);
    expect(same.code, same.stderr).toBe(0);
    expect((JSON.parse(same.stdout) as pb.VerifyReport__Output).tables).toMatchObject([{ table: 'ev', match: true, differences: '0' }]);

    // Bad groupings asked of an agent directly: INVALID_ARGUMENT naming what is wrong.
    const ready = stack.logs().split('\n').find((l) => l.includes('"msg":"agent ready"') && l.includes('"group":"a"'))!;
    const client = new (loadProtos().proto.syncflow.v1.AgentService)(JSON.parse(ready.slice(ready.indexOf('{'))).address as string, grpc.credentials.createInsecure());
    try {
      const [{ sealed_url }] = await a.sql('control')<{ sealed_url: string }[]>`SELECT sealed_url FROM connections WHERE name = 'ev-a'`;
      const ask = (extra: Partial<pb.HashRangesRequest>) => call(client, 'HashRanges', { connection: { name: 'ev-a', sealed_url }, schema: 'public', table: 'ev', columns: ['at', 'kind'], key: [], ...extra });
      await expect(ask({ prefix_digits: 9 })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT, details: 'prefix_digits must be 1 to 5, got 9' });
      for (const prefixes of [['0a', 'b'], ['zz'], ['0A'], ['abcdef']]) {
        await expect(ask({ rows: true, prefixes })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT, details: expect.stringContaining('prefixes must be lowercase hex strings of one length') });
      }
      await expect(ask({})).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT, details: expect.stringContaining('prefix_digits or rows') });
      // a good one: 16 groups of one hex digit, 300 000 rows in all
      const groups = await ask({ prefix_digits: 1 }) as pb.HashRangesReply__Output;
      expect(groups.prefixes).toHaveLength(16);
      expect(groups.prefixes.reduce((n, g) => n + Number(g.rows), 0)).toBe(300000);
    } finally {
      client.close();
    }
  });
});
