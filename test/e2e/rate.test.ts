import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestStack, databaseHashes, diffHashes, waitFor, type PgCluster, startRegions, stopRegions } from '../harness/index.js';
import { Api } from '../harness/api.js';
import type { pb } from '../../packages/shared/src/index.js';

// Rate limits are a contract with the operator, so they are checked here; throughput is the bench's business.
let stack: TestStack;
let api: Api;
let a: PgCluster;
let b: PgCluster;
const ROWS = 24_000;

beforeAll(async () => {
  ({ stack, api, a, b } = await startRegions());
  await a.createDatabase('m', `CREATE TABLE readings (id int PRIMARY KEY, v text);
    INSERT INTO readings SELECT g, md5(g::text) FROM generate_series(1, ${ROWS}) g;`);
  await b.createDatabase('m', 'CREATE TABLE readings (id int PRIMARY KEY, v text);');
  await api.connection('a', a, 'm', 'a');
  await api.connection('b', b, 'm', 'b');
});

afterAll(() => stopRegions({ stack, api }));

const elapsedRate = (job: pb.Job__Output) => {
  const t = job.tasks[0]!;
  const seconds = (Date.parse(t.finished_at) - Date.parse(t.started_at)) / 1000;
  return Number(t.rows) / seconds;
};

describe('rate limits', () => {
  it('hold a job to N rows per second, within 10 %', async () => {
    const limit = 8_000;
    // 64 KiB batches of ~40-byte rows: ~1600 rows each, so the limit is felt batch by batch.
    const job = await api.call<pb.Job__Output>('StartSync', { from: 'a', to: 'b', max_rows_per_s: limit, batch_bytes: 64 * 1024 });
    const done = await api.waitJob(job.id);
    expect(done.state, done.error).toBe('JOB_STATE_COMPLETED');
    const rate = elapsedRate(done);
    expect(rate).toBeLessThanOrEqual(limit * 1.1);
    expect(rate).toBeGreaterThan(limit * 0.6); // a floor far below the limit: the machine may be busy
    expect(diffHashes(await databaseHashes(a.sql('m')), await databaseHashes(b.sql('m')))).toEqual([]);
  });

  it('can be changed while the job runs', async () => {
    await b.exec('m', 'TRUNCATE readings');
    const job = await api.call<pb.Job__Output>('StartSync', { from: 'a', to: 'b', max_rows_per_s: 2_000, batch_bytes: 64 * 1024 });
    await waitFor(async () => ((await b.sql('m')<{ n: number }[]>`SELECT count(*)::int AS n FROM readings`)[0]!.n > 0), { what: 'the first rows', timeoutMs: 30_000 });
    const r = await stack.cli(['job', 'rate', job.id, '--rows', '0']);
    expect(r.code, r.stderr).toBe(0);
    const done = await api.waitJob(job.id, 60_000);
    expect(done.state, done.error).toBe('JOB_STATE_COMPLETED');
    // At 2000 rows/s the 24,000 rows would take 12 s; lifting the limit finishes well before.
    expect(elapsedRate(done)).toBeGreaterThan(2_000 * 1.2);
    expect(await api.status('SetJobRate', { id: job.id, max_rows_per_s: 1 })).toBe('FAILED_PRECONDITION');
  });
});
