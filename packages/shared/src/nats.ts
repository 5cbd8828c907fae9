import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager, RetentionPolicy, StorageType, AckPolicy, DeliverPolicy, type JetStreamManager, type JetStreamClient } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import type { Names } from './subjects.js';
import type { Logger } from './logging.js';

export { type NatsConnection, type JetStreamClient, type JetStreamManager, type KV };

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
  try {
    await jsm.consumers.info(n.eventsStream, n.coordinatorConsumer);
  } catch {
    await jsm.consumers.add(n.eventsStream, {
      durable_name: n.coordinatorConsumer, ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.All,
      ack_wait: 30e9, max_deliver: -1,
    });
  }
  try {
    await jsm.consumers.info(n.advisoryStream, n.coordinatorConsumer);
  } catch {
    await jsm.consumers.add(n.advisoryStream, {
      durable_name: n.coordinatorConsumer, ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.All,
      ack_wait: 30e9, max_deliver: -1,
    });
  }
  void opts;
}

/** The durable pull consumer an agent group shares. */
export async function ensureGroupConsumer(jsm: JetStreamManager, n: Names, group: string, opts: { ackWaitMs: number; maxDeliver: number }): Promise<string> {
  const name = n.groupConsumer(group);
  try {
    await jsm.consumers.info(n.tasksStream, name);
  } catch {
    await jsm.consumers.add(n.tasksStream, {
      durable_name: name, ack_policy: AckPolicy.Explicit, filter_subject: n.taskSubject(group),
      ack_wait: opts.ackWaitMs * 1e6, max_deliver: opts.maxDeliver, deliver_policy: DeliverPolicy.All,
    });
  }
  return name;
}

export async function openAgentsBucket(nc: NatsConnection, n: Names, ttlMs: number): Promise<KV> {
  return new Kvm(nc).create(n.agentsBucket, { ttl: ttlMs, history: 1 });
}

export { jetstream, jetstreamManager };
