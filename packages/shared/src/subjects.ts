/** Names of every JetStream stream, subject, consumer and KV bucket, derived from one namespace. */
export function names(ns: string) {
  return {
    tasksStream: `${ns}_TASKS`,
    eventsStream: `${ns}_EVENTS`,
    deadLetterStream: `${ns}_DLQ`,
    /** JetStream's own max-deliveries advisories about the task stream, kept until the coordinator handles them. */
    advisoryStream: `${ns}_ADVISORIES`,
    maxDeliveriesAdvisories: `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.${ns}_TASKS.*`,
    taskSubject: (group: string) => `${ns.toLowerCase()}.tasks.${group}`,
    taskSubjects: `${ns.toLowerCase()}.tasks.>`,
    eventSubject: (jobId: string) => `${ns.toLowerCase()}.events.${jobId}`,
    eventSubjects: `${ns.toLowerCase()}.events.>`,
    deadLetterSubject: (group: string) => `${ns.toLowerCase()}.dlq.${group}`,
    deadLetterSubjects: `${ns.toLowerCase()}.dlq.>`,
    groupConsumer: (group: string) => `agents_${group.replace(/[^A-Za-z0-9_]/g, '_')}`,
    coordinatorConsumer: 'coordinator',
    agentsBucket: `${ns}_agents`,
    jobsBucket: `${ns}_jobs`,
    ratesBucket: `${ns}_rates`,
  } as const;
}
export type Names = ReturnType<typeof names>;

/**
 * The JetStream message id of a task's publication: the task id the first time, `<task_id>#r<n>` when
 * a retry or resume publishes it again (n = its publish count), so each publication is deduplicated
 * on its own.
 */
export function taskMessageId(taskId: string, publishes: number): string {
  return publishes > 0 ? `${taskId}#r${publishes}` : taskId;
}

/** Which publication a task message is, from its message id (taskMessageId): 0 for the first. */
export function publicationOf(msgId: string | undefined): number {
  const m = /#r(\d+)$/.exec(msgId ?? '');
  return m ? Number(m[1]) : 0;
}
