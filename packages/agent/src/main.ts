import {
  agentEnv, parseEnv, createLogger, initTelemetry, shutdownTelemetry, names as nameSpace, Sealer, connectNats,
  jetstream, jetstreamManager, ensureStreams, AgentRegistry, JobFlags, JobRates, createServer, bind, serverCredentials, loadProtos, toSyncflowError, shutdownServer,
} from '@syncflow/shared';
import { Pools } from './pools.js';
import { SnapshotHolder } from './read/snapshot.js';
import { ChangeLog } from './read/change-log.js';
import { agentService } from './server.js';
import { AgentClients } from './clients.js';
import { TaskConsumer } from './work/consumer.js';
import { finishAhead } from './work/run-task.js';
import { JobLimiters, InflightBytes } from './work/limits.js';
import { DiffPrefetch } from './work/diff-prefetch.js';

const VERSION = '0.1.0';

async function main(): Promise<void> {
  const cfg = parseEnv(agentEnv);
  const log = createLogger('agent', cfg.SYNCFLOW_LOG_LEVEL).child({ agent: cfg.SYNCFLOW_AGENT_ID, group: cfg.SYNCFLOW_AGENT_GROUP });
  initTelemetry(`syncflow-agent-${cfg.SYNCFLOW_AGENT_GROUP}`, cfg.OTEL_EXPORTER_OTLP_ENDPOINT);
  const sealer = Sealer.fromString(cfg.SYNCFLOW_SECRET_KEY);
  const n = nameSpace(cfg.SYNCFLOW_NAMESPACE);
  const tls = { cert: cfg.SYNCFLOW_TLS_CERT, key: cfg.SYNCFLOW_TLS_KEY, ca: cfg.SYNCFLOW_TLS_CA };

  const pools = new Pools(sealer, {
    max: cfg.SYNCFLOW_DB_POOL_MAX, idleTimeoutS: cfg.SYNCFLOW_DB_IDLE_TIMEOUT_S,
    breaker: { threshold: cfg.SYNCFLOW_BREAKER_THRESHOLD, cooldownMs: cfg.SYNCFLOW_BREAKER_COOLDOWN_MS },
    writeLimit: { rowsPerS: cfg.SYNCFLOW_DB_MAX_ROWS_PER_S, bytesPerS: cfg.SYNCFLOW_DB_MAX_BYTES_PER_S },
  }, `syncflow-agent-${cfg.SYNCFLOW_AGENT_GROUP}`, log);
  const snapshots = new SnapshotHolder(log, cfg.SYNCFLOW_CHANGE_SLOT_WAIT_MS);
  const changes = new ChangeLog(log, cfg.SYNCFLOW_CHANGE_MAX_KEYS);
  const prefetch = new DiffPrefetch(log, changes, cfg.SYNCFLOW_READ_AHEAD_BYTES);
  const { server, health } = createServer(['syncflow.v1.AgentService'], cfg.SYNCFLOW_MAX_MESSAGE_BYTES);
  server.addService(loadProtos().proto.syncflow.v1.AgentService.service, agentService(pools, snapshots, log, prefetch, changes, cfg.SYNCFLOW_UNDO_RETENTION_HOURS));
  const port = await bind(server, cfg.SYNCFLOW_LISTEN, serverCredentials(tls));
  const address = cfg.SYNCFLOW_ADVERTISE ?? `${cfg.SYNCFLOW_LISTEN.replace(/:\d+$/, '')}:${port}`;

  const nc = await connectNats(cfg.SYNCFLOW_NATS_URL, `syncflow-agent-${cfg.SYNCFLOW_AGENT_ID}`, log);
  const js = jetstream(nc);
  const jsm = await jetstreamManager(nc);
  // Idempotent: an agent may start before the coordinator has ever run.
  await ensureStreams(jsm, n, { ackWaitMs: cfg.SYNCFLOW_TASK_ACK_WAIT_MS, maxDeliver: cfg.SYNCFLOW_TASK_MAX_DELIVER });
  const registry = await AgentRegistry.open(nc, n);
  const flags = await JobFlags.open(nc, n);
  await flags.watch();
  const rates = await JobRates.open(nc, n);
  await rates.watch();
  const clients = new AgentClients(tls, cfg.SYNCFLOW_MAX_MESSAGE_BYTES);
  prefetch.attach({ pools, registry, clients, nothingToShip: (task, d) => finishAhead(task, d, { js, names: n, agentId: cfg.SYNCFLOW_AGENT_ID, log }) });
  const consumer = new TaskConsumer({
    agentId: cfg.SYNCFLOW_AGENT_ID, pools, js, jsm, names: n, flags, registry, clients, creditWindow: cfg.SYNCFLOW_CREDIT_WINDOW, prefetch, changes, log,
    limiters: new JobLimiters(rates, registry, cfg.SYNCFLOW_AGENT_GROUP), inflight: new InflightBytes(cfg.SYNCFLOW_INFLIGHT_BYTES),
  }, { group: cfg.SYNCFLOW_AGENT_GROUP, concurrency: cfg.SYNCFLOW_AGENT_CONCURRENCY, ackWaitMs: cfg.SYNCFLOW_TASK_ACK_WAIT_MS, maxDeliver: cfg.SYNCFLOW_TASK_MAX_DELIVER });

  const startedAt = new Date().toISOString();
  const announce = () => registry.announce({
    id: cfg.SYNCFLOW_AGENT_ID, group: cfg.SYNCFLOW_AGENT_GROUP, address, version: VERSION, started_at: startedAt,
    heartbeat_at: new Date().toISOString(), active_tasks: consumer.active,
  }).catch((e) => log.warn({ err: (e as Error).message }, 'heartbeat failed'));
  await announce();
  const heartbeat = setInterval(announce, 5_000);
  consumer.start();
  log.info({ address, key: sealer.fingerprint() }, 'agent ready');

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'agent stopping');
    clearInterval(heartbeat);
    health.setStatus('', 'NOT_SERVING');
    await registry.remove(cfg.SYNCFLOW_AGENT_GROUP, cfg.SYNCFLOW_AGENT_ID);
    await consumer.stop();
    await shutdownServer(server);
    await snapshots.releaseAll();
    clients.closeAll();
    await nc.drain().catch(() => undefined);
    await pools.closeAll();
    await shutdownTelemetry();
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
}

main().catch((e) => {
  const err = toSyncflowError(e);
  process.stderr.write(`syncflow-agent: ${err.message}\n`);
  process.exit(1);
});
