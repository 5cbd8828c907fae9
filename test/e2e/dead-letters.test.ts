import { createServer, type Server } from 'node:http';
import { createHmac, timingSafeEqual } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestStack, freePort, sleep, waitFor, type PgCluster } from '../harness/index.js';
import { Api } from '../harness/api.js';
import { loadSource, createTarget, expectSame, SMALL } from '../fixtures/reliability.js';
import { connect } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import { names, publishEvent, type pb } from '../../packages/shared/src/index.js';

/**
 * Per-table recovery and dead letters: one table fails for good (a CHECK constraint only the target
 * has refuses some of its rows: a data error, not retryable); the other tables still sync (its FK
 * child, loaded into an empty table, does not wait for it: the child's foreign key comes back NOT
 * VALID and is validated after the retry), the job ends completed_with_errors, the dead letter is
 * listed, alerted (signed webhook, metric, error log) and, once the cause is fixed, retried to completion.
 */

const SECRET = 'webhook-secret-for-tests';
let stack: TestStack;
let api: Api;
let a: PgCluster;
let b: PgCluster;
let hook: Server;
const received: { body: string; signature: string }[] = [];
let metricsPort = 0;

beforeAll(async () => {
  hook = createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => { body += c; });
    req.on('end', () => {
      received.push({ body, signature: String(req.headers['x-syncflow-signature'] ?? '') });
      res.writeHead(204).end();
    });
  });
  const hookPort = await freePort();
  await new Promise<void>((r) => hook.listen(hookPort, '127.0.0.1', () => r()));
  metricsPort = await freePort();
  stack = await TestStack.start({
    coordinatorEnv: {
      SYNCFLOW_ALERT_WEBHOOK_URL: `http://127.0.0.1:${hookPort}/alerts`, SYNCFLOW_ALERT_WEBHOOK_SECRET: SECRET,
      SYNCFLOW_METRICS_LISTEN: `127.0.0.1:${metricsPort}`,
    },
    // max_deliver 2: the third test kills the agent of a task twice
    env: { SYNCFLOW_TASK_ACK_WAIT_MS: "3000", SYNCFLOW_TASK_MAX_DELIVER: "2" },
  });
  api = new Api(stack.coordinatorAddress);
  a = stack.region('a');
  b = stack.region('b');
  await loadSource(a, 'src', SMALL);
  await api.connection('src', a, 'src', 'a');
});

afterAll(async () => {
  api?.close();
  await stack?.stop();
  await new Promise((r) => hook?.close(r));
});

const validSignature = (body: string, sig: string) => {
  const want = Buffer.from('sha256=' + createHmac('sha256', SECRET).update(body).digest('hex'));
  return sig.length === want.length && timingSafeEqual(Buffer.from(sig), want);
};

async function failingJob(db: string, extra: Record<string, unknown> = {}): Promise<pb.Job__Output> {
  // 10% of orders have total >= 900: the target refuses them (SQLSTATE 23514, not retryable).
  await createTarget(b, db, 'ALTER TABLE orders ADD CONSTRAINT small_totals CHECK (total < 900);');
  await api.connection(db, b, db, 'b');
  const started = await api.call<pb.Job__Output>('StartSync', { from: 'src', to: db, mode: 'SYNC_MODE_UPSERT', batch_bytes: 64 * 1024, max_attempts: 2,
    on_bad_row: 'fail', ...extra }); // the refused rows must fail the table (quarantine is the default)
  try {
    return await api.waitJob(started.id, 60_000);
  } catch (e) {
    const logs = await a.sql('control')`SELECT at::text, level, task_id, message FROM sync_logs WHERE job_id = ${started.id} ORDER BY id`;
    const tasks = await a.sql('control')`SELECT id, state, error, attempts FROM tasks WHERE job_id = ${started.id}`;
    throw new Error(`${(e as Error).message}\n${JSON.stringify(logs)}\n${JSON.stringify(tasks)}\n${stack.logs()}`);
  }
}

const stateOf = (job: pb.Job__Output, table: string) => job.tasks.find((t) => t.table === table)?.state;

