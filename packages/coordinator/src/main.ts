import {
  coordinatorEnv, parseEnv, createLogger, initTelemetry, shutdownTelemetry, names as nameSpace, Sealer, connectNats,
  jetstream, jetstreamManager, ensureStreams, AgentRegistry, JobFlags, JobRates, createServer, bind, serverCredentials, loadProtos, shutdownServer,
  createPool, toSyncflowError, scrubSecrets,
} from '@syncflow/shared';
import { migrate } from './store/migrate.js';
import { ConnectionStore } from './store/connections.js';
import { JobStore } from './store/jobs.js';
import { AgentLink } from './agents.js';
import { JobRunner } from './run/advance.js';
import { EventConsumer } from './events/consume.js';
import { syncService } from './server.js';
import { DeadLetterStore } from './store/dead-letters.js';
import { ChangeBaselines } from './store/change-baselines.js';
import { Metrics } from './alerts/metrics.js';
import { Alerts } from './alerts/webhook.js';
import { startTimeoutSweep } from './run/control.js';
import { watchMaxDeliveries } from './events/advisories.js';

async function main(): Promise<void> {
  const cfg = parseEnv(coordinatorEnv);
  const log = createLogger('coordinator', cfg.SYNCFLOW_LOG_LEVEL);
  initTelemetry('syncflow-coordinator', cfg.OTEL_EXPORTER_OTLP_ENDPOINT);
  const sealer = Sealer.fromString(cfg.SYNCFLOW_SECRET_KEY);
  const n = nameSpace(cfg.SYNCFLOW_NAMESPACE);
  const tls = { cert: cfg.SYNCFLOW_TLS_CERT, key: cfg.SYNCFLOW_TLS_KEY, ca: cfg.SYNCFLOW_TLS_CA };

  const sql = createPool(cfg.SYNCFLOW_CONTROL_DB_URL, { max: cfg.SYNCFLOW_CONTROL_DB_POOL, applicationName: 'syncflow-coordinator' });
  await migrate(sql, log);

  const nc = await connectNats(cfg.SYNCFLOW_NATS_URL, 'syncflow-coordinator', log);
  const js = jetstream(nc);
  const jsm = await jetstreamManager(nc);
  await ensureStreams(jsm, n, { ackWaitMs: cfg.SYNCFLOW_TASK_ACK_WAIT_MS, maxDeliver: cfg.SYNCFLOW_TASK_MAX_DELIVER });
  const registry = await AgentRegistry.open(nc, n);
  const flags = await JobFlags.open(nc, n);
  const rates = await JobRates.open(nc, n);
  const agents = new AgentLink(registry, tls);
  const metrics = new Metrics();
  if (cfg.SYNCFLOW_METRICS_LISTEN !== 'off') {
    // A taken metrics port must not stop syncing: say so loudly and go on without the endpoint.
    await metrics.listen(cfg.SYNCFLOW_METRICS_LISTEN, log).catch((e) => log.error({ err: (e as Error).message, address: cfg.SYNCFLOW_METRICS_LISTEN }, 'metrics endpoint not started'));
  }
  const alerts = new Alerts({ url: cfg.SYNCFLOW_ALERT_WEBHOOK_URL, secret: cfg.SYNCFLOW_ALERT_WEBHOOK_SECRET }, metrics, log);
  const deps = {
    jobs: new JobStore(sql), connections: new ConnectionStore(sql), agents, js, names: n, flags, rates, log,
    deadLetters: new DeadLetterStore(sql), metrics, alerts, baselines: new ChangeBaselines(sql),
  };
  const runner = new JobRunner(deps);
  const events = new EventConsumer(js, n, deps.jobs, runner, log, deps);
  events.start();
  const stopSweep = startTimeoutSweep(sql, runner, deps);
  const stopAdvisories = watchMaxDeliveries(js, jsm, n, log);

  const { server, health } = createServer(['syncflow.v1.SyncService']);
  server.addService(loadProtos().proto.syncflow.v1.SyncService.service, syncService(deps, runner, sealer, cfg.SYNCFLOW_API_TOKEN, log));
  const port = await bind(server, cfg.SYNCFLOW_LISTEN, serverCredentials(tls));

  // Rebuild the view after a restart: every unfinished job is moved on from what the control DB says.
  for (const job of await deps.jobs.active()) {
    if (job.state === 'pending') await runner.fail(job, 'the coordinator stopped while the job was being prepared');
    else if (job.state === 'running') void runner.advance(job.id);
  }
  log.info({ address: `${cfg.SYNCFLOW_LISTEN.replace(/:\d+$/, '')}:${port}`, namespace: cfg.SYNCFLOW_NAMESPACE, key: sealer.fingerprint(), auth: Boolean(cfg.SYNCFLOW_API_TOKEN) }, 'coordinator listening');

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'coordinator stopping');
    health.setStatus('', 'NOT_SERVING');
    stopSweep();
    await stopAdvisories();
    metrics.close();
    await shutdownServer(server);
    await events.stop();
    agents.close();
    await nc.drain().catch(() => undefined);
    await sql.end({ timeout: 5 });
    await shutdownTelemetry();
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
}

main().catch((e) => {
  process.stderr.write(`syncflow-coordinator: ${scrubSecrets(toSyncflowError(e).message)}\n`);
  process.exit(1);
});
