import type { pb } from '@syncflow/shared';
import type { AgentLink } from '../agents.js';
import type { SyncRequest } from './gather.js';
import { wholeTables, type Planned } from './planner.js';
import { compareTable } from '../verify/compare.js';
import { side, compareSpec } from '../run/report.js';

/** What a dry run may take in all (the tables of a big database are hashed on both sides). */
export const DRY_RUN_BUDGET_MS = 30 * 60_000;

/**
 * Dry run: per planned table, the rows a real run would insert, update and (mirror) delete,
 * counted by comparing key-range hashes on both sides (verify/compare.ts) — the same rule the
 * upsert uses (a row is updated when its text differs). Nothing is written anywhere.
 */
export async function dryRun(agents: AgentLink, req: SyncRequest, planned: Planned, budgetMs = DRY_RUN_BUDGET_MS): Promise<pb.TableDryRun[]> {
  const out: pb.TableDryRun[] = [];
  // One deadline for the whole dry run: a call that never answers ends it with an error naming the
  // table and the agent group, instead of holding PlanSync (and the CLI) with no word.
  const deadline = Date.now() + budgetMs;
  for (const t of wholeTables(planned.tasks)) {
    const r = await compareTable(agents, side(req.from), side(req.to), compareSpec({ schema_name: t.schema, table_name: t.table, message: t.message }, 0), { deadline });
    const row: pb.TableDryRun = { schema: t.schema, table: t.table, source_rows: r.sourceRows, target_rows: r.targetRows, inserts: 0, updates: 0, deletes: 0, note: '' };
    switch (t.method) {
      case 'copy': row.inserts = r.sourceRows; break;
      case 'upsert': row.inserts = r.onlySource; row.updates = r.different; row.deletes = req.mode === 'mirror' ? r.onlyTarget : 0; break;
      case 'append': row.inserts = r.newOnTarget; row.note = 'keyless: rows whose content is not on the target are added'; break;
      case 'replace': row.inserts = r.sourceRows; row.deletes = r.targetRows; row.note = 'keyless, mirror: the target content is replaced'; break;
    }
    out.push(row);
  }
  return out;
}
