import { describe, expect, it } from 'vitest';
import pino from 'pino';
import { Breaker, isConnectionLevel } from '../../packages/agent/src/breaker.js';
import { safeDeleteOrder } from '../../packages/coordinator/src/run/recovery.js';
import { blockedTasks, failedAncestors, readyTasks } from '../../packages/coordinator/src/run/schedule.js';
import { SyncflowError, ErrorKind, toGrpcError, toSyncflowError, canMoveJob, canMoveTask, isTerminalJob, isTerminalTask, jobStateToProto } from '../../packages/shared/src/index.js';
import type { PlanRecord, TaskRow } from '../../packages/coordinator/src/store/jobs.js';

const log = pino({ level: 'silent' });
const down = () => new SyncflowError(ErrorKind.Unavailable, 'refused', { code: 'ECONNREFUSED', retryable: true });

describe('circuit breaker', () => {
  it('opens after the threshold, refuses at once, probes once half-open, closes on success', async () => {
    const b = new Breaker({ threshold: 2, cooldownMs: 50 }, log, 'db');
    b.failure(down());
    expect(b.state).toBe('closed');
    b.failure(down());
    expect(b.state).toBe('open');
    await expect(b.guard(async () => undefined)).rejects.toMatchObject({ code: 'circuit_open', retryable: true });
    await new Promise((r) => setTimeout(r, 60));
    expect(b.state).toBe('half_open');
    let probes = 0;
    await Promise.all([b.guard(async () => { probes++; }), b.guard(async () => { probes++; })]);
    expect(probes).toBe(1);
    expect(b.state).toBe('closed');
  });

  it('its refusal says when to come back, and that survives the trip between agents (gRPC trailers)', async () => {
    const b = new Breaker({ threshold: 1, cooldownMs: 5_000 }, log, 'db');
    b.failure(down());
    const refusal = await b.guard(async () => undefined).catch((e: SyncflowError) => e);
    expect(refusal).toMatchObject({ code: 'circuit_open', retryable: true });
    const after = (refusal as SyncflowError).retryAfterMs!;
    expect(after).toBeGreaterThan(4_000);
    expect(after).toBeLessThanOrEqual(5_000);
    // (the breaker's SyncflowError class is the built package's; the wire helpers here are the sources')
    const r = refusal as SyncflowError;
    const wire = toGrpcError(new SyncflowError(ErrorKind.Unavailable, r.message, { code: r.code, retryable: r.retryable, retryAfterMs: after }));
    const back = toSyncflowError({ ...wire, message: String(wire.details) }, 'target agent');
    expect(back).toMatchObject({ code: 'circuit_open', retryable: true, retryAfterMs: Math.round(after) });
    expect(back.message).toMatch(/^target agent: database db is unreachable/);
  });

  it('a failed probe opens it again for longer; data errors never count', async () => {
    const b = new Breaker({ threshold: 1, cooldownMs: 20 }, log, 'db');
    b.failure(new SyncflowError(ErrorKind.DataError, 'bad row', { code: '23505' }));
    b.failure(new SyncflowError(ErrorKind.Unavailable, 'serialization', { code: '40001', retryable: true }));
    expect(b.state).toBe('closed');
    b.failure(down());
    await new Promise((r) => setTimeout(r, 30));
    await expect(b.guard(async () => { throw down(); })).rejects.toMatchObject({ code: 'circuit_open' });
    expect(b.state).toBe('open');
    // open again for twice the cooldown (40 ms): the refusal says how long is left
    const refusal = await b.guard(async () => undefined).catch((e: SyncflowError) => e.message);
    expect(Number(/next probe in (\d+) ms/.exec(String(refusal))?.[1])).toBeGreaterThan(20);
    expect(isConnectionLevel(new SyncflowError(ErrorKind.Unavailable, 'x', { code: '57P01', retryable: true }))).toBe(true);
  });
});

const plan = {
  tables: [
    { schema: 'public', name: 'customers', depends_on: [] },
    { schema: 'public', name: 'orders', depends_on: ['public.customers'] },
    { schema: 'public', name: 'items', depends_on: ['public.orders'] },
    { schema: 'public', name: 'notes', depends_on: ['public.items'] },
    { schema: 'public', name: 'products', depends_on: [] },
  ],
  deleteOrder: ['notes', 'items', 'orders', 'customers', 'products'].map((name) => ({ schema: 'public', name, key: [] })),
} as unknown as PlanRecord;
const task = (table: string, state: TaskRow['state']) => ({ id: table, schema_name: 'public', table_name: table, state }) as TaskRow;

