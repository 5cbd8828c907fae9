import { afterAll, beforeAll, expect, it } from 'vitest';
import { TestStack, type PgCluster, startRegions, stopRegions } from '../harness/index.js';
import { Api } from '../harness/api.js';
import { expectSame } from '../fixtures/reliability.js';
import type { pb } from '../../packages/shared/src/index.js';

/**
 * A sync of 50 tables with 8 tasks at once per agent never opens more connections to a database than
 * SYNCFLOW_DB_POOL_MAX (3 here) per agent, plus, on the source, the one connection that holds the
 * job's snapshot (application_name syncflow-snapshot-*), measured by polling pg_stat_activity.
 */
const POOL_MAX = 3;
let stack: TestStack;
let api: Api;
let a: PgCluster;
let b: PgCluster;

beforeAll(async () => {
  ({ stack, api, a, b } = await startRegions({ agentEnv: { SYNCFLOW_DB_POOL_MAX: String(POOL_MAX), SYNCFLOW_AGENT_CONCURRENCY: '8' } }));
  const ddl = Array.from({ length: 50 }, (_, i) => `CREATE TABLE t${i} (id int PRIMARY KEY, v text NOT NULL);`).join('\n');
  const data = Array.from({ length: 50 }, (_, i) => `INSERT INTO t${i} SELECT g, md5(g::text) FROM generate_series(1, ${2000 + i * 100}) g;`).join('\n');
  await a.createDatabase('src', ddl + data + 'ANALYZE;');
  await b.createDatabase('dst', ddl);
  await api.connection('src', a, 'src', 'a');
  await api.connection('dst', b, 'dst', 'b');
});

afterAll(() => stopRegions({ stack, api }));

async function peak(cluster: PgCluster, db: string, seen: { pool: number; snapshot: number }): Promise<void> {
  const [r] = await cluster.sql()<{ pool: number; snapshot: number }[]>`
    SELECT count(*) FILTER (WHERE application_name LIKE 'syncflow-agent-%')::int AS pool,
           count(*) FILTER (WHERE application_name LIKE 'syncflow-snapshot-%')::int AS snapshot
    FROM pg_stat_activity WHERE datname = ${db}`;
  seen.pool = Math.max(seen.pool, r!.pool);
  seen.snapshot = Math.max(seen.snapshot, r!.snapshot);
}

it(`a 50-table sync stays within ${POOL_MAX} pooled connections per agent and database (+1 snapshot holder on the source)`, async () => {
  const src = { pool: 0, snapshot: 0 };
  const dst = { pool: 0, snapshot: 0 };
  let done = false;
  const poll = (async () => {
    while (!done) {
      await Promise.all([peak(a, 'src', src), peak(b, 'dst', dst)]);
      await new Promise((r) => setTimeout(r, 25));
    }
  })();
  const job = await api.call<pb.Job__Output>('StartSync', { from: 'src', to: 'dst', mode: 'SYNC_MODE_UPSERT', batch_bytes: 64 * 1024 });
  const final = await api.waitJob(job.id, 90_000).catch(async (e) => { const j = await api.call<pb.Job__Output>('GetJob', { id: job.id }); throw new Error(`${(e as Error).message} ${JSON.stringify(j.tasks.map((t) => [t.table, t.state, t.attempts, t.error]))}\n${stack.logs().split('\n').filter((l) => !l.includes('"level":30')).slice(-40).join('\n')}`); }).finally(() => { done = true; });
  await poll;
  console.log(`[pool] peak connections: source ${src.pool} pooled + ${src.snapshot} snapshot, target ${dst.pool} pooled (limit ${POOL_MAX} per agent)`);
  expect(final.state, final.error).toBe('JOB_STATE_COMPLETED');
  expect(final.tasks).toHaveLength(50);
  expect(src.pool).toBeGreaterThan(0);
  expect(src.pool).toBeLessThanOrEqual(POOL_MAX);
  expect(src.snapshot).toBeLessThanOrEqual(1);
  expect(dst.pool).toBeLessThanOrEqual(POOL_MAX);
  expect(await expectSame(a.sql('src'), b.sql('dst'))).toEqual({ diff: [], duplicates: 0 });
});
