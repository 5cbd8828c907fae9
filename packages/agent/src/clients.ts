import { grpc, loadProtos, clientOptions, channelCredentials, type pb, type TlsFiles } from '@syncflow/shared';

/** One AgentService client per peer address, reused across tasks (HTTP/2 multiplexes streams). */
export class AgentClients {
  readonly #clients = new Map<string, pb.AgentServiceClient>();
  constructor(private tls: TlsFiles, private maxMessageBytes: number) {}

  get(address: string): pb.AgentServiceClient {
    let c = this.#clients.get(address);
    if (!c) {
      const { proto } = loadProtos();
      c = new proto.syncflow.v1.AgentService(address, channelCredentials(this.tls), clientOptions(this.maxMessageBytes));
      this.#clients.set(address, c);
    }
    return c;
  }

  closeAll(): void {
    for (const c of this.#clients.values()) c.close();
    this.#clients.clear();
  }
}
export { grpc };
