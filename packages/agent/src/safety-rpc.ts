import { invalidArgument, toSyncflowError, type Logger, type pb, type Sql } from '@syncflow/shared';
import type { Pools } from './pools.js';
import { checkReachable } from './pools.js';
import { rollbackJob } from './apply/rollback.js';
import { ensureTargetSchema } from './apply/ledger.js';
import { purgeUndo } from './apply/undo.js';
import { tableDdl, applyDdl, checkAccess } from './apply/ddl.js';
import { hashRanges } from './read/hash-ranges.js';

type Traced = <Req, Res>(name: string, fn: (req: Req) => Promise<Res>) => unknown;

/**
 * AgentService RPCs of the safety features (issue 4): rollback, rejects, hashes for verify and
 * dry run, pre-flight privileges, DDL for --create-missing. Each validates and delegates.
 */
export function safetyHandlers(pools: Pools, log: Logger, traced: Traced, retentionHours: number) {
  const conn = (c: pb.SealedConnection__Output | null) => {
    if (!c?.sealed_url) throw invalidArgument('connection is required');
    return { c, ...pools.get(c) };
  };
  return {
    RollbackJob: traced('rollback job', async (req: pb.RollbackTargetRequest__Output) => {
      const { sql, c } = conn(req.connection);
      if (!req.job_id) throw invalidArgument('job_id is required');
      await checkReachable(sql, c.name);
      await ensureTargetSchema(sql);
      await purgeUndo(sql, retentionHours);
      return rollbackJob(sql, req, log);
    }),
    ListRejects: traced('list rejects', async (req: pb.RejectsRequest__Output) => {
      const { sql, c } = conn(req.connection);
      await checkReachable(sql, c.name);
      return listRejects(sql, req.job_id, req.limit || 1000);
    }),
    HashRanges: traced('hash ranges', async (req: pb.HashRangesRequest__Output) => {
      const { sql, c } = conn(req.connection);
      await checkReachable(sql, c.name);
      return hashRanges(sql, req);
    }),
    CheckAccess: traced('check access', async (req: pb.AccessRequest__Output) => {
      const { sql, c } = conn(req.connection);
      await checkReachable(sql, c.name);
      return { checks: await checkAccess(sql, req, c.name) };
    }),
    TableDdl: traced('table ddl', async (req: pb.TableDdlRequest__Output) => {
      const { sql, c } = conn(req.connection);
      await checkReachable(sql, c.name);
      return { tables: await tableDdl(sql, req.tables) };
    }),
    ApplyDdl: traced('apply ddl', async (req: pb.ApplyDdlRequest__Output) => {
      const { sql, c } = conn(req.connection);
      await checkReachable(sql, c.name);
      return { applied: await applyDdl(sql, req.statements) };
    }),
  };
}

async function listRejects(sql: Sql, jobId: string, limit: number): Promise<pb.RejectList> {
  try {
    const rows = await sql<{ task_id: string; schema_name: string; table_name: string; sqlstate: string; message: string; row_data: Buffer | null; at: string; seq: string }[]>`
      SELECT task_id, schema_name, table_name, sqlstate, message, row_data, at::text, seq::text FROM syncflow.quarantine
      WHERE job_id = ${jobId} ORDER BY id LIMIT ${limit}`;
    const counts = await sql<{ schema_name: string; table_name: string; n: string }[]>`
      SELECT schema_name, table_name, count(*)::text AS n FROM syncflow.quarantine WHERE job_id = ${jobId} GROUP BY 1, 2 ORDER BY 1, 2`;
    return {
      rejects: rows.map((r) => ({ task_id: r.task_id, schema: r.schema_name, table: r.table_name, sqlstate: r.sqlstate, message: r.message,
        row: r.row_data ? Buffer.from(r.row_data).toString('utf8').replace(/\n$/, '') : '', at: r.at, seq: r.seq })),
      counts: counts.map((c) => ({ schema: c.schema_name, table: c.table_name, rows: c.n })),
      total: String(counts.reduce((s, c) => s + Number(c.n), 0)),
    };
  } catch (e) {
    if (toSyncflowError(e).code === '42P01') return { rejects: [], counts: [], total: '0' }; // never a target of syncflow
    throw e;
  }
}
