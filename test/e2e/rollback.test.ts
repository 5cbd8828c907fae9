import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestStack, databaseHashes, diffHashes, sequenceValues, type PgCluster, startRegions, stopRegions } from '../harness/index.js';
import { Api } from '../harness/api.js';
import type { pb } from '../../packages/shared/src/index.js';
import { purgeUndo } from '../../packages/agent/src/apply/undo.js';

/**
 * Undo log and rollback: a job that fails half-way is undone automatically (on_failure: rollback),
 * and a completed mirror job (inserts, updates, deletes, keyless replace, sequences) is undone on
 * demand; in both cases every table of the target hashes as it did before the job.
 */
let stack: TestStack;
let api: Api;
let a: PgCluster;
let b: PgCluster;

const SCHEMA = `
  CREATE TABLE parent (id int PRIMARY KEY, name text NOT NULL, amount numeric(12,2), at timestamptz, flags int[]);
  CREATE TABLE child (id bigint PRIMARY KEY, parent_id int REFERENCES parent(id), payload text, created date);
  CREATE TABLE tags (label text, n int);
  CREATE TABLE counters (id serial PRIMARY KEY, v text);`;

// ~100 bytes per child row in COPY text: with 64 KiB batches, 6,500 rows make 10 batches.
const SOURCE = `
  INSERT INTO parent SELECT g, 'parent ' || g, g * 1.25, '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 hour', ARRAY[g, g + 1]
    FROM generate_series(1, 300) g;
  INSERT INTO child SELECT g, 1 + g % 300, repeat(md5(g::text), 2) || 'xxxxxxxxxxxxxxxx', date '2024-01-01' + (g % 365)
    FROM generate_series(1, 6500) g;
  INSERT INTO tags SELECT 'tag ' || (g % 7), g FROM generate_series(1, 50) g;
  INSERT INTO counters (v) SELECT 'v' || g FROM generate_series(1, 40) g;`;

// The target before the job: some rows equal, some different (updated by the job), some only here
// (deleted by mirror), keyless rows (replaced by mirror), a sequence at another value.
const TARGET = `
  INSERT INTO parent SELECT g, CASE WHEN g % 3 = 0 THEN 'old name ' || g ELSE 'parent ' || g END, g * 1.25,
    '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 hour', ARRAY[g, g + 1] FROM generate_series(1, 150) g;
  INSERT INTO parent VALUES (9001, 'only on target', NULL, NULL, NULL), (9002, 'only on target too', 1, now(), '{}');
  INSERT INTO child SELECT g, 1 + g % 150, CASE WHEN g % 5 = 0 THEN 'stale' ELSE repeat(md5(g::text), 2) || 'xxxxxxxxxxxxxxxx' END,
    date '2024-01-01' + (g % 365) FROM generate_series(1, 2000) g;
  INSERT INTO child VALUES (90001, 9001, 'child of a target-only parent', NULL);
  INSERT INTO tags VALUES ('target tag', 1), ('target tag', 1), (NULL, NULL);
  INSERT INTO counters (v) SELECT 'old' || g FROM generate_series(1, 5) g;`;

async function snapshotOf(db: string) {
  return { tables: await databaseHashes(b.sql(db)), sequences: await sequenceValues(b.sql(db)) };
}

beforeAll(async () => {
  ({ stack, api, a, b } = await startRegions());
  await a.createDatabase('app', SCHEMA + SOURCE);
  for (const db of ['app', 'faulty']) {
    await b.createDatabase(db);
    await b.exec(db, SCHEMA + TARGET);
  }
  await b.createDatabase('empty', SCHEMA);
  // A real fault, on the target only: the child row with id 2920 (in the 5th of 10 batches) is refused
  // with a non-data error (P0001), so the batch is neither quarantined nor retried: the job fails.
  await b.exec('faulty', `
    CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN IF NEW.id = 2920 THEN RAISE EXCEPTION 'injected fault'; END IF; RETURN NEW; END $$;
    CREATE TRIGGER boom BEFORE INSERT OR UPDATE ON child FOR EACH ROW EXECUTE FUNCTION boom();`);
  await api.connection('src', a, 'app', 'a');
  await api.connection('dst', b, 'app', 'b');
  await api.connection('faulty', b, 'faulty', 'b');
  await api.connection('empty', b, 'empty', 'b');
});

afterAll(() => stopRegions({ stack, api }));

