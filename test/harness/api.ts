import { grpc, loadProtos, call, type pb } from '../../packages/shared/src/index.js';

const isRunning = (j: pb.Job__Output) => ['JOB_STATE_PENDING', 'JOB_STATE_RUNNING'].includes(j.state as string);

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
  /** The job once it is no longer pending or running, followed through WatchJob (the coordinator pushes each change). */
  waitJob(id: string, timeoutMs = 240_000): Promise<pb.Job__Output> {
    return new Promise((resolve, reject) => {
      const stream = this.client.WatchJob({ id });
      let last: pb.Job__Output | undefined;
      let settled = false;
      const deadline = Date.now() + timeoutMs;
      const late = () => new Error(`job ${id} still ${last?.state ?? 'unseen'} after ${timeoutMs} ms`);
      const settle = (f: () => void) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        stream.cancel();
        f();
      };
      const timer = setTimeout(() => settle(() => reject(late())), timeoutMs);
      stream.on('data', (job: pb.Job__Output) => {
        last = job;
        if (!isRunning(job)) settle(() => resolve(job));
      });
      // The coordinator going away (a restart in a fault test) ends the stream: follow the job again until the deadline.
      const again = () => settle(() => {
        const left = deadline - Date.now();
        if (left <= 0) reject(late());
        else setTimeout(() => resolve(this.waitJob(id, left)), 250);
      });
      stream.on('error', (e: grpc.ServiceError) => {
        if (e.code === grpc.status.UNAVAILABLE) again();
        else if (e.code !== grpc.status.CANCELLED) settle(() => reject(e));
      });
      stream.on('end', () => again());
    });
  }
  close(): void { this.client.close(); }
}
