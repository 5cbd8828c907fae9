import { grpc, loadProtos, call, type pb } from '../../packages/shared/src/index.js';

/** A SyncService client for tests: each method returns the response or rejects with the gRPC error. */
export class Api {
  readonly client: pb.SyncServiceClient;
  constructor(address: string) {
    this.client = new (loadProtos().proto.syncflow.v1.SyncService)(address, grpc.credentials.createInsecure());
  }
  /** CreateConnection for database `db` of `cluster`, served by agent group `group`. */
  async connection(name: string, cluster: { url(db: string): string }, db: string, group: string): Promise<void> {
    await this.call('CreateConnection', { name, url: cluster.url(db), group });
  }
  call<Res = unknown>(method: string, req: object): Promise<Res> {
    return call<object, Res>(this.client, method, req, { deadlineMs: 120_000 });
  }
  /** The gRPC status name a call fails with, or 'OK'. */
  async status(method: string, req: object): Promise<string> {
    try {
      await this.call(method, req);
      return 'OK';
    } catch (e) {
      return grpc.status[(e as grpc.ServiceError).code] ?? String((e as grpc.ServiceError).code);
    }
  }
  async waitJob(id: string, timeoutMs = 240_000): Promise<pb.Job__Output> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const job = await this.call<pb.Job__Output>('GetJob', { id });
      if (!['JOB_STATE_PENDING', 'JOB_STATE_RUNNING'].includes(job.state as string)) return job;
      if (Date.now() > deadline) throw new Error(`job ${id} still ${job.state} after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  close(): void { this.client.close(); }
}
