import { grpc, scrubSecrets, SyncflowError, ErrorKind } from '@syncflow/shared';

/**
 * Everything the CLI prints goes through here: aligned tables, --json documents,
 * and the one-line error report (`syncflow: <reason>`) with its exit code.
 */

/** An error that is reported as one line with a chosen exit code (2 = usage, 1 = anything else). */
export class CliError extends Error {
  constructor(message: string, readonly exitCode: 1 | 2 = 1) {
    super(message);
    this.name = 'CliError';
  }
}
export const usageError = (message: string) => new CliError(message, 2);

export interface OutputOptions { json: boolean }

export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, null, 2) + '\n');
}

export function println(line = ''): void {
  process.stdout.write(line + '\n');
}

type Align = 'left' | 'right';
export interface Column { header: string; align?: Align }

/** Renders rows as aligned columns, two spaces apart; the last column is never padded. */
export function formatTable(columns: Column[], rows: string[][], indent = ''): string[] {
  const widths = columns.map((c, i) => Math.max(visibleLength(c.header), ...rows.map((r) => visibleLength(r[i] ?? ''))));
  const line = (cells: string[]) => indent + cells.map((cell, i) => {
    const last = i === cells.length - 1;
    const pad = widths[i]! - visibleLength(cell);
    if (columns[i]?.align === 'right') return ' '.repeat(pad) + cell;
    return last ? cell : cell + ' '.repeat(pad);
  }).join('  ').trimEnd();
  return [line(columns.map((c) => c.header)), ...rows.map((r) => line(columns.map((_, i) => r[i] ?? '')))];
}

export function printTable(columns: Column[], rows: string[][], indent = ''): void {
  for (const l of formatTable(columns, rows, indent)) println(l);
}

/** Key/value block: `key   value`, keys aligned. Empty values are skipped. */
export function printFields(fields: Array<[string, string | undefined]>, indent = ''): void {
  const shown = fields.filter(([, v]) => v !== undefined && v !== '');
  const w = Math.max(0, ...shown.map(([k]) => k.length));
  for (const [k, v] of shown) println(`${indent}${k.padEnd(w)}  ${v}`);
}

function visibleLength(s: string): number {
  // eslint-disable-next-line no-control-regex
  return s.replace(/\x1b\[[0-9;]*m/g, '').length;
}

// ---- value formatting -------------------------------------------------------------------------

/** Proto enum value → short lower-case word: JOB_STATE_COMPLETED → completed. */
export function enumWord(value: string | undefined, prefix: string): string {
  if (!value) return '-';
  const w = value.startsWith(prefix) ? value.slice(prefix.length) : value;
  return w === 'UNSPECIFIED' ? '-' : w.toLowerCase();
}
export const jobStateWord = (s: string | undefined) => enumWord(s, 'JOB_STATE_');
export const taskStateWord = (s: string | undefined) => enumWord(s, 'TASK_STATE_');
export const methodWord = (s: string | undefined) => enumWord(s, 'APPLY_METHOD_');
export const modeWord = (s: string | undefined) => (s === 'SYNC_MODE_UNSPECIFIED' ? 'upsert' : enumWord(s, 'SYNC_MODE_'));

/** int64 values arrive as decimal strings; never round-trip them through a JS number for display. */
export function count(v: string | number | undefined | null): string {
  if (v === undefined || v === null || v === '') return '0';
  const s = String(v);
  if (!/^-?\d+$/.test(s)) return s;
  const neg = s.startsWith('-');
  const digits = neg ? s.slice(1) : s;
  return (neg ? '-' : '') + digits.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}

/** Approximate counts for bars and estimates: 1234567 → 1.2M. */
export function shortCount(n: number): string {
  if (n < 0) return '?';
  if (n < 1000) return String(Math.round(n));
  const units = ['k', 'M', 'G', 'T'];
  let v = n, u = -1;
  while (v >= 1000 && u < units.length - 1) { v /= 1000; u++; }
  return `${v >= 100 ? v.toFixed(0) : v.toFixed(1)}${units[u]}`;
}

/** Bytes as B / KiB / MiB / GiB / TiB. */
export function humanBytes(v: string | number | undefined | null): string {
  const n = Number(v ?? 0);
  if (!Number.isFinite(n) || n <= 0) return '0 B';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let x = n, u = 0;
  while (x >= 1024 && u < units.length - 1) { x /= 1024; u++; }
  return u === 0 ? `${x} B` : `${x >= 100 ? x.toFixed(0) : x.toFixed(1)} ${units[u]}`;
}

/** Seconds between two timestamps (finished or now); '-' when it never started. */
export function seconds(startedAt: string | undefined, finishedAt: string | undefined, now = Date.now()): string {
  const s = startedAt ? Date.parse(startedAt) : NaN;
  if (Number.isNaN(s)) return '-';
  const f = finishedAt ? Date.parse(finishedAt) : now;
  const d = (Number.isNaN(f) ? now : f) - s;
  return d < 0 ? '0.0' : (d / 1000).toFixed(1);
}

export const dash = (s: string | undefined | null) => (s === undefined || s === null || s === '' ? '-' : s);
export const list = (xs: readonly string[] | undefined) => (xs && xs.length ? xs.join(', ') : '-');

// ---- errors -----------------------------------------------------------------------------------

const GRPC_STATUS_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(grpc.status).filter(([, v]) => typeof v === 'number').map(([k, v]) => [v as number, k]),
);

export function isGrpcError(e: unknown): e is grpc.ServiceError {
  return typeof e === 'object' && e !== null && typeof (e as { code?: unknown }).code === 'number' && 'details' in e;
}

export const grpcStatusName = (code: number) => GRPC_STATUS_NAMES[code] ?? `CODE_${code}`;

/** The one line and exit code for anything thrown. */
export function describeError(e: unknown): { line: string; exitCode: 1 | 2 } {
  let line: string;
  let exitCode: 1 | 2 = 1;
  if (e instanceof CliError) {
    line = e.message;
    exitCode = e.exitCode;
  } else if (isGrpcError(e)) {
    line = `${grpcStatusName(e.code)}: ${e.details || e.message}`;
    if (e.code === grpc.status.INVALID_ARGUMENT) exitCode = 2;
  } else if (e instanceof SyncflowError) {
    line = e.message;
    if (e.kind === ErrorKind.InvalidArgument) exitCode = 2;
  } else if (e instanceof Error) {
    line = e.message;
  } else {
    line = String(e);
  }
  return { line: oneLine(scrubSecrets(line)), exitCode };
}

export function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, ' ').trim();
}

/** Prints `syncflow: <reason>` on stderr and sets the exit code; the caller returns normally. */
export function reportError(e: unknown): 1 | 2 {
  const { line, exitCode } = describeError(e);
  process.stderr.write(`syncflow: ${line}\n`);
  // opt-in for developers: the stack of an unexpected error, after the one line
  if (process.env.SYNCFLOW_DEBUG && e instanceof Error && !(e instanceof CliError)) process.stderr.write(`${e.stack ?? ''}\n`);
  process.exitCode = exitCode;
  return exitCode;
}
