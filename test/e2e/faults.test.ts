import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestStack, stopRegions, waitFor, sleep, type PgCluster, type ManagedProcess } from '../harness/index.js';
import { Api } from '../harness/api.js';
import { loadSource, createTarget, expectSame, ledgerTotals, ledgerByTable, sentFromLogs, MILLION, totalRows } from '../fixtures/reliability.js';
import type { pb } from '../../packages/shared/src/index.js';

/**
 * Faults against real processes during a sync of 1.05 million rows (FK-linked tables and one
 * without a primary key, 128 KiB batches, ~115 batches): kill -9 of the source agent, the target
 * agent and the coordinator; a nats-server restart; the target Postgres down for 20 s; a pause.
 * Each time the target ends equal to the source by content, no batch is twice in the ledger, and
 * the rework (rows sent twice) is measured from the source agents' debug log.
 */

const BATCH = 128 * 1024;
let stack: TestStack;
let api: Api;
let a: PgCluster;
let b: PgCluster;
const agentIds: Record<'a' | 'b', string> = { a: 'a-1', b: 'b-1' };
const rnd = (lo: number, hi: number) => lo + Math.floor(Math.random() * (hi - lo + 1));

beforeAll(async () => {
  stack = await TestStack.start({
    env: { SYNCFLOW_TASK_ACK_WAIT_MS: '3000', SYNCFLOW_TASK_MAX_DELIVER: '50' },
    agentEnv: { SYNCFLOW_LOG_LEVEL: 'debug' },
  });
  api = new Api(stack.coordinatorAddress);
  a = stack.region('a');
  b = stack.region('b');
  await loadSource(a, 'src', MILLION);
  await api.connection('src', a, 'src', 'a');
}, 300_000);

afterAll(() => stopRegions({ stack, api }));

async function start(db: string, maxAttempts: number, extra: Record<string, unknown> = {}): Promise<string> {
  await createTarget(b, db);
  await api.connection(db, b, db, 'b');
  const job = await api.call<pb.Job__Output>('StartSync', { from: 'src', to: db, mode: 'SYNC_MODE_UPSERT', batch_bytes: BATCH, max_attempts: maxAttempts, ...extra });
  return job.id;
}

const committed = async (db: string, jobId: string) => (await ledgerTotals(b.sql(db), jobId)).batches;
async function batchesAtLeast(db: string, jobId: string, n: number): Promise<number> {
  await waitFor(async () => (await committed(db, jobId)) >= n, { what: `${n} committed batches`, timeoutMs: 180_000, intervalMs: 50 });
  return committed(db, jobId);
}

/** Kills (SIGKILL) the running agent of a group and starts a new one of the same group. */
async function crashAgent(group: 'a' | 'b'): Promise<void> {
  await stack.agent(agentIds[group]).kill('SIGKILL');
  const p: ManagedProcess = await stack.startAgent(group);
  agentIds[group] = p.name.replace(/^agent-/, '');
}

function sourceLogs(): string[] {
  return [...stack.agents.entries()].filter(([id]) => id.startsWith('a-')).map(([, p]) => p.logFile);
}

async function finish(db: string, jobId: string, timeoutMs = 300_000): Promise<pb.Job__Output> {
  return api.waitJob(jobId, timeoutMs).catch(async (e) => {
    throw new Error(`${(e as Error).message}\n${await diagnostics(jobId, db)}`);
  });
}

/**
 * What a failure message needs: the tasks, the job's log, the warnings and errors of the coordinator
 * and the agents (their logs go with the stack at the end of the file), and what the target database's
 * sessions are doing or waiting for.
 */
