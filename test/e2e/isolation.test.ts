import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { TestStack, type PgCluster, startRegions, stopRegions } from '../harness/index.js';
import { Api } from '../harness/api.js';
import type { pb } from '../../packages/shared/src/index.js';

/**
 * A concurrent writer on the target during an upsert sync (batches in READ COMMITTED; a batch that
 * meets a row changed after it began runs again, locking its rows before their before-images): rows
 * with keys the source does not have are kept; a row the writer holds is waited for, then set to the
 * source's value (the source wins for the rows it sends), and the writer's committed value is what
 * the undo log keeps — a rollback brings it back; a row the writer deleted meanwhile is inserted
 * again, logged as an insert — a rollback deletes it.
 */
let stack: TestStack;
let api: Api;
let a: PgCluster;
let b: PgCluster;

beforeAll(async () => {
  ({ stack, api, a, b } = await startRegions());
  await a.createDatabase('app', `CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL);
                       INSERT INTO t SELECT g, 'src' || g FROM generate_series(1, 60000) g;`);
  await b.createDatabase('app', `CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL);
                       INSERT INTO t SELECT g, 'old' FROM generate_series(1, 60000) g;`);
  await api.connection('src', a, 'app', 'a');
  await api.connection('dst', b, 'app', 'b');
});

afterAll(() => stopRegions({ stack, api }));

describe('a concurrent writer on the target', () => {
  it('keeps its own rows, is waited for on shared rows, and its value survives in the undo log', async () => {
    // Two writers, each holding its row until a batch waits for it: one deletes row 40000 (its batch
    // comes first), the other updates row 50000 (a later batch).
    const deleter = await b.sql('app').reserve();
    const writer = await b.sql('app').reserve();
    /** Resolves once a backend of the target waits for a row lock (a batch meeting a writer's row). */
    const batchWaits = async () => {
      for (let i = 0; i < 240; i++) {
        const [r] = await b.sql('app')<{ n: number }[]>`
          SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = 'app' AND wait_event_type = 'Lock'`;
        if (r!.n) return;
        await new Promise((res) => setTimeout(res, 250));
      }
      throw new Error('no batch waited for a row lock');
    };
    try {
      await deleter`BEGIN`;
      await deleter`DELETE FROM t WHERE id = 40000`; // the batch inserts it again once the delete commits
      await writer`BEGIN`;
      await writer`UPDATE t SET v = 'writer' WHERE id = 50000`; // row lock held until COMMIT
      await b.exec('app', `INSERT INTO t SELECT g, 'target only' FROM generate_series(100001, 100100) g`);

      const job = await api.call<pb.Job__Output>('StartSync', { from: 'src', to: 'dst', batch_bytes: 65536 });
      await batchWaits(); // the batch holding id 40000
      expect((await api.call<pb.Job__Output>('GetJob', { id: job.id })).state).toBe('JOB_STATE_RUNNING');
      await deleter`COMMIT`;
      await batchWaits(); // the batch holding id 50000
      await writer`COMMIT`;

      const done = await api.waitJob(job.id);
      expect(done.state, done.error).toBe('JOB_STATE_COMPLETED');
      const rows = await b.sql('app')<{ n: number; src: number; only: number }[]>`
        SELECT count(*)::int AS n, count(*) FILTER (WHERE v = 'src' || id)::int AS src, count(*) FILTER (WHERE v = 'target only')::int AS only FROM t`;
      expect(rows[0]).toEqual({ n: 60100, src: 60000, only: 100 });
      const [img] = await b.sql('app')<{ before: string }[]>`
        SELECT before FROM syncflow.undo_log WHERE job_id = ${job.id} AND op = 'u' AND key = ARRAY['50000']`;
      expect(img!.before).toBe('(50000,writer)');
      // The batches met rows the writer changed after they began: applied again, locking first.
      const agentLogs = [...stack.agents.values()].map((p) => readFileSync(p.logFile, 'utf8')).join('\n');
      expect(agentLogs).toContain('a row of the batch changed under it');
      // The row the writer deleted is one the job inserted: its rollback deletes it again.
      const ins = await b.sql('app')<{ op: string; before: string | null }[]>`
        SELECT op, before FROM syncflow.undo_log WHERE job_id = ${job.id} AND key = ARRAY['40000']`;
      expect(ins).toEqual([{ op: 'i', before: null }]);

      const rb = await api.call<pb.RollbackResult__Output>('RollbackJob', { id: job.id });
      expect([rb.rows_restored, rb.rows_deleted]).toEqual(['59999', '1']);
      const after = await b.sql('app')<{ id: number; v: string }[]>`SELECT id, v FROM t WHERE id IN (1, 40000, 50000, 100001) ORDER BY id`;
      expect(after).toEqual([{ id: 1, v: 'old' }, { id: 50000, v: 'writer' }, { id: 100001, v: 'target only' }]);
    } finally {
      for (const w of [deleter, writer]) {
        await w`ROLLBACK`.catch(() => undefined);
        w.release();
      }
    }
  });
});
