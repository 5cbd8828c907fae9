import { z } from 'zod';
import { invalidArgument, NAME_PATTERN, NAME_RULE } from '@syncflow/shared';

/** SyncService requests, validated once at the edge. */
const connName = z.string().regex(NAME_PATTERN, NAME_RULE);

export const createConnectionReq = z.object({
  name: connName,
  url: z.string().max(2048).refine((u) => {
    try { return ['postgres:', 'postgresql:'].includes(new URL(u).protocol); } catch { return false; }
  }, 'must be a postgres:// or postgresql:// URL'),
  group: connName,
  protected: z.boolean(),
});

export const nameReq = z.object({ name: connName });

export const syncSpecReq = z.object({
  from: connName,
  to: connName,
  tables: z.array(z.string().min(1).max(300)).max(10_000),
  mode: z.enum(['SYNC_MODE_UNSPECIFIED', 'SYNC_MODE_UPSERT', 'SYNC_MODE_MIRROR']).transform((m) => (m === 'SYNC_MODE_MIRROR' ? 'mirror' : 'upsert') as 'upsert' | 'mirror'),
  batch_bytes: z.coerce.number().int().refine((n) => n === 0 || (n >= 64 * 1024 && n <= 32 * 1024 * 1024), 'must be 0 (default) or between 64 KiB and 32 MiB'),
  max_attempts: z.coerce.number().int().min(0).max(100, 'must be at most 100').default(0).transform((n) => n || DEFAULT_MAX_ATTEMPTS),
  timeout_seconds: z.coerce.number().int().min(0).max(30 * 24 * 3600, 'must be at most 30 days').default(0),
  keep_indexes: z.boolean(),
  max_rows_per_s: z.number().min(0),
  max_bytes_per_s: z.number().min(0),
  split_rows: z.coerce.number().int().refine((n) => n === -1 || n === 0 || n >= 1000, 'must be -1 (never split), 0 (default) or at least 1000'),
  confirm: z.string().max(63).default(''),
  create_missing: z.boolean().default(false),
  dry_run: z.boolean().default(false),
  on_bad_row: z.enum(['', 'quarantine', 'skip', 'fail']).default('').transform((v) => (v || 'quarantine') as 'quarantine' | 'skip' | 'fail'),
  on_failure: z.enum(['', 'keep', 'rollback']).default('').transform((v) => (v || 'keep') as 'keep' | 'rollback'),
  diff: z.enum(['', 'auto', 'hash', 'off']).default('').transform((v) => (v || 'auto') as 'auto' | 'hash' | 'off'),
  copy_format: z.enum(['', 'auto', 'text']).default('').transform((v) => (v || 'auto') as 'auto' | 'text'),
  verify: z.enum(['', 'full', 'off']).default('').transform((v) => (v || 'full') as 'full' | 'off'),
}).refine((s) => s.from !== s.to, { message: 'from and to must be different connections', path: ['to'] });

export const setJobRateReq = z.object({
  id: z.string().uuid('must be a job id (uuid)'),
  max_rows_per_s: z.number().min(0),
  max_bytes_per_s: z.number().min(0),
});

export const jobIdReq = z.object({ id: z.string().uuid('must be a job id (uuid)') });
export const rollbackReq = z.object({ id: z.string().uuid('must be a job id (uuid)'), force: z.boolean().default(false) });
export const rejectsReq = z.object({ id: z.string().uuid('must be a job id (uuid)'), limit: z.number().int().min(0).max(100_000).transform((n) => n || 1000) });
export const verifyReq = z.object({
  from: connName, to: connName,
  tables: z.array(z.string().min(1).max(300)).max(10_000),
  max_keys: z.number().int().min(0).max(100_000).transform((n) => n || 100),
}).refine((s) => s.from !== s.to, { message: 'from and to must be different connections', path: ['to'] });
export const listJobsReq = z.object({ limit: z.number().int().min(0).max(1000).transform((n) => n || 50) });

export function parseReq<T extends z.ZodTypeAny>(schema: T, req: unknown): z.infer<T> {
  const r = schema.safeParse(req);
  if (!r.success) throw invalidArgument(r.error.issues.map((i) => `${i.path.join('.') || 'request'}: ${i.message}`).join('; '));
  return r.data;
}

export const DEFAULT_BATCH_BYTES = 4 * 1024 * 1024;
export const DEFAULT_MAX_ATTEMPTS = 3;
