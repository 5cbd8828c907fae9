import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, openSync, closeSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { killOnExit } from './cleanup.js';
import { freePort } from './ports.js';
import { waitFor } from './wait.js';

export interface NatsServerOptions {
  /** Enable JetStream (-js). Default true. */
  jetstream?: boolean;
  /** JetStream store dir; default a fresh temp dir. Kept across restart(). */
  storeDir?: string;
}

/** Finds nats-server on PATH or in the sbin dirs a non-root PATH often lacks. */
function natsServerBin(): string {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin', '/usr/local/sbin', '/usr/local/bin', '/usr/bin'];
  for (const d of dirs) if (d && existsSync(join(d, 'nats-server'))) return join(d, 'nats-server');
  throw new Error('nats-server not found (Debian: apt-get install -y nats-server, or run scripts/install-deps.sh)');
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    s.once('data', () => {
      s.destroy();
      resolve(true); // the server's INFO line: it is serving clients
    });
    s.once('error', () => resolve(false));
    s.setTimeout(1000, () => {
      s.destroy();
      resolve(false);
    });
  });
}

/** A nats-server (JetStream on, store on disk) on its own port, as a child of the test process. */
export class NatsServer {
  private child: ChildProcess | null = null;
  private exitedP: Promise<void> = Promise.resolve();
  private readonly unregister: () => void;

  private constructor(
    readonly port: number,
    readonly dir: string,
    readonly storeDir: string,
    private readonly jetstream: boolean,
  ) {
    this.unregister = killOnExit(() => this.child?.kill('SIGKILL'));
  }

  static async start(opts: NatsServerOptions = {}): Promise<NatsServer> {
    const dir = await mkdtemp(join(tmpdir(), 'syncflow-test-nats-'));
    const storeDir = opts.storeDir ?? join(dir, 'store');
    await mkdir(storeDir, { recursive: true });
    const server = new NatsServer(await freePort(), dir, storeDir, opts.jetstream ?? true);
    try {
      await server.spawn();
    } catch (err) {
      await server.destroy().catch(() => {});
      throw err;
    }
    return server;
  }

  /** nats://127.0.0.1:PORT */
  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  get logFile(): string {
    return join(this.dir, 'log');
  }

  get running(): boolean {
    return this.child !== null;
  }

  private async spawn(): Promise<void> {
    const args = ['-a', '127.0.0.1', '-p', String(this.port)];
    if (this.jetstream) args.push('-js', '-sd', this.storeDir);
    const fd = openSync(this.logFile, 'a');
    let child: ChildProcess;
    try {
      child = spawn(natsServerBin(), args, { stdio: ['ignore', fd, fd] });
    } finally {
      closeSync(fd);
    }
    this.child = child;
    this.exitedP = new Promise((resolve) => {
      child.once('exit', () => {
        if (this.child === child) this.child = null;
        resolve();
      });
      child.once('error', () => {
        if (this.child === child) this.child = null;
        resolve();
      });
    });
    try {
      await waitFor(async () => {
        if (this.child !== child) throw new Error('nats-server exited');
        return accepts(this.port);
      }, { what: `nats-server on port ${this.port}`, timeoutMs: 20_000, intervalMs: 50 });
    } catch (err) {
      throw new Error(`${(err as Error).message}; log:\n${await this.log()}`, { cause: err });
    }
  }

  /** The server's log output (tail). */
  async log(maxChars = 10_000): Promise<string> {
    return (await readFile(this.logFile, 'utf8').catch(() => '')).slice(-maxChars);
  }

  /** SIGKILL: a crash. restart() brings it back on the same port and store. */
  async kill(): Promise<void> {
    this.child?.kill('SIGKILL');
    await this.exitedP;
  }

  /** Graceful stop (SIGTERM; SIGKILL after 10 s). */
  async stop(): Promise<void> {
    const child = this.child;
    if (!child) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await this.exitedP;
    clearTimeout(timer);
  }

  /** Stops (SIGKILL if still running) and starts again on the same port and store dir. */
  async restart(): Promise<void> {
    await this.kill();
    await this.spawn();
  }

  /** Stops and removes the temp dir (and the store, when it lives there). */
  async destroy(): Promise<void> {
    await this.stop();
    this.unregister();
    await rm(this.dir, { recursive: true, force: true });
  }
}