async function diagnostics(jobId: string, db: string): Promise<string> {
  const j = await api.call<pb.Job__Output>('GetJob', { id: jobId });
  const logs = await stack.cli(['job', 'logs', jobId]);
  const warnings = (p: ManagedProcess) => p.logs().split('\n').filter((l) => /"level":[456]0/.test(l)).slice(-30).join('\n');
  const sessions = await b.sql(db)`
    SELECT pid, application_name AS app, state, wait_event_type AS wait_type, wait_event AS wait, xact_start, left(query, 160) AS query,
      pg_blocking_pids(pid) AS blocked_by
    FROM pg_stat_activity WHERE datname = ${db} AND pid <> pg_backend_pid()`.catch((e: Error) => e.message);
  return `tasks: ${JSON.stringify(j.tasks.map((t) => [t.table, t.state, t.attempts, t.error]))}\n${logs.stdout}\ncoordinator:\n${warnings(stack.coordinator!)}\n`
    + `target agent:\n${warnings(stack.agent(agentIds.b))}\ntarget sessions: ${JSON.stringify(sessions, null, 1)}\nlogs: ${stack.logDir}`;
}

async function verify(db: string, jobId: string, label: string): Promise<{ reworkRows: number; reworkBatches: number }> {
  expect(await expectSame(a.sql('src'), b.sql(db))).toEqual({ diff: [], duplicates: 0 });
  const ledger = await ledgerTotals(b.sql(db), jobId);
  expect(ledger.rows).toBe(totalRows(MILLION));
  const sent = sentFromLogs(sourceLogs(), jobId);
  const perTable = await ledgerByTable(b.sql(db), a.sql('control'), jobId);
  const detail = [...sent.byTable].map(([t, s]) => `${t} +${s.batches - (perTable.get(t)?.batches ?? 0)}`).join(', ');
  const rework = { reworkRows: sent.rows - ledger.rows, reworkBatches: sent.batches - ledger.batches };
  console.log(`[faults] ${label}: ${ledger.batches} batches / ${ledger.rows} rows committed; sent ${sent.batches} batches / ${sent.rows} rows; rework ${rework.reworkBatches} batches, ${rework.reworkRows} rows (${detail})`);
  expect(rework.reworkRows).toBeGreaterThanOrEqual(0);
  return rework;
}

describe('crashes', () => {
  it('kill -9 of the source agent, then the target agent, then the coordinator: the job completes by itself', async () => {
    const jobId = await start('crash', 20);
    let at = await batchesAtLeast('crash', jobId, rnd(5, 15));
    await crashAgent('a');
    at = await batchesAtLeast('crash', jobId, at + rnd(5, 15));
    await sleep(rnd(0, 300)); // somewhere inside a batch's transaction
    await crashAgent('b');
    at = await batchesAtLeast('crash', jobId, at + rnd(5, 15));
    await stack.restartCoordinator({ crash: true });
    const job = await finish('crash', jobId);
    expect(job.state, `${job.error}\n${stack.logs()}`).toBe('JOB_STATE_COMPLETED');
    const { reworkBatches } = await verify('crash', jobId, '3 kills');
    // Each agent kill loses at most the credit window (4 batches in flight) plus the batch in hand,
    // per running task: every task of this job runs at once (SYNCFLOW_AGENT_CONCURRENCY, 16, is more
    // than its tasks). The keyless table too: without its snapshot it reads its committed batches
    // again in a new one, checks them against the ledger's hashes, and goes on.
    expect(reworkBatches).toBeLessThanOrEqual(2 * Math.min(16, job.tasks.length) * 5);
  });

  it('nats-server restarted mid-job (JetStream store on disk): the job completes', async () => {
    const jobId = await start('nats', 20);
    await batchesAtLeast('nats', jobId, rnd(10, 40));
    await stack.nats.restart();
    const job = await finish('nats', jobId);
    expect(job.state, `${job.error}\n${stack.logs()}`).toBe('JOB_STATE_COMPLETED');
    await verify('nats', jobId, 'nats restart');
  });
});

