import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { TestStack, PgCluster, ManagedProcess } from '../harness/index.js';
import { freePort } from '../harness/index.js';
import type { Api } from '../harness/api.js';
import { DelayProxy } from '../harness/delay-proxy.js';
import { CpuMeter, RssSampler } from '../harness/rss.js';
import type { pb } from '../../packages/shared/src/index.js';
import { schemaCopy, type Measured } from './baselines.js';

export interface SyncflowMeasured extends Measured {
  wanBytes: number;
  jobRows: number;
  jobBytes: number;
  rowsDeleted: number;
  tasks: { table: string; method: string; rows: number; seconds: number }[];
}

export interface SyncflowRunOptions {
  /** Added each way between the agents (ms); 0 = pass-through proxy (bytes still counted). */
  delayMs: number;
  mode: 'SYNC_MODE_UPSERT' | 'SYNC_MODE_MIRROR';
  /** Create the target database with pg_dump --schema-only first (an initial load). */
  createTarget: boolean;
  /** Extra agent env (e.g. NODE_OPTIONS=--cpu-prof). */
  agentEnv?: Record<string, string>;
  /**
   * Agents (and their proxy) kept running from an earlier run and left running after this one, as an
   * operator's agents run between jobs; without it the run starts fresh agents and stops them after.
   */
  session?: AgentSession;
}

/** A source agent (group a), a target agent (group b), the proxy the target agent advertises, and the runs they served. */
export interface AgentSession { agents: ManagedProcess[]; proxy: DelayProxy; runs: number }

/** Starts the two agents of a run; the target agent listens on its own port and advertises a DelayProxy in front of it. */
export async function startAgents(stack: TestStack, delayMs: number, agentEnv: Record<string, string> = {}): Promise<AgentSession> {
  const listenPort = await freePort();
  const proxy = await DelayProxy.start({ target: `127.0.0.1:${listenPort}`, delayMs });
  const agents: ManagedProcess[] = [];
  try {
    agents.push(await stack.startAgent('a', undefined, { ...agentEnv }));
    agents.push(await stack.startAgent('b', undefined, { ...agentEnv, SYNCFLOW_LISTEN: `127.0.0.1:${listenPort}`, SYNCFLOW_ADVERTISE: proxy.address }));
  } catch (e) {
    await stopAgents({ agents, proxy, runs: 0 });
    throw e;
  }
  return { agents, proxy, runs: 0 };
}

/** SIGTERM: agents leave the registry (and write --cpu-prof profiles) on a clean stop. */
export async function stopAgents(s: AgentSession): Promise<void> {
  await Promise.all(s.agents.map((a) => a.stop(30_000)));
  await s.proxy.stop();
}

/** Target databases whose connection pair exists. */
const connected = new Set<string>();

/**
 * One syncflow job from `db` on the source region (a) to `toDb` on the target region (b), with fresh
 * agents: the target agent listens on its own port and advertises a DelayProxy in front of it, so
 * every byte between the agents (and the coordinator's calls to the target agent) crosses the proxy.
 */
