import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestStack, databaseHashes, diffHashes, waitFor, type PgCluster, startRegions, stopRegions } from '../harness/index.js';
import { Api } from '../harness/api.js';
import type { pb } from '../../packages/shared/src/index.js';

// An initial load into empty tables sets their secondary indexes and FKs aside and rebuilds them after
// the data: the target ends with exactly the definitions it had, whether the job completes or is cancelled.
let stack: TestStack;
let api: Api;
let a: PgCluster;
let b: PgCluster;

const SCHEMA = `
  CREATE TABLE authors (id int PRIMARY KEY, name text NOT NULL, email text UNIQUE);
  CREATE TABLE books (id int PRIMARY KEY, author_id int NOT NULL REFERENCES authors(id) ON DELETE CASCADE,
                      title text NOT NULL, isbn text, published date);
  CREATE INDEX books_author ON books (author_id);
  CREATE INDEX books_title_lower ON books (lower(title)) WHERE isbn IS NOT NULL;
  CREATE UNIQUE INDEX books_isbn ON books (isbn);`;

const definitions = async (db: PgCluster) => (await db.sql('lib')<{ d: string }[]>`
  SELECT c.relname || ': ' || pg_get_indexdef(c.oid) AS d FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname = 'public' AND c.relkind = 'i'
  UNION ALL
  SELECT conname || ': ' || pg_get_constraintdef(oid) || CASE WHEN convalidated THEN '' ELSE ' (not valid)' END FROM pg_constraint
  WHERE connamespace = 'public'::regnamespace
  ORDER BY 1`).map((r) => r.d);

beforeAll(async () => {
  ({ stack, api, a, b } = await startRegions());
  await a.createDatabase('lib', SCHEMA + `
    INSERT INTO authors SELECT g, 'author ' || g, 'a' || g || '@example.org' FROM generate_series(1, 2000) g;
    INSERT INTO books SELECT g, 1 + g % 2000, 'Title ' || g, CASE WHEN g % 3 = 0 THEN NULL ELSE 'isbn-' || g END, date '2000-01-01' + g % 8000
    FROM generate_series(1, 200000) g;`);
  await b.createDatabase('lib');
  await api.connection('a', a, 'lib', 'a');
  await api.connection('b', b, 'lib', 'b');
});

afterAll(() => stopRegions({ stack, api }));

