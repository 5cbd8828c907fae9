import type { PlanRecord, TaskRow } from '../store/jobs.js';

const keyOf = (schema: string, name: string) => `${schema}.${name}`;

interface PlannedTable { schema: string; name: string; level?: number; depends_on?: string[] }

/** schema.table → the schema.table names it references (its FK parents inside the sync). */
export function parentsOf(plan: PlanRecord): Map<string, string[]> {
  const m = new Map<string, string[]>();
  for (const t of plan.tables as PlannedTable[]) m.set(keyOf(t.schema, t.name), t.depends_on ?? []);
  return m;
}

/**
 * Pending tasks whose table may start now: every parent table that orders it (a parent of a lower FK
 * level; a parent of the same level is an FK cycle or an empty table loaded with its foreign keys set
 * aside, which do not wait) has all its tasks done. A table does not wait for the whole level before
 * it, only for its own parents: a slow table (a keyless one hashing both sides in a re-sync) no longer
 * holds up the tables that do not reference it.
 */
export function readyTasks(plan: PlanRecord, tasks: TaskRow[]): TaskRow[] {
  const parents = parentsOf(plan);
  const level = new Map((plan.tables as PlannedTable[]).map((t) => [keyOf(t.schema, t.name), t.level ?? 0]));
  const notDone = new Set(tasks.filter((t) => t.state !== 'done').map((t) => keyOf(t.schema_name, t.table_name)));
  return tasks.filter((t) => {
    if (t.state !== 'pending') return false;
    const k = keyOf(t.schema_name, t.table_name);
    return (parents.get(k) ?? []).every((p) => (level.get(p) ?? 0) >= (level.get(k) ?? 0) || !notDone.has(p));
  });
}

/**
 * Tasks that cannot run because a parent table failed (or is itself blocked), with the reason;
 * transitively. Only tasks not yet started are blocked: their rows would reference parent rows
 * that never arrived.
 */
export function blockedTasks(plan: PlanRecord, tasks: TaskRow[]): Map<string, string> {
  const parents = parentsOf(plan);
  const bad = new Map<string, string>(); // table → why it is bad
  for (const t of tasks) if (t.state === 'failed' || t.state === 'blocked') bad.set(keyOf(t.schema_name, t.table_name), t.state);
  const out = new Map<string, string>();
  for (let changed = true; changed;) {
    changed = false;
    for (const t of tasks) {
      const k = keyOf(t.schema_name, t.table_name);
      if (t.state !== 'pending' || out.has(t.id)) continue;
      const parent = (parents.get(k) ?? []).find((p) => bad.has(p));
      if (!parent) continue;
      out.set(t.id, `blocked: parent table ${parent} ${bad.get(parent) === 'failed' ? 'failed' : 'is blocked'}`);
      bad.set(k, 'blocked');
      changed = true;
    }
  }
  return out;
}

/**
 * The failed or blocked tasks of the FK ancestors of `taskIds`' tables, transitively: a table retried
 * without them would be blocked again at once (blockedTasks), and the job would end again.
 */
export function failedAncestors(plan: PlanRecord, tasks: TaskRow[], taskIds: readonly string[]): TaskRow[] {
  const parents = parentsOf(plan);
  const seen = new Set<string>();
  const todo = tasks.filter((t) => taskIds.includes(t.id)).map((t) => keyOf(t.schema_name, t.table_name));
  while (todo.length) {
    for (const p of parents.get(todo.pop()!) ?? []) {
      if (!seen.has(p)) { seen.add(p); todo.push(p); }
    }
  }
  return tasks.filter((t) => !taskIds.includes(t.id) && seen.has(keyOf(t.schema_name, t.table_name)) && (t.state === 'failed' || t.state === 'blocked'));
}
