import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestStack, stopRegions, databaseHashes, diffHashes, sleep, type PgCluster } from '../harness/index.js';
import { Api } from '../harness/api.js';
import { schemaOnly } from '../fixtures/chinook.js';
import type { pb } from '../../packages/shared/src/index.js';

// Functional, not timed: two tasks at a time per agent, a deliberately small database pool, a schema
// five FK levels deep with the constraints present on the target. The sync must finish on first
// attempts with no FK violation, and no agent may hold more connections to a database than its pool.

const POOL_MAX = 2; // the smallest SYNCFLOW_DB_POOL_MAX allowed
const CONCURRENCY = 2;

const SCHEMA = `
CREATE TABLE regions (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE categories (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE customers (id int PRIMARY KEY, region_id int NOT NULL REFERENCES regions, name text NOT NULL);
CREATE TABLE products (id int PRIMARY KEY, category_id int NOT NULL REFERENCES categories, name text NOT NULL, blurb text NOT NULL);
CREATE TABLE orders (id int PRIMARY KEY, customer_id int NOT NULL REFERENCES customers, placed date NOT NULL, note text);
CREATE TABLE order_lines (order_id int NOT NULL REFERENCES orders, line int NOT NULL, product_id int NOT NULL REFERENCES products,
  qty int NOT NULL, PRIMARY KEY (order_id, line));
CREATE TABLE shipments (id int PRIMARY KEY, order_id int NOT NULL, line int NOT NULL, carrier text NOT NULL,
  FOREIGN KEY (order_id, line) REFERENCES order_lines);
`;

const DATA = `
INSERT INTO regions SELECT g, 'region ' || g FROM generate_series(1, 10) g;
INSERT INTO categories SELECT g, 'category ' || g FROM generate_series(1, 20) g;
INSERT INTO customers SELECT g, 1 + g % 10, 'customer ' || md5(g::text) FROM generate_series(1, 4000) g;
INSERT INTO products SELECT g, 1 + g % 20, 'product ' || g, repeat(md5(g::text), 4) FROM generate_series(1, 3000) g;
INSERT INTO orders SELECT g, 1 + g % 4000, date '2024-01-01' + g % 365, CASE WHEN g % 3 = 0 THEN md5(g::text) END FROM generate_series(1, 12000) g;
INSERT INTO order_lines SELECT o, l, 1 + (o * l) % 3000, l FROM generate_series(1, 12000) o, generate_series(1, 3) l;
INSERT INTO shipments SELECT g, 1 + g % 12000, 1 + g % 3, (ARRAY['dhl', 'ups', 'post'])[1 + g % 3] || ' ' || md5(g::text) FROM generate_series(1, 12000) g;
ANALYZE;
`;

const PARENTS: Record<string, string[]> = {
  customers: ['regions'], products: ['categories'], orders: ['customers'], order_lines: ['orders', 'products'], shipments: ['order_lines'],
};

let stack: TestStack;
let api: Api;
let a: PgCluster;
let b: PgCluster;

beforeAll(async () => {
  stack = await TestStack.start({
    agentEnv: { SYNCFLOW_AGENT_CONCURRENCY: String(CONCURRENCY), SYNCFLOW_DB_POOL_MAX: String(POOL_MAX) },
  });
  api = new Api(stack.coordinatorAddress);
  a = stack.region('a');
  b = stack.region('b');
  await a.createDatabase('par', SCHEMA + DATA);
  await schemaOnly(a, 'par', b, 'par');
  await api.connection('par-a', a, 'par', 'a');
  await api.connection('par-b', b, 'par', 'b');
});

afterAll(() => stopRegions({ stack, api }));

/** Connections to database `par` per syncflow application_name prefix, right now. */
async function connections(c: PgCluster): Promise<{ agent: number; snapshot: number }> {
  const rows = await c.sql()<{ app: string; n: number }[]>`
    SELECT application_name AS app, count(*)::int AS n FROM pg_stat_activity
    WHERE datname = 'par' AND application_name LIKE 'syncflow-%' GROUP BY 1`;
  let agent = 0;
  let snapshot = 0;
  for (const r of rows) {
    if (r.app.startsWith('syncflow-snapshot-')) snapshot += r.n;
    else agent += r.n;
  }
  return { agent, snapshot };
}

