import { randomUUID } from 'node:crypto';
import { type pb } from '@syncflow/shared';
import type { AgentLink } from '../agents.js';
import type { ConnectionRow } from '../store/connections.js';
import { planSync, type Planned } from './planner.js';
import { splitBigTables } from './split.js';

export interface SyncRequest {
  from: ConnectionRow;
  to: ConnectionRow;
  tables: string[];
  mode: 'upsert' | 'mirror';
  batchBytes: number;
  splitRows: number;
  keepIndexes: boolean;
  maxRowsPerS: number;
  maxBytesPerS: number;
  /** Tries per table before it is dead-lettered (default 3). */
  maxAttempts?: number;
  /** The job is cancelled after this many seconds (0 = never). */
  timeoutSeconds?: number;
}

/**
 * Asks the source's and the target's agents for both schemas (the source inside the job
 * snapshot when there is one) and plans the sync. Nothing is written anywhere.
 */
export async function gatherAndPlan(agents: AgentLink, req: SyncRequest, opts: { jobId?: string; snapshotId?: string; trace?: Record<string, string> } = {}): Promise<Planned> {
  const sealed = (c: ConnectionRow) => ({ name: c.name, sealed_url: c.sealed_url });
  const [source, target] = await Promise.all([
    agents.call<pb.Schema__Output>(req.from.agent_group, 'Introspect', { connection: sealed(req.from), snapshot_id: opts.snapshotId ?? '' }),
    agents.call<pb.Schema__Output>(req.to.agent_group, 'Introspect', { connection: sealed(req.to) }),
  ]);
  const splits = await splitBigTables(agents, req.from.agent_group, sealed(req.from), source, req.splitRows, opts.snapshotId ?? '');
  return planSync({
    jobId: opts.jobId ?? randomUUID(), source, target, tables: req.tables, mode: req.mode, batchBytes: req.batchBytes,
    from: { ...sealed(req.from), group: req.from.agent_group }, to: { ...sealed(req.to), group: req.to.agent_group },
    snapshotId: opts.snapshotId ?? '', trace: opts.trace ?? {}, splits, keepIndexes: req.keepIndexes,
  });
}
