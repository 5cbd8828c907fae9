import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync, mkdtempSync, type WriteStream } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { killOnExit } from './cleanup.js';

/** The repository root (this file is test/harness/processes.ts). */
export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

export type SyncflowPackage = 'coordinator' | 'agent' | 'cli';

/** Absolute path of packages/<pkg>/dist/main.js (built by `npm run build`). */
export function distMain(pkg: SyncflowPackage): string {
  return join(repoRoot, 'packages', pkg, 'dist', 'main.js');
}

/** Throws a clear error when a built entry point is missing. */
export function requireBuilt(file: string): string {
  if (!existsSync(file)) throw new Error(`${file} does not exist: run \`npm run build\` first`);
  return file;
}

/**
 * The environment a spawned syncflow process starts from: ours, minus variables that would leak the
 * developer's own syncflow settings or vitest's worker state into it.
 */
export function baseEnv(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith('SYNCFLOW_') || k.startsWith('VITEST') || k === 'NODE_OPTIONS' || k.startsWith('OTEL_')) continue;
    env[k] = v;
  }
  for (const [k, v] of Object.entries(extra)) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  return env;
}

export interface ManagedProcessOptions {
  /** For log file names and error messages. */
  name: string;
  args?: string[];
  /** Added to baseEnv(); undefined removes a variable. */
  env?: Record<string, string | undefined>;
  cwd?: string;
  /** Where the log file goes; default a fresh temp dir. */
  logDir?: string;
}

export interface ProcessExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

interface LineWaiter {
  re: RegExp;
  resolve: (line: string) => void;
}

const KEEP_LINES = 200;

/** A `node file.js` child whose stdout/stderr go to a log file, with the last lines kept in memory. */
export class ManagedProcess {
  readonly logFile: string;
  /** Resolves when the process has exited (never rejects). */
  readonly exited: Promise<ProcessExit>;
  private readonly child: ChildProcess;
  private readonly log: WriteStream;
  private readonly lines: string[] = [];
  private waiters = new Set<LineWaiter>();
  private exit: ProcessExit | null = null;
  private readonly unregister: () => void;

  private constructor(readonly name: string, file: string, opts: ManagedProcessOptions) {
    const dir = opts.logDir ?? mkdtempSync(join(tmpdir(), 'syncflow-test-proc-'));
    this.logFile = join(dir, `${opts.name.replace(/[^A-Za-z0-9_.-]/g, '_')}.log`);
    this.log = createWriteStream(this.logFile, { flags: 'a' });
    this.child = spawn(process.execPath, [file, ...(opts.args ?? [])], {
      cwd: opts.cwd ?? repoRoot,
      env: baseEnv(opts.env),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.unregister = killOnExit(() => this.child.kill('SIGKILL'));
    this.exited = new Promise((resolveExit) => {
      const done = (exit: ProcessExit) => {
        if (this.exit) return;
        this.exit = exit;
        this.unregister();
        this.log.end();
        resolveExit(exit);
      };
      this.child.once('error', (err) => {
        this.push(`[harness] could not spawn: ${err.message}`);
        done({ code: null, signal: null });
      });
      // 'close' (not 'exit'): all output has been read by then.
      this.child.once('close', (code, signal) => done({ code, signal }));
    });
    this.follow(this.child.stdout!);
    this.follow(this.child.stderr!);
  }

  /** Spawns `node file ...args`. */
  static spawn(file: string, opts: ManagedProcessOptions): ManagedProcess {
    return new ManagedProcess(opts.name, file, opts);
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** The exit status, or null while it runs. */
  get exitStatus(): ProcessExit | null {
    return this.exit;
  }

  get running(): boolean {
    return this.exit === null;
  }

  private follow(stream: NodeJS.ReadableStream): void {
    let partial = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      this.log.write(chunk);
      const parts = (partial + chunk).split('\n');
      partial = parts.pop() ?? '';
      for (const line of parts) this.push(line);
    });
    stream.on('end', () => {
      if (partial) this.push(partial);
      partial = '';
    });
  }

  private push(line: string): void {
    this.lines.push(line);
    if (this.lines.length > KEEP_LINES) this.lines.splice(0, this.lines.length - KEEP_LINES);
    for (const w of this.waiters) {
      if (w.re.test(line)) {
        this.waiters.delete(w);
        w.resolve(line);
      }
    }
  }

  /**
   * Resolves with the first line (stdout or stderr) matching `re`: among the kept lines if one already
   * matches (unless `onlyNew`), else the next one. Rejects on timeout or when the process exits first,
   * with the last lines of output in the message.
   */
  waitForLine(re: RegExp, timeoutMs = 30_000, opts: { onlyNew?: boolean } = {}): Promise<string> {
    if (!opts.onlyNew) {
      const seen = this.lines.find((l) => re.test(l));
      if (seen !== undefined) return Promise.resolve(seen);
    }
    return new Promise((resolveLine, reject) => {
      const fail = (why: string) => {
        this.waiters.delete(waiter);
        clearTimeout(timer);
        reject(new Error(`${this.name}: ${why} waiting for a line matching ${re}; last output:\n${this.tail(40)}`));
      };
      const waiter: LineWaiter = {
        re,
        resolve: (line) => {
          clearTimeout(timer);
          resolveLine(line);
        },
      };
      const timer = setTimeout(() => fail(`timed out after ${timeoutMs} ms`), timeoutMs);
      this.waiters.add(waiter);
      void this.exited.then((e) => {
        if (this.waiters.has(waiter)) fail(`exited (code ${e.code}, signal ${e.signal})`);
      });
    });
  }

  /** Sends `signal` (default SIGKILL) and waits for the exit. */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<ProcessExit> {
    if (this.running) this.child.kill(signal);
    return this.exited;
  }

  /** SIGTERM, then SIGKILL if still running after `graceMs` (default 5 000). */
  async stop(graceMs = 5_000): Promise<ProcessExit> {
    if (!this.running) return this.exited;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    const exit = await this.exited;
    clearTimeout(timer);
    return exit;
  }

  /** The kept output (last ~200 lines). */
  logs(): string {
    return this.lines.join('\n');
  }

  /** The last `n` kept lines. */
  tail(n = 40): string {
    return this.lines.slice(-n).join('\n');
  }
}
