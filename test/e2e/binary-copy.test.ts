import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestStack, databaseHashes, diffHashes, type PgCluster, startRegions, stopRegions } from '../harness/index.js';
import { Api } from '../harness/api.js';
import type { pb } from '../../packages/shared/src/index.js';

/**
 * Initial loads travel as binary COPY where the types allow (built-in types, the same on both
 * sides, keys the agent can print): bytea as bytes instead of hex. A user type (enum) or a key the
 * agent cannot print (timestamptz) keeps COPY text, as does a regclass (binary: the OID). A row the target refuses in a binary load is
 * still found and quarantined with its SQLSTATE (the target turns the batch into COPY text itself).
 */
let stack: TestStack;
let api: Api;
let a: PgCluster;
let b: PgCluster;

const SCHEMA = `
  CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
  CREATE TABLE blobs (id bigint PRIMARY KEY, data bytea, doc jsonb, amount numeric(20,6), big numeric, at timestamptz,
                      tags text[], nums int4[], note text, f float8, flag bool, d date, iv interval, ip inet);
  CREATE TABLE uuids (id uuid PRIMARY KEY, v text);
  CREATE TABLE pairs (a int2, b varchar(20), v bytea, PRIMARY KEY (a, b));
  CREATE TABLE heap (x int, y bytea);
  CREATE TABLE moods (id int PRIMARY KEY, m mood);
  CREATE TABLE events (at timestamptz PRIMARY KEY, v int);
  CREATE TABLE refs (id int PRIMARY KEY, r regclass);
  CREATE TABLE narrow (id bigint PRIMARY KEY, n int, price numeric(10,2));`;

const DATA = `
  INSERT INTO blobs SELECT g, CASE WHEN g % 11 = 0 THEN NULL ELSE decode(repeat(md5(g::text), 40), 'hex') END,
    CASE WHEN g % 7 = 0 THEN NULL ELSE jsonb_build_object('g', g, 'name', 'n' || g, 'arr', jsonb_build_array(g, 1.50, null)) END,
    g * 1.000001, CASE WHEN g % 5 = 0 THEN NULL ELSE (g::numeric ^ 3) / 7 END,
    timestamptz '2020-01-01 00:00:00.123456+00' + g * interval '1 minute 0.000001 second',
    CASE WHEN g % 3 = 0 THEN NULL ELSE ARRAY['a' || g, NULL, 'tab\there', 'ünï ' || g] END, ARRAY[g, -g, NULL]::int4[],
    CASE WHEN g % 13 = 0 THEN NULL ELSE E'line\\nbreak \\\\ back ' || g END, g / 3.0::float8, g % 2 = 0, date '2000-01-01' + g,
    g * interval '1 day 3 hours', '10.0.0.1'::inet
  FROM generate_series(1, 6000) g;
  INSERT INTO blobs VALUES (-9223372036854775808, '\\x00ff', '{}', -1.5, 'NaN', '-infinity', '{}', '{}', '', 'NaN', NULL, 'infinity', '-1 mon', '::1');
  INSERT INTO uuids SELECT md5(g::text)::uuid, 'v' || g FROM generate_series(1, 3000) g;
  INSERT INTO pairs SELECT (g % 200) - 100, 'k ' || g || ' 東京', decode(md5(g::text), 'hex') FROM generate_series(1, 4000) g;
  INSERT INTO heap SELECT g % 50, CASE WHEN g % 9 = 0 THEN NULL ELSE decode(repeat(md5(g::text), 8), 'hex') END FROM generate_series(1, 3000) g;
  INSERT INTO moods SELECT g, (ARRAY['sad', 'ok', 'happy'])[1 + g % 3]::mood FROM generate_series(1, 500) g;
  INSERT INTO events SELECT timestamptz '2024-01-01' + g * interval '1.5 second', g FROM generate_series(1, 500) g;
  INSERT INTO refs VALUES (1, 'blobs'), (2, 'pairs');
  INSERT INTO narrow SELECT g, g % 10, g / 100.0 FROM generate_series(1, 2000) g;`;

// The target is stricter about one table: a CHECK and a NOT NULL the source lacks.
const STRICT_SOURCE = `CREATE TABLE strict (id int PRIMARY KEY, v text, n int, b bytea);
  INSERT INTO strict SELECT g, CASE WHEN g IN (777, 3001) THEN 'bad' ELSE 'v' || g END, CASE WHEN g = 1500 THEN NULL ELSE g END,
    decode(md5(g::text), 'hex') FROM generate_series(1, 4000) g;`;
const STRICT_TARGET = `CREATE TABLE strict (id int PRIMARY KEY, v text CHECK (v <> 'bad'), n int NOT NULL, b bytea);`;

const formats = (tables: readonly { schema: string; name?: string; table?: string; copy_format: string }[]) =>
  Object.fromEntries(tables.map((t) => [t.name ?? t.table, t.copy_format]));

