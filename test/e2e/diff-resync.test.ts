import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestStack, databaseHashes, diffHashes, waitFor, type PgCluster } from '../harness/index.js';
import { Api } from '../harness/api.js';
import { call, grpc, loadProtos, type pb } from '../../packages/shared/src/index.js';

/**
 * Diff re-sync (issue 5): after a first sync, ~1 % of the source changes (updates, deletes and
 * inserts spread over the keys, in FK-linked keyed tables, a table keyed by text columns and a
 * keyless table with duplicate rows); a mirror re-sync compares hash buckets and ships only the
 * differing ones — the target ends equal to the source by content, and only a few % of the rows
 * cross. Also: nothing changed ships nothing; diff off ships everything; kill -9 of the target
 * agent in the middle of a diff re-sync still ends equal.
 */

const SCHEMA = `
CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL, score int NOT NULL, seen timestamptz NOT NULL, photo bytea);
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers, amount numeric(12,2) NOT NULL, note text);
CREATE TABLE tags (name text NOT NULL, lang text NOT NULL, label text NOT NULL, PRIMARY KEY (name, lang));
CREATE TABLE events (at timestamptz NOT NULL, customer_id bigint, payload text NOT NULL);
`;
const N = { customers: 60_000, orders: 180_000, tags: 20_000, events: 80_000 };
const TOTAL = N.customers + N.orders + N.tags + N.events;

let stack: TestStack;
let api: Api;
let a: PgCluster;
let b: PgCluster;

beforeAll(async () => {
  stack = await TestStack.start({ env: { SYNCFLOW_TASK_ACK_WAIT_MS: '3000', SYNCFLOW_TASK_MAX_DELIVER: '50' } });
  api = new Api(stack.coordinatorAddress);
  a = stack.region('a');
  b = stack.region('b');
  await a.createDatabase('shop');
  await a.exec('shop', `${SCHEMA}
INSERT INTO customers SELECT g, 'customer ' || md5(g::text), g % 1000, timestamptz '2024-01-01 00:00:00+00' + g * interval '13.123457 seconds',
  CASE WHEN g % 5 = 0 THEN NULL ELSE decode(md5(g::text) || md5('p' || g), 'hex') END FROM generate_series(1, ${N.customers}) g;
INSERT INTO orders SELECT g, 1 + g % ${N.customers}, (g % 100000) / 100.0, CASE WHEN g % 3 = 0 THEN NULL ELSE 'note ' || g END FROM generate_series(1, ${N.orders}) g;
INSERT INTO tags SELECT 'tag, "' || (g / 4) || '"', (ARRAY['en','de','fr','ja'])[1 + g % 4], 'label ' || md5(g::text) FROM generate_series(0, ${N.tags - 1}) g;
-- duplicates on purpose (g / 2): a keyless table may hold equal rows
INSERT INTO events SELECT timestamptz '2024-01-01 00:00:00+00' + (g / 2) * interval '1 second', (g / 2) % ${N.customers}, 'event ' || (g / 2) FROM generate_series(1, ${N.events}) g;
ANALYZE;`);
  await b.createDatabase('shop');
  await b.exec('shop', SCHEMA);
  await api.call('CreateConnection', { name: 'shop-a', url: a.url('shop'), group: 'a' });
  await api.call('CreateConnection', { name: 'shop-b', url: b.url('shop'), group: 'b' });
}, 300_000);

afterAll(async () => {
  api?.close();
  await stack?.stop();
});

async function sync(mode: 'SYNC_MODE_UPSERT' | 'SYNC_MODE_MIRROR', extra: object = {}): Promise<{ job: pb.Job__Output; diffLines: string[] }> {
  const started = await api.call<pb.Job__Output>('StartSync', { from: 'shop-a', to: 'shop-b', mode, ...extra });
  const job = await api.waitJob(started.id);
  expect(job.state, `${job.error}\n${stack.logs().slice(-4000)}`).toBe('JOB_STATE_COMPLETED');
  const { entries } = await api.call<pb.JobLogs__Output>('GetJobLogs', { id: job.id });
  return { job, diffLines: entries.map((e) => e.message).filter((m) => m.includes(': diff')) };
}