export async function runSyncflow(stack: TestStack, api: Api, db: string, toDb: string, opts: SyncflowRunOptions): Promise<SyncflowMeasured> {
  const source = stack.region('a');
  const target = stack.region('b');
  const session = opts.session ?? await startAgents(stack, opts.delayMs, opts.agentEnv);
  const { agents, proxy } = session;
  try {
    // Agents of their first run: their high-water mark is this run's peak. Later runs: sampled (the mark may be an earlier run's).
    const rss = new RssSampler(() => ({ 'source agent': [agents[0]!.pid ?? 0], 'target agent': [agents[1]!.pid ?? 0] }), { useHwm: session.runs++ === 0 }).start();
    const cpu = new CpuMeter(() => ({
      'source pg': source.postmasterPid() ?? 0, 'target pg': target.postmasterPid() ?? 0,
      'source agent': agents[0]!.pid ?? 0, 'target agent': agents[1]!.pid ?? 0,
    })).start();
    const t0 = performance.now();
    if (opts.createTarget) await schemaCopy(source, db, target, toDb);
    // One pair of connections per target database, as an operator keeps them: the re-sync into the
    // load's target goes through the load's connections (its change slot is kept per connection pair).
    const [from, to] = [`bench-src-${toDb}`.replace(/_/g, '-'), `bench-dst-${toDb}`.replace(/_/g, '-')];
    if (!connected.has(toDb)) {
      await api.call('CreateConnection', { name: from, url: source.url(db), group: 'a' });
      await api.call('CreateConnection', { name: to, url: target.url(toDb), group: 'b' });
      connected.add(toDb);
    }
    proxy.resetCounters(); // only the job's traffic (agents' startup health checks excluded)
    const started = await api.call<pb.Job__Output>('StartSync', { from, to, mode: opts.mode });
    const job = await api.waitJob(started.id, 3 * 3600_000);
    const wallS = (performance.now() - t0) / 1000;
    const cpuS = cpu.stop();
    const wanBytes = proxy.bytes; // the job's own (the report below also calls the target agent through the proxy)
    // The job's report (with its verification of every table) is made right after the job ends, in
    // the background: let it finish, outside the measured time, so it does not slow the next method.
    // The agents' memory counts until it has: the report's comparisons run in them too.
    await api.call('GetJobReport', { id: started.id }).catch(() => undefined);
    const peakRssMb = rss.stop();
    if (job.state !== 'JOB_STATE_COMPLETED') throw new Error(`syncflow job ${job.id} ended ${job.state}: ${job.error}\n${stack.logs().slice(-6000)}`);
    const tasks = job.tasks.map((t) => ({
      table: `${t.schema}.${t.table}`, method: String(t.method).replace('APPLY_METHOD_', '').toLowerCase(), rows: Number(t.rows),
      seconds: t.started_at && t.finished_at ? (Date.parse(t.finished_at) - Date.parse(t.started_at)) / 1000 : NaN,
    }));
    const notes = [`apply methods: ${[...new Set(tasks.map((t) => `${t.table.replace('public.', '')}=${t.method}`))].join(', ')}`];
    notes.push(await timeline(api, job, t0, process.env.SYNCFLOW_TEST_KEEP_LOGS ? stack.logDir : undefined));
    if (opts.createTarget) notes.push('target schema (indexes, FKs) created by pg_dump --schema-only before the load (time included): syncflow sets the empty tables\' secondary indexes and FKs aside for the load and rebuilds them after it (its default), so the end state equals pgcopydb\'s');
    return { wallS, peakRssMb, cpuS, notes, wanBytes, jobRows: Number(job.rows), jobBytes: Number(job.bytes), rowsDeleted: Number(job.rows_deleted), tasks };
  } finally {
    if (!opts.session) await stopAgents(session);
  }
}

/**
 * Changes ~1 % of the source's rows (updates, inserts and deletes, FK-safe: children of deleted
 * orders go first); returns how many rows were touched, per kind.
 */
