import { createHmac } from 'node:crypto';
import { backoffMs, sleep, scrubSecrets, type Logger } from '@syncflow/shared';
import type { Metrics } from './metrics.js';

export interface Alert {
  kind: 'dead_letter' | 'job_failed' | 'job_completed_with_errors';
  job_id: string;
  task_id?: string;
  table?: string;
  error_code?: string;
  message: string;
  at: string;
}

/** The signature header value: sha256=<hex HMAC-SHA256 of the exact body bytes>. */
export function signBody(secret: string, body: string): string {
  return 'sha256=' + createHmac('sha256', secret).update(body).digest('hex');
}

/**
 * Sends alerts: always an error-level log line and a metric; and, when configured, a POST of the
 * alert as JSON to a webhook, signed (x-syncflow-signature), retried with backoff in the
 * background so a slow receiver never holds up the job.
 */
export class Alerts {
  constructor(private opts: { url?: string; secret?: string; attempts?: number }, private metrics: Metrics, private log: Logger) {}

  send(alert: Alert): void {
    this.log.error({ alert: alert.kind, job: alert.job_id, task: alert.task_id, table: alert.table, code: alert.error_code, reason: scrubSecrets(alert.message) }, 'ALERT');
    if (!this.opts.url) return;
    void this.#post(alert);
  }

  async #post(alert: Alert): Promise<void> {
    const body = JSON.stringify(alert);
    const headers: Record<string, string> = { 'content-type': 'application/json', 'user-agent': 'syncflow-coordinator' };
    if (this.opts.secret) headers['x-syncflow-signature'] = signBody(this.opts.secret, body);
    const attempts = this.opts.attempts ?? 6;
    for (let i = 0; i < attempts; i++) {
      try {
        const res = await fetch(this.opts.url!, { method: 'POST', headers, body, signal: AbortSignal.timeout(10_000) });
        if (res.ok) {
          this.metrics.inc('syncflow_alerts_total', { outcome: 'sent' });
          return;
        }
        // 4xx other than 408/429 will not get better by retrying.
        if (res.status < 500 && res.status !== 408 && res.status !== 429) {
          this.log.warn({ status: res.status, alert: alert.kind }, 'alert webhook refused the alert');
          break;
        }
      } catch (e) {
        this.log.warn({ err: (e as Error).message, attempt: i + 1 }, 'alert webhook not reachable; retrying');
      }
      await sleep(Math.max(200, backoffMs(i + 1, { attempts, baseMs: 500, maxMs: 30_000 })));
    }
    this.metrics.inc('syncflow_alerts_total', { outcome: 'failed' });
  }
}