const same = async () => diffHashes(await databaseHashes(a.sql('shop')), await databaseHashes(b.sql('shop')));

/** The change slots on the source: the last completed job's only (each earlier one dropped once no table needs it). */
const slots = async () => (await a.sql('shop')<{ slot_name: string }[]>`SELECT slot_name FROM pg_replication_slots ORDER BY slot_name`).map((r) => r.slot_name);
const slotOf = (jobId: string) => `syncflow_${jobId.replace(/-/g, '')}`;

/** ~1 % of the rows, spread uniformly over the keys; returns how many rows changed. */
async function changeOnePercent(round: number): Promise<number> {
  let n = 0;
  await a.sql('shop').begin(async (tx) => {
    const run = async (q: string) => { n += (await tx.unsafe(q)).count; };
    await run(`UPDATE customers SET score = score + 1, seen = seen + interval '1.5 microseconds' WHERE id % 100 = ${round}`);
    // only the bytes of a bytea column (hashed by its bytes, not its text)
    await run(`UPDATE customers SET photo = coalesce(photo, '') || '\\x00'::bytea WHERE id % 100 = ${50 + round}`);
    await run(`UPDATE orders SET note = coalesce(note, '') || ' (edited ${round})' WHERE id % 200 = ${3 + round}`);
    await run(`DELETE FROM orders WHERE id % 1000 = ${17 + round}`);
    await run(`INSERT INTO customers SELECT (SELECT max(id) FROM customers) + g, 'new ' || g, 0, now(), NULL FROM generate_series(1, 300) g`);
    await run(`INSERT INTO orders SELECT (SELECT max(id) FROM orders) + g, 1 + g, 9.99, NULL FROM generate_series(1, 600) g`);
    // a text composite key: updates, deletes and inserts
    await run(`UPDATE tags SET label = label || ' v${round}' WHERE md5(name || lang || '${round}') LIKE '0%' AND lang = 'de'`);
    await run(`DELETE FROM tags WHERE md5(name || lang || '${round}') LIKE '00%'`);
    await run(`INSERT INTO tags SELECT 'new tag ${round} ' || g, 'en', 'fresh' FROM generate_series(1, 50) g`);
    // key changes: the old key is gone from the source, the new one is new
    await run(`UPDATE tags SET lang = 'it-${round}' WHERE md5(name || lang || '${round}') LIKE '01%' AND lang = 'en'`);
    // keyless: delete some rows (one of a duplicate pair among them), add new ones and a duplicate of an existing one
    await run(`DELETE FROM events WHERE ctid IN (SELECT ctid FROM events WHERE customer_id % 97 = ${1 + round} LIMIT 300)`);
    await run(`INSERT INTO events SELECT now(), g, 'new event ${round} ' || g FROM generate_series(1, 400) g`);
    await run(`INSERT INTO events SELECT * FROM events WHERE payload = 'event ${1000 + round}'`);
  });
  return n;
}