describe('indexes and foreign keys of an initial load', () => {
  it('are restored exactly when a load is cancelled half-way; meanwhile another sync into them is refused', async () => {
    await b.exec('lib', SCHEMA);
    const before = await definitions(b);
    // 40,000 rows/s: the 202,000 rows take ~5 s, so the cancel lands mid-load.
    const job = await api.call<pb.Job__Output>('StartSync', { from: 'a', to: 'b', batch_bytes: 64 * 1024, split_rows: -1, max_rows_per_s: 40_000 });
    // Cancelled once authors are all there: with their foreign key set aside the two tables load side
    // by side, and books loaded ahead of their authors would leave it NOT VALID (docs/reliability.md).
    await waitFor(async () => {
      const [{ authors, books }] = await b.sql('lib')<{ authors: number; books: number }[]>`
        SELECT (SELECT count(*)::int FROM authors) AS authors, (SELECT count(*)::int FROM books) AS books`;
      return authors === 2000 && books > 0;
    }, { what: 'the load to be half-way', timeoutMs: 60_000 });
    expect((await definitions(b)).length).toBeLessThan(before.length); // set aside during the load
    // A second sync into these tables meanwhile would see them without their keys (and sync them as
    // keyless tables): refused, naming the job that holds them.
    const second = await api.call('StartSync', { from: 'a', to: 'b', batch_bytes: 64 * 1024 }).then(() => 'started', (e: { code?: number; details?: string }) => `${e.code} ${e.details}`);
    expect(second).toMatch(new RegExp(`^9 .*table public\\.(authors|books): its indexes and keys on target "b" are set aside by job ${job.id} and not rebuilt yet: wait for that job to end or cancel it`));
    await api.call('CancelJob', { id: job.id });
    expect(await definitions(b)).toEqual(before);
    const [{ n }] = await b.sql('lib')<{ n: number }[]>`SELECT count(*)::int AS n FROM syncflow.deferred_indexes`;
    expect(n).toBe(0);
  });

  it('are rebuilt after a complete load, definitions unchanged, data equal', async () => {
    await b.exec('lib', 'DROP TABLE books, authors; DROP SCHEMA syncflow CASCADE;' + SCHEMA);
    // A bigger table of its own keeps the job loading after books and authors are done.
    const pages = 'CREATE TABLE pages (id int PRIMARY KEY, body text NOT NULL);';
    await a.exec('lib', pages + "INSERT INTO pages SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 600000) g; ANALYZE pages;");
    await b.exec('lib', pages);
    const before = await definitions(b);
    const job = await api.call<pb.Job__Output>('StartSync', { from: 'a', to: 'b' });
    const done = await api.waitJob(job.id);
    expect(done.state, done.error).toBe('JOB_STATE_COMPLETED');
    expect(await definitions(b)).toEqual(before);
    expect(diffHashes(await databaseHashes(a.sql('lib')), await databaseHashes(b.sql('lib')))).toEqual([]);
    // 7 indexes set aside and rebuilt: the 3 secondary ones, the three primary keys and authors' unique
    // email (keys too: nothing outside the load references them); early for a table whose load is done
    // while another still loads (that line is written in the background, just after the rebuild), or by
    // the finalize.
    const rebuilt = async () => (await api.call<pb.JobLogs__Output>('GetJobLogs', { id: job.id })).entries
      .map((e) => /^(\d+) index\(es\) rebuilt|: \d+ row\(s\) deleted, (\d+) index\(es\) rebuilt/.exec(e.message))
      .reduce((n, m) => n + Number(m?.[1] ?? m?.[2] ?? 0), 0);
    await waitFor(async () => (await rebuilt()) === 7, { what: '7 indexes rebuilt in the job log', timeoutMs: 10_000 });
    // The one foreign key (books -> authors): validated early, once books and authors were both loaded, or by the finalize.
    const fks = async () => (await api.call<pb.JobLogs__Output>('GetJobLogs', { id: job.id })).entries
      .map((e) => /rebuilt and (\d+) foreign key\(s\) validated while|(\d+) constraint\(s\) restored/.exec(e.message))
      .reduce((n, m) => n + Number(m?.[1] ?? m?.[2] ?? 0), 0);
    await waitFor(async () => (await fks()) === 1, { what: '1 foreign key validated in the job log', timeoutMs: 10_000 });
    await new Promise((r) => setTimeout(r, 300));
    expect(await fks(), 'validated once, not early and again by the finalize').toBe(1);
    // ... early: books and authors were loaded while pages still was.
    const lines = (await api.call<pb.JobLogs__Output>('GetJobLogs', { id: job.id })).entries.map((e) => e.message).join('\n');
    expect(lines).toMatch(/rebuilt and 1 foreign key\(s\) validated while the rest loads: .*public\.books/);
    const [{ v }] = await b.sql('lib')<{ v: boolean }[]>`SELECT convalidated AS v FROM pg_constraint WHERE conname = 'books_author_id_fkey'`;
    expect(v).toBe(true);
    await a.exec('lib', 'DROP TABLE pages;');
    await b.exec('lib', 'DROP TABLE pages;');
  });

  it('fail the job clearly, never stuck, when the data violates a foreign key set aside', async () => {
    // The source has no FK and an orphan row; the target has the FK: it cannot be validated after the load.
    await a.exec('lib', 'CREATE TABLE notes (id int PRIMARY KEY, book_id int); INSERT INTO notes VALUES (1, 1), (2, 999999);');
    await b.exec('lib', 'TRUNCATE books, authors; CREATE TABLE notes (id int PRIMARY KEY, book_id int REFERENCES books(id));');
    const job = await api.call<pb.Job__Output>('StartSync', { from: 'a', to: 'b' });
    const done = await api.waitJob(job.id);
    expect(done.state).toBe('JOB_STATE_FAILED');
    expect(done.error).toMatch(/notes_book_id_fkey/);
    // The constraint is back on the table (NOT VALID: it guards new rows), never lost.
    const [{ n }] = await b.sql('lib')<{ n: number }[]>`SELECT count(*)::int AS n FROM pg_constraint WHERE conname = 'notes_book_id_fkey'`;
    expect(n).toBe(1);
    await a.exec('lib', 'DROP TABLE notes;');
    await b.exec('lib', 'DROP TABLE notes;');
  });

  it('leave in place a key that a table outside the load references, and set aside the others', async () => {
    // reviews is on the target only (not synced): its foreign key needs books_pkey all along.
    await b.exec('lib', 'TRUNCATE books, authors; CREATE TABLE reviews (id int PRIMARY KEY, book_id int REFERENCES books(id));');
    const before = await definitions(b);
    const oid = async (name: string) => (await b.sql('lib')<{ oid: string }[]>`SELECT oid::text FROM pg_constraint WHERE conname = ${name}`)[0]?.oid;
    const [books, authors] = [await oid('books_pkey'), await oid('authors_pkey')];
    const job = await api.call<pb.Job__Output>('StartSync', { from: 'a', to: 'b' });
    const done = await api.waitJob(job.id);
    expect(done.state, done.error).toBe('JOB_STATE_COMPLETED');
    expect(await definitions(b)).toEqual(before);
    expect(await oid('books_pkey'), 'never dropped').toBe(books);
    expect(await oid('authors_pkey'), 'set aside and rebuilt').not.toBe(authors);
    const target = await databaseHashes(b.sql('lib'));
    target.delete('public.reviews');
    expect(diffHashes(await databaseHashes(a.sql('lib')), target)).toEqual([]);
    await b.exec('lib', 'DROP TABLE reviews;');
  });

  it('stay in place with keep_indexes', async () => {
    await b.exec('lib', 'TRUNCATE books, authors;');
    const job = await api.call<pb.Job__Output>('StartSync', { from: 'a', to: 'b', keep_indexes: true });
    const done = await api.waitJob(job.id);
    expect(done.state, done.error).toBe('JOB_STATE_COMPLETED');
    const logs = await api.call<pb.JobLogs__Output>('GetJobLogs', { id: job.id });
    expect(logs.entries.map((e) => e.message).join('\n')).toMatch(/0 index\(es\) rebuilt/);
  });
});
