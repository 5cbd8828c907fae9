import { grpc, toSyncflowError, SyncflowError, ErrorKind, injectContext, type pb, type Logger } from '@syncflow/shared';
import type { InflightBytes } from '../work/limits.js';

export interface TransferStart {
  committedSeq: number;
  resumeAfter: string[] | null;
  /** Keyless tables: sha256 of each committed batch, seq 1 first. */
  committedHashes: string[];
  /** Diff re-sync: the bucket filter stored with the task's committed batches. */
  diff: pb.DiffFilter__Output | null;
}
export interface OutBatch { data: Buffer; rows: number; firstKey: (string | null)[]; lastKey: (string | null)[] }

/**
 * The source side of Transfer: at most `window` batches unacknowledged (credit window) on top of
 * HTTP/2 flow control, so a slow target slows the reader instead of filling memory.
 */
export class TransferSender {
  #call: grpc.ClientDuplexStream<pb.TransferMessage, pb.TransferAck__Output>;
  #acks: AsyncIterator<pb.TransferAck__Output>;
  #inflight = 0;
  #waiters: (() => void)[] = [];
  #onFailure: (() => void) | undefined;
  #failure: SyncflowError | undefined;
  #final!: Promise<pb.TransferAck__Output>;
  #seq = 0;
  #blockedSince = 0;
  #streamError: unknown;
  /** Send time and size of each unacknowledged batch: commit latency for the batch sizer, bytes for the cap. */
  #pending = new Map<number, { at: number; bytes: number }>();

  constructor(client: pb.AgentServiceClient, private window: number, private log: Logger,
    private onAck: (a: pb.TransferAck__Output, latencyMs: number) => void, private inflight?: InflightBytes) {
    const md = new grpc.Metadata();
    for (const [k, v] of Object.entries(injectContext())) md.set(k, v);
    this.#call = client.Transfer(md);
    // The call can fail (target agent unreachable) before anything reads it: without a listener that
    // 'error' event would crash the process. Keep it; #next() reports it.
    this.#call.on('error', (e) => { this.#streamError ??= e; });
    this.#acks = this.#call[Symbol.asyncIterator]() as AsyncIterator<pb.TransferAck__Output>;
  }

  /** Sends the header and learns from the target's ledger where to resume. */
  async open(header: pb.TransferHeader): Promise<TransferStart> {
    this.#call.write({ header: { ...header, trace: injectContext() } });
    const first = await this.#next();
    if (!first) throw new SyncflowError(ErrorKind.Unavailable, 'target agent closed the Transfer stream before answering', { retryable: true });
    if (!first.ready) throw new SyncflowError(ErrorKind.Internal, 'target did not answer the Transfer header');
    this.#seq = Number(first.committed_seq);
    this.#final = this.#ackLoop();
    this.#final.catch(() => undefined);
    return {
      committedSeq: this.#seq, resumeAfter: first.resume_after?.values.length ? first.resume_after.values : null,
      committedHashes: first.committed_hashes, diff: first.diff ?? null,
    };
  }

  /** Diff re-sync: the buckets this task ships, before its first batch (the target bounds its marks by them). */
  sendDiff(diff: pb.DiffFilter): void {
    this.#call.write({ diff });
  }

  async send(b: OutBatch): Promise<number> {
    while (this.#inflight >= this.window && !this.#failure) {
      if (!this.#blockedSince) this.#blockedSince = Date.now();
      await new Promise<void>((r) => this.#waiters.push(r));
    }
    if (this.#blockedSince && Date.now() - this.#blockedSince > 5_000) {
      this.log.info({ waited_ms: Date.now() - this.#blockedSince }, 'reader waited for target credit (backpressure)');
    }
    this.#blockedSince = 0;
    if (this.#failure) throw this.#failure;
    await this.inflight?.acquire(b.data.length);
    this.#inflight++;
    const seq = ++this.#seq;
    this.#pending.set(seq, { at: Date.now(), bytes: b.data.length });
    this.log.debug({ seq, rows: b.rows, bytes: b.data.length }, 'sending batch');
    const ok = this.#call.write({ batch: { seq, data: b.data, rows: b.rows, first_key: { values: b.firstKey as string[] }, last_key: { values: b.lastKey as string[] } } });
    // Wait for drain, or for the stream's failure: a target that failed never drains, and waiting
    // for 'drain' alone hung the task forever when the error came first.
    if (!ok && !this.#failure) {
      await new Promise<void>((resolve) => {
        const done = () => { this.#call.off('drain', done); this.#onFailure = undefined; resolve(); };
        this.#call.once('drain', done);
        this.#onFailure = done;
      });
    }
    if (this.#failure) throw this.#failure;
    return seq;
  }

  /** Waits until every batch sent so far is acknowledged (committed on the target): a pause keeps them. */
  async settle(): Promise<void> {
    while (this.#inflight > 0 && !this.#failure) await new Promise<void>((r) => this.#waiters.push(r));
    if (this.#failure) throw this.#failure;
  }

  /** Ends the stream and waits for the target's final ack (everything committed). */
  async finish(totalRows: number): Promise<pb.TransferAck__Output> {
    this.log.debug({ batches: this.#seq, rows: totalRows }, 'stream end sent; waiting for the final ack');
    this.#call.write({ end: { total_rows: totalRows, total_batches: this.#seq } });
    this.#call.end();
    return this.#final;
  }

  cancel(): void {
    for (const p of this.#pending.values()) this.inflight?.release(p.bytes);
    this.#pending.clear();
    this.#call.cancel();
  }

  async #next(): Promise<pb.TransferAck__Output | undefined> {
    try {
      const r = await this.#acks.next();
      if (r.done && this.#streamError) throw this.#streamError;
      return r.done ? undefined : r.value;
    } catch (e) {
      throw toSyncflowError(e, 'target agent');
    }
  }

  async #ackLoop(): Promise<pb.TransferAck__Output> {
    try {
      for (;;) {
        const ack = await this.#next();
        if (!ack) throw new SyncflowError(ErrorKind.Unavailable, 'target agent closed the Transfer stream early', { retryable: true });
        if (ack.final) return ack;
        this.#inflight--;
        const sent = this.#pending.get(Number(ack.seq));
        this.#pending.delete(Number(ack.seq));
        if (sent) this.inflight?.release(sent.bytes);
        this.onAck(ack, sent ? Date.now() - sent.at : 0);
        this.#waiters.shift()?.();
      }
    } catch (e) {
      this.#failure = toSyncflowError(e);
      this.log.debug({ code: this.#failure.code, waiters: this.#waiters.length, draining: Boolean(this.#onFailure) }, 'transfer stream failed');
      for (const w of this.#waiters.splice(0)) w();
      this.#onFailure?.();
      throw this.#failure;
    }
  }
}
