import type { pb } from '@syncflow/shared';
import type { AgentLink } from '../agents.js';
import type { TableSplit } from './planner.js';

export const DEFAULT_SPLIT_ROWS = 500_000;
const MAX_PARTS = 32;

/**
 * Asks the source's agent where to cut the tables bigger than `splitRows` rows, so that one huge
 * table does not serialise the job: its parts load in parallel across the agents of the group.
 * Partitioned tables stay whole (their partitions already bound each scan).
 */
export async function splitBigTables(agents: AgentLink, group: string, connection: { name: string; sealed_url: string },
  source: pb.Schema__Output, splitRows: number, snapshotId: string): Promise<Map<string, TableSplit>> {
  const out = new Map<string, TableSplit>();
  if (splitRows < 0) return out;
  const big = source.tables.filter((t) => !t.partitioned && Number(t.row_estimate) > splitRows);
  for (const t of big) {
    const parts = Math.min(MAX_PARTS, Math.ceil(Number(t.row_estimate) / splitRows));
    const key = t.primary_key.map((k) => {
      const c = t.columns.find((x) => x.name === k)!;
      return { name: k, type_schema: c.type_schema, type_name: c.type_name };
    });
    const reply = await agents.call<pb.SplitReply__Output>(group, 'SplitPoints', {
      connection, snapshot_id: snapshotId, schema: t.schema, table: t.name, key, parts,
    }, 5 * 60_000);
    // Sampled boundaries can repeat on skewed keys; keep each once, in order.
    const seen = new Set<string>();
    const boundaries = reply.boundaries.map((b) => b.values).filter((v) => !seen.has(JSON.stringify(v)) && seen.add(JSON.stringify(v)));
    out.set(`${t.schema}.${t.name}`, { boundaries, blocks: Number(reply.blocks), parts: key.length ? boundaries.length + 1 : parts });
  }
  return out;
}
