import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NatsServer } from './nats.js';
import { PgCluster } from './postgres.js';
import { freePort } from './ports.js';
import { baseEnv, distMain, ManagedProcess, repoRoot, requireBuilt } from './processes.js';

type Env = Record<string, string | undefined>;

export interface TestStackOptions {
  /** Region names; one PgCluster and one agent group each. Default ['a', 'b']. */
  regions?: string[];
  /** Start the coordinator. Default true. */
  coordinator?: boolean;
  /** Start one agent per region (group = region name). Default true. */
  agents?: boolean;
  /** Extra env for the coordinator and every agent (e.g. OTEL_EXPORTER_OTLP_ENDPOINT). */
  env?: Env;
  coordinatorEnv?: Env;
  agentEnv?: Env;
  /** Extra postgresql.conf settings for every region cluster. */
  pgSettings?: Record<string, string>;
  /** Startup wait for each process (ms). Default 60 000. */
  readyTimeoutMs?: number;
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface CliOptions {
  env?: Env;
  /** Default 120 000 ms. */
  timeoutMs?: number;
}

const COORDINATOR_READY = /"msg":"coordinator listening"/;
const AGENT_READY = /"msg":"agent ready"/;

/**
 * A whole syncflow installation on this machine: nats-server, one PostgreSQL cluster per region (the
 * control database `control` lives on the first region's cluster), the coordinator and agents, each
 * a real process running the built dist/main.js. Every stack has its own namespace and secret key.
 */
export class TestStack {
  readonly namespace = 'T' + randomBytes(4).toString('hex').toUpperCase();
  readonly secretKey = randomBytes(32).toString('base64');
  readonly agents = new Map<string, ManagedProcess>();
  coordinator: ManagedProcess | null = null;
  private coordinatorPort = 0;
  private readonly agentSeq = new Map<string, number>();

  private constructor(
    readonly nats: NatsServer,
    readonly clusters: Map<string, PgCluster>,
    readonly logDir: string,
    private readonly opts: TestStackOptions,
  ) {}

  static async start(opts: TestStackOptions = {}): Promise<TestStack> {
    const regions = opts.regions ?? ['a', 'b'];
    if (regions.length === 0) throw new Error('TestStack needs at least one region');
    const logDir = await mkdtemp(join(tmpdir(), 'syncflow-test-logs-'));
    const started = await Promise.allSettled([
      NatsServer.start({ jetstream: true }),
      ...regions.map((r) => PgCluster.start({ name: r, settings: opts.pgSettings })),
    ]);
    const failed = started.find((s) => s.status === 'rejected');
    if (failed) {
      await Promise.all(started.map((s) => (s.status === 'fulfilled' ? s.value.destroy() : undefined)));
      throw (failed as PromiseRejectedResult).reason;
    }
    const values = started.map((s) => (s as PromiseFulfilledResult<NatsServer | PgCluster>).value);
    const clusters = new Map(regions.map((r, i) => [r, values[i + 1] as PgCluster]));
    const stack = new TestStack(values[0] as NatsServer, clusters, logDir, opts);
    try {
      await stack.region(regions[0]!).createDatabase('control');
      if (opts.coordinator ?? true) await stack.startCoordinator();
      if (opts.agents ?? true) for (const r of regions) await stack.startAgent(r);
    } catch (err) {
      await stack.stop();
      throw err;
    }
    return stack;
  }

  /** The cluster of a region; throws on an unknown name. */
  region(name: string): PgCluster {
    const c = this.clusters.get(name);
    if (!c) throw new Error(`no region ${name} in this stack (have ${[...this.clusters.keys()].join(', ')})`);
    return c;
  }

  /** URL of the control database. */
  get controlDbUrl(): string {
    return this.region([...this.clusters.keys()][0]!).url('control');
  }

  /** host:port of the coordinator's SyncService. */
  get coordinatorAddress(): string {
    return `127.0.0.1:${this.coordinatorPort}`;
  }

  /** Env shared by the coordinator and agents. */
  private commonEnv(): Env {
    return {
      SYNCFLOW_NATS_URL: this.nats.url,
      SYNCFLOW_NAMESPACE: this.namespace,
      SYNCFLOW_SECRET_KEY: this.secretKey,
      SYNCFLOW_LOG_LEVEL: 'info',
      ...this.opts.env,
    };
  }

