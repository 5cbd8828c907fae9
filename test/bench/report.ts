import { execFileSync } from 'node:child_process';
import { cpus, totalmem, hostname, release } from 'node:os';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pgBin, repoRoot } from '../harness/index.js';

export interface BenchEntry {
  method: string;
  wall_s: number | null;
  rows: number;
  bytes: number;
  /** Bytes between the agents (syncflow only; measured at the proxy in front of the target agent). */
  wan_bytes: number | null;
  /** Process label → peak resident memory (MB). */
  peak_rss_mb: Record<string, number>;
  /** Process label → CPU seconds during the run. */
  cpu_s: Record<string, number>;
  ratio_to_pgcopydb: number | null;
  verified: boolean;
  notes: string[];
  error?: string;
  /** syncflow: per-table apply method, rows and seconds. */
  tasks?: { table: string; method: string; rows: number; seconds: number }[];
}

export interface BenchReport {
  started_at: string;
  scale: number;
  dataset: { rows: number; bytes: number; database_bytes: number; tables: Record<string, number>; generate_s: number };
  machine: Record<string, string | number>;
  results: BenchEntry[];
}

function versionOf(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).split('\n').filter(Boolean).find((l) => /\d/.test(l))?.trim() ?? 'unknown';
  } catch {
    return 'not installed';
  }
}

export function machineInfo(): Record<string, string | number> {
  const c = cpus();
  return {
    hostname: hostname(),
    kernel: release(),
    cpus: c.length,
    cpu_model: c[0]?.model ?? 'unknown',
    memory_gb: Math.round(totalmem() / 2 ** 30 * 10) / 10,
    node: process.version,
    postgres: versionOf(pgBin('postgres'), ['--version']),
    nats_server: versionOf('nats-server', ['--version']),
    pgcopydb: versionOf('pgcopydb', ['--version']).replace(/^.*(pgcopydb version)/, '$1'),
  };
}

const fmt = (n: number | null, digits = 1) => (n === null || !Number.isFinite(n) ? '—' : n.toFixed(digits));
const mb = (b: number) => b / 1e6;

/** The results as a Markdown table (the same one printed and put in bench/README.md). */
export function table(r: BenchReport): string {
  const head = '| method | wall s | rows/s | MB/s | WAN MB | peak RSS MB | CPU s | × pgcopydb |';
  const sep = '|---|---:|---:|---:|---:|---|---|---:|';
  const lines = r.results.map((e) => {
    const rss = Object.entries(e.peak_rss_mb).map(([k, v]) => `${k} ${v.toFixed(0)}`).join(', ');
    const cpu = Object.entries(e.cpu_s).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', ');
    const rate = (x: number) => (e.wall_s ? x / e.wall_s : null);
    const wall = e.error ? `failed: ${e.error.slice(0, 60)}` : fmt(e.wall_s);
    return `| ${e.method} | ${wall} | ${fmt(rate(e.rows), 0)} | ${fmt(rate(mb(e.bytes)))} | ${e.wan_bytes === null ? '—' : fmt(mb(e.wan_bytes))} | ${rss} | ${cpu} | ${fmt(e.ratio_to_pgcopydb, 2)} |`;
  });
  return [head, sep, ...lines].join('\n');
}

/** Writes bench/results/latest.json and a dated copy; returns the dated file's path. */
export async function writeReport(r: BenchReport): Promise<string> {
  const dir = join(repoRoot, 'bench', 'results');
  await mkdir(dir, { recursive: true });
  const d = new Date(r.started_at);
  const pad = (n: number) => String(n).padStart(2, '0');
  const stamp = `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}-${pad(d.getUTCHours())}${pad(d.getUTCMinutes())}`;
  const text = JSON.stringify(r, null, 2) + '\n';
  const dated = join(dir, `${stamp}.json`);
  await writeFile(join(dir, 'latest.json'), text);
  await writeFile(dated, text);
  return dated;
}
