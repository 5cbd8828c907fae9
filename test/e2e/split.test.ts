import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestStack, databaseHashes, diffHashes, type PgCluster, startRegions, stopRegions } from '../harness/index.js';
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

async function sync(mode: string): Promise<pb.Job__Output> {
  const job = await api.call<pb.Job__Output>('StartSync', { from: 'a', to: 'b', mode, split_rows: 10_000, batch_bytes: 64 * 1024 });
  const done = await api.waitJob(job.id);
  expect(done.state, done.error).toBe('JOB_STATE_COMPLETED');
  return done;
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
    expect(diffHashes(await databaseHashes(a.sql('shop')), await databaseHashes(b.sql('shop')))).toEqual([]);
  });

  it('mirrors changes across range edges: deletes at the ends of every range, updates and inserts', async () => {
    await a.exec('shop', `
      DELETE FROM orders WHERE id % 997 = 0 OR id IN (1, 2, 60000);
      UPDATE orders SET note = 'changed' WHERE id % 1009 = 0;
      INSERT INTO orders SELECT 'zz', g, 1, 'late' FROM generate_series(1, 50) g;
      DELETE FROM clicks WHERE url = '/p/9';`);
    await b.exec('shop', `INSERT INTO orders VALUES ('aa', 1, 1, 'only on the target'), ('mm', 5, 1, 'only on the target');`);
    const job = await sync('SYNC_MODE_MIRROR');
    expect(job.tasks.filter((t) => t.table === 'orders').length).toBeGreaterThanOrEqual(4);
    expect(diffHashes(await databaseHashes(a.sql('shop')), await databaseHashes(b.sql('shop')))).toEqual([]);
  });
});
