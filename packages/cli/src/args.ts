import { InvalidArgumentError } from 'commander';
import { parseTableRef, SyncflowError, NAME_PATTERN, NAME_RULE } from '@syncflow/shared';
import { usageError } from './output.js';

/** Argument parsing and validation done locally, so mistakes fail fast with exit 2. */

export function checkName(kind: string, name: string): string {
  if (!NAME_PATTERN.test(name)) {
    throw usageError(`${kind} name ${JSON.stringify(name)} is invalid: it ${NAME_RULE}`);
  }
  return name;
}

/** A postgres:// URL. The message never repeats the URL: it may carry a password. */
export function checkPostgresUrl(what: string, url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw usageError(`${what}: not a valid URL (expected e.g. postgres://localhost:5432/app, with user and password)`);
  }
  if (u.protocol !== 'postgres:' && u.protocol !== 'postgresql:') {
    throw usageError(`${what}: expected a postgres:// or postgresql:// URL, got ${u.protocol}//…`);
  }
  if (!u.hostname && !u.searchParams.get('host')) throw usageError(`${what}: the URL has no host`);
  return url;
}

/** commander parser: integer in [min, max]. */
export function intArg(min: number, max = Number.MAX_SAFE_INTEGER) {
  return (value: string): number => {
    if (!/^\d+$/.test(value.trim())) throw new InvalidArgumentError(`expected an integer between ${min} and ${max}`);
    const n = Number(value);
    if (n < min || n > max) throw new InvalidArgumentError(`expected an integer between ${min} and ${max}`);
    return n;
  };
}

const SIZE_UNITS: Record<string, number> = {
  '': 1, b: 1, k: 1024, kb: 1000, kib: 1024, m: 1024 ** 2, mb: 1000 ** 2, mib: 1024 ** 2, g: 1024 ** 3, gb: 1000 ** 3, gib: 1024 ** 3,
};

/** commander parser: a byte size, `4194304`, `4MiB`, `512k`; returned as a decimal string (int64 on the wire). */
export function byteSizeArg(value: string): string {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(value);
  const unit = m ? SIZE_UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new InvalidArgumentError('expected a size in bytes, e.g. 4194304, 512KiB or 4MiB');
  const n = Math.round(Number(m[1]) * unit);
  // the coordinator accepts 64 KiB to 32 MiB (a batch must stay well below the gRPC message limit)
  if (n < 64 * 1024 || n > 32 * 1024 ** 2) throw new InvalidArgumentError('expected a size between 64KiB and 32MiB');
  return String(n);
}

/** commander parser: a non-negative rate (rows or bytes per second; byte rates take units: 10MiB). */
export function rateArg(bytes: boolean) {
  return (value: string): number => {
    if (bytes) return Number(byteSizeOrZero(value));
    const n = Number(value);
    if (!Number.isFinite(n) || n < 0) throw new InvalidArgumentError('expected a number of rows per second (0 = unlimited)');
    return n;
  };
}

function byteSizeOrZero(value: string): string {
  if (/^\s*0\s*$/.test(value)) return '0';
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(value);
  const unit = m ? SIZE_UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new InvalidArgumentError('expected bytes per second, e.g. 1048576 or 10MiB (0 = unlimited)');
  return String(Math.round(Number(m[1]) * unit));
}

/** commander parser for repeatable options: collects every occurrence. */
export const collect = (value: string, previous: string[] | undefined): string[] => [...(previous ?? []), value];

/**
 * Splits `--tables` values on commas outside double quotes: `a,"Sales Dept"."Order, Items"` gives two
 * names. Each name is checked with the same parser the server uses, and passed on as typed.
 */
export function splitTables(values: readonly string[] | undefined): string[] {
  const out: string[] = [];
  for (const value of values ?? []) {
    let cur = '', quoted = false;
    const push = () => {
      const name = cur.trim();
      if (!name) throw usageError(`--tables ${JSON.stringify(value)}: empty table name`);
      out.push(name);
      cur = '';
    };
    for (const ch of value) {
      if (ch === '"') quoted = !quoted;
      if (ch === ',' && !quoted) { push(); continue; }
      cur += ch;
    }
    if (quoted) throw usageError(`--tables ${JSON.stringify(value)}: unterminated quote`);
    push();
  }
  for (const name of out) {
    try {
      parseTableRef(name);
    } catch (e) {
      throw usageError(e instanceof SyncflowError ? e.message : String(e));
    }
  }
  return out;
}

/** `--mode` → SyncMode enum name. */
export function syncMode(value: string | undefined): 'SYNC_MODE_UPSERT' | 'SYNC_MODE_MIRROR' {
  if (value === undefined || value === 'upsert') return 'SYNC_MODE_UPSERT';
  if (value === 'mirror') return 'SYNC_MODE_MIRROR';
  throw usageError(`--mode ${JSON.stringify(value)}: expected upsert or mirror`);
}