describe(`a five-level FK schema with ${CONCURRENCY} tasks per agent and SYNCFLOW_DB_POOL_MAX=${POOL_MAX}`, () => {
  it('loads parents before children, on first attempts, within the connection limit', async () => {
    const job = await api.call<pb.Job__Output>('StartSync', { from: 'par-a', to: 'par-b', mode: 'SYNC_MODE_UPSERT', batch_bytes: 64 * 1024,
      keep_indexes: true }); // constraints present during the load: the FK levels alone must keep them satisfied
    const peak = { a: { agent: 0, snapshot: 0, samples: 0 }, b: { agent: 0, snapshot: 0, samples: 0 } };
    let done: pb.Job__Output | null = null;
    const deadline = Date.now() + 180_000;
    while (!done) {
      for (const [name, c] of [['a', a], ['b', b]] as const) {
        const now = await connections(c);
        peak[name].agent = Math.max(peak[name].agent, now.agent);
        peak[name].snapshot = Math.max(peak[name].snapshot, now.snapshot);
        peak[name].samples++;
      }
      const j = await api.call<pb.Job__Output>('GetJob', { id: job.id });
      if (!['JOB_STATE_PENDING', 'JOB_STATE_RUNNING'].includes(j.state as string)) done = j;
      else if (Date.now() > deadline) throw new Error(`job still ${j.state} after 180 s\n${stack.logs().slice(-5000)}`);
      else await sleep(20);
    }
    expect(done.state, `${done.error}\n${stack.logs().slice(-5000)}`).toBe('JOB_STATE_COMPLETED');

    // Every task succeeded on its first attempt (an FK violation would have failed one), and in
    // several batches (small batch_bytes), so the connection samples cover a real stretch of work.
    expect(done.tasks.map((t) => `${t.table}:${t.attempts}`).sort()).toEqual(
      ['categories', 'customers', 'order_lines', 'orders', 'products', 'regions', 'shipments'].map((t) => `${t}:1`));
    expect(Number(done.tasks.find((t) => t.table === 'order_lines')!.batches)).toBeGreaterThan(3);
    const logs = await api.call<{ entries: { message: string }[] }>('GetJobLogs', { id: job.id });
    expect(logs.entries.filter((e) => /foreign key|violat/i.test(e.message))).toEqual([]);

    // A child table starts only after each of its parents has finished.
    const byTable = new Map(done.tasks.map((t) => [t.table, t]));
    for (const [child, parents] of Object.entries(PARENTS)) {
      for (const p of parents) {
        expect(Date.parse(byTable.get(child)!.started_at), `${child} started before ${p} finished`).toBeGreaterThanOrEqual(Date.parse(byTable.get(p)!.finished_at));
      }
    }

    // The connection limit: each agent opens at most SYNCFLOW_DB_POOL_MAX connections to one
    // database; on the source, the job's snapshot holder (application_name syncflow-snapshot-*)
    // is one more connection outside the pool, hence POOL_MAX + 1 there.
    console.log(`connection peaks on database par: ${JSON.stringify(peak)}`);
    expect(peak.a.agent + peak.b.agent, 'no syncflow connection was ever seen: the sampling saw nothing').toBeGreaterThan(0);
    expect(peak.a.agent, `source agent connections (peak over ${peak.a.samples} samples)`).toBeLessThanOrEqual(POOL_MAX);
    expect(peak.a.snapshot).toBeLessThanOrEqual(1);
    expect(peak.b.agent, `target agent connections (peak over ${peak.b.samples} samples)`).toBeLessThanOrEqual(POOL_MAX);
    expect(peak.b.snapshot).toBe(0);

    // Same rows, and every FK present and validated on the target.
    expect(diffHashes(await databaseHashes(a.sql('par'), ['public']), await databaseHashes(b.sql('par'), ['public']))).toEqual([]);
    const [fk] = await b.sql('par')<{ n: number }[]>`
      SELECT count(*)::int AS n FROM pg_constraint WHERE contype = 'f' AND convalidated AND connamespace = 'public'::regnamespace`;
    expect(fk!.n).toBe(6);
  });
});
