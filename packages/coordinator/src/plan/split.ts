import type { pb } from '@syncflow/shared';
import type { AgentLink } from '../agents.js';
import type { TableSplit } from './planner.js';

export const DEFAULT_SPLIT_ROWS = 500_000;
/**
 * Tables bigger than this (heap and TOAST) are cut too, whatever their row count: at scale 1 the
 * bench's product_media (100 k rows of ~3 KB, 296 MB) and attachments (40 rows of 4 MB) were single
 * tasks that every other table finished long before.
 */
export const SPLIT_BYTES = 64 * 1024 * 1024;
const MAX_PARTS = 32;

/** Parts of a table: by rows (`splitRows`) and by bytes (SPLIT_BYTES), whichever asks for more. */
export function partsFor(t: { row_estimate: string | number; bytes: string | number }, splitRows: number): number {
  const byRows = Math.ceil(Math.max(0, Number(t.row_estimate)) / splitRows);
  const byBytes = Math.ceil(Math.max(0, Number(t.bytes)) / SPLIT_BYTES);
  return Math.min(MAX_PARTS, Math.max(1, byRows, byBytes));
}

/**
 * A diff from tracked changes ships only the rows that changed, a small share of the table: parts
 * buy little but a task (and its round trips) each. Two still let a big one apply on two target
 * connections at the end of the job, when it is often the last table left (bench, scale 1, one
 * hour: order_items' 24 000 changed rows took 1.0 s whole, 0.7–0.8 s in 2 parts).
 */
export const TRACKED_PARTS = 2;

/**
 * Asks the source's agent where to cut those of `tables` bigger than `splitRows` rows or SPLIT_BYTES, so that one huge
 * table does not serialise the job: its parts load in parallel across the agents of the group.
 * Partitioned tables stay whole (their partitions already bound each scan). `tracked`: tables
 * diffed from tracked changes ("schema.name"), cut into TRACKED_PARTS at most.
 */
export async function splitBigTables(agents: AgentLink, group: string, connection: { name: string; sealed_url: string },
  tables: readonly pb.Table__Output[], splitRows: number, snapshotId: string, tracked: ReadonlySet<string> = new Set()): Promise<Map<string, TableSplit>> {
  const out = new Map<string, TableSplit>();
  if (splitRows < 0) return out;
  const partsOf = (t: pb.Table__Output) => Math.min(partsFor(t, splitRows), tracked.has(`${t.schema}.${t.name}`) ? TRACKED_PARTS : Infinity);
  const big = tables.filter((t) => !t.partitioned && partsOf(t) > 1);
  // All at once: each is one query on its own pooled connection of the source agent.
  await Promise.all(big.map(async (t) => {
    const parts = partsOf(t);
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
  }));
  return out;
}
