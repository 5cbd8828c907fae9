import { z } from 'zod';

/**
 * The JetStream payloads between coordinator and agents. Parsed with zod on arrival:
 * a malformed message is refused (and dead-lettered), never half-used.
 */
const key = z.array(z.string().nullable());

/** A change slot's name as the coordinator makes them (syncflow_ and a job id's 32 hex digits): safe as a replication command's literal. */
export const CHANGE_SLOT = /^syncflow_[0-9a-f]{32}$/;
/** A WAL position in PostgreSQL's text form. */
export const LSN = /^[0-9A-F]{1,8}\/[0-9A-F]{1,8}$/;
const sealed = z.object({ name: z.string(), sealed_url: z.string(), group: z.string() });

export const ApplyMethod = { Copy: 'copy', Upsert: 'upsert', Append: 'append', Replace: 'replace' } as const;
export type ApplyMethod = (typeof ApplyMethod)[keyof typeof ApplyMethod];
export const applyMethodToProto = (m: ApplyMethod) => `APPLY_METHOD_${m.toUpperCase()}` as const;
export function applyMethodFromProto(p: string): ApplyMethod {
  const v = p.replace(/^APPLY_METHOD_/, '').toLowerCase();
  if (!(Object.values(ApplyMethod) as string[]).includes(v)) throw new Error(`unknown apply method ${p}`);
  return v as ApplyMethod;
}

export type CopyFormat = 'text' | 'binary';
/**
 * Key column types (pg_catalog) whose binary form the source agent turns into the same text
 * PostgreSQL prints (read/copy-binary.ts): a batch's first and last key, for checkpoints and resume.
 */
export const BINARY_KEY_TYPES: ReadonlySet<string> = new Set(['int2', 'int4', 'int8', 'text', 'varchar', 'uuid']);

export const taskMessage = z.object({
  v: z.literal(1),
  job_id: z.string().uuid(),
  task_id: z.string().min(1).max(200),
  source: sealed,
  target: sealed,
  snapshot_id: z.string(),
  schema: z.string(),
  table: z.string(),
  /** COPY column list, key columns first. */
  columns: z.array(z.string()).min(1),
  key_columns: z.array(z.string()),
  /** Schema and pg_type name of each key column: casts of key values are built from these, quoted. */
  key_types: z.array(z.object({ schema: z.string(), name: z.string() })),
  method: z.enum(['copy', 'upsert', 'append', 'replace']),
  mirror: z.boolean(),
  batch_bytes: z.number().int().min(4096),
  /** A part of a big table: keys in (after, upto], or, for a keyless table, blocks [from, to). Absent ends are open. */
  range: z.object({ after: key.nullable(), upto: key.nullable() }).nullable().default(null),
  blocks: z.object({ from: z.number().int().min(0), to: z.number().int().nullable() }).nullable().default(null),
  trace: z.record(z.string(), z.string()).default({}),
  /** Tries of this task before a failure is final (dead letter); retryable errors only. */
  max_attempts: z.number().int().min(1).max(100).default(3),
  /** Rows the target refuses: quarantine (default), skip, or fail the task. */
  on_bad_row: z.enum(['fail', 'skip', 'quarantine']).default('quarantine'),
  /** Diff re-sync: compare hash buckets with the target and ship only those that differ (target has rows). */
  diff: z.boolean().default(false),
  /** The planner's estimate of this task's rows (0 = unknown): sizes the diff buckets without a count. */
  row_estimate: z.number().int().min(0).default(0),
  /**
   * Diff re-sync: columns hashed by their type's own hash function rather than their text (cheaper):
   * the same type on both sides, and one whose equality is identity (plan/planner.ts HASHED_TYPES).
   */
  diff_hashed: z.array(z.string()).default([]),
  /**
   * Diff re-sync from tracked changes: the change slot of this table's last sync and the consistent
   * point of this job's snapshot. The source agent decodes the keys changed in between
   * (read/change-log.ts) and ships only their rows; without it (or when decoding cannot tell),
   * both sides hash every row.
   */
  changes: z.object({ slot: z.string().regex(CHANGE_SLOT), upto: z.string().regex(LSN) }).nullable().default(null),
  /**
   * The COPY format rows travel in: 'binary' for an initial load (method copy) whose columns are all
   * built-in types, the same on both sides, keyed by BINARY_KEY_TYPES or keyless (plan/planner.ts).
   */
  copy_format: z.enum(['text', 'binary']).default('text'),
});
export type TaskMessage = z.infer<typeof taskMessage>;

export const EventType = {
  Started: 'started', Checkpoint: 'checkpoint', Log: 'log', Done: 'done', Failed: 'failed', Paused: 'paused',
} as const;
export type EventType = (typeof EventType)[keyof typeof EventType];

const errorInfo = z.object({ kind: z.string(), code: z.string(), message: z.string(), retryable: z.boolean() });

export const eventMessage = z.discriminatedUnion('type', [
  z.object({ type: z.literal('started'), job_id: z.string(), task_id: z.string(), agent_id: z.string(), at: z.string(), delivery: z.number().int(),
    resume_after: key.nullable(), snapshot: z.enum(['job', 'own']) }),
  z.object({ type: z.literal('checkpoint'), job_id: z.string(), task_id: z.string(), agent_id: z.string(), at: z.string(),
    seq: z.number().int(), last_key: key.nullable(), rows: z.number().int(), bytes: z.number().int(), batches: z.number().int() }),
  z.object({ type: z.literal('log'), job_id: z.string(), task_id: z.string().nullable(), agent_id: z.string(), at: z.string(),
    level: z.enum(['debug', 'info', 'warn', 'error']), message: z.string() }),
  z.object({ type: z.literal('done'), job_id: z.string(), task_id: z.string(), agent_id: z.string(), at: z.string(),
    rows: z.number().int(), bytes: z.number().int(), batches: z.number().int(), inserted: z.number().int(), updated: z.number().int(),
    marked_for_delete: z.number().int(), duplicates: z.number().int() }),
  z.object({ type: z.literal('failed'), job_id: z.string(), task_id: z.string(), agent_id: z.string(), at: z.string(),
    error: errorInfo, final: z.boolean(), delivery: z.number().int(),
    /** Which publication of the task failed (0 the first; n from its message id `<task_id>#r<n>`): a late final failure of an earlier one is not the re-queued task's. */
    publish: z.number().int().min(0).optional() }),
  /** The task stopped for a pause after its last committed batch; its message was terminated (republished on resume). */
  z.object({ type: z.literal('paused'), job_id: z.string(), task_id: z.string(), agent_id: z.string(), at: z.string(), delivery: z.number().int() }),
]);
export type EventMessage = z.infer<typeof eventMessage>;

/** Decodes a JSON message body; undefined when it is not JSON (the zod parse then refuses it). */
export function decodeJson(data: Uint8Array): unknown {
  try { return JSON.parse(new TextDecoder().decode(data)); } catch { return undefined; }
}
