import { grpc, loadProtos, channelCredentials, clientOptions, call, type pb } from '@syncflow/shared';
import { CliError, grpcStatusName, isGrpcError, oneLine, usageError } from './output.js';

/**
 * The CLI's only way out: a SyncService client. Address from --coordinator or
 * SYNCFLOW_COORDINATOR, bearer token from SYNCFLOW_API_TOKEN (sent as metadata),
 * TLS when SYNCFLOW_TLS_CA names a CA file.
 */

export const DEFAULT_COORDINATOR = '127.0.0.1:7400';
/** Deadline of an ordinary call; planning introspects the source, so it gets longer. */
export const DEFAULT_DEADLINE_MS = 30_000;
export const SLOW_DEADLINE_MS = 120_000;

export interface ClientConfig {
  address: string;
  token?: string;
  tlsCa?: string;
  /** Name to check the server certificate against, when it differs from the dialled host. */
  tlsServerName?: string;
  /** --timeout: overrides every unary deadline when set. */
  deadlineMs?: number;
}

export function normalizeAddress(raw: string): string {
  const a = raw.trim();
  if (!a) throw usageError('coordinator address is empty');
  if (/\s/.test(a)) throw usageError(`coordinator address ${JSON.stringify(a)} contains spaces`);
  // host without a port, or a bracketed IPv6 host without a port
  if (!/:\d+$/.test(a) && !a.includes('://')) return `${a}:7400`;
  return a;
}

export function clientConfig(opts: { coordinator?: string; timeout?: number }, env: NodeJS.ProcessEnv = process.env): ClientConfig {
  return {
    address: normalizeAddress(opts.coordinator ?? env.SYNCFLOW_COORDINATOR ?? DEFAULT_COORDINATOR),
    token: env.SYNCFLOW_API_TOKEN || undefined,
    tlsCa: env.SYNCFLOW_TLS_CA || undefined,
    tlsServerName: env.SYNCFLOW_TLS_SERVER_NAME || undefined,
    deadlineMs: opts.timeout !== undefined ? opts.timeout * 1000 : undefined,
  };
}

/** Request and response type of each unary SyncService method. */
interface Unary {
  CreateConnection: [pb.CreateConnectionRequest, pb.Connection__Output];
  ListConnections: [pb.ListConnectionsRequest, pb.ListConnectionsResponse__Output];
  DeleteConnection: [pb.DeleteConnectionRequest, pb.DeleteConnectionResponse__Output];
  PlanSync: [pb.SyncSpec, pb.Plan__Output];
  StartSync: [pb.SyncSpec, pb.Job__Output];
  GetJob: [pb.GetJobRequest, pb.Job__Output];
  ListJobs: [pb.ListJobsRequest, pb.ListJobsResponse__Output];
  CancelJob: [pb.GetJobRequest, pb.Job__Output];
  GetJobLogs: [pb.GetJobRequest, pb.JobLogs__Output];
  RetryJob: [pb.RetryJobRequest, pb.Job__Output];
  ListDeadLetters: [pb.ListDeadLettersRequest, pb.ListDeadLettersResponse__Output];
  RetryDeadLetter: [pb.RetryDeadLetterRequest, pb.Job__Output];
  PauseJob: [pb.GetJobRequest, pb.Job__Output];
  ResumeJob: [pb.GetJobRequest, pb.Job__Output];
  SetJobRate: [pb.SetJobRateRequest, pb.Job__Output];
  RollbackJob: [pb.RollbackJobRequest, pb.RollbackResult__Output];
  ListRejects: [pb.ListRejectsRequest, pb.RejectList__Output];
  GetJobReport: [pb.GetJobRequest, pb.JobReport__Output];
  Verify: [pb.VerifyRequest, pb.VerifyReport__Output];
}
export type UnaryMethod = keyof Unary;

export class SyncClient {
  readonly address: string;
  readonly #config: ClientConfig;
  readonly #client: pb.SyncServiceClient;

