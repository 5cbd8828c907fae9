/**
 * The FK graph of the tables in a sync, ordered into levels: a table's level is one more than
 * the highest level of the tables it references. Tables on an FK cycle (a strongly connected
 * component, self-references included) share a level; the FK edges inside such a component
 * cannot be satisfied by any load order, so they are returned as `deferred`.
 */
export interface FkEdge { from: string; to: string; name: string }

export interface Levels {
  level: Map<string, number>;
  deferred: FkEdge[];
  cycles: string[][];
  count: number;
}

export function orderLevels(nodes: readonly string[], edges: readonly FkEdge[]): Levels {
  const known = new Set(nodes);
  const inScope = edges.filter((e) => known.has(e.from) && known.has(e.to));
  const out = new Map<string, string[]>(nodes.map((n) => [n, []]));
  for (const e of inScope) out.get(e.from)!.push(e.to);

  const comp = stronglyConnected(nodes, out);
  const members = new Map<number, string[]>();
  for (const n of nodes) members.set(comp.get(n)!, [...(members.get(comp.get(n)!) ?? []), n]);

  const deferred = inScope.filter((e) => comp.get(e.from) === comp.get(e.to));
  const cycles = [...members.values()].filter((m) => m.length > 1 || deferred.some((e) => e.from === m[0] && e.to === m[0]));

  // Longest path from the component to a sink of the condensation DAG.
  const compLevel = new Map<number, number>();
  const visiting = new Set<number>();
  const levelOf = (c: number): number => {
    const known = compLevel.get(c);
    if (known !== undefined) return known;
    if (visiting.has(c)) throw new Error('condensation is not acyclic');
    visiting.add(c);
    let lvl = 0;
    for (const n of members.get(c)!) for (const p of out.get(n)!) {
      const pc = comp.get(p)!;
      if (pc !== c) lvl = Math.max(lvl, levelOf(pc) + 1);
    }
    visiting.delete(c);
    compLevel.set(c, lvl);
    return lvl;
  };
  const level = new Map(nodes.map((n) => [n, levelOf(comp.get(n)!)]));
  const count = nodes.length ? Math.max(...level.values()) + 1 : 0;
  return { level, deferred, cycles, count };
}

/** Tarjan's algorithm, iterative (deep FK chains must not overflow the stack). */
function stronglyConnected(nodes: readonly string[], out: Map<string, string[]>): Map<string, number> {
  let index = 0, next = 0;
  const idx = new Map<string, number>(), low = new Map<string, number>(), onStack = new Set<string>();
  const stack: string[] = [];
  const comp = new Map<string, number>();
  for (const root of nodes) {
    if (idx.has(root)) continue;
    const work: { n: string; i: number }[] = [{ n: root, i: 0 }];
    idx.set(root, index); low.set(root, index); index++; stack.push(root); onStack.add(root);
    while (work.length) {
      const top = work[work.length - 1]!;
      const succ = out.get(top.n)!;
      if (top.i < succ.length) {
        const m = succ[top.i++]!;
        if (!idx.has(m)) {
          idx.set(m, index); low.set(m, index); index++; stack.push(m); onStack.add(m);
          work.push({ n: m, i: 0 });
        } else if (onStack.has(m)) low.set(top.n, Math.min(low.get(top.n)!, idx.get(m)!));
      } else {
        work.pop();
        if (work.length) {
          const parent = work[work.length - 1]!.n;
          low.set(parent, Math.min(low.get(parent)!, low.get(top.n)!));
        }
        if (low.get(top.n) === idx.get(top.n)) {
          let m: string;
          do { m = stack.pop()!; onStack.delete(m); comp.set(m, next); } while (m !== top.n);
          next++;
        }
      }
    }
  }
  return comp;
}
