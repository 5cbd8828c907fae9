import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager, RetentionPolicy, StorageType, AckPolicy, DeliverPolicy, type JetStreamManager, type JetStreamClient, type ConsumerConfig, type JsMsg } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import type { Names } from './subjects.js';
import type { Logger } from './logging.js';

export { type NatsConnection, type JetStreamClient, type JetStreamManager, type KV, type JsMsg };

export async function connectNats(servers: string, name: string, log: Logger): Promise<NatsConnection> {
  const nc = await connect({
    servers: servers.split(',').map((s) => s.trim()),
    name,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 500,
    waitOnFirstConnect: true,
  });
  (async () => {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect' || s.type === 'reconnect') log.warn({ nats: s.type }, 'nats connection status');
    }
  })().catch(() => undefined);
  return nc;
}

/**
 * Creates (or updates) the streams syncflow needs. Tasks: a work queue, one subject per agent
 * group, deduplicated by message id so a re-plan never publishes a task twice.
 */
export async function ensureStreams(jsm: JetStreamManager, n: Names, opts: { ackWaitMs: number; maxDeliver: number }): Promise<void> {
  const streams = [
    { name: n.tasksStream, subjects: [n.taskSubjects], retention: RetentionPolicy.Workqueue },
    { name: n.eventsStream, subjects: [n.eventSubjects], retention: RetentionPolicy.Limits },
    { name: n.deadLetterStream, subjects: [n.deadLetterSubjects], retention: RetentionPolicy.Limits },
    // Advisories are plain NATS messages: captured in a stream, none is lost while the coordinator is down.
    { name: n.advisoryStream, subjects: [n.maxDeliveriesAdvisories], retention: RetentionPolicy.Workqueue },
  ];
  for (const s of streams) {
    const cfg = { name: s.name, subjects: s.subjects, retention: s.retention, storage: StorageType.File, duplicate_window: 2 * 60 * 60 * 1e9 };
    try {
      await jsm.streams.info(s.name);
    } catch {
      await jsm.streams.add(cfg);
    }
  }
  // The coordinator's durable consumers: the agents' events, and the advisories.
  const coordinator = { ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.All, ack_wait: 30e9, max_deliver: -1 };
  await ensureConsumer(jsm, n.eventsStream, n.coordinatorConsumer, coordinator);
  await ensureConsumer(jsm, n.advisoryStream, n.coordinatorConsumer, coordinator);
  void opts;
}

/** Creates a durable consumer unless it exists (an existing one keeps its configuration). */
async function ensureConsumer(jsm: JetStreamManager, stream: string, name: string, cfg: Partial<ConsumerConfig>): Promise<void> {
  try {
    await jsm.consumers.info(stream, name);
  } catch {
    await jsm.consumers.add(stream, { ...cfg, durable_name: name });
  }
}

/** The durable pull consumer an agent group shares. */
export async function ensureGroupConsumer(jsm: JetStreamManager, n: Names, group: string, opts: { ackWaitMs: number; maxDeliver: number }): Promise<string> {
  const name = n.groupConsumer(group);
  await ensureConsumer(jsm, n.tasksStream, name, {
    ack_policy: AckPolicy.Explicit, filter_subject: n.taskSubject(group),
    ack_wait: opts.ackWaitMs * 1e6, max_deliver: opts.maxDeliver, deliver_policy: DeliverPolicy.All,
  });
  return name;
}

/**
 * Pulls a durable consumer's messages and hands each to `handle` until `stopping()`: up to `batch`
 * (default 1) a pull — an agent takes one task at a time, so the agents of a group share a level's
 * tasks; the coordinator's events come 64 a pull. `ready()` (optional) is awaited before each pull
 * (e.g. a free slot). A failed pull (NATS restarting) is logged and tried again a second later.
 */
export async function pullEach(js: JetStreamClient, stream: string, consumerName: string, log: Logger,
  opts: { stopping: () => boolean; ready?: () => Promise<void>; expiresMs?: number; batch?: number },
  handle: (m: JsMsg) => Promise<void> | void): Promise<void> {
  const consumer = await js.consumers.get(stream, consumerName);
  while (!opts.stopping()) {
    await opts.ready?.();
    if (opts.stopping()) break;
    // One pull request for up to `batch` messages, each handled as it arrives: a burst of events
    // costs one round trip to the server, not one per message.
    try {
      const messages = await consumer.fetch({ max_messages: opts.batch ?? 1, expires: opts.expiresMs ?? 1_000 });
      for await (const m of messages) await handle(m);
    } catch (e) {
      log.warn({ stream, err: (e as Error).message }, 'pulling messages failed; retrying');
      await new Promise((r) => setTimeout(r, 1_000));
    }
  }
}

export async function openAgentsBucket(nc: NatsConnection, n: Names, ttlMs: number): Promise<KV> {
  return new Kvm(nc).create(n.agentsBucket, { ttl: ttlMs, history: 1 });
}

export { jetstream, jetstreamManager };
