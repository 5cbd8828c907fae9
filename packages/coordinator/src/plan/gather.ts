import { randomUUID } from 'node:crypto';
import { type pb } from '@syncflow/shared';
import type { AgentLink } from '../agents.js';
import type { ConnectionRow } from '../store/connections.js';
import { planSync, selectTables, trackedChanges, type Planned, type PlanInput } from './planner.js';
import { splitBigTables, DEFAULT_SPLIT_ROWS } from './split.js';

export interface SyncRequest {
  from: ConnectionRow;
  to: ConnectionRow;
  tables: string[];
  mode: 'upsert' | 'mirror';
  batchBytes: number;
  /** Tables bigger than this are cut into key ranges (plan/split.ts; -1 = never). */
  splitRows?: number;
  /** Keep indexes and FKs of empty tables in place during the load (default: set aside, rebuilt after). */
  keepIndexes?: boolean;
  maxRowsPerS?: number;
  maxBytesPerS?: number;
  /** Tries per table before it is dead-lettered (default 3). */
  maxAttempts?: number;
  /** The job is cancelled after this many seconds (0 = never). */
  timeoutSeconds?: number;
  confirm?: string;
  createMissing?: boolean;
  dryRun?: boolean;
  onBadRow?: 'quarantine' | 'skip' | 'fail';
  onFailure?: 'keep' | 'rollback';
  /**
   * Diff re-sync of tables whose target has rows: 'auto' (default: from the changes tracked since the
   * table's last sync where there are any, else by hashing both sides), 'hash' (always hash both
   * sides), or 'off' (ship every row).
   */
  diff?: 'auto' | 'hash' | 'off';
  /** Initial loads as binary COPY where the types allow ('auto', default) or always COPY text. */
  copyFormat?: 'auto' | 'text';
  /** The report at the job's end compares every synced table ('full', default) or counts only ('off'). */
  verify?: 'full' | 'off';
}

/**
 * Asks the source's and the target's agents for both schemas (the source inside the job
 * snapshot when there is one) and plans the sync. Nothing is written anywhere.
 */
export async function gatherAndPlan(agents: AgentLink, req: SyncRequest, opts: {
  jobId?: string; snapshotId?: string; trace?: Record<string, string>; changes?: PlanInput['changes'];
  /** The target's schema, asked for earlier (it needs no snapshot: StartSync asks while the source exports one). */
  target?: Promise<pb.Schema__Output>;
} = {}): Promise<Planned> {
  const sealed = (c: ConnectionRow) => ({ name: c.name, sealed_url: c.sealed_url });
  const [source, target] = await Promise.all([
    agents.call<pb.Schema__Output>(req.from.agent_group, 'Introspect', { connection: sealed(req.from), snapshot_id: opts.snapshotId ?? '' }),
    opts.target ?? introspectTarget(agents, req),
  ]);
  // Cut into parts: the selected tables, those diffed from tracked changes into fewer (plan/split.ts).
  const key = (t: { schema: string; name: string }) => `${t.schema}.${t.name}`;
  const targetByKey = new Map(target.tables.map((t) => [key(t), t]));
  const selected = selectTables(source.tables, req.tables);
  const tracked = new Set(selected.filter((t) => trackedChanges(t, targetByKey.get(key(t)), { diff: req.diff, mode: req.mode, changes: opts.changes })).map(key));
  const splits = await splitBigTables(agents, req.from.agent_group, sealed(req.from), selected, req.splitRows ?? DEFAULT_SPLIT_ROWS, opts.snapshotId ?? '', tracked);
  const planned = planSync({
    jobId: opts.jobId ?? randomUUID(), source, target, tables: req.tables, mode: req.mode, batchBytes: req.batchBytes,
    from: { ...sealed(req.from), group: req.from.agent_group }, to: { ...sealed(req.to), group: req.to.agent_group },
    snapshotId: opts.snapshotId ?? '', trace: opts.trace ?? {}, splits, keepIndexes: req.keepIndexes,
    createMissing: req.createMissing, onBadRow: req.onBadRow, diff: req.diff, copyFormat: req.copyFormat, changes: opts.changes,
  });
  await preflight(agents, req, planned);
  return planned;
}

/** The target's schema (outside any snapshot). */
export function introspectTarget(agents: AgentLink, req: Pick<SyncRequest, 'to'>): Promise<pb.Schema__Output> {
  return agents.call<pb.Schema__Output>(req.to.agent_group, 'Introspect', { connection: { name: req.to.name, sealed_url: req.to.sealed_url } });
}

/**
 * Pre-flight beyond the schemas: privileges on both sides (SELECT on the source; SELECT, INSERT,
 * UPDATE, DELETE for mirror, and the syncflow schema on the target), a protected target.
 */
async function preflight(agents: AgentLink, req: SyncRequest, planned: Planned): Promise<void> {
  const sealed = (c: ConnectionRow) => ({ name: c.name, sealed_url: c.sealed_url });
  const refs = planned.plan.tables!.map((t) => ({ schema: t.schema, name: t.name, key: [] }));
  const [src, dst] = await Promise.all([
    agents.call<pb.AccessReply__Output>(req.from.agent_group, 'CheckAccess', { connection: sealed(req.from), tables: refs }),
    agents.call<pb.AccessReply__Output>(req.to.agent_group, 'CheckAccess', {
      connection: sealed(req.to), tables: refs, write: true, delete: req.mode === 'mirror', create_schema: true,
    }),
  ]);
  const checks = planned.plan.checks!;
  checks.push(...src.checks.map((c) => ({ ...c, message: `source: ${c.message}` })), ...dst.checks.map((c) => ({ ...c, message: `target: ${c.message}` })));
  if (req.to.protected) {
    checks.push({ severity: req.confirm === req.to.name ? 'info' : 'warning', code: 'protected', table: '', column: '',
      message: `target "${req.to.name}" is protected: sync start needs --confirm ${req.to.name}` });
  }
}