beforeAll(async () => {
  ({ stack, api, a, b } = await startRegions());
  await a.createDatabase('bin', SCHEMA + DATA + STRICT_SOURCE);
  await b.createDatabase('bin', SCHEMA + STRICT_TARGET);
  await b.createDatabase('txt', SCHEMA + STRICT_TARGET);
  await api.connection('a', a, 'bin', 'a');
  await api.connection('b', b, 'bin', 'b');
  await api.connection('t', b, 'txt', 'b');
});

afterAll(() => stopRegions({ stack, api }));

// narrow: small integers and numerics would ship about twice the bytes as binary, so they stay text.
const expected = { blobs: 'binary', uuids: 'binary', pairs: 'binary', heap: 'binary', moods: 'text', events: 'text', refs: 'text', narrow: 'text', strict: 'binary' };

async function sameExceptStrict(target: PgCluster, db: string) {
  const src = await databaseHashes(a.sql('bin'));
  const dst = await databaseHashes(target.sql(db));
  src.delete('public.strict'); dst.delete('public.strict');
  expect(diffHashes(src, dst)).toEqual([]);
  const good = async (sql: ReturnType<PgCluster['sql']>) => (await sql<{ n: string; h: string }[]>`
    SELECT count(*)::text AS n, md5(string_agg(t::text, ',' ORDER BY id)) AS h FROM strict t WHERE id NOT IN (777, 1500, 3001)`)[0]!;
  expect(await good(target.sql(db))).toEqual(await good(a.sql('bin')));
}

async function quarantined(target: PgCluster, db: string, jobId: string) {
  return target.sql(db)<{ id: number; sqlstate: string; row: string }[]>`
    SELECT key[1]::int AS id, sqlstate, convert_from(row_data, 'UTF8') AS row FROM syncflow.quarantine WHERE job_id = ${jobId} ORDER BY 1`;
}

describe('binary COPY', () => {
  it('the plan picks binary where the types allow, text for a user type or a timestamptz key', async () => {
    const plan = await api.call<pb.Plan__Output>('PlanSync', { from: 'a', to: 'b' });
    expect(formats(plan.tables)).toEqual(expected);
    expect(plan.tables.find((t) => t.name === 'moods')!.notes.join('\n')).toMatch(/COPY text: column m is of a type that is not built in/);
    expect(plan.tables.find((t) => t.name === 'events')!.notes.join('\n')).toMatch(/COPY text: key column at is of type timestamp with time zone/);
    expect(plan.tables.find((t) => t.name === 'refs')!.notes.join('\n')).toMatch(/COPY text: column r is of type regclass/);
  });

  it('loads every type equal by content; a refused row is quarantined with its SQLSTATE', async () => {
    // small batches: many batches, and parts of a split table resume at binary-decoded keys
    const job = await api.call<pb.Job__Output>('StartSync', { from: 'a', to: 'b', batch_bytes: 64 * 1024, split_rows: 2000 });
    const done = await api.waitJob(job.id);
    expect(done.state, done.error).toBe('JOB_STATE_COMPLETED');
    expect(done.tasks.length).toBeGreaterThan(7); // blobs, uuids, pairs were split into key ranges
    await sameExceptStrict(b, 'bin');

    const q = await quarantined(b, 'bin', job.id);
    expect(q.map((x) => [x.id, x.sqlstate])).toEqual([[777, '23514'], [1500, '23502'], [3001, '23514']]);
    // the row as COPY text, made by the target from the binary batch
    expect(q[0]!.row).toBe(`777\tbad\t777\t\\\\x${(await a.sql('bin')<{ h: string }[]>`SELECT md5('777') AS h`)[0]!.h}\n`);

    const rep = await api.call<pb.JobReport__Output>('GetJobReport', { id: job.id });
    expect(formats(rep.tables)).toEqual(expected);
    expect(rep.tables.find((t) => t.table === 'strict')!.quarantined).toBe('3');
  });

  it('copy_format text sends every table as COPY text, same content, more bytes for bytea', async () => {
    const job = await api.call<pb.Job__Output>('StartSync', { from: 'a', to: 't', batch_bytes: 64 * 1024, copy_format: 'text' });
    const done = await api.waitJob(job.id);
    expect(done.state, done.error).toBe('JOB_STATE_COMPLETED');
    await sameExceptStrict(b, 'txt');
    expect((await quarantined(b, 'txt', job.id)).map((x) => [x.id, x.sqlstate])).toEqual([[777, '23514'], [1500, '23502'], [3001, '23514']]);
    const rep = await api.call<pb.JobReport__Output>('GetJobReport', { id: job.id });
    expect(new Set(Object.values(formats(rep.tables)))).toEqual(new Set(['text']));

    const bin = (await api.call<pb.ListJobsResponse__Output>('ListJobs', { limit: 10 })).jobs.find((j) => j.id !== job.id && j.to === 'b')!;
    const binRep = await api.call<pb.JobReport__Output>('GetJobReport', { id: bin.id });
    const bytes = (r: pb.JobReport__Output, t: string) => Number(r.tables.find((x) => x.table === t)!.bytes);
    // bytea is most of blobs: hex doubles it in COPY text
    expect(bytes(binRep, 'blobs')).toBeLessThan(bytes(rep, 'blobs') * 0.7);
  });
});
