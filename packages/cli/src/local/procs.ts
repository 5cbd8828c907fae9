import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, readSync, fstatSync, statSync } from 'node:fs';
import { createServer, connect as tcpConnect } from 'node:net';
import { scrubSecrets, sleep } from '@syncflow/shared';
import { CliError, oneLine } from '../output.js';

/** Process plumbing for `local up/down`: detached children, liveness, ports, log lines. */

export interface Started { pid: number; exited: () => { code: number | null; signal: string | null } | undefined }

/**
 * Starts a detached child that outlives the CLI; its stdout and stderr append to logFile.
 * Resolves once the process exists (a missing binary rejects).
 */
export async function spawnDetached(command: string, args: string[], env: NodeJS.ProcessEnv, logFile: string): Promise<Started> {
  const fd = openSync(logFile, 'a', 0o600);
  try {
    const child = spawn(command, args, { detached: true, stdio: ['ignore', fd, fd], env, cwd: process.cwd() });
    let exit: { code: number | null; signal: string | null } | undefined;
    child.on('exit', (code, signal) => { exit = { code, signal }; });
    const pid = await new Promise<number>((resolve, reject) => {
      child.once('error', reject);
      child.once('spawn', () => resolve(child.pid!));
    });
    child.unref();
    return { pid, exited: () => exit };
  } finally {
    closeSync(fd);
  }
}

export function isAlive(pid: number | undefined): boolean {
  if (!pid || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    // EPERM: it exists but belongs to someone else, so it is not ours
    return false;
  }
}

/** Alive and still the program we started (pids get reused): its command line mentions `match`. */
export function isOurs(pid: number | undefined, match: string): boolean {
  if (!isAlive(pid)) return false;
  const proc = `/proc/${pid}/cmdline`;
  if (!existsSync('/proc/self/cmdline')) return true; // no procfs: liveness is all we can know
  try {
    const cmdline = readFileSync(proc, 'utf8');
    if (!cmdline) return false; // a zombie has an empty command line
    return cmdline.split('\0').some((part) => part.includes(match));
  } catch {
    return false;
  }
}

/** SIGTERM, then SIGKILL after graceMs. Resolves when the process is gone. */
export async function stopProcess(pid: number, graceMs = 5_000): Promise<'stopped' | 'killed' | 'gone'> {
  if (!isAlive(pid)) return 'gone';
  try { process.kill(pid, 'SIGTERM'); } catch { return 'gone'; }
  const until = Date.now() + graceMs;
  while (Date.now() < until) {
    await sleep(100);
    if (!isAlive(pid) || isZombie(pid)) return 'stopped';
  }
  try { process.kill(pid, 'SIGKILL'); } catch { return 'stopped'; }
  for (let i = 0; i < 50 && isAlive(pid) && !isZombie(pid); i++) await sleep(100);
  return 'killed';
}

function isZombie(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return false;
  }
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

export function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.unref();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

export function tcpAccepts(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const s = tcpConnect({ port, host });
    const done = (ok: boolean) => { s.destroy(); resolve(ok); };
    s.setTimeout(1_000, () => done(false));
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

export function fileSize(path: string): number {
  try { return statSync(path).size; } catch { return 0; }
}

/** Whether the log, from byte `offset` on, has a line containing `needle`. */
export function logContains(path: string, offset: number, needle: string): boolean {
  let fd: number;
  try { fd = openSync(path, 'r'); } catch { return false; }
  try {
    const size = fstatSync(fd).size;
    if (size <= offset) return false;
    const buf = Buffer.alloc(size - offset);
    readSync(fd, buf, 0, buf.length, offset);
    return buf.toString('utf8').includes(needle);
  } finally {
    closeSync(fd);
  }
}

/** The last meaningful log line, as a short reason (pino JSON → msg and error message). */
export function lastLogLine(path: string, offset = 0): string | undefined {
  let text: string;
  try {
    const fd = openSync(path, 'r');
    try {
      const size = fstatSync(fd).size;
      const start = Math.max(offset, size - 8192);
      const buf = Buffer.alloc(Math.max(0, size - start));
      readSync(fd, buf, 0, buf.length, start);
      text = buf.toString('utf8');
    } finally {
      closeSync(fd);
    }
  } catch {
    return undefined;
  }
  const lines = text.split('\n').map((l) => l.trim()).filter(Boolean);
  // prefer the last error-ish JSON line; else the last line
  for (let i = lines.length - 1; i >= 0; i--) {
    try {
      const o = JSON.parse(lines[i]!) as { level?: number; msg?: string; err?: { message?: string } };
      if ((o.level ?? 0) >= 50 && o.msg) return short(o.err?.message && !o.msg.includes(o.err.message) ? `${o.msg}: ${o.err.message}` : o.msg);
    } catch { /* not JSON */ }
  }
  const last = lines.at(-1);
  if (!last) return undefined;
  try {
    const o = JSON.parse(last) as { msg?: string };
    if (o.msg) return short(o.msg);
  } catch { /* plain text */ }
  return short(last);
}

const short = (s: string) => {
  const l = oneLine(scrubSecrets(s));
  return l.length > 300 ? l.slice(0, 297) + '...' : l;
};

/** Polls `ready` until it returns true; fails early if the process exits, or after timeoutMs. */
export async function waitFor(what: string, timeoutMs: number, ready: () => Promise<boolean> | boolean,
  proc?: { started?: Started; log: string; logOffset: number }): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (await ready()) return;
    const exit = proc?.started?.exited();
    if (exit && proc) {
      const how = exit.signal ? `signal ${exit.signal}` : `code ${exit.code}`;
      const why = lastLogLine(proc.log, proc.logOffset);
      throw new CliError(`${what} exited with ${how} while starting${why ? `: ${why}` : ''} (log: ${proc.log})`);
    }
    if (Date.now() > until) {
      const why = proc ? lastLogLine(proc.log, proc.logOffset) : undefined;
      throw new CliError(`${what} not ready after ${Math.round(timeoutMs / 1000)} s${why ? `; last log: ${why}` : ''}${proc ? ` (log: ${proc.log})` : ''}`);
    }
    await sleep(200);
  }
}