describe('diff re-sync', () => {
  it('loads the target first (plain COPY, no diff)', async () => {
    const { job, diffLines } = await sync('SYNC_MODE_UPSERT');
    expect(job.tasks.every((t) => t.method === 'APPLY_METHOD_COPY')).toBe(true);
    expect(diffLines).toEqual([]);
    expect(Number(job.rows)).toBe(TOTAL);
    expect(await same()).toEqual([]);
    // The load left its change slot on the source: the next re-sync decodes from it.
    expect(await slots()).toEqual([slotOf(job.id)]);
  });

  it('after ~1 % changed, a mirror re-sync ships only the rows changed since the load (decoded from its change slot) and ends equal by content', async () => {
    const before = await slots();
    const changed = await changeOnePercent(1);
    expect(changed).toBeGreaterThan(TOTAL * 0.005);
    const { job, diffLines } = await sync('SYNC_MODE_MIRROR');
    expect(await same()).toEqual([]);
    // One line per table: the keyed ones from the tracked changes, the keyless one by comparing hash buckets.
    expect(diffLines).toHaveLength(4);
    for (const l of diffLines.filter((x) => !x.startsWith('public.events:'))) {
      expect(l).toMatch(/diff from tracked changes: \d+ key\(s\) of the table changed since its last sync, \d+ in this task's key range(, prepared ahead of its FK level)?; \d+ rows shipped(, read ahead of its FK level)? \(/);
    }
    expect(diffLines.find((l) => l.startsWith('public.events:'))).toMatch(/diff: \d+ of \d+ coarse buckets differed, \d+ of \d+ fine buckets \(tracked changes not usable: the table changed since its last sync, and without a primary key its changes name no rows\); \d+ rows shipped/);
    // The load's slot was dropped once this job's slot became every table's baseline.
    expect(before).toHaveLength(1);
    expect(await slots()).toEqual([slotOf(job.id)]);
    // orders (FK level 1) compared its buckets while its parents shipped: the source agent had its filter
    // ready, and the rows it ships read out of the job snapshot (SYNCFLOW_READ_AHEAD_BYTES).
    expect(diffLines.find((l) => l.startsWith('public.orders:'))).toMatch(/prepared ahead of its FK level; [1-9]\d* rows shipped, read ahead of its FK level \(/);
    const shipped = Number(job.rows);
    console.log(`[diff] ${changed} rows changed; re-sync shipped ${shipped} of ${TOTAL} rows, deleted ${job.rows_deleted}\n  ${diffLines.join('\n  ')}`);
    expect(shipped).toBeGreaterThanOrEqual(changed * 0.5); // deletes ship nothing; every update and insert ships
    expect(shipped).toBeLessThan(TOTAL * 0.04);
    expect(Number(job.rows_deleted)).toBeGreaterThan(0);
    // One scan per side (events): both fine rounds were answered from the sums their coarse round built.
    const logs = stack.logs();
    expect(logs).toContain('"source_rescanned":false');
    expect(logs).not.toContain('"source_rescanned":true');
    expect(logs).not.toContain('scanned again');
    // events: the rows of its differing buckets found by the ctids those passes kept, on both sides (no second scan).
    expect(logs).toMatch(/"rows_by_ctid":[1-9]\d*,[^\n]*"msg":"diff: buckets compared"/);
    expect(logs).toMatch(/"rows_by_ctid":[1-9]\d*[^\n]*"msg":"diff re-sync: shipping only differing hash buckets"/);
  });

  it('PrepareDiffs refuses what is not a task message, change slot RPCs a name not syncflow\'s: INVALID_ARGUMENT naming it, nothing queued or dropped', async () => {
    const ready = stack.logs().split('\n').find((l) => l.includes('"msg":"agent ready"') && l.includes('"group":"a"'))!;
    const address = JSON.parse(ready.slice(ready.indexOf('{'))).address as string;
    const AgentService = loadProtos().proto.syncflow.v1.AgentService;
    const client = new AgentService(address, grpc.credentials.createInsecure());
    try {
      const bad = call(client, 'PrepareDiffs', { tasks: [Buffer.from('{"job_id": 1}')] });
      await expect(bad).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT, details: expect.stringMatching(/^tasks\[0\] is not a task message: \w+ /) });
      await expect(call(client, 'PrepareDiffs', { tasks: [Buffer.from('not json')] })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
      expect(await call(client, 'PrepareDiffs', { tasks: [] })).toMatchObject({ accepted: 0 });
      // Change slot names go into replication commands and pg_drop_replication_slot: only syncflow's own shape passes.
      const before = await slots();
      await expect(call(client, 'DropChangeSlots', { slots: ['user_slot'] })).rejects.toMatchObject({
        code: grpc.status.INVALID_ARGUMENT, details: expect.stringContaining('change slot name "user_slot" is malformed'),
      });
      await expect(call(client, 'ExportSnapshot', { job_id: 'j', change_slot: 'syncflow_x; DROP TABLE orders' })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
      expect(await slots()).toEqual(before);
    } finally {
      client.close();
    }
  });

  it('with nothing changed, ships no rows, and the source hashes no table', async () => {
    const scans = () => stack.logs().split('"msg":"diff: buckets compared"').length;
    const before = scans();
    const { job, diffLines } = await sync('SYNC_MODE_MIRROR');
    expect(Number(job.rows)).toBe(0);
    expect(Number(job.rows_deleted)).toBe(0);
    // keyed tables: no key changed since the last sync; events (keyless): no change line since its last sync, so the source does not scan it
    expect(diffLines.filter((l) => !l.startsWith('public.events:')).every((l) => l.includes(': 0 key(s) of the table changed'))).toBe(true);
    expect(diffLines.find((l) => l.startsWith('public.events:'))).toContain('diff from tracked changes: the table did not change since its last sync');
    // orders (FK level 1) had nothing to ship: its source agent said so while customers still ran, and
    // the task was done without running (no start, no transfer).
    const orders = job.tasks.filter((t) => t.table === 'orders');
    expect(orders.length).toBeGreaterThan(0);
    for (const t of orders) expect([t.state, t.started_at]).toEqual(['TASK_STATE_DONE', '']);
    expect(diffLines.filter((l) => l.startsWith('public.orders:')).every((l) => l.endsWith('; nothing to ship: done ahead of its FK level, without running'))).toBe(true);
    expect(scans()).toBe(before);
    expect(await same()).toEqual([]);
  });

  it('a change in a table keyed by text columns alone ships that row (upsert mode)', async () => {
    await a.exec('shop', `UPDATE tags SET label = 'only this one' WHERE name = 'tag, "77"' AND lang = 'fr'`);
    const { job } = await sync('SYNC_MODE_UPSERT', { tables: ['tags', 'customers'] });
    expect(Number(job.rows)).toBeGreaterThanOrEqual(1);
    expect(Number(job.rows)).toBeLessThanOrEqual(4);
    expect(await same()).toEqual([]);
  });

  it('--diff hash compares hash buckets of every table; it finds a write to the target by someone else, which tracked changes do not see', async () => {
    // The upsert job before left rows deleted on the source in place: a mirror job hashes, then tracks again.
    const after = await sync('SYNC_MODE_MIRROR', { tables: ['customers'] });
    expect(after.diffLines[0]).toMatch(/coarse buckets differ/);
    await b.exec('shop', `UPDATE customers SET name = 'changed on the target' WHERE id = 4242`);
    const auto = await sync('SYNC_MODE_MIRROR', { tables: ['customers'] });
    expect(auto.diffLines[0]).toContain('diff from tracked changes: 0 key(s)');
    expect(await same()).not.toEqual([]);
    const hashed = await sync('SYNC_MODE_MIRROR', { tables: ['customers'], diff: 'hash' });
    expect(hashed.diffLines[0]).toMatch(/diff: \d+ of \d+ coarse buckets differed/);
    // that row, and the odd row sharing its bucket
    expect(Number(hashed.job.rows)).toBeGreaterThanOrEqual(1);
    expect(Number(hashed.job.rows)).toBeLessThanOrEqual(3);
    expect(await same()).toEqual([]);
  });

  it('a transaction running on the source past the slot wait: the job goes on with a plain snapshot and says why', async () => {
    // An open transaction that wrote: creating a slot waits for it to end (SYNCFLOW_CHANGE_SLOT_WAIT_MS, 10 s).
    const held = a.sql('shop').reserve();
    const conn = await held;
    try {
      await conn`BEGIN`;
      await conn`UPDATE tags SET label = label WHERE name = 'tag, "1"' AND lang = 'de'`;
      const before = await slots();
      const started = await api.call<pb.Job__Output>('StartSync', { from: 'shop-a', to: 'shop-b', mode: 'SYNC_MODE_MIRROR', tables: ['tags'] });
      const job = await api.waitJob(started.id);
      expect(job.state, job.error).toBe('JOB_STATE_COMPLETED');
      const { entries } = await api.call<pb.JobLogs__Output>('GetJobLogs', { id: job.id });
      expect(entries.find((e) => e.level === 'warn' && e.message.startsWith('no change slot'))?.message)
        .toMatch(/^no change slot \(the next re-sync hashes every row\): transactions running on the source kept the slot from being created for 10 s$/);
      // Nothing half-made is left behind: no new slot, the earlier ones kept.
      expect(await slots()).toEqual(before);
    } finally {
      await conn`ROLLBACK`.catch(() => undefined);
      conn.release();
    }
    expect(await same()).toEqual([]);
  }, 120_000);

  it('diff off ships every row', async () => {
    const { job, diffLines } = await sync('SYNC_MODE_MIRROR', { tables: ['tags'], diff: 'off' });
    expect(diffLines).toEqual([]);
    expect(Number(job.rows)).toBeGreaterThan(N.tags * 0.9);
    expect(await same()).toEqual([]);
  });

  it('a truncated table falls back to hashing, with the reason in the job log; other tables keep their tracked changes', async () => {
    await a.exec('shop', `TRUNCATE orders; INSERT INTO orders VALUES (1, 1, 1.00, 'after truncate'); UPDATE customers SET score = -1 WHERE id = 7`);
    const { job, diffLines } = await sync('SYNC_MODE_MIRROR', { tables: ['orders', 'customers'] });
    expect(diffLines.find((l) => l.startsWith('public.orders:'))).toMatch(/coarse buckets differ.*\(tracked changes not usable: the table was truncated since the last sync\)/);
    expect(diffLines.find((l) => l.startsWith('public.customers:'))).toContain('diff from tracked changes: 1 key(s)');
    expect(Number(job.rows_deleted)).toBeGreaterThan(100_000);
    expect(await same()).toEqual([]);
    // orders and customers take this job's slot; tags (last synced by the upsert job) and events
    // (by the mirror job with nothing changed) still need theirs: three slots, none left behind.
    expect(await slots()).toHaveLength(3);
    expect(await slots()).toContain(slotOf(job.id));
  });

  it('past SYNCFLOW_CHANGE_MAX_KEYS every table hashes, and a key printed after a long column cannot be decoded: each says why, the target ends equal', async () => {
    const WIDE = `CREATE TABLE wide_last (payload text NOT NULL, id bigint PRIMARY KEY);
                  CREATE TABLE wide_mid (payload text NOT NULL, id bigint PRIMARY KEY);
                  CREATE TABLE wide_first (id bigint PRIMARY KEY, payload text NOT NULL);`;
    const wide = ['wide_last', 'wide_mid', 'wide_first'];
    await a.exec('shop', `${WIDE} INSERT INTO wide_last VALUES ('first', 0); INSERT INTO wide_mid VALUES ('first', 0); INSERT INTO wide_first VALUES (0, 'first');`);
    await b.exec('shop', WIDE);
    await sync('SYNC_MODE_MIRROR', { tables: wide });
    // 20 000 characters of payload (more than MAX_LINE) printed before wide_last's key, after wide_first's;
    // 5 000 before wide_mid's: past the first read's cut (2 048), found when its lines are read again, longer.
    const big = (n: number) => `(SELECT string_agg(md5(g::text || x::text), '') FROM generate_series(1, ${n}) x)`;
    await a.exec('shop', `INSERT INTO wide_last SELECT ${big(625)}, g FROM generate_series(1, 3) g;
                          INSERT INTO wide_mid SELECT ${big(160)}, g FROM generate_series(1, 3) g;
                          INSERT INTO wide_first SELECT g, ${big(625)} FROM generate_series(1, 3) g;`);
    const cut = await sync('SYNC_MODE_MIRROR', { tables: wide });
    expect(cut.diffLines.find((l) => l.startsWith('public.wide_last:'))).toMatch(/tracked changes not usable: a INSERT since the last sync prints its primary key after 16384 characters of other columns/);
    for (const t of ['wide_mid', 'wide_first']) expect(cut.diffLines.find((l) => l.startsWith(`public.${t}:`))).toContain('diff from tracked changes: 3 key(s)');
    expect(await same()).toEqual([]);

    // A source agent that keeps at most 50 changed keys; 60 rows of customers change, and 6 of orders
    // (3 000 rows again, synced first): both decode a slot holding all 66 changes, so both hash. orders'
    // rows do not fit the agent's read-ahead budget (1 byte): its task reads them when its level comes.
    await a.exec('shop', `INSERT INTO orders SELECT g, 1 + g % 100, 1.00, NULL FROM generate_series(2, 3000) g`);
    await sync('SYNC_MODE_MIRROR', { tables: ['orders'] });
    const sources = [...stack.agents.values()].filter((p) => p.running && p.name.startsWith('agent-a-'));
    const limited = await stack.startAgent('a', undefined, { SYNCFLOW_CHANGE_MAX_KEYS: '50', SYNCFLOW_READ_AHEAD_BYTES: '1' });
    for (const p of sources) await p.stop();
    try {
      await a.exec('shop', `UPDATE customers SET score = score + 3 WHERE id % 1000 = 9; UPDATE orders SET note = 'limited' WHERE id % 500 = 1`);
      const { diffLines } = await sync('SYNC_MODE_MIRROR', { tables: ['customers', 'orders'] });
      for (const t of ['customers', 'orders']) {
        expect(diffLines.find((l) => l.startsWith(`public.${t}:`))).toMatch(/coarse buckets differ.*\(tracked changes not usable: more than 50 changed rows since the last sync\)/);
      }
      expect(diffLines.find((l) => l.startsWith('public.orders:'))).toMatch(/prepared ahead of its FK level; [1-9]\d* rows shipped \(/);
      expect(stack.logs()).toContain('diff: rows not read ahead; the task reads them');
      expect(await same()).toEqual([]);
    } finally {
      await stack.startAgent('a');
      await limited.stop();
    }
  }, 240_000);

  for (const group of ['b', 'a'] as const) {
    it(`kill -9 of the ${group === 'b' ? 'target' : 'source'} agent during a diff re-sync: the job completes and the target equals the source`, async () => {
      await changeOnePercent(group === 'b' ? 2 : 4);
      await changeOnePercent(group === 'b' ? 3 : 5);
      // Small batches and a rate limit, so the re-sync is still shipping when the agent dies.
      const started = await api.call<pb.Job__Output>('StartSync', {
        from: 'shop-a', to: 'shop-b', mode: 'SYNC_MODE_MIRROR', batch_bytes: 64 * 1024, max_rows_per_s: 1500, max_attempts: 20,
      });
      await waitFor(async () => {
        const [r] = await b.sql('shop')<{ n: number }[]>`SELECT count(*)::int AS n FROM syncflow.diff_filters WHERE job_id = ${started.id}`;
        return r!.n >= 1;
      }, { what: 'a stored bucket filter (a committed diff batch)', timeoutMs: 120_000, intervalMs: 50 });
      const victim = [...stack.agents.entries()].find(([id, p]) => id.startsWith(`${group}-`) && p.running)!;
      await victim[1].kill('SIGKILL');
      // The rest at full speed: without its job snapshot a task that had shipped nothing ships every row.
      await api.call('SetJobRate', { id: started.id, max_rows_per_s: 0, max_bytes_per_s: 0 });
      await stack.startAgent(group);
      const job = await api.waitJob(started.id, 300_000);
      expect(job.state, `${job.error}\n${stack.logs().slice(-4000)}`).toBe('JOB_STATE_COMPLETED');
      expect(await same()).toEqual([]);
      const [dup] = await b.sql('shop')<{ n: number }[]>`
        SELECT count(*)::int AS n FROM (SELECT 1 FROM syncflow.ledger WHERE job_id = ${started.id} GROUP BY task_id, seq HAVING count(*) > 1) d`;
      expect(dup!.n).toBe(0);
      const { entries } = await api.call<pb.JobLogs__Output>('GetJobLogs', { id: job.id });
      console.log(`[diff] after kill -9 of agent ${victim[0]}: shipped ${job.rows} rows\n  ${entries.map((e) => e.message).filter((m) => m.includes(': diff')).join('\n  ')}`);
      // Without its job snapshot a task that had shipped nothing ships every row (and a keyless table restarts).
      expect(Number(job.rows)).toBeLessThan(group === 'b' ? TOTAL * 0.1 : TOTAL);
    }, 300_000);
  }
});