describe('per-table recovery', () => {
  it('blocks the pending descendants of a failed table, transitively, and nothing else', () => {
    const blocked = blockedTasks(plan, [task('customers', 'done'), task('orders', 'failed'), task('items', 'pending'), task('notes', 'pending'), task('products', 'pending')]);
    expect([...blocked.keys()].sort()).toEqual(['items', 'notes']);
    expect(blocked.get('notes')).toMatch(/public\.items is blocked/);
  });

  it('starts a table once its own FK parents are done, not once the whole level before it is', () => {
    const leveled = { ...plan, tables: [
      { schema: 'public', name: 'customers', level: 0, depends_on: [] },
      { schema: 'public', name: 'events', level: 0, depends_on: [] },
      { schema: 'public', name: 'orders', level: 1, depends_on: ['public.customers'] },
      { schema: 'public', name: 'items', level: 2, depends_on: ['public.orders'] },
      // loaded with its foreign key set aside: same level as its parent, does not wait for it
      { schema: 'public', name: 'notes', level: 0, depends_on: ['public.customers'] },
    ] } as unknown as PlanRecord;
    const ready = (states: Record<string, TaskRow['state']>) => readyTasks(leveled, Object.entries(states).map(([t, s]) => task(t, s))).map((t) => t.id).sort();
    expect(ready({ customers: 'pending', events: 'pending', orders: 'pending', items: 'pending', notes: 'pending' })).toEqual(['customers', 'events', 'notes']);
    // events (same level as customers) still running: orders goes anyway; items waits for orders
    expect(ready({ customers: 'done', events: 'running', orders: 'pending', items: 'pending', notes: 'queued' })).toEqual(['orders']);
    expect(ready({ customers: 'done', events: 'running', orders: 'running', items: 'pending', notes: 'done' })).toEqual([]);
    // a parent with a part not done (failed: the child is blocked instead) holds the child back
    expect(ready({ customers: 'failed', events: 'done', orders: 'pending', items: 'pending', notes: 'done' })).toEqual([]);
  });

  it('retries a table with its failed or blocked FK ancestors, transitively, not its siblings or children', () => {
    const tasks = [task('customers', 'failed'), task('orders', 'blocked'), task('items', 'blocked'), task('notes', 'blocked'), task('products', 'failed')];
    // a dead letter of items: orders (blocked) and customers (failed) go with it; products, notes do not
    expect(failedAncestors(plan, tasks, ['items']).map((t) => t.id).sort()).toEqual(['customers', 'orders']);
    // a parent already done is not retried
    expect(failedAncestors(plan, [task('customers', 'done'), task('orders', 'failed'), task('items', 'failed')], ['items']).map((t) => t.id)).toEqual(['orders']);
    expect(failedAncestors(plan, tasks, ['customers'])).toEqual([]);
  });

  it('applies mirror deletes only where no child is unfinished', () => {
    const order = safeDeleteOrder(plan, [task('customers', 'done'), task('orders', 'failed'), task('items', 'blocked'), task('notes', 'blocked'), task('products', 'done')]);
    expect(order.map((t) => t.name)).toEqual(['products']);
  });
});

describe('states', () => {
  it('retries move failed jobs and tasks back; completed_with_errors and paused are on the wire', () => {
    expect(canMoveJob('running', 'completed_with_errors')).toBe(true);
    expect(canMoveJob('completed_with_errors', 'running')).toBe(true);
    expect(canMoveJob('failed', 'running')).toBe(true);
    expect(canMoveJob('completed', 'running')).toBe(false);
    expect(canMoveJob('running', 'paused') && canMoveJob('paused', 'running') && canMoveJob('paused', 'cancelled')).toBe(true);
    expect(isTerminalJob('failed') && isTerminalJob('completed_with_errors') && !isTerminalJob('paused')).toBe(true);
    expect(canMoveTask('failed', 'pending') && canMoveTask('blocked', 'pending') && !canMoveTask('done', 'pending')).toBe(true);
    expect(isTerminalTask('blocked')).toBe(true);
    expect(jobStateToProto('completed_with_errors')).toBe('JOB_STATE_COMPLETED_WITH_ERRORS');
  });
});
