import { type pb } from '@syncflow/shared';
import { rollbackReq, rejectsReq, jobIdReq, verifyReq, parseReq, DEFAULT_BATCH_BYTES } from './validate.js';
import type { RunnerDeps } from '../run/advance.js';
import { rollbackJob } from '../run/rollback.js';
import { jobReport, side, compareSpec } from '../run/report.js';
import { gatherAndPlan } from '../plan/gather.js';
import { wholeTables } from '../plan/planner.js';
import { compareTable } from '../verify/compare.js';

type Authed = <Req, Res>(fn: (req: Req) => Promise<Res>) => unknown;

/** SyncService RPCs of the safety features: rollback, rejects, job report, verify. */
export function safetyHandlers(d: RunnerDeps, authed: Authed) {
  return {
    RollbackJob: authed(async (raw: pb.RollbackJobRequest__Output) => {
      const r = parseReq(rollbackReq, raw);
      return rollbackJob(d, r.id, r.force);
    }),
    ListRejects: authed(async (raw: pb.ListRejectsRequest__Output) => {
      const r = parseReq(rejectsReq, raw);
      const job = await d.jobs.get(r.id);
      const to = await d.connections.get(job.to_conn);
      return d.agents.call<pb.RejectList__Output>(to.agent_group, 'ListRejects', { job_id: r.id, connection: { name: to.name, sealed_url: to.sealed_url }, limit: r.limit });
    }),
    GetJobReport: authed(async (raw: pb.GetJobRequest__Output) => jobReport(d, parseReq(jobIdReq, raw).id)),
    Verify: authed(async (raw: pb.VerifyRequest__Output) => {
      const r = parseReq(verifyReq, raw);
      const [from, to] = await Promise.all([d.connections.get(r.from), d.connections.get(r.to)]);
      const planned = await gatherAndPlan(d.agents, { from, to, tables: r.tables, mode: 'upsert', batchBytes: DEFAULT_BATCH_BYTES });
      const tables: pb.TableVerify[] = [];
      for (const t of wholeTables(planned.tasks)) {
        const c = await compareTable(d.agents, side(from), side(to), compareSpec({ schema_name: t.schema, table_name: t.table, message: t.message }, r.max_keys));
        const differences = c.onlySource + c.onlyTarget + c.different;
        tables.push({
          schema: t.schema, table: t.table, source_rows: c.sourceRows, target_rows: c.targetRows, match: differences === 0,
          only_source: c.keys.onlySource, only_target: c.keys.onlyTarget, different: c.keys.different, differences,
          note: t.message.key_columns.length ? '' : 'keyless: compared as multisets of rows; no keys to name',
        });
      }
      for (const c of planned.plan.checks ?? []) {
        if (c.severity !== 'error' || !c.table) continue;
        tables.push({ schema: '', table: c.table, match: false, note: c.message, differences: 0, source_rows: 0, target_rows: 0, only_source: [], only_target: [], different: [] });
      }
      return { tables, match: tables.every((t) => t.match) };
    }),
  };
}