describe('one table fails for good', () => {
  it('the others finish, its child\'s foreign key waits NOT VALID, the job ends completed_with_errors, the dead letter is alerted and retried', async () => {
    const job = await failingJob('dst1');
    expect(job.state, stack.logs()).toBe('JOB_STATE_COMPLETED_WITH_ERRORS');
    expect(stateOf(job, 'orders')).toBe('TASK_STATE_FAILED');
    // items is loaded into an empty table with its foreign keys set aside: it does not wait for orders,
    // so it is done; its foreign key to the failed orders comes back NOT VALID (guarding new rows), and
    // is validated once orders is synced.
    for (const t of ['customers', 'products', 'events', 'items']) expect(stateOf(job, t)).toBe('TASK_STATE_DONE');
    const dst = b.sql('dst1');
    const src = a.sql('src');
    const [{ n }] = await dst<{ n: number }[]>`SELECT count(*)::int AS n FROM customers`;
    expect(n).toBe(SMALL.customers);
    const fk = async () => (await dst<{ valid: boolean }[]>`SELECT convalidated AS valid FROM pg_constraint WHERE conname = 'items_order_id_fkey'`).map((r) => r.valid);
    expect(await fk()).toEqual([false]);
    expect((await api.call<pb.JobLogs__Output>('GetJobLogs', { id: job.id })).entries.map((e) => e.message).join('\n')).toMatch(/1 foreign key\(s\) back NOT VALID until their parent table is synced/);

    // Listed over gRPC through the CLI, with the error and the task's history.
    const list = await stack.cli(['dlq', 'list', '--job', job.id, '--json']);
    expect(list.code, list.stderr).toBe(0);
    const dls = (JSON.parse(list.stdout) as pb.ListDeadLettersResponse__Output).dead_letters;
    expect(dls).toHaveLength(1);
    expect(dls[0]).toMatchObject({ table: 'orders', error_code: '23514', attempts: 1 });
    expect(dls[0]!.history.join('\n')).toMatch(/started on agent a-1 \(attempt 1\)/);
    expect(dls[0]!.error).toMatch(/check constraint/);
    const human = await stack.cli(['dlq', 'list']);
    expect(human.stdout).toMatch(/public\.orders/);

    // The alert: a signed webhook POST, a metric, an error-level log line.
    await waitFor(() => received.some((r) => JSON.parse(r.body).kind === 'dead_letter'), { what: 'the dead-letter webhook', timeoutMs: 30_000 });
    const alert = received.find((r) => JSON.parse(r.body).kind === 'dead_letter')!;
    expect(validSignature(alert.body, alert.signature)).toBe(true);
    expect(validSignature(alert.body + ' ', alert.signature)).toBe(false);
    expect(JSON.parse(alert.body)).toMatchObject({ job_id: job.id, table: 'public.orders', error_code: '23514' });
    const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    expect(metrics).toMatch(/^syncflow_dead_letters_total 1$/m);
    expect(metrics).toMatch(/^syncflow_jobs_total\{state="completed_with_errors"\} 1$/m);
    expect(stack.coordinator!.logs()).toMatch(/"level":50.*"alert":"dead_letter"|"alert":"dead_letter".*"level":50/);

    // Fix the cause, retry the dead letter: orders resumes from its checkpoint, items follows.
    await dst`ALTER TABLE orders DROP CONSTRAINT small_totals`;
    // The source agents stopped: the retried task waits queued while the first run's final failure is
    // delivered once more, late (as after a coordinator restart, or past the consumer's ack wait). It is
    // not the re-queued run's and must not fail it again.
    const sources = [...stack.agents].filter(([id, p]) => id.startsWith('a-') && p.running).map(([, p]) => p);
    await Promise.all(sources.map((p) => p.stop()));
    const retried = await stack.cli(['dlq', 'retry', dls[0]!.id]);
    expect(retried.code, retried.stderr).toBe(0);
    await publishStaleFailure(job.id, dls[0]!.task_id);
    const state = async () => (await api.call<pb.Job__Output>('GetJob', { id: job.id })).tasks.find((t) => t.id === dls[0]!.task_id)?.state;
    await sleep(2_000); // the event is applied within milliseconds
    expect(await state()).toBe('TASK_STATE_QUEUED');
    await stack.startAgent('a');
    const done = await api.waitJob(job.id, 120_000);
    expect(done.state, done.error).toBe('JOB_STATE_COMPLETED');
    expect(await expectSame(src, dst)).toEqual({ diff: [], duplicates: 0 });
    expect(await fk()).toEqual([true]);
    const again = await stack.cli(['dlq', 'list', '--job', job.id, '--json']);
    expect((JSON.parse(again.stdout) as pb.ListDeadLettersResponse__Output).dead_letters).toHaveLength(0);
    // Retrying it once more (as an operator going down an older list would) changes nothing.
    const twice = await stack.cli(['dlq', 'retry', dls[0]!.id]);
    expect(twice.code, twice.stderr).toBe(0);
    expect(twice.stdout).toMatch(/job .* completed/);
    expect((await api.call<pb.Job__Output>('GetJob', { id: job.id })).state).toBe('JOB_STATE_COMPLETED');
    const logs = await stack.cli(['job', 'logs', job.id]);
    expect(logs.code, logs.stderr).toBe(0);
    expect(logs.stdout).toMatch(/dead letter \d+ retried/);
    expect(logs.stdout).toMatch(/job completed with errors/);
  });

  it('`job retry --failed` re-runs only what failed; with keep_indexes the child of a failed table is blocked, then run', async () => {
    // keep_indexes: the foreign keys stay in place, so FK levels order the load and items must wait for orders.
    const job = await failingJob('dst2', { keep_indexes: true });
    expect(job.state).toBe('JOB_STATE_COMPLETED_WITH_ERRORS');
    expect(stateOf(job, 'items')).toBe('TASK_STATE_BLOCKED');
    expect(job.tasks.find((t) => t.table === 'items')!.error).toMatch(/blocked: parent table public\.orders failed/);
    const doneBefore = job.tasks.filter((t) => t.state === 'TASK_STATE_DONE').map((t) => [t.id, t.finished_at]);
    await b.sql('dst2')`ALTER TABLE orders DROP CONSTRAINT small_totals`;
    const r = await stack.cli(['job', 'retry', job.id, '--failed']);
    expect(r.code, r.stderr).toBe(0);
    const done = await api.waitJob(job.id, 120_000);
    expect(done.state, done.error).toBe('JOB_STATE_COMPLETED');
    // Tables that were done were not run again.
    for (const [id, at] of doneBefore) expect(done.tasks.find((t) => t.id === id)!.finished_at).toBe(at);
    expect(await expectSame(a.sql('src'), b.sql('dst2'))).toEqual({ diff: [], duplicates: 0 });
    const bad = await stack.cli(['job', 'retry', job.id]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr.trim().split('\n')).toHaveLength(1);
    const badDlq = await stack.cli(['dlq', 'retry', 'x1']);
    expect(badDlq.code).toBe(2);
  });

  it('a job whose every table failed is `failed`; `job retry --failed` then runs them again to completion', async () => {
    await createTarget(b, 'dst5', 'ALTER TABLE products ADD CONSTRAINT short_skus CHECK (length(sku) < 4);');
    await api.connection('dst5', b, 'dst5', 'b');
    const started = await api.call<pb.Job__Output>('StartSync', { from: 'src', to: 'dst5', tables: ['products'], max_attempts: 1, on_bad_row: 'fail' });
    const failed = await api.waitJob(started.id, 60_000);
    expect(failed.state).toBe('JOB_STATE_FAILED');
    await b.sql('dst5')`ALTER TABLE products DROP CONSTRAINT short_skus`;
    const r = await stack.cli(['job', 'retry', started.id, '--failed']);
    expect(r.code, r.stderr).toBe(0);
    // The failed job's "cancelled" flag is replaced: its retried tasks are run, not dropped.
    const done = await api.waitJob(started.id, 60_000);
    expect(done.state, done.error).toBe('JOB_STATE_COMPLETED');
    const [{ n }] = await b.sql('dst5')<{ n: number }[]>`SELECT count(*)::int AS n FROM products`;
    expect(n).toBe(SMALL.products);
  });

  it('a job past its timeout_seconds is cancelled like `job cancel`, with the reason', async () => {
    await createTarget(b, 'dst4');
    await api.connection('dst4', b, 'dst4', 'b');
    const lock = await b.sql('dst4').reserve();
    await lock`BEGIN`;
    await lock`LOCK TABLE orders IN SHARE MODE`; // orders cannot finish: the job runs on past its timeout
    try {
      const r = await stack.cli(['sync', 'start', '--from', 'src', '--to', 'dst4', '--job-timeout', '3', '--keep-indexes', '--json']);
      expect(r.code, r.stderr).toBe(0);
      const id = (JSON.parse(r.stdout) as pb.Job__Output).id;
      const job = await api.waitJob(id, 60_000);
      expect(job.state).toBe('JOB_STATE_CANCELLED');
      expect(job.error).toBe('timed out after 3 s');
    } finally {
      await lock`ROLLBACK`.catch(() => undefined);
      lock.release();
    }
  });

  it('a task whose agents die on every delivery is dead-lettered from the max-deliveries advisory, never stuck', async () => {
    await createTarget(b, 'dst3');
    await api.connection('dst3', b, 'dst3', 'b');
    // Hold orders locked against writes on the target (reads still work): its task stays in flight while its agents are killed.
    const lock = await b.sql('dst3').reserve();
    await lock`BEGIN`;
    await lock`LOCK TABLE orders IN SHARE MODE`;
    let released = false;
    try {
      // keep_indexes: setting the FKs aside would need the lock this test holds.
      const started = await api.call<pb.Job__Output>('StartSync', { from: 'src', to: 'dst3', mode: 'SYNC_MODE_UPSERT', max_attempts: 5, keep_indexes: true });
      // Orders is the only task in flight when its agents are killed: the other tables are done, or wait for it
      // (on a slow host a table still loading at both kills used up its deliveries too, a dead letter of its own).
      const inFlight = ['TASK_STATE_QUEUED', 'TASK_STATE_RUNNING'];
      const ordersAlone = async (n: number) => {
        const tasks = (await api.call<pb.Job__Output>('GetJob', { id: started.id })).tasks;
        return tasks.find((t) => t.table === 'orders')!.attempts >= n && tasks.every((t) => t.table === 'orders' || !inFlight.includes(t.state));
      };
      let source = [...stack.agents].find(([id, p]) => id.startsWith('a-') && p.running)![0];
      for (const n of [1, 2]) {
        await waitFor(() => ordersAlone(n), { what: `orders delivery ${n}, the only task in flight`, timeoutMs: 60_000 });
        // The last time, the coordinator is down too when JetStream gives up (ack wait 3 s): the advisory waits for it in its stream.
        if (n === 2) await stack.coordinator!.kill('SIGKILL');
        await stack.agent(source).kill('SIGKILL');
        source = (await stack.startAgent('a')).name.replace(/^agent-/, '');
      }
      await sleep(6_000);
      await stack.startCoordinator();
      const job = await api.waitJob(started.id, 90_000);
      expect(job.state, stack.logs()).toBe('JOB_STATE_COMPLETED_WITH_ERRORS');
      const orders = job.tasks.find((t) => t.table === 'orders')!;
      expect(orders.state).toBe('TASK_STATE_FAILED');
      expect(orders.error).toMatch(/max_deliver/);
      await lock`ROLLBACK`;
      released = true;
      const dls = (await api.call<pb.ListDeadLettersResponse__Output>('ListDeadLetters', { job_id: started.id, limit: 10, include_retried: false })).dead_letters;
      expect(dls.map((d) => d.error_code)).toEqual(['max_deliver']);
      const r = await stack.cli(['dlq', 'retry', dls[0]!.id, '--json']);
      expect(r.code, r.stderr).toBe(0);
      const done = await api.waitJob(started.id, 120_000);
      expect(done.state, done.error).toBe('JOB_STATE_COMPLETED');
      expect(await expectSame(a.sql('src'), b.sql('dst3'))).toEqual({ diff: [], duplicates: 0 });
    } finally {
      if (!released) await lock`ROLLBACK`.catch(() => undefined);
      lock.release();
    }
  });
});

/** Publishes, as an agent would, the final failure of a task's first publication (publish 0). */
async function publishStaleFailure(jobId: string, taskId: string): Promise<void> {
  const nc = await connect({ servers: stack.nats.url });
  try {
    await publishEvent(jetstream(nc), names(stack.namespace), {
      type: 'failed', job_id: jobId, task_id: taskId, agent_id: 'a-1', at: new Date().toISOString(),
      error: { kind: 'invalid_argument', code: '23514', message: 'stale failure of the first run', retryable: false }, final: true, delivery: 1, publish: 0,
    }, `${taskId}:stale-failure`);
  } finally {
    await nc.close();
  }
}
