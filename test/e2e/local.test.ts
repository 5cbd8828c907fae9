import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PgCluster, freePort, distMain, baseEnv, pidAlive, waitFor } from '../harness/index.js';
import { databaseHashes, diffHashes } from '../harness/compare.js';

// `syncflow local up` as a user runs it: its own nats-server, coordinator and agents in the background.
let a: PgCluster;
let b: PgCluster;
let stateDir: string;
let port: number;

function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [distMain('cli'), ...args], { env: baseEnv({ SYNCFLOW_COORDINATOR: `127.0.0.1:${port}` }), timeout: 120_000 },
      (err, stdout, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }));
  });
}
const pids = async () => {
  const s = JSON.parse(await readFile(join(stateDir, 'state.json'), 'utf8')) as { processes: Record<string, { pid: number }> };
  return Object.fromEntries(Object.entries(s.processes).map(([k, v]) => [k, v.pid]));
};

beforeAll(async () => {
  [a, b] = await Promise.all([PgCluster.start({ name: 'local-a' }), PgCluster.start({ name: 'local-b' })]);
  await a.createDatabase('app', `CREATE TABLE items (id int PRIMARY KEY, v text);
    INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 5000) g;`);
  await b.createDatabase('app', 'CREATE TABLE items (id int PRIMARY KEY, v text);');
  stateDir = await mkdtemp(join(tmpdir(), 'syncflow-local-'));
  port = await freePort();
});

afterAll(async () => {
  await cli(['local', 'down', '--state-dir', stateDir]);
  await Promise.all([a?.destroy(), b?.destroy()]);
  await rm(stateDir, { recursive: true, force: true });
});

describe('syncflow local up', () => {
  it('starts everything, registers the regions, and a sync runs through it', async () => {
    const up = await cli(['local', 'up', '--region', `east=${a.url('app')}`, '--region', `west=${b.url('app')}`, '--port', String(port), '--state-dir', stateDir]);
    expect(up.code, up.stderr).toBe(0);
    expect(up.stdout).toContain(`127.0.0.1:${port}`);
    expect(up.stdout + up.stderr).not.toContain('postgres://');
    const list = await cli(['connection', 'list', '--json']);
    expect((JSON.parse(list.stdout) as { connections: { name: string }[] }).connections.map((c) => c.name).sort()).toEqual(['east', 'west']);
    const sync = await cli(['sync', 'start', '--from', 'east', '--to', 'west', '--wait']);
    expect(sync.code, sync.stderr + sync.stdout).toBe(0);
    expect(diffHashes(await databaseHashes(a.sql('app')), await databaseHashes(b.sql('app')))).toEqual([]);
  });

  it('is safe to run again: restarts what died, leaves the rest running', async () => {
    const before = await pids();
    const coordinator = Object.keys(before).find((k) => k.includes('coordinator'))!;
    process.kill(before[coordinator]!, 'SIGKILL');
    await waitFor(() => !pidAlive(before[coordinator]!), { what: 'the coordinator to die' });
    const again = await cli(['local', 'up', '--port', String(port), '--state-dir', stateDir]);
    expect(again.code, again.stderr).toBe(0);
    const after = await pids();
    expect(after[coordinator]).not.toBe(before[coordinator]);
    for (const k of Object.keys(before).filter((x) => x !== coordinator)) expect(after[k], k).toBe(before[k]);
    const jobs = await cli(['job', 'list', '--json']);
    expect(jobs.code, jobs.stderr).toBe(0);
  });

  it('local down stops what it started', async () => {
    const running = Object.values(await pids());
    const down = await cli(['local', 'down', '--state-dir', stateDir]);
    expect(down.code, down.stderr).toBe(0);
    await waitFor(() => running.every((p) => !pidAlive(p)), { what: 'every local process to stop', timeoutMs: 20_000 });
  });
});
