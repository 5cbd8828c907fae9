import { Kvm, type KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { z } from 'zod';
import type { Names } from './subjects.js';

export const jobRate = z.object({ rows_per_s: z.number().min(0), bytes_per_s: z.number().min(0) });
export type JobRate = z.infer<typeof jobRate>;

/**
 * The rate limits of running jobs, in a KV bucket the agents watch, so an operator can change a
 * running job's limits and every agent applies them at its next batch.
 */
export class JobRates {
  readonly #rates = new Map<string, JobRate>();
  readonly #listeners = new Set<(jobId: string, r: JobRate) => void>();
  private constructor(private kv: KV) {}

  static async open(nc: NatsConnection, n: Names): Promise<JobRates> {
    return new JobRates(await new Kvm(nc).create(n.ratesBucket, { history: 1, ttl: 7 * 24 * 3600_000 }));
  }

  async set(jobId: string, r: JobRate): Promise<void> {
    await this.kv.put(jobId, JSON.stringify(r));
  }

  async get(jobId: string): Promise<JobRate> {
    const cached = this.#rates.get(jobId);
    if (cached) return cached;
    const e = await this.kv.get(jobId).catch(() => null);
    const parsed = e?.operation === 'PUT' ? jobRate.safeParse(e.json()) : undefined;
    const r = parsed?.success ? parsed.data : { rows_per_s: 0, bytes_per_s: 0 };
    this.#rates.set(jobId, r);
    return r;
  }

  onChange(fn: (jobId: string, r: JobRate) => void): void { this.#listeners.add(fn); }

  async watch(): Promise<void> {
    const w = await this.kv.watch();
    (async () => {
      for await (const e of w) {
        if (e.operation !== 'PUT') continue;
        const parsed = jobRate.safeParse(e.json());
        if (!parsed.success) continue;
        this.#rates.set(e.key, parsed.data);
        for (const fn of this.#listeners) fn(e.key, parsed.data);
      }
    })().catch(() => undefined);
  }
}
