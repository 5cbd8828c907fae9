import { taskMessage, decodeJson, publishEvent, scrubSecrets, type NatsConnection, type JetStreamClient, type JetStreamManager, type Names, type Logger } from '@syncflow/shared';

/**
 * A task whose agents died on every delivery (kill -9, OOM) never sends a final `failed`:
 * JetStream stops delivering it at max_deliver and says so in an advisory. Turn that into the
 * same final failure event the agents send (durable, deduplicated by message id), so the task
 * is dead-lettered and the job ends instead of waiting forever; and drop the spent message.
 */
export async function watchMaxDeliveries(nc: NatsConnection, js: JetStreamClient, jsm: JetStreamManager, n: Names, log: Logger): Promise<() => void> {
  const sub = nc.subscribe(`$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.${n.tasksStream}.*`);
  void (async () => {
    for await (const m of sub) {
      try {
        const adv = decodeJson(m.data) as { stream_seq?: number; deliveries?: number } | undefined;
        if (!adv?.stream_seq) continue;
        const stored = await jsm.streams.getMessage(n.tasksStream, { seq: adv.stream_seq }).catch(() => null);
        if (!stored) continue;
        const parsed = taskMessage.safeParse(decodeJson(stored.data));
        if (!parsed.success) continue;
        const t = parsed.data;
        const deliveries = adv.deliveries ?? 0;
        await publishEvent(js, n, {
          type: 'failed', job_id: t.job_id, task_id: t.task_id, agent_id: 'jetstream', at: new Date().toISOString(),
          error: { kind: 'unavailable', code: 'max_deliver', message: `delivered ${deliveries} time(s) without an answer: every agent that took it stopped`, retryable: false },
          final: true, delivery: deliveries,
        }, `${t.task_id}:maxdeliver:${adv.stream_seq}`);
        await jsm.streams.deleteMessage(n.tasksStream, adv.stream_seq).catch(() => false);
        log.error({ job: t.job_id, task: t.task_id, deliveries }, 'task exhausted its deliveries without an answer');
      } catch (e) {
        log.warn({ err: scrubSecrets((e as Error).message) }, 'max-deliveries advisory not handled');
      }
    }
  })();
  return () => sub.unsubscribe();
}
