import { grpc, clientOptions, channelCredentials, type pb, type TlsFiles } from '@syncflow/shared';
import { agentClientClass } from './stream/batch-frame.js';

/** One AgentService client per peer address, reused across tasks (HTTP/2 multiplexes streams). */
export class AgentClients {
  readonly #clients = new Map<string, pb.AgentServiceClient>();
  constructor(private tls: TlsFiles, private maxMessageBytes: number) {}

  get(address: string): pb.AgentServiceClient {
    let c = this.#clients.get(address);
    if (!c) {
      // Batches on Transfer skip two whole copies (stream/batch-frame.ts).
      const Client = agentClientClass();
      c = new Client(address, channelCredentials(this.tls), clientOptions(this.maxMessageBytes)) as unknown as pb.AgentServiceClient;
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
