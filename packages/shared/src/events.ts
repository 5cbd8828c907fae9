import { headers as natsHeaders } from '@nats-io/transport-node';
import type { JetStreamClient } from '@nats-io/jetstream';
import type { Names } from './subjects.js';
import type { EventMessage } from './messages.js';
import { injectContext } from './telemetry.js';

/**
 * Publishes an agent → coordinator event. The message id makes a republished event (after a
 * reconnect) a no-op in JetStream's duplicate window; the trace context rides in the headers.
 */
export async function publishEvent(js: JetStreamClient, n: Names, e: EventMessage, dedupId: string): Promise<void> {
  const h = natsHeaders();
  for (const [k, v] of Object.entries(injectContext())) h.set(k, v);
  await js.publish(n.eventSubject(e.job_id), JSON.stringify(e), { msgID: dedupId, headers: h });
}
