import type { Command } from 'commander';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { grpc } from '@syncflow/shared';
import { checkName, checkPostgresUrl, collect, intArg } from '../args.js';
import { SyncClient, UnreachableError, type Globals } from '../client.js';
import { CliError, isGrpcError, printJson, printTable, println, usageError } from '../output.js';
import {
  fileSize, freePort, isOurs, logContains, portIsFree, spawnDetached, stopProcess, tcpAccepts, waitFor, type Started,
} from '../local/procs.js';
import {
  logDir, prepareDirs, readState, removeState, secretKey, stateDirOf, writeState,
  type LocalState, type ProcEntry, type Region, type Settings,
} from '../local/state.js';

/**
 * `local up|down|status`: a whole syncflow on this machine — nats-server, a coordinator and one
 * agent per region — as detached processes recorded in a state dir. `up` is idempotent: what
 * runs with the same settings is left alone, anything else is (re)started.
 */

// dist/commands/local.js → packages/<name>/dist/main.js
const COORDINATOR_MAIN = fileURLToPath(new URL('../../../coordinator/dist/main.js', import.meta.url));
const AGENT_MAIN = fileURLToPath(new URL('../../../agent/dist/main.js', import.meta.url));
const NAMESPACE = 'SYNCFLOW';
const AGENT_READY = '"msg":"agent ready"';
const CONTROL_DB_NAME = 'syncflow_control';

interface UpOpts { region?: string[]; nats?: string; controlDb?: string; port?: number; stateDir?: string; waitSeconds: number }

export function registerLocal(group: (name: string, description: string) => Command): void {
  const cmd = group('local', 'run nats-server, a coordinator and agents on this machine (demo, development)');

  cmd.command('up')
    .description('start (or repair) a local syncflow: nats-server, coordinator, one agent per region; registers each region as a connection')
    .option('--region <name=url>', 'a region and its database: eu=postgres://user:pass@host:5432/db (repeatable)', collect)
    .option('--nats <url>', 'use this NATS server instead of starting one')
    .option('--control-db <url>', `coordinator's control database (default: database "${CONTROL_DB_NAME}" next to the first region's, created if missing)`)
    .option('--port <n>', 'coordinator gRPC port (default: 7400)', intArg(1, 65535))
    .option('--state-dir <dir>', 'where pids, logs and the secret key live (default: .syncflow/local)')
    .option('--wait-seconds <n>', 'how long to wait for each process to become ready', intArg(1, 3600), 30)
    .action(async (opts: UpOpts, c: Command) => {
      const g = c.optsWithGlobals<Globals>();
      const result = await up(opts);
      if (g.json) return printJson(result);
      println(`coordinator ${result.coordinator}`);
      println(`regions ${result.regions.join(', ')} (logs in ${logDir(result.stateDir)})`);
    });

  cmd.command('down')
    .description('stop what `local up` started (logs and the secret key are kept)')
    .option('--state-dir <dir>', 'state dir given to local up (default: .syncflow/local)')
    .action(async (opts: { stateDir?: string }, c: Command) => {
      const g = c.optsWithGlobals<Globals>();
      const result = await down(opts.stateDir);
      if (g.json) return printJson(result);
      if (!result.found) return println(`nothing to stop (no state in ${result.stateDir})`);
      println(result.stopped.length
        ? `stopped ${result.stopped.map((s) => (s.result === 'killed' ? `${s.name} (killed after 5 s)` : s.name)).join(', ')}`
        : 'nothing was running');
    });

  cmd.command('status')
    .description('what `local up` started and whether it still runs')
    .option('--state-dir <dir>', 'state dir given to local up (default: .syncflow/local)')
    .action((opts: { stateDir?: string }, c: Command) => {
      const g = c.optsWithGlobals<Globals>();
      const dir = stateDirOf(opts.stateDir);
      const state = readState(dir);
      const procs = state ? orderForStart(Object.values(state.processes)) : [];
      const rows = procs.map((p) => ({ name: p.name, pid: p.pid, running: isOurs(p.pid, p.match), log: p.log }));
      if (g.json) {
        return printJson({ stateDir: dir, coordinator: state?.coordinator ?? null, regions: state?.settings.regions.map((r) => r.name) ?? [], processes: rows });
      }
      if (!state) return println(`not running (no state in ${dir})`);
      println(`coordinator ${state.coordinator}`);
      printTable([{ header: 'NAME' }, { header: 'PID', align: 'right' }, { header: 'STATE' }, { header: 'LOG' }],
        rows.map((r) => [r.name, String(r.pid), r.running ? 'running' : 'stopped', r.log]));
      if (rows.some((r) => !r.running)) process.exitCode = 1;
    });
}

