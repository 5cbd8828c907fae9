import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestStack, waitFor, startRegions, stopRegions, type PgCluster } from '../harness/index.js';
import { Api } from '../harness/api.js';
import type { pb } from '../../packages/shared/src/index.js';

/**
 * Job reports: made and kept when the job ends (nobody asks), made on request for a job that has
 * none (an older job), and "not verified: <reason>" — not a stuck job or a failed call — when a
 * database cannot be reached.
 */
let stack: TestStack;
let api: Api;
let a: PgCluster;
let b: PgCluster;

beforeAll(async () => {
  ({ stack, api, a, b } = await startRegions());
  const ddl = 'CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);';
  await a.createDatabase('app', ddl + "INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 3000) g;");
  await b.createDatabase('app', ddl);
  await api.connection('src', a, 'app', 'a');
  await api.connection('dst', b, 'app', 'b');
});

afterAll(() => stopRegions({ stack, api }));

const kept = async (id: string) =>
  (await a.sql('control')<{ report: pb.JobReport__Output }[]>`SELECT report FROM job_reports WHERE job_id = ${id}`)[0]?.report;

describe('job reports', () => {
  it('are kept when the job ends, made again for a job without one, and say why a table is not verified', async () => {
    const job = await api.call<pb.Job__Output>('StartSync', { from: 'src', to: 'dst' });
    expect((await api.waitJob(job.id)).state).toBe('JOB_STATE_COMPLETED');
    await waitFor(async () => (await kept(job.id)) !== undefined, { timeoutMs: 60_000, what: 'the report kept at the job end' });
    const t = (await kept(job.id))!.tables;
    expect(t.map((x) => [x.table, Number(x.rows_read), Number(x.inserted), x.verification])).toEqual([['items', 3000, 3000, 'match: 3000 rows']]);

    // A job from before reports were kept: made on request, then kept.
    await a.sql('control')`DELETE FROM job_reports WHERE job_id = ${job.id}`;
    const again = await api.call<pb.JobReport__Output>('GetJobReport', { id: job.id });
    expect(again.tables).toMatchObject([{ table: 'items', verification: 'match: 3000 rows' }]);
    expect(await kept(job.id)).toBeDefined();

    // The target cannot be reached: the report says so, in bounded time; the job stays completed.
    await a.sql('control')`DELETE FROM job_reports WHERE job_id = ${job.id}`;
    await b.kill();
    try {
      const t0 = Date.now();
      const r = await stack.cli(['job', 'report', job.id, '--json']);
      expect(r.code, r.stderr).toBe(0);
      const rep = JSON.parse(r.stdout) as pb.JobReport__Output;
      expect(rep.state).toBe('completed');
      expect(rep.tables).toHaveLength(1);
      expect(rep.tables[0]!.verification).toMatch(/^not verified: .*; quarantined rows unknown: /);
      expect(rep.tables[0]!.rows_read).toBe('3000');
      expect(Date.now() - t0).toBeLessThan(60_000);
      expect((await api.call<pb.Job__Output>('GetJob', { id: job.id })).state).toBe('JOB_STATE_COMPLETED');
    } finally {
      await b.start();
    }
    // The crash took back nothing the job had reported done: its sessions commit with synchronous_commit
    // on, though these clusters run with it off (with it off, the primary key rebuilt at the load's end was lost).
    const [{ keys, set_aside }] = await b.sql('app')<{ keys: number; set_aside: number }[]>`
      SELECT (SELECT count(*)::int FROM pg_index WHERE indrelid = 'items'::regclass AND indisprimary) AS keys,
             (SELECT count(*)::int FROM syncflow.deferred_indexes) AS set_aside`;
    expect({ keys, set_aside }).toEqual({ keys: 1, set_aside: 0 });
  });

  it('with --verify off count the rows and compare nothing, saying so', async () => {
    await a.exec('app', "UPDATE items SET name = 'renamed' WHERE id <= 10");
    const r = await stack.cli(['sync', 'start', '--from', 'src', '--to', 'dst', '--verify', 'off', '--wait', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const { id } = JSON.parse(r.stdout) as pb.Job__Output;
    await waitFor(async () => (await kept(id)) !== undefined, { timeoutMs: 60_000, what: 'the report kept at the job end' });
    expect((await kept(id))!.tables.map((x) => [x.table, Number(x.updated), x.verification]))
      .toEqual([['items', 10, 'not verified: the job asked for no verification (--verify off; syncflow verify --tables public.items)']]);
  });
});
