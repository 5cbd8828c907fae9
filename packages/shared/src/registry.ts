import { Kvm, type KV } from '@nats-io/kv';
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { z } from 'zod';
import type { Names } from './subjects.js';
import { SyncflowError, ErrorKind } from './errors.js';

/** What an agent announces about itself in the registry bucket, refreshed by its heartbeat. */
export const agentInfo = z.object({
  id: z.string(),
  group: z.string(),
  address: z.string(),
  version: z.string(),
  started_at: z.string(),
  heartbeat_at: z.string(),
  active_tasks: z.number().int(),
});
export type AgentInfo = z.infer<typeof agentInfo>;

const LIST_REUSE_MS = 1_000;

/** Agents registered in a JetStream KV bucket whose entries expire (TTL) unless heartbeats renew them. */
export class AgentRegistry {
  private constructor(private kv: KV, private jsm: JetStreamManager, private bucket: string) {}

  static async open(nc: NatsConnection, n: Names, ttlMs = 15_000): Promise<AgentRegistry> {
    const kv = await new Kvm(nc).create(n.agentsBucket, { ttl: ttlMs, history: 1 });
    return new AgentRegistry(kv, await jetstreamManager(nc), n.agentsBucket);
  }

  async announce(info: AgentInfo): Promise<void> {
    await this.kv.put(`${info.group}.${info.id}`, JSON.stringify(info));
  }

  async remove(group: string, id: string): Promise<void> {
    await this.kv.delete(`${group}.${id}`).catch(() => undefined);
  }

  /**
   * The live agents (of a group). The keys come from one stream-info request filtered by subject
   * (`KV_<bucket>`, subjects `$KV.<bucket>.<key>`), not from kv.keys(): its push consumer can wait
   * forever for a last message or an idle heartbeat that does not come — a coordinator call to an
   * agent was seen stuck in it for minutes (a dry run that "hung"). Both requests time out.
   */
  async list(group?: string, fresh = false): Promise<AgentInfo[]> {
    const k = group ?? '';
    const held = this.#lists.get(k);
    if (!fresh && held && Date.now() - held.at < LIST_REUSE_MS) return held.agents;
    const agents = this.#read(group);
    this.#lists.set(k, { at: Date.now(), agents });
    // Not kept: a failed read, or an empty group (an agent starting now is seen by the next call).
    const forget = () => { if (this.#lists.get(k)?.agents === agents) this.#lists.delete(k); };
    agents.then((a) => { if (!a.length) forget(); }, forget);
    return agents;
  }

  /**
   * Lists of the last LIST_REUSE_MS, per group, shared by the callers of that time (a burst of tasks
   * starting, a job's planning calls): each read is a stream-info request and a KV get per agent. The
   * entries' data is a heartbeat old (5 s) anyway; `fresh` reads anew (a call retrying past a dead agent).
   */
  readonly #lists = new Map<string, { at: number; agents: Promise<AgentInfo[]> }>();

  async #read(group?: string): Promise<AgentInfo[]> {
    const out: AgentInfo[] = [];
    const prefix = `$KV.${this.bucket}.`;
    const info = await this.jsm.streams.info(`KV_${this.bucket}`, { subjects_filter: `${prefix}${group ? `${group}.>` : '>'}` });
    const keys = Object.keys(info.state.subjects ?? {}).map((s) => s.slice(prefix.length)).sort();
    for (const k of keys) {
      const e = await this.kv.get(k);
      if (!e || e.operation !== 'PUT' || e.length === 0) continue;
      const parsed = agentInfo.safeParse(e.json());
      if (parsed.success) out.push(parsed.data);
    }
    return out;
  }

  /** A live agent of the group, the least busy first; UNAVAILABLE when the group has none. */
  async pick(group: string): Promise<AgentInfo> {
    const agents = await this.list(group);
    if (agents.length === 0) {
      throw new SyncflowError(ErrorKind.Unavailable, `no live agent serves group "${group}"`, { code: 'no_agent', retryable: true });
    }
    const least = Math.min(...agents.map((a) => a.active_tasks));
    const idle = agents.filter((a) => a.active_tasks === least);
    return idle[Math.floor(Math.random() * idle.length)]!;
  }
}

/** Job states that agents must react to (cancel, pause), in a KV bucket they watch. */
export class JobFlags {
  readonly #cancelled = new Set<string>();
  readonly #paused = new Set<string>();
  private constructor(private kv: KV) {}

  static async open(nc: NatsConnection, n: Names): Promise<JobFlags> {
    return new JobFlags(await new Kvm(nc).create(n.jobsBucket, { history: 1, ttl: 7 * 24 * 3600_000 }));
  }

  async set(jobId: string, state: string): Promise<void> {
    await this.kv.put(jobId, state);
  }

  /** Keeps a local set of cancelled jobs up to date; returns when the watch ends. */
  async watch(): Promise<void> {
    const w = await this.kv.watch();
    (async () => {
      for await (const e of w) {
        // Every state replaces the last: a failed job (flag "cancelled") that `dlq retry` or `job retry` runs
        // again is "running" once more, and its tasks must not be dropped as cancelled.
        const state = e.operation === 'PUT' ? e.string() : '';
        if (state === 'cancelled') this.#cancelled.add(e.key); else this.#cancelled.delete(e.key);
        if (state === 'paused') this.#paused.add(e.key); else this.#paused.delete(e.key);
      }
    })().catch(() => undefined);
  }

  async isCancelled(jobId: string): Promise<boolean> {
    if (this.#cancelled.has(jobId)) return true;
    const e = await this.kv.get(jobId).catch(() => null);
    return e?.operation === 'PUT' && e.string() === 'cancelled';
  }

  /** Paused jobs: their tasks stop after the current batch (the watch keeps this current). */
  async isPaused(jobId: string): Promise<boolean> {
    if (this.#paused.has(jobId)) return true;
    return false;
  }
}
