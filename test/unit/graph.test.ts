import { describe, it, expect } from 'vitest';
import { orderLevels } from '../../packages/coordinator/src/plan/graph.js';

describe('orderLevels', () => {
  it('puts parents before children', () => {
    const r = orderLevels(['a', 'b', 'c'], [{ from: 'b', to: 'a', name: 'b_a' }, { from: 'c', to: 'b', name: 'c_b' }]);
    expect([r.level.get('a'), r.level.get('b'), r.level.get('c')]).toEqual([0, 1, 2]);
    expect(r.deferred).toEqual([]);
    expect(r.count).toBe(3);
  });

  it('takes the longest path when a table has parents at several levels', () => {
    const r = orderLevels(['a', 'b', 'c'], [{ from: 'c', to: 'a', name: 'x' }, { from: 'c', to: 'b', name: 'y' }, { from: 'b', to: 'a', name: 'z' }]);
    expect(r.level.get('c')).toBe(2);
  });

  it('defers self-references and cycle edges, and keeps the cycle on one level', () => {
    const r = orderLevels(['emp', 'dept', 'staff', 'root'], [
      { from: 'emp', to: 'emp', name: 'emp_mgr' },
      { from: 'dept', to: 'staff', name: 'dept_head' },
      { from: 'staff', to: 'dept', name: 'staff_dept' },
      { from: 'dept', to: 'root', name: 'dept_root' },
    ]);
    expect(r.deferred.map((e) => e.name).sort()).toEqual(['dept_head', 'emp_mgr', 'staff_dept']);
    expect(r.level.get('dept')).toBe(r.level.get('staff'));
    expect(r.level.get('dept')).toBe(1);
    expect(r.cycles.map((c) => [...c].sort())).toContainEqual(['dept', 'staff']);
    expect(r.cycles).toContainEqual(['emp']);
  });

  it('ignores FKs to tables outside the sync', () => {
    const r = orderLevels(['a'], [{ from: 'a', to: 'elsewhere', name: 'x' }]);
    expect(r.level.get('a')).toBe(0);
  });

  it('handles a 5000-table chain without recursion limits', () => {
    const nodes = Array.from({ length: 5000 }, (_, i) => `t${i}`);
    const edges = nodes.slice(1).map((n, i) => ({ from: n, to: nodes[i]!, name: `fk${i}` }));
    const r = orderLevels(nodes, edges);
    expect(r.level.get('t4999')).toBe(4999);
  });
});
