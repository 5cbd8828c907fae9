import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestStack, databaseHashes, diffHashes, sequenceValues, waitFor, type PgCluster, startRegions, stopRegions } from '../harness/index.js';
import { Api } from '../harness/api.js';
import { OtlpReceiver } from '../harness/otlp.js';
import { loadChinook, schemaOnly, chinookTables } from '../fixtures/chinook.js';
import { loadTricky } from '../fixtures/tricky.js';
import { healthStatus, reflectedServices } from '../harness/standard-grpc.js';
import type { pb } from '../../packages/shared/src/index.js';

let stack: TestStack;
let api: Api;
let otlp: OtlpReceiver;
let a: PgCluster;
let b: PgCluster;

beforeAll(async () => {
  otlp = await OtlpReceiver.start();
  ({ stack, api, a, b } = await startRegions({ env: { OTEL_EXPORTER_OTLP_ENDPOINT: otlp.endpoint } }));
});

afterAll(async () => {
  api?.close();
  await stack?.stop();
  await otlp?.stop();
});

describe('Chinook from region a to region b', () => {
  it('crosses through the two agents and every table is equal by content', async () => {
    await loadChinook(a, 'chinook');
    await schemaOnly(a, 'chinook', b, 'chinook');
    for (const [name, cluster, group] of [['chinook-a', a, 'a'], ['chinook-b', b, 'b']] as const) {
      const r = await stack.cli(['connection', 'add', name, '--url', cluster.url('chinook'), '--group', group]);
      expect(r.code, r.stderr).toBe(0);
    }
    const r = await stack.cli(['sync', 'start', '--from', 'chinook-a', '--to', 'chinook-b', '--wait', '--json']);
    expect(r.code, r.stderr + r.stdout).toBe(0);
    const src = await databaseHashes(a.sql('chinook'));
    const dst = await databaseHashes(b.sql('chinook'));
    expect(src.size).toBe(chinookTables.length);
    expect(diffHashes(src, dst)).toEqual([]);
    expect(await sequenceValues(b.sql('chinook'))).toEqual(await sequenceValues(a.sql('chinook')));
  });

  it('puts the spans of one job, from the coordinator and both agents, in one trace', async () => {
    const { jobs } = await api.call<pb.ListJobsResponse__Output>('ListJobs', { limit: 1 });
    const traceId = jobs[0]!.trace_id;
    expect(traceId).toMatch(/^[0-9a-f]{32}$/);
    // Each process exports its spans in batches (every 500 ms): wait for the spans asked for, not only for three services.
    const names = () => new Set(otlp.spans.filter((s) => s.traceId === traceId).map((s) => s.name));
    await waitFor(() => otlp.servicesOf(traceId).size >= 3 && ['sync job', 'sync table', 'apply table'].every((n) => names().has(n)),
      { what: 'the job\'s spans from three services', timeoutMs: 30_000 });
    expect([...otlp.servicesOf(traceId)].sort()).toEqual(['syncflow-agent-a', 'syncflow-agent-b', 'syncflow-coordinator']);
  });
});

describe('standard gRPC tools', () => {
  it('get health and reflection from the coordinator and every agent', async () => {
    expect(await healthStatus(stack.coordinatorAddress, 'syncflow.v1.SyncService')).toBe('SERVING');
    expect(await reflectedServices(stack.coordinatorAddress)).toContain('syncflow.v1.SyncService');
    const ready = stack.logs().split('\n').filter((l) => l.includes('"msg":"agent ready"'));
    expect(ready).toHaveLength(2);
    for (const line of ready) {
      const address = JSON.parse(line.slice(line.indexOf('{'))).address as string;
      expect(await healthStatus(address, 'syncflow.v1.AgentService')).toBe('SERVING');
      expect(await reflectedServices(address)).toContain('syncflow.v1.AgentService');
    }
  });
});