// ---- up ---------------------------------------------------------------------------------------

function parseRegions(values: string[] | undefined): Region[] {
  const regions: Region[] = [];
  for (const v of values ?? []) {
    const eq = v.indexOf('=');
    if (eq <= 0) throw usageError('--region expects NAME=POSTGRES_URL, e.g. eu=postgres://localhost:5432/app');
    const name = v.slice(0, eq);
    const url = v.slice(eq + 1);
    checkName('region', name);
    checkPostgresUrl(`--region ${name}`, url);
    if (regions.some((r) => r.name === name)) throw usageError(`--region ${name} is given twice`);
    regions.push({ name, url });
  }
  return regions;
}

function settingsFrom(opts: UpOpts, saved: Settings | undefined): Settings {
  const regions = parseRegions(opts.region);
  if (opts.nats !== undefined && (!opts.nats.trim() || /\s/.test(opts.nats))) throw usageError('--nats expects a URL such as nats://127.0.0.1:4222');
  if (opts.controlDb !== undefined) checkPostgresUrl('--control-db', opts.controlDb);
  if (regions.length) {
    return { regions, nats: opts.nats, controlDb: opts.controlDb, port: opts.port ?? 7400 };
  }
  if (!saved) throw usageError('local up needs at least one --region NAME=POSTGRES_URL');
  // Re-run without regions: same settings as last time, except what is given now.
  return {
    regions: saved.regions,
    nats: opts.nats ?? saved.nats,
    controlDb: opts.controlDb ?? saved.controlDb,
    port: opts.port ?? saved.port,
  };
}

/** The first region's URL with the database name replaced by syncflow_control. */
function derivedControlDb(regionUrl: string): string {
  const u = new URL(regionUrl);
  u.pathname = `/${CONTROL_DB_NAME}`;
  return u.toString();
}

async function ensureControlDb(regionName: string, regionUrl: string): Promise<void> {
  const { default: postgres } = await import('postgres');
  const sql = postgres(regionUrl, { max: 1, connect_timeout: 10, idle_timeout: 1, onnotice: () => {} });
  try {
    const rows = await sql`select 1 from pg_database where datname = ${CONTROL_DB_NAME}`;
    if (rows.length === 0) {
      try {
        await sql`create database ${sql(CONTROL_DB_NAME)}`;
      } catch (e) {
        if ((e as { code?: string }).code !== '42P04') throw e; // created meanwhile
      }
    }
  } catch (e) {
    throw new CliError(`cannot prepare the control database "${CONTROL_DB_NAME}" through region ${regionName}: ${(e as Error).message}`);
  } finally {
    await sql.end({ timeout: 2 }).catch(() => {});
  }
}

/** What a process should be; `spec` changes whenever a restart is needed. */
interface Desired {
  name: string;
  kind: ProcEntry['kind'];
  command: string;
  args: string[];
  env: Record<string, string>;
  match: string;
  port?: number;
  region?: string;
}

function specHash(d: Desired): string {
  // Inherited SYNCFLOW_* / OTEL_* settings count too: changing them should restart.
  const inherited = Object.entries(process.env).filter(([k]) => /^(SYNCFLOW_|OTEL_)/.test(k)).sort();
  return createHash('sha256').update(JSON.stringify([d.command, d.args, Object.entries(d.env).sort(), inherited])).digest('hex').slice(0, 16);
}

/** The environment of a child: ours over the caller's, minus settings that would confuse a local process. */
function childEnv(own: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of ['SYNCFLOW_COORDINATOR', 'SYNCFLOW_ADVERTISE', 'SYNCFLOW_AGENT_GROUP', 'SYNCFLOW_AGENT_ID', 'SYNCFLOW_LISTEN', 'SYNCFLOW_CONTROL_DB_URL']) delete env[k];
  return { ...env, ...own };
}