  /** Starts the coordinator (same port every time) and waits until it listens. */
  async startCoordinator(extraEnv: Env = {}): Promise<ManagedProcess> {
    if (this.coordinator?.running) throw new Error('the coordinator is already running');
    if (!this.coordinatorPort) this.coordinatorPort = await freePort();
    const proc = ManagedProcess.spawn(requireBuilt(distMain('coordinator')), {
      name: 'coordinator',
      logDir: this.logDir,
      env: {
        ...this.commonEnv(),
        SYNCFLOW_CONTROL_DB_URL: this.controlDbUrl,
        SYNCFLOW_LISTEN: this.coordinatorAddress,
        SYNCFLOW_METRICS_LISTEN: '127.0.0.1:0', // many stacks on one machine: never the fixed default port
        ...this.opts.coordinatorEnv,
        ...extraEnv,
      },
    });
    this.coordinator = proc;
    await proc.waitForLine(COORDINATOR_READY, this.opts.readyTimeoutMs ?? 60_000);
    return proc;
  }

  /**
   * Stops the coordinator (SIGTERM, or SIGKILL with `{ crash: true }`) and starts it again on the same
   * port and control database.
   */
  async restartCoordinator(opts: { crash?: boolean; env?: Env } = {}): Promise<ManagedProcess> {
    if (this.coordinator) await (opts.crash ? this.coordinator.kill('SIGKILL') : this.coordinator.stop());
    return this.startCoordinator(opts.env);
  }

  /** Starts an agent of `group` (default id `<group>-<n>`) and waits until it is ready. */
  async startAgent(group: string, id?: string, extraEnv: Env = {}): Promise<ManagedProcess> {
    const seq = (this.agentSeq.get(group) ?? 0) + 1;
    this.agentSeq.set(group, seq);
    const agentId = id ?? `${group}-${seq}`;
    if (this.agents.get(agentId)?.running) throw new Error(`agent ${agentId} is already running`);
    const port = await freePort();
    const proc = ManagedProcess.spawn(requireBuilt(distMain('agent')), {
      name: `agent-${agentId}`,
      logDir: this.logDir,
      env: {
        ...this.commonEnv(),
        SYNCFLOW_AGENT_GROUP: group,
        SYNCFLOW_AGENT_ID: agentId,
        SYNCFLOW_LISTEN: `127.0.0.1:${port}`,
        ...this.opts.agentEnv,
        ...extraEnv,
      },
    });
    this.agents.set(agentId, proc);
    await proc.waitForLine(AGENT_READY, this.opts.readyTimeoutMs ?? 60_000);
    return proc;
  }

  /** The agent with this id; throws if there is none. */
  agent(id: string): ManagedProcess {
    const a = this.agents.get(id);
    if (!a) throw new Error(`no agent ${id} (have ${[...this.agents.keys()].join(', ')})`);
    return a;
  }

  /** Runs the CLI (`node packages/cli/dist/main.js ...args`, no shell) against this stack's coordinator. */
  async cli(args: string[], opts: CliOptions = {}): Promise<CliResult> {
    const file = requireBuilt(distMain('cli'));
    const env = baseEnv({ SYNCFLOW_COORDINATOR: this.coordinatorAddress, NO_COLOR: '1', ...opts.env });
    return new Promise((resolve, reject) => {
      execFile(process.execPath, [file, ...args], { cwd: repoRoot, env, timeout: opts.timeoutMs ?? 120_000, maxBuffer: 64 << 20, killSignal: 'SIGKILL' },
        (err, stdout, stderr) => {
          if (!err) return resolve({ code: 0, stdout, stderr });
          const e = err as NodeJS.ErrnoException & { code?: number | string; killed?: boolean; signal?: string | null };
          if (typeof e.code === 'number') return resolve({ code: e.code, stdout, stderr });
          if (e.killed || e.signal) return resolve({ code: 128, stdout, stderr: `${stderr}\n(cli killed by ${e.signal ?? 'timeout'})` });
          reject(new Error(`could not run the CLI: ${err.message}`, { cause: err }));
        });
    });
  }

  /** Output of every process so far (for a failing test's message). */
  logs(): string {
    const parts: string[] = [];
    if (this.coordinator) parts.push(`--- coordinator ---\n${this.coordinator.logs()}`);
    for (const [id, a] of this.agents) parts.push(`--- agent ${id} ---\n${a.logs()}`);
    return parts.join('\n');
  }

  /**
   * Kills every process and destroys the clusters and the NATS server. The process logs (logDir) are
   * removed too unless `keepLogs` or the env variable SYNCFLOW_TEST_KEEP_LOGS is set.
   */
  async stop(opts: { keepLogs?: boolean } = {}): Promise<void> {
    const procs = [this.coordinator, ...this.agents.values()].filter((p): p is ManagedProcess => p !== null);
    await Promise.all(procs.map((p) => p.kill('SIGKILL')));
    await Promise.allSettled([this.nats.destroy(), ...[...this.clusters.values()].map((c) => c.destroy())]);
    if (!(opts.keepLogs ?? Boolean(process.env.SYNCFLOW_TEST_KEEP_LOGS))) await rm(this.logDir, { recursive: true, force: true });
  }
}
