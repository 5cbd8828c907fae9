import { afterAll, beforeAll, expect, it } from 'vitest';
import pino from 'pino';
import { createPool, type Sql } from '../../packages/shared/src/index.js';
import { ensureTargetSchema } from '../../packages/agent/src/apply/ledger.js';
import { deferIndexes, restoreIndexes } from '../../packages/agent/src/apply/defer-indexes.js';
import { PgCluster } from '../harness/index.js';

/**
 * Keys set aside for a load (apply/defer-indexes.ts) against a real PostgreSQL: a table's primary key
 * and unique constraint come back exactly, also when both are rebuilt side by side (each build then
 * puts its constraint on the table: without the early table lock the two deadlocked).
 */
const log = pino({ level: 'silent' });
const JOB = '00000000-0000-4000-8000-000000000001';
let pg: PgCluster;
let sql: Sql;

const shape = async () => (await sql<{ d: string }[]>`
  SELECT c.relname || ': ' || pg_get_indexdef(c.oid) AS d FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'i'
  UNION ALL SELECT conname || ': ' || pg_get_constraintdef(oid) FROM pg_constraint WHERE connamespace = 'public'::regnamespace
  ORDER BY 1`).map((r) => r.d);

beforeAll(async () => {
  pg = await PgCluster.start({ name: 'defer-keys' });
  sql = createPool(pg.url('postgres'), { max: 4, applicationName: 'syncflow-test' });
  await ensureTargetSchema(sql);
  await sql.unsafe(`
    CREATE TABLE people (id bigint PRIMARY KEY, email text NOT NULL, CONSTRAINT people_email_key UNIQUE (email) WITH (fillfactor = 80));
    CREATE INDEX people_lower ON people (lower(email));
    CREATE TABLE kept (id int PRIMARY KEY DEFERRABLE, v int UNIQUE);
    CREATE TABLE refd (id int PRIMARY KEY);
    CREATE TABLE child (id int PRIMARY KEY, refd_id int REFERENCES refd (id));`);
});

afterAll(async () => {
  await sql?.end({ timeout: 1 }).catch(() => undefined);
  await pg?.destroy();
});

it('sets aside primary keys and unique constraints, keeps deferrable and referenced ones, and rebuilds them exactly, two at a time', async () => {
  const before = await shape();
  const tables = ['people', 'kept', 'refd'].map((name) => ({ schema: 'public', name, key: [] }));
  for (let round = 0; round < 3; round++) {
    await deferIndexes(sql, JOB, tables, log);
    // people: its key, its unique constraint and its index; kept: its unique constraint (the deferrable key stays); refd: nothing (child references it).
    const set = (await sql<{ name: string }[]>`SELECT name FROM syncflow.deferred_indexes WHERE job_id = ${JOB} ORDER BY name`).map((r) => r.name);
    expect(set).toEqual(['kept_v_key', 'people_email_key', 'people_lower', 'people_pkey']);
    await sql`INSERT INTO people SELECT g, 'p' || g || '@example.org' FROM generate_series(1, 150000) g`;
    expect(await restoreIndexes(sql, JOB, 2, log)).toBe(4);
    expect(await shape()).toEqual(before);
    await sql`TRUNCATE people`;
  }
  await sql`INSERT INTO people VALUES (1, 'a'), (2, 'b')`;
  await expect(sql`INSERT INTO people VALUES (1, 'c')`).rejects.toThrow(/people_pkey/);
});