const orderForStart = (ps: ProcEntry[]) => {
  const rank = { nats: 0, coordinator: 1, agent: 2 } as const;
  return [...ps].sort((a, b) => rank[a.kind] - rank[b.kind] || a.name.localeCompare(b.name));
};

interface UpResult { coordinator: string; regions: string[]; pids: Record<string, number>; stateDir: string }

async function up(opts: UpOpts): Promise<UpResult> {
  const dir = stateDirOf(opts.stateDir);
  const previous = readState(dir);
  const settings = settingsFrom(opts, previous?.settings);
  for (const [what, file] of [['coordinator', COORDINATOR_MAIN], ['agent', AGENT_MAIN]] as const) {
    if (!existsSync(file)) throw new CliError(`the ${what} is not built: ${file} is missing (run npm run build)`);
  }
  prepareDirs(dir);
  const key = secretKey(dir);
  const waitMs = opts.waitSeconds * 1000;
  const address = `127.0.0.1:${settings.port}`;

  const state: LocalState = {
    version: 1, stateDir: dir, updatedAt: '', settings, coordinator: address, natsUrl: '',
    processes: { ...(previous?.processes ?? {}) },
  };
  const save = () => writeState(dir, state);
  const logOf = (name: string) => join(logDir(dir), `${name}.log`);
  const started = new Map<string, { started: Started; log: string; logOffset: number }>();

  /** Keeps a matching live process, else stops the old one (if any) and starts a new one. */
  const ensure = async (d: Desired, beforeStart?: () => Promise<void>): Promise<boolean> => {
    const spec = specHash(d);
    const old = state.processes[d.name];
    if (old && old.spec === spec && isOurs(old.pid, old.match)) return false;
    if (old && isOurs(old.pid, old.match)) await stopProcess(old.pid);
    delete state.processes[d.name];
    save();
    await beforeStart?.();
    const log = logOf(d.name);
    const logOffset = fileSize(log);
    let s: Started;
    try {
      s = await spawnDetached(d.command, d.args, childEnv(d.env), log);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      if (err.code === 'ENOENT' && d.kind === 'nats') throw new CliError('nats-server is not on PATH: install it, or pass --nats URL');
      throw new CliError(`cannot start ${d.name}: ${err.message}`);
    }
    started.set(d.name, { started: s, log, logOffset });
    state.processes[d.name] = {
      name: d.name, kind: d.kind, pid: s.pid, command: d.command, args: d.args, match: d.match, log, spec,
      port: d.port, region: d.region, startedAt: new Date().toISOString(),
    };
    save();
    return true;
  };

  // 1. NATS (ours, unless --nats)
  let natsUrl: string;
  if (settings.nats) {
    natsUrl = settings.nats;
    const old = state.processes.nats;
    if (old) {
      if (isOurs(old.pid, old.match)) await stopProcess(old.pid);
      delete state.processes.nats;
    }
  } else {
    const natsDir = join(dir, 'nats');
    const old = state.processes.nats;
    let port = old?.port;
    if (!port || (!isOurs(old!.pid, old!.match) && !(await portIsFree(port)))) port = await freePort();
    const d: Desired = {
      name: 'nats', kind: 'nats', command: 'nats-server',
      args: ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', natsDir], env: {}, match: natsDir, port,
    };
    await ensure(d);
    natsUrl = `nats://127.0.0.1:${port}`;
    await waitFor('nats-server', waitMs, () => tcpAccepts(port!), started.get('nats'));
  }
  state.natsUrl = natsUrl;
  save();

  // 2. Coordinator
  const common = {
    SYNCFLOW_NATS_URL: natsUrl,
    SYNCFLOW_SECRET_KEY: key,
    SYNCFLOW_NAMESPACE: NAMESPACE,
  };
  const first = settings.regions[0]!;
  const controlDb = settings.controlDb ?? derivedControlDb(first.url);
  await ensure({
    name: 'coordinator', kind: 'coordinator', command: process.execPath, args: [COORDINATOR_MAIN],
    env: { ...common, SYNCFLOW_CONTROL_DB_URL: controlDb, SYNCFLOW_LISTEN: address }, match: COORDINATOR_MAIN, port: settings.port,
  }, async () => {
    if (!settings.controlDb) await ensureControlDb(first.name, first.url);
    if (!(await portIsFree(settings.port))) {
      throw new CliError(`${address} is already in use (another coordinator? choose a port with --port)`);
    }
  });

  const client = new SyncClient({
    address,
    token: process.env.SYNCFLOW_API_TOKEN || undefined,
    tlsCa: process.env.SYNCFLOW_TLS_CERT && process.env.SYNCFLOW_TLS_KEY ? process.env.SYNCFLOW_TLS_CA || undefined : undefined,
    tlsServerName: process.env.SYNCFLOW_TLS_SERVER_NAME || undefined,
  });
  try {
    // The coordinator creates the JetStream streams before it serves: agents start after that.
    await waitFor('coordinator', waitMs, () => coordinatorReady(client), started.get('coordinator'));

    // 3. Agents, one per region; agents of regions no longer listed are stopped.
    const wanted = new Set(settings.regions.map((r) => `agent-${r.name}`));
    for (const p of Object.values(state.processes)) {
      if (p.kind === 'agent' && !wanted.has(p.name)) {
        if (isOurs(p.pid, p.match)) await stopProcess(p.pid);
        delete state.processes[p.name];
        save();
      }
    }
    for (const r of settings.regions) {
      await ensure({
        name: `agent-${r.name}`, kind: 'agent', command: process.execPath, args: [AGENT_MAIN],
        env: { ...common, SYNCFLOW_AGENT_GROUP: r.name, SYNCFLOW_AGENT_ID: `local-${r.name}`, SYNCFLOW_LISTEN: '127.0.0.1:0' },
        match: AGENT_MAIN, region: r.name,
      });
    }

    // 4. Each newly started agent logs "agent ready".
    const waits: Promise<void>[] = [];
    for (const r of settings.regions) {
      const s = started.get(`agent-${r.name}`);
      if (s) waits.push(waitFor(`agent ${r.name}`, waitMs, () => logContains(s.log, s.logOffset, AGENT_READY), s));
    }
    await firstFailure(waits);

    // 5. One connection per region, named after it. A region whose URL changed is re-registered.
    for (const r of settings.regions) {
      const before = previous?.settings.regions.find((x) => x.name === r.name);
      if (before && before.url !== r.url) {
        await client.unary('DeleteConnection', { name: r.name }).catch((e) => {
          if (!(isGrpcError(e) && e.code === grpc.status.NOT_FOUND)) throw e;
        });
      }
      try {
        await client.unary('CreateConnection', { name: r.name, url: r.url, group: r.name, protected: false });
      } catch (e) {
        if (!(isGrpcError(e) && e.code === grpc.status.ALREADY_EXISTS)) throw e;
      }
    }
  } finally {
    client.close();
  }
  save();
  return {
    coordinator: address,
    regions: settings.regions.map((r) => r.name),
    pids: Object.fromEntries(orderForStart(Object.values(state.processes)).map((p) => [p.name, p.pid])),
    stateDir: dir,
  };
}

