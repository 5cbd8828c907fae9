import { jobStateToProto, taskStateToProto, applyMethodToProto, type pb, type ApplyMethod } from '@syncflow/shared';
import type { JobRow, TaskRow } from '../store/jobs.js';
import type { ConnectionRow } from '../store/connections.js';

/** Control-DB rows → wire messages. Sealed URLs never leave through here. */
export function renderConnection(c: ConnectionRow): pb.Connection {
  return { name: c.name, group: c.agent_group, protected: c.protected, created_at: c.created_at, database: c.database };
}

export function renderJob(j: JobRow, tasks: TaskRow[]): pb.Job {
  const rendered = tasks.map(renderTask);
  return {
    id: j.id, from: j.from_conn, to: j.to_conn, mode: j.mode === 'mirror' ? 'SYNC_MODE_MIRROR' : 'SYNC_MODE_UPSERT',
    state: jobStateToProto(j.state) as pb.JobState, created_at: j.created_at, started_at: j.started_at ?? '', finished_at: j.finished_at ?? '',
    error: j.error, tasks: rendered, trace_id: j.trace_id,
    rows: String(tasks.reduce((s, t) => s + Number(t.rows), 0)),
    bytes: String(tasks.reduce((s, t) => s + Number(t.bytes), 0)),
    rows_deleted: j.rows_deleted,
  };
}

function renderTask(t: TaskRow): pb.TaskInfo {
  return {
    id: t.id, schema: t.schema_name, table: t.table_name, level: t.level, state: taskStateToProto(t.state) as pb.TaskState,
    method: applyMethodToProto(t.method as ApplyMethod) as pb.ApplyMethod, rows: t.rows, bytes: t.bytes, batches: t.batches,
    error: t.error, started_at: t.started_at ?? '', finished_at: t.finished_at ?? '', row_estimate: t.row_estimate, attempts: t.attempts,
  };
}