export async function changeOnePercent(source: PgCluster, db: string): Promise<{ updated: number; inserted: number; deleted: number }> {
  const sql = source.sql(db);
  const out = { updated: 0, inserted: 0, deleted: 0 };
  await sql.begin(async (tx) => {
    const count = async (kind: keyof typeof out, text: string) => {
      out[kind] += (await tx.unsafe(text)).count;
    };
    const [{ maxc, maxo, maxp }] = await tx.unsafe<{ maxc: string; maxo: string; maxp: string }[]>(
      'SELECT (SELECT max(id) FROM customers)::text AS maxc, (SELECT max(id) FROM orders)::text AS maxo, (SELECT max(id) FROM payments)::text AS maxp');
    await count('updated', 'UPDATE customers SET loyalty_points = loyalty_points + 1 WHERE id % 100 = 1');
    await count('updated', "UPDATE orders SET status = 'changed', notes = coalesce(notes, '') || ' (edited)' WHERE id % 200 = 3");
    await count('updated', 'UPDATE order_items SET quantity = quantity + 1 WHERE order_id % 100 = 7');
    await count('updated', `UPDATE product_media SET meta = meta || '{"rev": 2}' WHERE id % 100 = 5`);
    await count('deleted', 'DELETE FROM payments WHERE id % 200 = 11');
    await count('deleted', 'DELETE FROM order_items WHERE order_id % 1000 = 17');
    await count('deleted', 'DELETE FROM payments WHERE order_id % 1000 = 17');
    await count('deleted', 'DELETE FROM orders WHERE id % 1000 = 17');
    await count('deleted', "DELETE FROM events WHERE kind = 'login' AND customer_id % 97 = 1");
    await count('inserted', `INSERT INTO customers SELECT ${maxc} + g, 'new' || (${maxc} + g) || '@example.com', 'New ' || g, 'DE', now(), 0, true FROM generate_series(1, (${maxc} / 200)::int) g`);
    await count('inserted', `INSERT INTO orders SELECT ${maxo} + g, 1 + g % ${maxc}, 1 + g, 'new', now(), 10.5, NULL FROM generate_series(1, (${maxo} / 500)::int) g`);
    await count('inserted', `INSERT INTO order_items SELECT ${maxo} + g, l, 1 + g % 7, l, 1.25 FROM generate_series(1, (${maxo} / 500)::int) g, generate_series(1, 2) l`);
    await count('inserted', `INSERT INTO payments SELECT ${maxp} + g, ${maxo} + g, 10.5, 'card', now(), md5('newpay' || g)::uuid FROM generate_series(1, (${maxo} / 500)::int) g`);
    await count('inserted', `INSERT INTO events SELECT now(), 'view', g, 'new event ' || g FROM generate_series(1, (${maxo} / 300)::int) g`);
  });
  return out;
}

/** Where a job's wall time went: before the job (schema copy, connections), planning, the tasks, the finish (index rebuilds, sequences). */
async function timeline(api: Api, job: pb.Job__Output, t0: number, logDir?: string): Promise<string> {
  const at = (iso: string) => (iso ? Date.parse(iso) : NaN);
  const epoch0 = Date.now() - (performance.now() - t0);
  const starts = job.tasks.map((t) => at(t.started_at)).filter(Number.isFinite);
  const ends = job.tasks.map((t) => at(t.finished_at)).filter(Number.isFinite);
  const logs = await api.call<pb.JobLogs__Output>('GetJobLogs', { id: job.id });
  // The job's own log, for reading where a job's time went (with SYNCFLOW_TEST_KEEP_LOGS).
  if (logDir) await writeFile(join(logDir, `job-${job.id}.log`), logs.entries.map((e) => `${e.at} ${e.level} ${e.task_id} ${e.message}`).join('\n'));
  const finalized = logs.entries.find((e) => e.message.startsWith('finalized target'));
  const s = (a: number, b: number) => ((b - a) / 1000).toFixed(1);
  const perTable = new Map<string, number>();
  // A task done ahead of its FK level (nothing to ship) never started: it counts 0.
  for (const t of job.tasks) perTable.set(t.table, Math.max(perTable.get(t.table) ?? 0, ((at(t.finished_at) - at(t.started_at)) / 1000) || 0));
  return `timeline (s): before the job ${s(epoch0, at(job.created_at))}, planning ${s(at(job.created_at), Math.min(...starts))}, ` +
    `tasks ${s(Math.min(...starts), Math.max(...ends))}, finish ${s(Math.max(...ends), at(job.finished_at))}` +
    `${finalized ? ` (${finalized.message})` : ''}; longest part per table: ${[...perTable].map(([t, x]) => `${t} ${x.toFixed(1)}`).join(', ')}`;
}