describe('rollback', () => {
  it('a job failing at batch 5 of 10 with on_failure rollback leaves the target exactly as before', async () => {
    const before = await snapshotOf('faulty');
    const job = await api.call<pb.Job__Output>('StartSync', {
      from: 'src', to: 'faulty', mode: 'SYNC_MODE_MIRROR', batch_bytes: 65536, on_failure: 'rollback',
    });
    const done = await api.waitJob(job.id);
    expect(done.state).toBe('JOB_STATE_FAILED');
    expect(done.error).toMatch(/injected fault/);
    // parent (level 0) was fully written and child had committed batches before the fault
    const [{ n }] = await b.sql('faulty')<{ n: number }[]>`
      SELECT count(DISTINCT task_id)::int AS n FROM syncflow.ledger WHERE job_id = ${job.id}`;
    expect(n).toBeGreaterThanOrEqual(2);
    const [{ batches }] = await b.sql('faulty')<{ batches: number }[]>`
      SELECT max(n)::int AS batches FROM (SELECT count(*) AS n FROM syncflow.ledger WHERE job_id = ${job.id} GROUP BY task_id) x`;
    expect(batches).toBe(4);
    // the rollback runs right after the failure is recorded
    let rolled = '';
    for (let i = 0; i < 120 && !rolled; i++) {
      const [r] = await stack.region('a').sql('control')<{ at: string | null }[]>`SELECT rolled_back_at::text AS at FROM jobs WHERE id = ${job.id}`;
      rolled = r?.at ?? '';
      if (!rolled) await new Promise((res) => setTimeout(res, 500));
    }
    expect(rolled, stack.logs().slice(-4000)).not.toBe('');
    const after = await snapshotOf('faulty');
    expect(diffHashes(before.tables, after.tables)).toEqual([]);
    expect(after.sequences).toEqual(before.sequences);
    const logs = await api.call<pb.JobLogs__Output>('GetJobLogs', { id: job.id });
    expect(logs.entries.map((e) => e.message).join('\n')).toMatch(/rolled back: \d+ inserted row\(s\) deleted, \d+ updated row\(s\) restored/);
  });

  it('a completed mirror job (inserts, updates, deletes, keyless, sequences) is rolled back on demand', async () => {
    const before = await snapshotOf('app');
    // The undo log as earlier versions made it, with an `id bigserial PRIMARY KEY`: the job drops that column.
    await b.sql('app').unsafe(`CREATE SCHEMA IF NOT EXISTS syncflow;
      CREATE TABLE IF NOT EXISTS syncflow.undo_log (id bigserial PRIMARY KEY, job_id uuid NOT NULL, task_id text NOT NULL, seq bigint NOT NULL,
        schema_name text NOT NULL, table_name text NOT NULL, op char(1) NOT NULL CHECK (op IN ('i', 'u', 'd')), key text[], before text,
        after_hash text, after_row text, at timestamptz NOT NULL DEFAULT now())`);
    const r = await stack.cli(['sync', 'start', '--from', 'src', '--to', 'dst', '--mode', 'mirror', '--batch-bytes', '64KiB', '--wait', '--json']);
    expect(r.code, r.stderr + r.stdout.slice(-2000)).toBe(0);
    const job = JSON.parse(r.stdout) as pb.Job__Output;
    expect(Number(job.rows_deleted)).toBe(3); // 9001, 9002 and the child of 9001
    expect(diffHashes(await databaseHashes(a.sql('app')), await databaseHashes(b.sql('app')))).toEqual([]);
    expect(await sequenceValues(b.sql('app'))).toEqual(await sequenceValues(a.sql('app')));
    // The undo log's row images are compressed with lz4 (Debian's PostgreSQL is built with it); rollback reads them below.
    const compression = await b.sql('app')<{ c: string }[]>`
      SELECT attname::text || ':' || attcompression::text AS c FROM pg_attribute
      WHERE attrelid = 'syncflow.undo_log'::regclass AND attname IN ('before', 'after_row') ORDER BY attname`;
    expect(compression.map((x) => x.c)).toEqual(['after_row:l', 'before:l']);
    const [legacy] = await b.sql('app')<{ n: number }[]>`
      SELECT count(*)::int AS n FROM pg_attribute WHERE attrelid = 'syncflow.undo_log'::regclass AND attname = 'id' AND NOT attisdropped`;
    expect(legacy!.n).toBe(0);

    const rb = await stack.cli(['job', 'rollback', job.id, '--json']);
    expect(rb.code, rb.stderr).toBe(0);
    const result = JSON.parse(rb.stdout) as pb.RollbackResult__Output;
    expect(Number(result.rows_reinserted)).toBe(3 + 3); // the mirror deletes + the keyless table's replaced rows
    const after = await snapshotOf('app');
    expect(diffHashes(before.tables, after.tables)).toEqual([]);
    expect(after.sequences).toEqual(before.sequences);

    const again = await stack.cli(['job', 'rollback', job.id]);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/^syncflow: FAILED_PRECONDITION: .*already rolled back/);
  });

  it('an initial load into empty tables (COPY straight in, no per-row undo log) is rolled back by transaction id', async () => {
    const before = await snapshotOf('empty');
    const load = async () => {
      const job = await api.call<pb.Job__Output>('StartSync', { from: 'src', to: 'empty', batch_bytes: 65536 });
      const done = await api.waitJob(job.id);
      expect(done.state, done.error).toBe('JOB_STATE_COMPLETED');
      expect(diffHashes(await databaseHashes(a.sql('app')), await databaseHashes(b.sql('empty')))).toEqual([]);
      // The undo log holds the batches, not the rows.
      const [{ rows, batches }] = await b.sql('empty')<{ rows: number; batches: number }[]>`
        SELECT (SELECT count(*)::int FROM syncflow.undo_log WHERE job_id = ${job.id}) AS rows,
               (SELECT count(*)::int FROM syncflow.undo_loads WHERE job_id = ${job.id}) AS batches`;
      expect(rows).toBe(0);
      expect(batches).toBeGreaterThanOrEqual(10);
      return job.id;
    };
    const first = await load();
    const rb = await stack.cli(['job', 'rollback', first, '--json']);
    expect(rb.code, rb.stderr).toBe(0);
    expect(Number((JSON.parse(rb.stdout) as pb.RollbackResult__Output).rows_deleted)).toBe(300 + 6500 + 50 + 40);
    const after = await snapshotOf('empty');
    expect(diffHashes(before.tables, after.tables)).toEqual([]);
    expect(after.sequences).toEqual(before.sequences);

    // A loaded row changed since is a conflict; --force removes the rest of the load.
    const second = await load();
    await b.exec('empty', `UPDATE parent SET name = 'changed by someone else' WHERE id = 17`);
    const refused = await stack.cli(['job', 'rollback', second]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/^syncflow: FAILED_PRECONDITION: .*: 1 row\(s\) written by job .* changed since by someone else \(.*parent \(loaded\): 1 row\(s\) of its initial load were changed or deleted since\)/);
    const forced = await stack.cli(['job', 'rollback', second, '--force']);
    expect(forced.code, forced.stderr).toBe(0);
    const [{ n }] = await b.sql('empty')<{ n: number }[]>`SELECT (SELECT count(*) FROM parent) + (SELECT count(*) FROM child) + (SELECT count(*) FROM tags) AS n`;
    expect(Number(n)).toBe(1); // only the row someone else wrote is left
  });

  it('refuses to roll back rows changed since by someone else, unless --force', async () => {
    const before = await snapshotOf('app');
    const job = await api.call<pb.Job__Output>('StartSync', { from: 'src', to: 'dst', mode: 'SYNC_MODE_UPSERT' });
    expect((await api.waitJob(job.id)).state).toBe('JOB_STATE_COMPLETED');
    await b.exec('app', `UPDATE parent SET name = 'changed by someone else' WHERE id = 3; DELETE FROM child WHERE id = 6000;`);
    const r = await stack.cli(['job', 'rollback', job.id]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^syncflow: FAILED_PRECONDITION: .*2 row\(s\) written by job .* were changed since by someone else/);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    // nothing was undone
    const [{ name }] = await b.sql('app')<{ name: string }[]>`SELECT name FROM parent WHERE id = 6`;
    expect(name).toBe('parent 6');
    const forced = await stack.cli(['job', 'rollback', job.id, '--force']);
    expect(forced.code, forced.stderr).toBe(0);
    const after = await snapshotOf('app');
    expect(diffHashes(before.tables, after.tables)).toEqual([]);
  });

  it('the retention purge drops a job\'s undo records whole once it has written nothing for that long; its rollback is then refused', async () => {
    await a.exec('app', `UPDATE parent SET amount = amount + 1 WHERE id % 10 = 1`);
    const old = await api.call<pb.Job__Output>('StartSync', { from: 'src', to: 'dst', mode: 'SYNC_MODE_UPSERT' });
    expect((await api.waitJob(old.id)).state).toBe('JOB_STATE_COMPLETED');
    await a.exec('app', `UPDATE parent SET amount = amount + 1 WHERE id % 10 = 2`);
    const recent = await api.call<pb.Job__Output>('StartSync', { from: 'src', to: 'dst', mode: 'SYNC_MODE_UPSERT' });
    expect((await api.waitJob(recent.id)).state).toBe('JOB_STATE_COMPLETED');
    const sql = b.sql('app');
    // `old` wrote its last batch 8 days ago; `recent` registered its tables 8 days ago but wrote a batch since.
    await sql`UPDATE syncflow.undo_tables SET at = at - interval '8 days' WHERE job_id IN (${old.id}, ${recent.id})`;
    await sql`UPDATE syncflow.undo_sequences SET at = at - interval '8 days' WHERE job_id = ${old.id}`;
    await sql`UPDATE syncflow.ledger SET applied_at = applied_at - interval '8 days' WHERE job_id = ${old.id}`;
    const records = async (job: string) => (await sql<{ log: number; other: number }[]>`
      SELECT (SELECT count(*) FROM syncflow.undo_log WHERE job_id = ${job})::int AS log,
             ((SELECT count(*) FROM syncflow.undo_tables WHERE job_id = ${job}) + (SELECT count(*) FROM syncflow.undo_loads WHERE job_id = ${job})
              + (SELECT count(*) FROM syncflow.undo_sequences WHERE job_id = ${job}))::int AS other`)[0]!;
    const oldBefore = await records(old.id);
    const recentBefore = await records(recent.id);
    expect(oldBefore.log).toBeGreaterThan(0);
    expect(await purgeUndo(sql, 168)).toBe(oldBefore.log);
    expect(await records(old.id)).toEqual({ log: 0, other: 0 });
    expect(await records(recent.id)).toEqual(recentBefore);
    const r = await stack.cli(['job', 'rollback', old.id]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toMatch(/^syncflow: FAILED_PRECONDITION: .*the undo log of job .* is gone \(purged after the retention/);
  });
});