describe('a schema built to be hard', () => {
  beforeAll(async () => {
    await loadTricky(a, 'tricky');
    await loadTricky(b, 'tricky', { data: false });
    await api.connection('tricky-a', a, 'tricky', 'a');
    await api.connection('tricky-b', b, 'tricky', 'b');
  });

  const sync = async (mode: 'SYNC_MODE_UPSERT' | 'SYNC_MODE_MIRROR') => {
    const job = await api.call<pb.Job__Output>('StartSync', { from: 'tricky-a', to: 'tricky-b', mode });
    const done = await api.waitJob(job.id);
    expect(done.state, done.error).toBe('JOB_STATE_COMPLETED');
    return done;
  };

  it('is equal on both sides after a sync, sequences included', async () => {
    const job = await sync('SYNC_MODE_UPSERT');
    expect(job.tasks.every((t) => t.method === 'APPLY_METHOD_COPY')).toBe(true);
    expect(diffHashes(await databaseHashes(a.sql('tricky')), await databaseHashes(b.sql('tricky')))).toEqual([]);
    expect(await sequenceValues(b.sql('tricky'))).toEqual(await sequenceValues(a.sql('tricky')));
    // The FKs set aside for the cycle and the self-reference are back and valid.
    const [fk] = await b.sql('tricky')<{ n: number }[]>`
      SELECT count(*)::int AS n FROM pg_constraint WHERE contype = 'f' AND convalidated
        AND conname IN ('dept_head_emp_fkey', 'staff_dept_id_fkey', 'employees_manager_id_fkey')`;
    expect(fk!.n).toBe(3);
  });

  it('after 100 source changes: upsert brings all but the deletes, mirror makes the tables equal', async () => {
    const src = a.sql('tricky');
    await src.begin(async (tx) => {
      // 40 updates, 30 inserts, 30 deletes (a parent order with its items among them: children go first)
      await tx`UPDATE public.kitchen_sink SET t = 'changed ' || id, n = coalesce(n, 0) + 1 WHERE id BETWEEN 100 AND 129`;
      await tx`UPDATE "Sales Dept"."Order Items" SET "Qty" = "Qty" + 1 WHERE "OrderId" BETWEEN 10 AND 11`; // 3+4 = 7 rows
      await tx`UPDATE public.employees SET name = name || ' (moved)', manager_id = 1000 WHERE id IN (5, 6, 7)`;
      await tx`INSERT INTO public.kitchen_sink (n, t) SELECT g, 'new row ' || g FROM generate_series(1, 20) g`;
      await tx`INSERT INTO public.measurements (id, taken, v) SELECT 5000 + g, date '2025-06-01', g FROM generate_series(1, 10) g`;
      await tx`DELETE FROM public.kitchen_sink WHERE id BETWEEN 1500 AND 1519`;
      await tx`DELETE FROM "Sales Dept"."Order Items" WHERE "OrderId" = 300`; // 5 rows
      await tx`DELETE FROM "Sales Dept"."Orders" WHERE "OrderId" = 300`;
      await tx`DELETE FROM public.audit_log WHERE msg = 'event 7'`; // 10 rows in a keyless table
    });
    const deletedSink = 20;

    await sync('SYNC_MODE_UPSERT');
    const dst = b.sql('tricky');
    const diff = diffHashes(await databaseHashes(src), await databaseHashes(dst));
    // Upsert keeps rows only the target has: exactly the tables with deletes differ.
    expect(diff.map((d) => d.split(':')[0]).sort()).toEqual(['Sales Dept.Order Items', 'Sales Dept.Orders', 'public.audit_log', 'public.kitchen_sink']);
    const [{ n }] = await dst<{ n: number }[]>`SELECT count(*)::int AS n FROM public.kitchen_sink WHERE id BETWEEN 1500 AND 1519`;
    expect(n).toBe(deletedSink);
    const [{ same }] = await dst<{ same: boolean }[]>`SELECT count(*) = 0 AS same FROM public.kitchen_sink WHERE id BETWEEN 100 AND 129 AND t NOT LIKE 'changed %'`;
    expect(same).toBe(true);

    await sync('SYNC_MODE_MIRROR');
    expect(diffHashes(await databaseHashes(src), await databaseHashes(dst))).toEqual([]);
    expect(await sequenceValues(dst)).toEqual(await sequenceValues(src));
  });
});
