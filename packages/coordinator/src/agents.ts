import {
  grpc, loadProtos, clientOptions, channelCredentials, call, injectContext, toSyncflowError, SyncflowError, ErrorKind,
  type AgentRegistry, type pb, type TlsFiles,
} from '@syncflow/shared';

const randomOf = <T>(xs: T[]): T | undefined => xs[Math.floor(Math.random() * xs.length)];

/** Calls AgentService on a live agent of a group, with the trace context in the metadata. */
export class AgentLink {
  readonly #clients = new Map<string, pb.AgentServiceClient>();
  constructor(private registry: AgentRegistry, private tls: TlsFiles) {}

  async call<Res>(group: string, method: keyof pb.AgentServiceClient & string, req: object, deadlineMs = 60_000): Promise<Res> {
    const md = new grpc.Metadata();
    for (const [k, v] of Object.entries(injectContext())) md.set(k, v);
    // A killed agent stays in the registry until its entry expires: when the call never reached
    // it (UNAVAILABLE without our trailers), try the group's other live agents.
    const tried = new Set<string>();
    for (;;) {
      const agent = tried.size === 0 ? await this.registry.pick(group) : randomOf((await this.registry.list(group, true)).filter((a) => !tried.has(a.id)));
      if (!agent) throw new SyncflowError(ErrorKind.Unavailable, `no reachable agent serves group "${group}"`, { code: 'no_agent', retryable: true });
      tried.add(agent.id);
      try {
        return await call<object, Res>(this.#client(agent.address), method, req, { metadata: md, deadlineMs });
      } catch (e) {
        const unreached = (e as grpc.ServiceError).code === grpc.status.UNAVAILABLE && !(e as grpc.ServiceError).metadata?.get('sf-code')?.length;
        if (!unreached || tried.size >= 5) throw toSyncflowError(e, `agent ${agent.id} (group ${group})`);
      }
    }
  }

  /** Calls every live agent of a group (e.g. releasing a snapshot held by whichever of them exported it). */
  async broadcast(group: string, method: keyof pb.AgentServiceClient & string, req: object, deadlineMs = 10_000): Promise<void> {
    const agents = await this.registry.list(group);
    await Promise.all(agents.map((a) => call(this.#client(a.address), method, req, { deadlineMs }).catch(() => undefined)));
  }

  #client(address: string): pb.AgentServiceClient {
    let c = this.#clients.get(address);
    if (!c) {
      c = new (loadProtos().proto.syncflow.v1.AgentService)(address, channelCredentials(this.tls), clientOptions());
      this.#clients.set(address, c);
    }
    return c;
  }

  close(): void {
    for (const c of this.#clients.values()) c.close();
  }
}
