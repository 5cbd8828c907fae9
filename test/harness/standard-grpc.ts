import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

// What standard tools (grpc_health_probe, grpcurl) ask a server: health and reflection.
const require = createRequire(import.meta.url);
const healthProto = join(dirname(require.resolve('grpc-health-check/package.json')), 'proto/health/v1/health.proto');
const reflectionProto = join(dirname(require.resolve('@grpc/reflection/package.json')), 'build/proto/grpc/reflection/v1/reflection.proto');

type Ctor = new (addr: string, creds: grpc.ChannelCredentials) => grpc.Client & Record<string, Function>;
function service(file: string, path: string[]): Ctor {
  let obj: unknown = grpc.loadPackageDefinition(protoLoader.loadSync(file, { keepCase: true, enums: String, longs: String, defaults: true }));
  for (const p of path) obj = (obj as Record<string, unknown>)[p];
  return obj as Ctor;
}

export async function healthStatus(address: string, serviceName = ''): Promise<string> {
  const Health = service(healthProto, ['grpc', 'health', 'v1', 'Health']);
  const c = new Health(address, grpc.credentials.createInsecure());
  try {
    return await new Promise((resolve, reject) => c.Check({ service: serviceName }, (e: Error | null, r: { status: string }) => (e ? reject(e) : resolve(r.status))));
  } finally { c.close(); }
}

export async function reflectedServices(address: string): Promise<string[]> {
  const Reflection = service(reflectionProto, ['grpc', 'reflection', 'v1', 'ServerReflection']);
  const c = new Reflection(address, grpc.credentials.createInsecure());
  try {
    return await new Promise((resolve, reject) => {
      const call = c.ServerReflectionInfo();
      call.on('data', (r: { list_services_response?: { service: { name: string }[] } }) => {
        resolve(r.list_services_response?.service.map((s) => s.name) ?? []);
        call.end();
      });
      call.on('error', reject);
      call.write({ list_services: '' });
    });
  } finally { c.close(); }
}
