import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestStack, freePort, type PgCluster, startRegions, stopRegions } from '../harness/index.js';
import { Api } from '../harness/api.js';
import type { pb } from '../../packages/shared/src/index.js';

let stack: TestStack;
let api: Api;
let a: PgCluster;
let b: PgCluster;

const SCHEMA = `
  CREATE TABLE parent (id int PRIMARY KEY, name text);
  CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent(id), note text);
  CREATE TABLE "Robert'); DROP TABLE parent;--" (id int PRIMARY KEY, "x""y" text);`;

beforeAll(async () => {
  ({ stack, api, a, b } = await startRegions());
  await a.createDatabase('app', SCHEMA + `
    INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 50) g;
    INSERT INTO child SELECT g, 1 + g % 50, 'c' || g FROM generate_series(1, 200) g;
    INSERT INTO "Robert'); DROP TABLE parent;--" VALUES (1, 'bobby'), (2, E'tab\\there');`);
  await b.createDatabase('app', SCHEMA);
  await b.createDatabase('partial', 'CREATE TABLE parent (id int PRIMARY KEY, name text);');
  await api.connection('src', a, 'app', 'a');
  await api.connection('dst', b, 'app', 'b');
  await api.connection('partial', b, 'partial', 'b');
});

afterAll(() => stopRegions({ stack, api }));

async function jobCount(): Promise<number> {
  return (await api.call<pb.ListJobsResponse__Output>('ListJobs', { limit: 1000 })).jobs.length;
}
async function nothingWritten(db: string): Promise<void> {
  const [r] = await b.sql(db)<{ schema: boolean; rows: number }[]>`
    SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'syncflow') AS schema, (SELECT count(*)::int FROM parent) AS rows`;
  expect(r).toEqual({ schema: false, rows: 0 });
}

describe('bad input gets the right status and a one-line CLI error, and nothing is written', () => {
  it('an unknown connection is NOT_FOUND', async () => {
    expect(await api.status('StartSync', { from: 'nope', to: 'dst' })).toBe('NOT_FOUND');
    const r = await stack.cli(['sync', 'start', '--from', 'nope', '--to', 'dst']);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^syncflow: NOT_FOUND: connection "nope" does not exist/);
  });

  it('a table that does not exist is NOT_FOUND, and so is an identifier crafted to inject SQL', async () => {
    const before = await jobCount();
    expect(await api.status('StartSync', { from: 'src', to: 'dst', tables: ['no_such_table'] })).toBe('NOT_FOUND');
    expect(await api.status('StartSync', { from: 'src', to: 'dst', tables: ['parent"; DROP TABLE child; --'] })).toBe('NOT_FOUND');
    const r = await stack.cli(['sync', 'plan', '--from', 'src', '--to', 'dst', '--tables', 'parent,no_such_table']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/NOT_FOUND: .*no_such_table/);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(await jobCount()).toBe(before);
    await nothingWritten('app');
    const [{ n }] = await a.sql('app')<{ n: number }[]>`SELECT count(*)::int AS n FROM child`;
    expect(n).toBe(200);
  });

  it('an unreachable database is UNAVAILABLE with a clear reason', async () => {
    const port = await freePort();
    await api.call('CreateConnection', { name: 'down', url: `postgres://postgres:secret-pw@127.0.0.1:${port}/app`, group: 'b' });
    const r = await stack.cli(['sync', 'plan', '--from', 'src', '--to', 'down']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^syncflow: UNAVAILABLE: .*down/);
    expect(r.stderr).not.toContain('secret-pw');
    expect(await api.status('StartSync', { from: 'src', to: 'down' })).toBe('UNAVAILABLE');
  });

  it('malformed requests are INVALID_ARGUMENT; bad CLI usage exits 2 with one line', async () => {
    expect(await api.status('CreateConnection', { name: 'Bad Name!', url: a.url('app'), group: 'a' })).toBe('INVALID_ARGUMENT');
    expect(await api.status('CreateConnection', { name: 'x', url: 'mysql://localhost/x', group: 'a' })).toBe('INVALID_ARGUMENT');
    expect(await api.status('CreateConnection', { name: 'x', url: a.url('app'), group: 'a; rm -rf /' })).toBe('INVALID_ARGUMENT');
    expect(await api.status('GetJob', { id: 'not-a-uuid' })).toBe('INVALID_ARGUMENT');
    expect(await api.status('StartSync', { from: 'src', to: 'dst', batch_bytes: 5 })).toBe('INVALID_ARGUMENT');
    expect(await api.status('StartSync', { from: 'src', to: 'src' })).toBe('INVALID_ARGUMENT');
    // binary is chosen per table by the planner, never forced; diff is auto or off
    expect(await api.status('StartSync', { from: 'src', to: 'dst', copy_format: 'binary' })).toBe('INVALID_ARGUMENT');
    expect(await api.status('StartSync', { from: 'src', to: 'dst', diff: 'sometimes' })).toBe('INVALID_ARGUMENT');
    expect(await api.status('StartSync', { from: 'src', to: 'dst', verify: 'sometimes' })).toBe('INVALID_ARGUMENT');
    expect(await api.status('GetJob', { id: '00000000-0000-4000-8000-000000000000' })).toBe('NOT_FOUND');
    expect(await api.status('CreateConnection', { name: 'src', url: a.url('app'), group: 'a' })).toBe('ALREADY_EXISTS');
    const r = await stack.cli(['sync', 'start', '--from', 'src', '--to', 'dst', '--mode', 'bogus']);
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    for (const bad of [['--copy-format', 'binary'], ['--verify', 'sometimes']]) {
      const f = await stack.cli(['sync', 'start', '--from', 'src', '--to', 'dst', ...bad]);
      expect(f.code, bad.join(' ')).toBe(2);
      expect(f.stderr.trim().split('\n'), f.stderr).toHaveLength(1);
    }
    await nothingWritten('app');
  });

  it('a table missing on the target is refused before anything is written', async () => {
    const before = await jobCount();
    const status = await api.status('StartSync', { from: 'src', to: 'partial' });
    expect(status).toBe('FAILED_PRECONDITION');
    const r = await stack.cli(['sync', 'start', '--from', 'src', '--to', 'partial']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/FAILED_PRECONDITION: .*child.* does not exist on target "partial"/);
    expect(await jobCount()).toBe(before);
    await nothingWritten('partial');
  });

  it('the connection URL is never returned by the API', async () => {
    const { connections } = await api.call<pb.ListConnectionsResponse__Output>('ListConnections', {});
    expect(JSON.stringify(connections)).not.toMatch(/postgres:\/\//);
    expect(connections.find((c) => c.name === 'down')?.database).toMatch(/^127\.0\.0\.1:\d+\/app$/);
  });

  it('quoted identifiers that look like SQL are synced as data, not run', async () => {
    const job = await api.call<pb.Job__Output>('StartSync', { from: 'src', to: 'dst' });
    const done = await api.waitJob(job.id);
    expect(done.state, done.error).toBe('JOB_STATE_COMPLETED');
    const rows = await b.sql('app')`SELECT id, "x""y" AS v FROM "Robert'); DROP TABLE parent;--" ORDER BY id`;
    expect(rows).toEqual([{ id: 1, v: 'bobby' }, { id: 2, v: 'tab\there' }]);
    const [{ n }] = await b.sql('app')<{ n: number }[]>`SELECT count(*)::int AS n FROM parent`;
    expect(n).toBe(50);
  });
});
