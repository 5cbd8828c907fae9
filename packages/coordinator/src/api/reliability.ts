import { z } from 'zod';
import type { grpc, pb } from '@syncflow/shared';
import { parseReq, jobIdReq } from './validate.js';
import { renderJob } from './render.js';
import type { RunnerDeps, JobRunner } from '../run/advance.js';
import { retryTasks, pauseJob, resumeJob } from '../run/control.js';
import type { DeadLetterRow } from '../store/dead-letters.js';

type Authed = <Req, Res>(fn: (req: Req) => Promise<Res>) => grpc.handleUnaryCall<Req, Res>;

const retryJobReq = z.object({ id: z.string().uuid('must be a job id (uuid)'), failed_only: z.boolean() });
const listDeadLettersReq = z.object({
  job_id: z.union([z.literal(''), z.string().uuid('must be a job id (uuid) or empty')]),
  limit: z.number().int().min(0).max(1000).transform((n) => n || 100),
  include_retried: z.boolean(),
});
const deadLetterIdReq = z.object({ id: z.string().regex(/^[1-9][0-9]{0,17}$/, 'must be a dead letter id (a positive number)') });

export function renderDeadLetter(r: DeadLetterRow): pb.DeadLetter {
  return {
    id: r.id, job_id: r.job_id, task_id: r.task_id, schema: r.schema_name, table: r.table_name, error_code: r.error_code,
    error: r.error, attempts: r.attempts, history: r.history, created_at: r.created_at, retried_at: r.retried_at ?? '', stream_seq: r.stream_seq,
  };
}

/** RetryJob, dead letters, pause and resume: bound next to the other SyncService RPCs (server.ts). */
export function reliabilityService(d: RunnerDeps, runner: JobRunner, authed: Authed): Partial<pb.SyncServiceHandlers> {
  const jobView = async (id: string) => renderJob(await d.jobs.get(id), await d.jobs.tasks(id));
  return {
    RetryJob: authed(async (raw: pb.RetryJobRequest__Output) => {
      const { id } = parseReq(retryJobReq, raw);
      await retryTasks(d, runner, id, 'retry of the failed tables requested');
      return jobView(id);
    }),
    ListDeadLetters: authed(async (raw: pb.ListDeadLettersRequest__Output) => {
      const r = parseReq(listDeadLettersReq, raw);
      const rows = await d.deadLetters.list({ jobId: r.job_id || undefined, limit: r.limit, includeRetried: r.include_retried });
      return { dead_letters: rows.map(renderDeadLetter) };
    }),
    RetryDeadLetter: authed(async (raw: pb.RetryDeadLetterRequest__Output) => {
      const { id } = parseReq(deadLetterIdReq, raw);
      const dl = await d.deadLetters.get(id);
      // Retried already, alone or with another table (whose failed FK parent it was), and not failed
      // again since: there is nothing left to retry, and the answer is the job as it is.
      const task = (await d.jobs.tasks(dl.job_id)).find((t) => t.id === dl.task_id);
      if (dl.retried_at && task?.state !== 'failed' && task?.state !== 'blocked') return jobView(dl.job_id);
      await retryTasks(d, runner, dl.job_id, `dead letter ${id} retried`, [dl.task_id]);
      await d.deadLetters.markRetried([id]);
      return jobView(dl.job_id);
    }),
    PauseJob: authed(async (raw: pb.GetJobRequest__Output) => {
      const { id } = parseReq(jobIdReq, raw);
      await pauseJob(d, id);
      return jobView(id);
    }),
    ResumeJob: authed(async (raw: pb.GetJobRequest__Output) => {
      const { id } = parseReq(jobIdReq, raw);
      await resumeJob(d, runner, id);
      return jobView(id);
    }),
  } as Partial<pb.SyncServiceHandlers>;
}