  constructor(config: ClientConfig) {
    this.address = config.address;
    this.#config = config;
    let creds: grpc.ChannelCredentials;
    try {
      creds = channelCredentials({ ca: config.tlsCa });
    } catch (e) {
      throw new CliError(`cannot read SYNCFLOW_TLS_CA (${config.tlsCa}): ${(e as Error).message}`);
    }
    const options: grpc.ChannelOptions = { ...clientOptions() };
    if (config.tlsServerName) {
      options['grpc.ssl_target_name_override'] = config.tlsServerName;
      options['grpc.default_authority'] = config.tlsServerName;
    }
    const Ctor = loadProtos().proto.syncflow.v1.SyncService;
    this.#client = new Ctor(config.address, creds, options);
  }

  #metadata(): grpc.Metadata {
    const md = new grpc.Metadata();
    if (this.#config.token) md.set('authorization', `Bearer ${this.#config.token}`);
    return md;
  }

  async unary<M extends UnaryMethod>(method: M, req: Unary[M][0], deadlineMs = DEFAULT_DEADLINE_MS): Promise<Unary[M][1]> {
    try {
      return await call<Unary[M][0], Unary[M][1]>(this.#client, method, req, {
        metadata: this.#metadata(), deadlineMs: this.#config.deadlineMs ?? deadlineMs,
      });
    } catch (e) {
      throw this.translate(e);
    }
  }

  /** Server stream of job snapshots; ends when the job is terminal (or the stream breaks: the caller decides). */
  async *watchJob(id: string): AsyncGenerator<pb.Job__Output> {
    const stream = this.#client.WatchJob({ id }, this.#metadata());
    try {
      for await (const job of stream as AsyncIterable<pb.Job__Output>) yield job;
    } catch (e) {
      throw this.translate(e);
    } finally {
      stream.cancel();
    }
  }

  /** grpc.health.v1.Health/Check on the coordinator's server: true when SERVING. */
  health(deadlineMs = 2_000): Promise<boolean> {
    // HealthCheckRequest{service:""} encodes to nothing; HealthCheckResponse is field 1 (varint) = status.
    const serialize = () => Buffer.alloc(0);
    const deserialize = (b: Buffer) => (b.length >= 2 && b[0] === 0x08 ? b[1]! : 0);
    return new Promise((resolve, reject) => {
      this.#client.makeUnaryRequest('/grpc.health.v1.Health/Check', serialize, deserialize, {}, this.#metadata(),
        { deadline: Date.now() + deadlineMs }, (err, status) => (err ? reject(this.translate(err)) : resolve(status === 1)));
    });
  }

  /**
   * An error that never reached the server (no syncflow error code in the trailers, channel not
   * connected) is reported as "cannot reach"; server answers keep their status and details.
   */
  translate(e: unknown): unknown {
    if (!isGrpcError(e)) return e;
    const fromServer = e.metadata?.get('sf-code')?.length > 0;
    if (!fromServer && (e.code === grpc.status.UNAVAILABLE || e.code === grpc.status.DEADLINE_EXCEEDED)) {
      const connected = this.#client.getChannel().getConnectivityState(false) === grpc.connectivityState.READY;
      if (e.code === grpc.status.UNAVAILABLE || !connected) {
        const why = /ECONNREFUSED/.test(e.details) || !e.details ? '' : `: ${tidyDetails(e.details)}`;
        return new UnreachableError(`cannot reach the coordinator at ${this.address} (${grpcStatusName(e.code)})${why}`);
      }
    }
    return e;
  }

  close(): void {
    this.#client.close();
  }
}

/** Kept apart so watchers can tell "try again" from a real answer. */
export class UnreachableError extends CliError {
  constructor(message: string) {
    super(message, 1);
    this.name = 'UnreachableError';
  }
}

function tidyDetails(d: string): string {
  // grpc-js appends a timestamp in parentheses and a "No connection established" preamble
  return oneLine(d.replace(/^No connection established\.\s*Last error:\s*/i, '').replace(/\s*\(\d{4}-\d\d-\d\dT[^)]*\)\s*$/, ''));
}

/** Builds a client from the global options of a command. */
export function connect(globals: { coordinator?: string; timeout?: number }): SyncClient {
  return new SyncClient(clientConfig(globals));
}

/** Options every command sees (commander's optsWithGlobals()). */
export interface Globals { json?: boolean; coordinator?: string; timeout?: number }

/** Runs fn with a connected client and always closes it, so the process can exit. */
export async function withClient<T>(globals: Globals, fn: (client: SyncClient) => Promise<T>): Promise<T> {
  const client = connect(globals);
  try {
    return await fn(client);
  } finally {
    client.close();
  }
}
