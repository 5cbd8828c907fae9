import {
  grpc, loadProtos, clientOptions, channelCredentials, call, injectContext, toSyncflowError,
  type AgentRegistry, type pb, type TlsFiles,
} from '@syncflow/shared';

/** Calls AgentService on a live agent of a group, with the trace context in the metadata. */
export class AgentLink {
  readonly #clients = new Map<string, pb.AgentServiceClient>();
  constructor(private registry: AgentRegistry, private tls: TlsFiles) {}

  async call<Res>(group: string, method: keyof pb.AgentServiceClient & string, req: object, deadlineMs = 60_000): Promise<Res> {
    const agent = await this.registry.pick(group);
    const md = new grpc.Metadata();
    for (const [k, v] of Object.entries(injectContext())) md.set(k, v);
    try {
      return await call<object, Res>(this.#client(agent.address), method, req, { metadata: md, deadlineMs });
    } catch (e) {
      throw toSyncflowError(e, `agent ${agent.id} (group ${group})`);
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
