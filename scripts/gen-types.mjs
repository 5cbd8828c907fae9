// Generates the TypeScript types of the wire contract from protos/ (no protoc needed).
import { execFileSync } from 'node:child_process';
import { readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

const require = createRequire(import.meta.url);
const bin = join(dirname(require.resolve('@grpc/proto-loader/package.json')), 'build/bin/proto-loader-gen-types.js');
const outDir = 'packages/shared/src/gen';
rmSync(outDir, { recursive: true, force: true });
const protos = readdirSync('protos/syncflow/v1').filter((f) => f.endsWith('.proto')).map((f) => `syncflow/v1/${f}`);
execFileSync(process.execPath, [bin, '--keepCase', '--longs=String', '--enums=String', '--defaults', '--oneofs',
  '--grpcLib=@grpc/grpc-js', '--outDir', outDir, '--includeDirs=protos', '--importFileExtension=.js', '--includeComments', ...protos], { stdio: 'inherit' });

// One index so the rest of the code imports the message types from a single place (as `pb`).
const files = readdirSync(join(outDir, 'syncflow/v1')).filter((f) => f.endsWith('.ts')).sort();
writeFileSync(join(outDir, 'index.ts'), files.map((f) => `export * from './syncflow/v1/${f.replace(/\.ts$/, '.js')}';`).join('\n') + '\n');