/** Ready once Health/Check says SERVING (or the server answers without a health service). */
async function coordinatorReady(client: SyncClient): Promise<boolean> {
  try {
    return await client.health();
  } catch (e) {
    if (e instanceof UnreachableError) return false;
    if (isGrpcError(e) && e.code === grpc.status.UNIMPLEMENTED) return true;
    throw e;
  }
}

/** Like Promise.all, but settles every promise so no rejection goes unhandled. */
async function firstFailure(ps: Promise<void>[]): Promise<void> {
  const results = await Promise.allSettled(ps);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
}

// ---- down -------------------------------------------------------------------------------------

async function down(stateDir: string | undefined) {
  const dir = stateDirOf(stateDir);
  const state = readState(dir);
  if (!state) return { found: false, stateDir: dir, stopped: [] as Array<{ name: string; pid: number; result: string }> };
  const stopped: Array<{ name: string; pid: number; result: string }> = [];
  // Agents first, then the coordinator, then NATS: nothing loses its broker while still working.
  for (const kind of ['agent', 'coordinator', 'nats'] as const) {
    const ps = Object.values(state.processes).filter((p) => p.kind === kind);
    await Promise.all(ps.map(async (p) => {
      if (!isOurs(p.pid, p.match)) return;
      const result = await stopProcess(p.pid, 5_000);
      stopped.push({ name: p.name, pid: p.pid, result });
    }));
  }
  removeState(dir);
  return { found: true, stateDir: dir, stopped };
}
