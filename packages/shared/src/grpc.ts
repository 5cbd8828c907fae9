import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { HealthImplementation } from 'grpc-health-check';
import { ReflectionService } from '@grpc/reflection';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { ProtoGrpcType as AgentProto } from './gen/agent.js';
import type { ProtoGrpcType as SyncProto } from './gen/sync.js';
import { toGrpcError } from './errors.js';

export { grpc };

const PROTO_DIR = fileURLToPath(new URL('../../../protos', import.meta.url));

/** Loader options: must match scripts/gen-types.mjs so the generated types describe what arrives. */
const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true, longs: String, enums: String, defaults: true, oneofs: true, includeDirs: [PROTO_DIR],
};

let loaded: { def: protoLoader.PackageDefinition; proto: AgentProto & SyncProto } | undefined;
export function loadProtos() {
  if (!loaded) {
    const def = protoLoader.loadSync(['syncflow/v1/agent.proto', 'syncflow/v1/sync.proto'], LOADER_OPTIONS);
    loaded = { def, proto: grpc.loadPackageDefinition(def) as unknown as AgentProto & SyncProto };
  }
  return loaded;
}

export interface TlsFiles { cert?: string; key?: string; ca?: string }

export function serverCredentials(tls: TlsFiles): grpc.ServerCredentials {
  if (tls.cert && tls.key) {
    return grpc.ServerCredentials.createSsl(tls.ca ? readFileSync(tls.ca) : null,
      [{ cert_chain: readFileSync(tls.cert), private_key: readFileSync(tls.key) }], false);
  }
  return grpc.ServerCredentials.createInsecure();
}

export function channelCredentials(tls: TlsFiles): grpc.ChannelCredentials {
  if (tls.ca || tls.cert) return grpc.credentials.createSsl(tls.ca ? readFileSync(tls.ca) : undefined);
  return grpc.credentials.createInsecure();
}

/**
 * A server that also answers grpc.health.v1 and server reflection, so standard tools
 * (grpcurl, grpc_health_probe) can talk to it.
 */
export function createServer(serviceNames: string[], maxMessageBytes = 64 << 20) {
  const server = new grpc.Server({
    'grpc.max_receive_message_length': maxMessageBytes,
    'grpc.max_send_message_length': maxMessageBytes,
    'grpc.keepalive_time_ms': 30_000,
    'grpc.keepalive_permit_without_calls': 1,
    'grpc.max_concurrent_streams': 1000,
  });
  // grpc-js has no option for a server's HTTP/2 receive windows, and Node's 64 KiB default caps
  // every Transfer stream at 64 KiB per round trip (1.5 MB/s at 10 ms each way). Its settings object
  // (created by the option above) is handed to http2.createServer at bind time: widen it there.
  const settings = (server as unknown as { commonServerOptions?: { settings?: Record<string, number> } }).commonServerOptions?.settings;
  if (settings) settings.initialWindowSize = HTTP2_WINDOW;
  const health = new HealthImplementation(Object.fromEntries([['', 'SERVING'], ...serviceNames.map((s) => [s, 'SERVING'])]));
  health.addToServer(server);
  new ReflectionService(loadProtos().def).addToServer(server);
  return { server, health };
}

export async function bind(server: grpc.Server, address: string, creds: grpc.ServerCredentials): Promise<number> {
  const port = await new Promise<number>((resolve, reject) => server.bindAsync(address, creds, (err, p) => (err ? reject(err) : resolve(p))));
  // The connection-level window is per session: widen it as each client connects (see createServer).
  const http2Servers = (server as unknown as { http2Servers?: Map<{ on(e: 'session', f: (s: { setLocalWindowSize(n: number): void }) => void): void }, unknown> }).http2Servers;
  for (const h of http2Servers?.keys() ?? []) {
    h.on('session', (session) => {
      try { session.setLocalWindowSize(HTTP2_WINDOW); } catch { /* a session closing already */ }
    });
  }
  return port;
}

/** HTTP/2 receive window of our servers, per stream and per connection: enough for a WAN's bandwidth × delay. */
const HTTP2_WINDOW = 32 * 1024 * 1024;

/** Wraps an async unary handler: any throw becomes a gRPC error with the right status. */
export function unary<Req, Res>(fn: (req: Req, call: grpc.ServerUnaryCall<Req, Res>) => Promise<Res>): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    fn(call.request, call).then((res) => callback(null, res), (e) => callback(toGrpcError(e) as grpc.ServiceError));
  };
}

/** Promise form of a unary client call. */
export function call<Req, Res>(
  client: grpc.Client, method: string, req: Req, opts: { metadata?: grpc.Metadata; deadlineMs?: number } = {},
): Promise<Res> {
  const fn = (client as unknown as Record<string, Function>)[method];
  if (!fn) throw new Error(`no such method ${method}`);
  return new Promise((resolve, reject) => {
    const options: grpc.CallOptions = opts.deadlineMs ? { deadline: Date.now() + opts.deadlineMs } : {};
    fn.call(client, req, opts.metadata ?? new grpc.Metadata(), options, (err: grpc.ServiceError | null, res: Res) => (err ? reject(err) : resolve(res)));
  });
}

export const clientOptions = (maxMessageBytes = 64 << 20): grpc.ChannelOptions => ({
  'grpc.max_receive_message_length': maxMessageBytes,
  'grpc.max_send_message_length': maxMessageBytes,
  'grpc.keepalive_time_ms': 30_000,
});

export type { AgentProto, SyncProto };

/** Stops a server: in-flight calls get `graceMs` to finish (streams from peers would never end by themselves), then it is forced. */
export async function shutdownServer(server: grpc.Server, graceMs = 3_000): Promise<void> {
  await Promise.race([
    new Promise<void>((r) => server.tryShutdown(() => r())),
    new Promise<void>((r) => setTimeout(r, graceMs).unref()),
  ]);
  server.forceShutdown();
}
