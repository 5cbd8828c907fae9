import { headers as natsHeaders } from '@nats-io/transport-node';
import { injectContext, taskMessageId, type JetStreamClient, type Names, type TaskMessage } from '@syncflow/shared';

/**
 * Publishes a task to its source group's subject. The task id is the JetStream message id, so
 * publishing again (a coordinator restarted between publish and bookkeeping) is deduplicated. A
 * retried or resumed task is published again under `task_id#r<n>` (n = its publish count).
 */
export async function publishTask(js: JetStreamClient, n: Names, group: string, task: TaskMessage, publishes = 0): Promise<void> {
  const h = natsHeaders();
  for (const [k, v] of Object.entries(injectContext())) h.set(k, v);
  await js.publish(n.taskSubject(group), JSON.stringify(task), { msgID: taskMessageId(task.task_id, publishes), headers: h });
}
