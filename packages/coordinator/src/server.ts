import { timingSafeEqual } from 'node:crypto';
import {
  grpc, unary, toGrpcError, SyncflowError, ErrorKind, describeDatabase, isTerminalJob, jobStateFromProto, type Sealer, type pb, type Logger,
} from '@syncflow/shared';
import { createConnectionReq, nameReq, syncSpecReq, jobIdReq, listJobsReq, setJobRateReq, parseReq, DEFAULT_BATCH_BYTES } from './api/validate.js';
import { renderConnection, renderJob } from './api/render.js';
import { gatherAndPlan } from './plan/gather.js';
import { DEFAULT_SPLIT_ROWS } from './plan/split.js';
import { startJob } from './run/start.js';
import { dryRun } from './plan/dry-run.js';
import { safetyHandlers } from './api/safety.js';
import { dropRetiredSlots } from './run/changes.js';
import type { RunnerDeps, JobRunner } from './run/advance.js';
import { reliabilityService } from './api/reliability.js';

/** Binds SyncService: authenticate, validate, delegate. No logic of its own. */
export function syncService(d: RunnerDeps, runner: JobRunner, sealer: Sealer, apiToken: string | undefined, log: Logger): pb.SyncServiceHandlers {
  const authed = <Req, Res>(fn: (req: Req) => Promise<Res>) => unary<Req, Res>(async (req, call) => {
    authenticate(call.metadata, apiToken);
    return fn(req);
  });
  const syncRequest = async (raw: unknown) => {
    const s = parseReq(syncSpecReq, raw);
    const [from, to] = await Promise.all([d.connections.get(s.from), d.connections.get(s.to)]);
    return {
      from, to, tables: s.tables, mode: s.mode, batchBytes: s.batch_bytes || DEFAULT_BATCH_BYTES, maxAttempts: s.max_attempts, timeoutSeconds: s.timeout_seconds,
      splitRows: s.split_rows || DEFAULT_SPLIT_ROWS, keepIndexes: s.keep_indexes, maxRowsPerS: s.max_rows_per_s, maxBytesPerS: s.max_bytes_per_s,
      confirm: s.confirm, createMissing: s.create_missing, dryRun: s.dry_run, onBadRow: s.on_bad_row, onFailure: s.on_failure, diff: s.diff, copyFormat: s.copy_format,
      verify: s.verify,
    };
  };
  const jobView = async (id: string) => renderJob(await d.jobs.get(id), await d.jobs.tasks(id));

  return {
    CreateConnection: authed(async (raw: pb.CreateConnectionRequest__Output) => {
      const r = parseReq(createConnectionReq, raw);
      const row = await d.connections.create({ name: r.name, agent_group: r.group, sealed_url: sealer.seal(r.url), database: describeDatabase(r.url), protected: r.protected });
      log.info({ connection: r.name, group: r.group, database: row.database }, 'connection created');
      return renderConnection(row);
    }),
    ListConnections: authed(async () => ({ connections: (await d.connections.list()).map(renderConnection) })),
    DeleteConnection: authed(async (raw: pb.DeleteConnectionRequest__Output) => {
      const { name } = parseReq(nameReq, raw);
      await d.connections.get(name);
      // The change slots its syncs left (on it as a source, or on the sources synced into it) are dropped while it can still be reached.
      for (const from of await d.baselines.forgetConnection(name)) await dropRetiredSlots(d, await d.connections.get(from));
      const left = await d.baselines.retired(name);
      if (left.length) log.warn({ connection: name, slots: left }, 'change slots not dropped on the removed connection\'s database: drop them by hand (pg_drop_replication_slot)');
      await d.connections.remove(name);
      log.info({ connection: name }, 'connection deleted');
      return { deleted: true };
    }),
    PlanSync: authed(async (raw: pb.SyncSpec__Output) => {
      const req = await syncRequest(raw);
      // As a job would plan it with a change slot of its own (the plan's notes say which tables decode tracked changes).
      const changes = req.diff === 'off' ? undefined : { lsn: '0/0', baselines: await d.baselines.forPair(req.from.name, req.to.name) };
      const planned = await gatherAndPlan(d.agents, req, { changes });
      if (req.dryRun && !planned.plan.checks?.some((c) => c.severity === 'error')) planned.plan.dry_run = await dryRun(d.agents, req, planned);
      return planned.plan;
    }),
    StartSync: authed(async (raw: pb.SyncSpec__Output) => jobView(await startJob(d, runner, await syncRequest(raw)))),
    GetJob: authed(async (raw: pb.GetJobRequest__Output) => jobView(parseReq(jobIdReq, raw).id)),
    ListJobs: authed(async (raw: pb.ListJobsRequest__Output) => {
      const { limit } = parseReq(listJobsReq, raw);
      const jobs = await d.jobs.list(limit);
      return { jobs: await Promise.all(jobs.map(async (j) => renderJob(j, await d.jobs.tasks(j.id)))) };
    }),
    CancelJob: authed(async (raw: pb.GetJobRequest__Output) => {
      const { id } = parseReq(jobIdReq, raw);
      await runner.cancel(id);
      return jobView(id);
    }),
    GetJobLogs: authed(async (raw: pb.GetJobRequest__Output) => {
      const { id } = parseReq(jobIdReq, raw);
      await d.jobs.get(id);
      const rows = await d.jobs.logs(id);
      return { entries: rows.map((r) => ({ at: r.at, level: r.level, task_id: r.task_id ?? '', message: r.message })) };
    }),
    ...reliabilityService(d, runner, authed),
    SetJobRate: authed(async (raw: pb.SetJobRateRequest__Output) => {
      const r = parseReq(setJobRateReq, raw);
      const job = await d.jobs.get(r.id);
      if (isTerminalJob(job.state)) throw new SyncflowError(ErrorKind.FailedPrecondition, `job ${r.id} has ended (${job.state})`);
      await d.rates.set(r.id, { rows_per_s: r.max_rows_per_s, bytes_per_s: r.max_bytes_per_s });
      await d.jobs.log(r.id, null, 'info', `rate limits set to ${r.max_rows_per_s || 'unlimited'} rows/s, ${r.max_bytes_per_s || 'unlimited'} bytes/s`);
      return jobView(r.id);
    }),
    ...safetyHandlers(d, authed),
    WatchJob: (call: grpc.ServerWritableStream<pb.GetJobRequest__Output, pb.Job>) => {
      watch(call, d, apiToken, jobView).catch((e) => call.emit('error', toGrpcError(e)));
    },
  } as pb.SyncServiceHandlers;
}

