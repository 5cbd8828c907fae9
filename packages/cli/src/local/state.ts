import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { CliError } from '../output.js';

/**
 * The state dir of `local up`: state.json (pids, ports, settings — region URLs included, hence 0600),
 * secret.key (generated once; kept by `local down` so stored connections stay readable), logs/.
 */

export interface Region { name: string; url: string }

export interface Settings {
  regions: Region[];
  /** External NATS; undefined = run our own nats-server. */
  nats?: string;
  /** Explicit control DB; undefined = derived from the first region. */
  controlDb?: string;
  port: number;
}

export interface ProcEntry {
  name: string;
  kind: 'nats' | 'coordinator' | 'agent';
  pid: number;
  command: string;
  args: string[];
  /** A string the process's command line must contain to still be ours. */
  match: string;
  log: string;
  /** Hash of command, args and settings-derived env: a change means restart. */
  spec: string;
  port?: number;
  region?: string;
  startedAt: string;
}

export interface LocalState {
  version: 1;
  stateDir: string;
  updatedAt: string;
  settings: Settings;
  coordinator: string;
  natsUrl: string;
  processes: Record<string, ProcEntry>;
}

export const DEFAULT_STATE_DIR = '.syncflow/local';

export function stateDirOf(dir: string | undefined): string {
  return resolve(dir ?? DEFAULT_STATE_DIR);
}

export const statePath = (dir: string) => join(dir, 'state.json');
export const logDir = (dir: string) => join(dir, 'logs');

export function prepareDirs(dir: string): void {
  mkdirSync(logDir(dir), { recursive: true, mode: 0o700 });
}

export function readState(dir: string): LocalState | undefined {
  const p = statePath(dir);
  if (!existsSync(p)) return undefined;
  try {
    const s = JSON.parse(readFileSync(p, 'utf8')) as LocalState;
    if (s.version !== 1 || typeof s.processes !== 'object') throw new Error('unknown format');
    return s;
  } catch (e) {
    throw new CliError(`cannot read ${p}: ${(e as Error).message} (remove it if no syncflow processes run from ${dir})`);
  }
}

/** Atomic write, owner-only: the file holds region URLs. */
export function writeState(dir: string, state: LocalState): void {
  state.updatedAt = new Date().toISOString();
  const p = statePath(dir);
  const tmp = `${p}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(state, null, 2) + '\n', { mode: 0o600 });
  renameSync(tmp, p);
}

export function removeState(dir: string): void {
  rmSync(statePath(dir), { force: true });
}

/** 32 random bytes, base64, created once with mode 0600. */
export function secretKey(dir: string): string {
  const p = join(dir, 'secret.key');
  if (!existsSync(p)) {
    try {
      writeFileSync(p, randomBytes(32).toString('base64') + '\n', { mode: 0o600, flag: 'wx' });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
  }
  if ((statSync(p).mode & 0o077) !== 0) chmodSync(p, 0o600);
  const key = readFileSync(p, 'utf8').trim();
  if (Buffer.from(key, 'base64').length !== 32) throw new CliError(`${p} does not hold a 32-byte base64 key`);
  return key;
}
