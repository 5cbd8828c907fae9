import { taskMessage, decodeJson, publishEvent, scrubSecrets, pullEach, type JsMsg, type JetStreamClient, type JetStreamManager, type Names, type Logger } from '@syncflow/shared';

/**
 * A task whose agents died on every delivery (kill -9, OOM) never sends a final `failed`:
 * JetStream stops delivering it at max_deliver and says so in an advisory, which the advisory
 * stream keeps (shared/nats.ts) until this coordinator acks it, so one that was down at that
 * moment still sees it. Turn it into the same final failure event the agents send (durable,
 * deduplicated by message id), so the task is dead-lettered and the job ends instead of waiting
 * forever; and drop the spent message.
 */
export function watchMaxDeliveries(js: JetStreamClient, jsm: JetStreamManager, n: Names, log: Logger): () => Promise<void> {
  let stopping = false;
  const loop = pullEach(js, n.advisoryStream, n.coordinatorConsumer, log, { stopping: () => stopping }, async (m) => {
    try {
      await handle(m);
      m.ack();
    } catch (e) {
      log.warn({ err: scrubSecrets((e as Error).message) }, 'max-deliveries advisory not handled; it comes again');
      m.nak(2_000);
    }
  }).catch((e) => log.error({ err: (e as Error).message }, 'advisory watcher stopped'));

  async function handle(m: JsMsg): Promise<void> {
    const adv = decodeJson(m.data) as { stream_seq?: number; deliveries?: number } | undefined;
    if (!adv?.stream_seq) return;
    const stored = await jsm.streams.getMessage(n.tasksStream, { seq: adv.stream_seq }).catch(() => null);
    if (!stored) return; // already handled (and deleted)
    const parsed = taskMessage.safeParse(decodeJson(stored.data));
    if (!parsed.success) return;
    const t = parsed.data;
    const deliveries = adv.deliveries ?? 0;
    await publishEvent(js, n, {
      type: 'failed', job_id: t.job_id, task_id: t.task_id, agent_id: 'jetstream', at: new Date().toISOString(),
      error: { kind: 'unavailable', code: 'max_deliver', message: `delivered ${deliveries} time(s) without an answer: every agent that took it stopped`, retryable: false },
      final: true, delivery: deliveries,
    }, `${t.task_id}:maxdeliver:${adv.stream_seq}`);
    await jsm.streams.deleteMessage(n.tasksStream, adv.stream_seq).catch(() => false);
    log.error({ job: t.job_id, task: t.task_id, deliveries }, 'task exhausted its deliveries without an answer');
  }

  return async () => {
    stopping = true;
    await loop;
  };
}
