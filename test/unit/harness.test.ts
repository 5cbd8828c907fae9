import { connect } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chinookTables, loadChinook, schemaOnly } from '../fixtures/chinook.js';
import { loadTricky, trickyTables } from '../fixtures/tricky.js';
import { databaseHashes, diffHashes, freePort, NatsServer, PgCluster, sequenceValues, tableHash, waitFor } from '../harness/index.js';

describe('test harness', () => {
  let pg: PgCluster;
  let nats: NatsServer;

  beforeAll(async () => {
    [pg, nats] = await Promise.all([PgCluster.start({ name: 'harness' }), NatsServer.start({ jetstream: true })]);
  });

  afterAll(async () => {
    await Promise.allSettled([pg?.destroy(), nats?.destroy()]);
  });

  it('hands out distinct ports', async () => {
    const ports = await Promise.all(Array.from({ length: 20 }, () => freePort()));
    expect(new Set(ports).size).toBe(20);
  });

  it('runs PostgreSQL with logical decoding', async () => {
    const [r] = await pg.sql()<{ wal_level: string }[]>`SHOW wal_level`;
    expect(r?.wal_level).toBe('logical');
    expect((await pg.exec('postgres', 'SELECT 40 + 2')).trim()).toBe('42');
  });

  it('runs nats-server with JetStream that keeps streams across a crash', async () => {
    const nc = await connect({ servers: nats.url });
    await nc.flush();
    const jsm = await jetstreamManager(nc);
    await jsm.streams.add({ name: 'HARNESS', subjects: ['harness.>'] });
    await jetstream(nc).publish('harness.x', 'hello');
    await nc.close();

    await nats.kill();
    await nats.restart();
    const nc2 = await connect({ servers: nats.url });
    const info = await (await jetstreamManager(nc2)).streams.info('HARNESS');
    expect(info.state.messages).toBe(1);
    await nc2.close();
  });

  it('loads the tricky schema and hashes it by content', async () => {
    await loadTricky(pg, 'tricky');
    const sql = pg.sql('tricky');
    const hashes = await databaseHashes(sql);
    expect([...hashes.keys()]).toEqual([...trickyTables]);
    expect(hashes.get('public.audit_log')?.rows).toBe(504);
    expect(hashes.get('public.measurements')?.rows).toBe(3000);

    // Duplicates count: removing one of two identical rows changes the hash.
    const before = await tableHash(sql, 'public', 'audit_log');
    await sql`DELETE FROM public.audit_log WHERE ctid = (SELECT min(ctid) FROM public.audit_log WHERE msg = 'event 7')`;
    const after = await tableHash(sql, 'public', 'audit_log');
    expect(after.rows).toBe(before.rows - 1);
    expect(after.hash).not.toBe(before.hash);

    const big = await sql<{ n: number }[]>`SELECT count(*)::int AS n FROM public.kitchen_sink WHERE octet_length(t) >= 3145728 OR octet_length(b) >= 2097152`;
    expect(big[0]?.n).toBe(3);

    const seqs = await sequenceValues(sql);
    expect(seqs.get('Sales Dept.Orders_OrderId_seq')).toBe('353,true');
    expect(seqs.get('Sales Dept.Never Used Seq')).toBe('1,false');
    expect(seqs.get('public.kitchen_sink_id_seq')).toBe(`${2000 + 11 + 5},true`);
  });

  it('copies a schema without data and sees the same tables, empty', async () => {
    await schemaOnly(pg, 'tricky', pg, 'tricky_copy');
    const src = await databaseHashes(pg.sql('tricky'));
    const dst = await databaseHashes(pg.sql('tricky_copy'));
    expect([...dst.keys()]).toEqual([...src.keys()]);
    expect([...dst.values()].every((h) => h.rows === 0)).toBe(true);
    expect(diffHashes(src, dst).length).toBe(src.size);
    expect(diffHashes(src, src)).toEqual([]);
  });

  it('loads Chinook into a database of our choice', async () => {
    await loadChinook(pg, 'music');
    const hashes = await databaseHashes(pg.sql('music'));
    expect([...hashes.keys()].sort()).toEqual(chinookTables.map((t) => `public.${t}`).sort());
    const total = [...hashes.values()].reduce((n, h) => n + h.rows, 0);
    expect(total).toBeGreaterThan(15_000);
    const dbs = await pg.sql()<{ datname: string }[]>`SELECT datname FROM pg_database WHERE datname = 'chinook'`;
    expect(dbs).toEqual([]);
  });

  it('survives a kill -9 of PostgreSQL and a restart with the data intact', async () => {
    const sql = pg.sql('tricky');
    const before = await databaseHashes(sql);
    const pid = pg.postmasterPid();
    await pg.kill();
    expect(pg.running).toBe(false);
    await expect(sql`SELECT 1`).rejects.toThrow();
    await pg.start();
    expect(pg.postmasterPid()).not.toBe(pid);
    await waitFor(async () => (await sql`SELECT 1 AS one`)[0]?.one === 1, { what: 'postgres to accept queries after the crash', timeoutMs: 10_000 });
    expect(diffHashes(before, await databaseHashes(sql))).toEqual([]);

    await pg.restart();
    expect(diffHashes(before, await databaseHashes(sql))).toEqual([]);
  });
});
