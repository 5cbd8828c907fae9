import { z } from 'zod';
import { hostname } from 'node:os';
import { invalidArgument } from './errors.js';
import { NAME_PATTERN, NAME_RULE } from './names.js';

/** Environment shared by every syncflow process. Parsed once at start; inside, frozen typed values. */
const common = {
  /** NATS server(s), comma separated. */
  SYNCFLOW_NATS_URL: z.string().min(1).default('nats://127.0.0.1:4222'),
  /** Prefix of every JetStream stream, consumer and KV bucket: lets tests and tenants share a server. */
  SYNCFLOW_NAMESPACE: z.string().regex(/^[A-Za-z0-9_]{1,32}$/, 'letters, digits and _ only').default('SYNCFLOW'),
  /** 32-byte key (base64 or hex) sealing database URLs; the same on the coordinator and every agent. */
  SYNCFLOW_SECRET_KEY: z.string().min(32, 'SYNCFLOW_SECRET_KEY is required (32 bytes, base64 or hex)'),
  SYNCFLOW_LOG_LEVEL: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
  /** Optional TLS for gRPC: PEM files. Without them gRPC is plaintext (loopback/demo only). */
  SYNCFLOW_TLS_CERT: z.string().optional(),
  SYNCFLOW_TLS_KEY: z.string().optional(),
  SYNCFLOW_TLS_CA: z.string().optional(),
  OTEL_EXPORTER_OTLP_ENDPOINT: z.string().url().optional(),
  /** How long an agent may hold a task without news before JetStream redelivers it (ms). */
  SYNCFLOW_TASK_ACK_WAIT_MS: z.coerce.number().int().min(1000).default(30_000),
  /** Deliveries of one task before it is dead-lettered. */
  SYNCFLOW_TASK_MAX_DELIVER: z.coerce.number().int().min(1).default(5),
};

const hostPort = z.string().regex(/^[^\s:]+:\d{1,5}$/, 'expected host:port');

export const coordinatorEnv = z.object({
  ...common,
  /** Postgres URL of the control database; migrations are applied at start. */
  SYNCFLOW_CONTROL_DB_URL: z.string().min(1, 'SYNCFLOW_CONTROL_DB_URL is required'),
  /** Where SyncService listens. */
  SYNCFLOW_LISTEN: hostPort.default('127.0.0.1:7400'),
  /** Bearer token required on every SyncService call; unset = no authentication (loopback only). */
  SYNCFLOW_API_TOKEN: z.string().min(16).optional(),
  /** Control DB pool size. */
  SYNCFLOW_CONTROL_DB_POOL: z.coerce.number().int().min(1).max(100).default(5),
  /** Prometheus text endpoint (GET /metrics); "off" disables it. */
  SYNCFLOW_METRICS_LISTEN: z.union([hostPort, z.literal('off')]).default('127.0.0.1:9464'),
  /** Alerts (dead letters, failed jobs) are POSTed here as JSON; unset = no webhook. */
  SYNCFLOW_ALERT_WEBHOOK_URL: z.string().url().optional(),
  /** HMAC-SHA256 key: header x-syncflow-signature: sha256=<hex of the body>. */
  SYNCFLOW_ALERT_WEBHOOK_SECRET: z.string().min(1).optional(),
});
export type CoordinatorConfig = Readonly<z.infer<typeof coordinatorEnv>>;

export const agentEnv = z.object({
  ...common,
  /** The agent group (region / database) whose tasks this agent pulls. */
  SYNCFLOW_AGENT_GROUP: z.string().regex(NAME_PATTERN, NAME_RULE),
  SYNCFLOW_AGENT_ID: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/).default(`${hostname().replace(/[^A-Za-z0-9_-]/g, '-').slice(0, 40)}-${process.pid}`),
  /** Where AgentService listens; port 0 picks a free one. */
  SYNCFLOW_LISTEN: hostPort.default('127.0.0.1:0'),
  /** The address other agents and the coordinator dial; defaults to the listen address. */
  SYNCFLOW_ADVERTISE: hostPort.optional(),
  /** Max connections this agent opens to one database. */
  SYNCFLOW_DB_POOL_MAX: z.coerce.number().int().min(2).max(200).default(6),
  /** Seconds an unused pooled connection stays open. */
  SYNCFLOW_DB_IDLE_TIMEOUT_S: z.coerce.number().int().min(1).max(86_400).default(30),
  /** Consecutive connection-level failures that open a database's circuit breaker. */
  SYNCFLOW_BREAKER_THRESHOLD: z.coerce.number().int().min(1).max(1000).default(3),
  /** How long an open breaker refuses work before one probe is let through (doubles up to 60 s while probes fail). */
  SYNCFLOW_BREAKER_COOLDOWN_MS: z.coerce.number().int().min(100).max(600_000).default(2_000),
  /** Tasks this agent works on at once. */
  SYNCFLOW_AGENT_CONCURRENCY: z.coerce.number().int().min(1).max(64).default(16),
  /** Batches in flight on one Transfer stream (credit window). */
  SYNCFLOW_CREDIT_WINDOW: z.coerce.number().int().min(1).max(64).default(4),
  /** Rate limits this agent applies, as a target, to each database it writes (0 = none). */
  SYNCFLOW_DB_MAX_ROWS_PER_S: z.coerce.number().min(0).default(0),
  SYNCFLOW_DB_MAX_BYTES_PER_S: z.coerce.number().min(0).default(0),
  /** Bytes of batches this agent keeps in flight over all its transfers, whatever the row size. */
  SYNCFLOW_INFLIGHT_BYTES: z.coerce.number().int().min(1 << 20).default(32 << 20),
  /** Bytes of a diff re-sync's rows this agent reads ahead of their tasks' FK levels and holds until they run (0 = none). */
  SYNCFLOW_READ_AHEAD_BYTES: z.coerce.number().int().min(0).default(32 << 20),
  /** Largest gRPC message accepted (bytes); batches are cut well below it. */
  SYNCFLOW_MAX_MESSAGE_BYTES: z.coerce.number().int().min(1 << 20).default(64 << 20),
  /** Hours a job's undo log is kept on its target (for rollback) before it is purged. */
  SYNCFLOW_UNDO_RETENTION_HOURS: z.coerce.number().int().min(1).max(24 * 365).default(168),
  /** How long creating a job's change slot may wait for the transactions running on the source to end; then a plain snapshot. */
  SYNCFLOW_CHANGE_SLOT_WAIT_MS: z.coerce.number().int().min(100).max(600_000).default(10_000),
  /** Changed keys one decode of a change slot keeps, over all tables; past this the tables hash both sides instead. */
  SYNCFLOW_CHANGE_MAX_KEYS: z.coerce.number().int().min(1).max(50_000_000).default(1_000_000),
});
export type AgentConfig = Readonly<z.infer<typeof agentEnv>>;

/** Parses an env schema, throwing one readable line naming every bad variable. */
export function parseEnv<T extends z.ZodTypeAny>(schema: T, env: NodeJS.ProcessEnv = process.env): Readonly<z.infer<T>> {
  const r = schema.safeParse(env);
  if (!r.success) {
    const msg = r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ');
    throw invalidArgument(`bad configuration: ${msg}`);
  }
  return Object.freeze(r.data);
}
