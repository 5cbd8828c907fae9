import { afterAll, beforeAll, expect, it } from 'vitest';
import { createPool, type Sql } from '../../packages/shared/src/index.js';
import { PgCluster } from '../harness/index.js';

/**
 * The agents' pool across an outage and a restart of its database (scripts/patch-deps.mjs): queries in flight when
 * the server ends their connections fail, and afterwards every connection of the pool, reconnected,
 * answers. Unpatched, postgres.js kept each connection's 57P01 and failed its first later query with
 * it, one stale failure per connection (a finalize retried with backoff waited minutes); and a
 * transaction cut by the stop left its ROLLBACK queued on the closed connection, so the next
 * transaction on it, after the restart, waited forever for the answer to its first query.
 */
const MAX = 4;
let pg: PgCluster;
let sql: Sql;

beforeAll(async () => {
  pg = await PgCluster.start({ name: 'pool-restart' });
  sql = createPool(pg.url('postgres'), { max: MAX, applicationName: 'syncflow-test-pool' });
});

/** Waits until `n` sessions of the application run a query (the pool's queries are in flight). */
async function untilActive(app: string, n: number): Promise<void> {
  await expect.poll(async () => {
    const [r] = await pg.sql()<{ n: number }[]>`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = ${app} AND state = 'active'`;
    return r!.n;
  }, { timeout: 10_000 }).toBe(n);
}

afterAll(async () => {
  await sql?.end({ timeout: 1 }).catch(() => undefined);
  await pg?.destroy();
});

it('after a restart of the database no pooled connection fails a query with an error of before the restart', async () => {
  const inFlight = Array.from({ length: MAX }, () => sql`SELECT pg_sleep(30)`.then(() => 'answered', (e: { code?: string }) => e.code ?? 'error'));
  await untilActive('syncflow-test-pool', MAX);
  await pg.stop();
  expect(new Set(await Promise.all(inFlight))).not.toContain('answered');
  await pg.start();
  // Sequential queries land on the pool's connections in turn; concurrent ones on all of them at once.
  const failures: string[] = [];
  for (let i = 0; i < 2 * MAX; i++) await sql`SELECT 1`.catch((e: { code?: string }) => failures.push(e.code ?? 'error'));
  for (const r of await Promise.allSettled(Array.from({ length: MAX }, () => sql`SELECT pg_sleep(0.05)`))) {
    if (r.status === 'rejected') failures.push((r.reason as { code?: string }).code ?? 'error');
  }
  expect(failures).toEqual([]);
});

it('while the database is down queries fail at once, and once it is back the next query answers within seconds', async () => {
  await pg.stop();
  // Queries all through the outage, like the breaker's probes and the tasks' attempts: each connect
  // fails, and postgres.js's own backoff (3^n / 100 s, up to 20 s) grew with each one; a query after
  // the restart waited out that backoff (~15 s after a 20 s outage). createPool caps it at ~1 s.
  const slowest = { down: 0, up: 0 };
  const downUntil = Date.now() + 15_000;
  while (Date.now() < downUntil) {
    const t0 = Date.now();
    const code = await sql`SELECT 1`.then(() => 'answered', (e: { code?: string }) => e.code ?? 'error');
    expect(code).not.toBe('answered');
    slowest.down = Math.max(slowest.down, Date.now() - t0);
    await new Promise((r) => setTimeout(r, 200));
  }
  await pg.start();
  const t0 = Date.now();
  await sql`SELECT 1`;
  slowest.up = Date.now() - t0;
  console.log(`[pool-restart] slowest failure while down ${slowest.down} ms; first answer after the restart ${slowest.up} ms`);
  expect(slowest.down).toBeLessThan(3_000);
  expect(slowest.up).toBeLessThan(3_000);
}, 60_000);

it('a transaction cut by the stop leaves nothing behind: transactions after the restart answer', async () => {
  // Both of the pool's connections (max: 2) inside a transaction when the database stops; nothing
  // queries it while it is down (the breaker refuses work then), so the pool reopens those very
  // connections once it is back.
  const small = createPool(pg.url('postgres'), { max: 2, applicationName: 'syncflow-test-tx' });
  try {
    const cut = Array.from({ length: 2 }, () => small.begin(async (tx) => {
      await tx`SELECT 1`;
      await tx`SELECT pg_sleep(30)`;
    }).then(() => 'committed', (e: { code?: string }) => e.code ?? 'error'));
    await untilActive('syncflow-test-tx', 2);
    await pg.stop();
    expect(await Promise.all(cut)).toEqual(['CONNECTION_CLOSED', 'CONNECTION_CLOSED']);
    await pg.start();
    const within = <T>(p: Promise<T>, what: string) => Promise.race([p, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${what}: no answer in 10 s`)), 10_000))]);
    for (let i = 0; i < 4; i++) {
      const got = await within(small.begin(async (tx) => {
        await tx`SELECT pg_advisory_xact_lock(42)`;
        const [a] = await tx<{ a: number }[]>`SELECT ${i}::int AS a`;
        const [b] = await tx<{ b: string }[]>`SELECT 'second' AS b`;
        return [a!.a, b!.b];
      }), `transaction ${i} after the restart`);
      expect(got).toEqual([i, 'second']);
    }
  } finally {
    await small.end({ timeout: 1 }).catch(() => undefined);
  }
}, 60_000);