/** How long WatchJob gathers task moves before it sends the job again. */
const TASK_BURST_MS = 100;

/** Streams the job whenever it changes, until it ends or the client goes away. */
async function watch(call: grpc.ServerWritableStream<pb.GetJobRequest__Output, pb.Job>, d: RunnerDeps, token: string | undefined,
  jobView: (id: string) => Promise<pb.Job>): Promise<void> {
  authenticate(call.metadata, token);
  const { id } = parseReq(jobIdReq, call.request);
  let last = '';
  let gone = false;
  call.on('cancelled', () => { gone = true; });
  while (!gone) {
    const view = await jobView(id);
    const text = JSON.stringify(view);
    if (text !== last) { call.write(view); last = text; }
    const state = jobStateFromProto(String(view.state));
    if (state && isTerminalJob(state)) break;
    // Woken by this process's own moves of the job (a task done, the job ended); polled as well. Moves of
    // tasks come in bursts (started, done, the next level queued): they are sent together, after at most
    // TASK_BURST_MS; a move of the job itself (it ended) is sent at once.
    if (await d.jobs.nextChange(id, 500) === 'task') await d.jobs.nextChange(id, TASK_BURST_MS, 'job');
  }
  call.end();
}

function authenticate(md: grpc.Metadata, token: string | undefined): void {
  if (!token) return;
  const got = String(md.get('authorization')[0] ?? '');
  const want = `Bearer ${token}`;
  const ok = got.length === want.length && timingSafeEqual(Buffer.from(got), Buffer.from(want));
  if (!ok) throw new SyncflowError(ErrorKind.Unauthenticated, 'missing or wrong bearer token');
}