describe('the target database down for 20 s', () => {
  // `dlq retry` of the first dead letter prepares the target again (DDL that can wait for the locks of
  // index rebuilds still running): the CLI gives it the slow deadline, as `sync start`.
  it('retries and the breaker carry the job through, or it dead-letters cleanly and `dlq retry` completes it', async () => {
    const jobId = await start('outage', 3);
    await batchesAtLeast('outage', jobId, rnd(10, 30));
    await b.stop();
    await sleep(20_000);
    await b.start();
    let job = await finish('outage', jobId, 150_000);
    const breaker = stack.agent(agentIds.b).logs().includes('circuit breaker open');
    let retried = 0;
    if (job.state !== 'JOB_STATE_COMPLETED') {
      expect(['JOB_STATE_COMPLETED_WITH_ERRORS', 'JOB_STATE_FAILED']).toContain(job.state);
      const list = await stack.cli(['dlq', 'list', '--job', jobId, '--json']);
      const dls = (JSON.parse(list.stdout) as pb.ListDeadLettersResponse__Output).dead_letters;
      expect(dls.length).toBeGreaterThan(0);
      for (const d of dls) {
        const r = await stack.cli(['dlq', 'retry', d.id]);
        if (r.code !== 0) throw new Error(`dlq retry ${d.id} exited ${r.code}: ${r.stderr}\n${await diagnostics(jobId, 'outage')}`);
        retried++;
      }
      job = await finish('outage', jobId);
    }
    console.log(`[faults] outage: breaker opened: ${breaker}; dead letters retried: ${retried}`);
    expect(job.state, `${job.error}\n${stack.logs()}`).toBe('JOB_STATE_COMPLETED');
    await verify('outage', jobId, `pg outage (${retried} dead letters retried)`);
  }, 400_000);
});

describe('pause and resume', () => {
  it('stops after the current batches, keeps still while paused, continues from the checkpoints', async () => {
    // 150,000 rows/s: the ~1 M rows take ~7 s, so the pause lands mid-job (unthrottled, the whole load
    // can end before the CLI's pause arrives).
    const jobId = await start('pause', 3, { max_rows_per_s: 150_000 });
    // about half-way through the ~97 batches
    await batchesAtLeast('pause', jobId, rnd(50, 70));
    const p = await stack.cli(['job', 'pause', jobId]);
    expect(p.code, p.stderr).toBe(0);
    expect(p.stdout).toMatch(/paused/);
    await waitFor(async () => {
      const j = await api.call<pb.Job__Output>('GetJob', { id: jobId });
      return j.tasks.every((t) => t.state === 'TASK_STATE_DONE' || t.state === 'TASK_STATE_PENDING');
    }, { what: 'every table stopped', timeoutMs: 60_000 }).catch(async (e) => {
      const j = await api.call<pb.Job__Output>('GetJob', { id: jobId });
      const logs = await stack.cli(['job', 'logs', jobId]);
      throw new Error(`${(e as Error).message}\nA1 ${stack.agent(agentIds.a).tail(12)}\n${JSON.stringify(j.tasks.map((t) => [t.table, t.state]))}\n${logs.stdout}\n${stack.logs().split('\n').filter((l) => !l.includes('"level":20')).join('\n')}`);
    });
    const stopped = await committed('pause', jobId);
    await sleep(3_000);
    expect(await committed('pause', jobId)).toBe(stopped);
    const r = await stack.cli(['job', 'resume', jobId]);
    expect(r.code, r.stderr).toBe(0);
    const job = await finish('pause', jobId);
    expect(job.state, `${job.error}\n${stack.logs()}`).toBe('JOB_STATE_COMPLETED');
    const { reworkBatches } = await verify('pause', jobId, 'pause/resume');
    // Batches in flight commit before a task stops: nothing sent twice.
    expect(reworkBatches).toBe(0);
    const logs = await stack.cli(['job', 'logs', jobId]);
    expect(logs.stdout).toMatch(/paused on agent/);
  });
});
