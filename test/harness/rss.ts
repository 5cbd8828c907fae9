import { readdirSync, readFileSync } from 'node:fs';

/** A field of /proc/<pid>/status in kB (VmRSS, VmHWM), or 0 when the process is gone. */
export function procStatusKb(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** `pid` and all its descendants, read from /proc (children of children included). */
export function processTree(pid: number): number[] {
  const parentOf = new Map<number, number>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      parentOf.set(Number(entry), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {
      // vanished
    }
  }
  const out = [pid];
  for (let i = 0; i < out.length; i++) {
    for (const [child, parent] of parentOf) if (parent === out[i]) out.push(child);
  }
  return out;
}

/**
 * Samples the resident memory of labelled process trees every `intervalMs` and keeps, per label, the
 * peak of the tree's summed VmRSS (a tree's processes peak at different moments, so this is the
 * memory the tree held at once). For a single long-lived process, VmHWM (its own peak) is folded in.
 */
export class RssSampler {
  readonly peakKb = new Map<string, number>();
  private timer: NodeJS.Timeout | null = null;

  constructor(
    /** label → root pids (re-evaluated at each sample, so processes started later are seen). */
    private readonly roots: () => Record<string, number[]>,
    private readonly opts: { intervalMs?: number; tree?: boolean; useHwm?: boolean } = {},
  ) {}

  start(): this {
    this.sample();
    this.timer = setInterval(() => this.sample(), this.opts.intervalMs ?? 200);
    return this;
  }

  sample(): void {
    for (const [label, pids] of Object.entries(this.roots())) {
      let kb = 0;
      for (const root of pids) {
        const all = this.opts.tree ? processTree(root) : [root];
        for (const p of all) kb += procStatusKb(p, 'VmRSS');
        if (this.opts.useHwm && !this.opts.tree) kb = Math.max(kb, procStatusKb(root, 'VmHWM'));
      }
      this.peakKb.set(label, Math.max(this.peakKb.get(label) ?? 0, kb));
    }
  }

  /** Stops sampling (after a last sample) and returns label → peak MB. */
  stop(): Record<string, number> {
    this.sample();
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    return Object.fromEntries([...this.peakKb].map(([k, v]) => [k, Math.round(v / 102.4) / 10]));
  }
}

const CLK_TCK = 100; // Linux USER_HZ (getconf CLK_TCK) on every platform Node supports

/** CPU ticks (user + system) of each live process of `pid`'s tree, and those of the children `pid` has reaped (cutime/cstime). */
interface TreeCpu { live: Map<number, number>; reaped: number }

function treeCpu(pid: number): TreeCpu {
  const live = new Map<number, number>();
  let reaped = 0;
  for (const p of processTree(pid)) {
    try {
      const stat = readFileSync(`/proc/${p}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      // fields after the comm: [0]=state ... [11]=utime [12]=stime [13]=cutime [14]=cstime
      live.set(p, Number(f[11]) + Number(f[12]));
      if (p === pid) reaped = Number(f[13]) + Number(f[14]);
    } catch {
      // vanished
    }
  }
  return { live, reaped };
}

/**
 * CPU seconds per label between start() and stop(): where a run's CPU went. A label's root is e.g. a
 * postmaster: its backends come and go. The CPU of a process that ends within the window reaches its
 * parent's cutime whole, including what it used before the window (an earlier run's idle pool
 * connection closing now): that earlier part, known from start(), is taken off again.
 */
export class CpuMeter {
  private readonly base = new Map<string, TreeCpu>();
  constructor(private readonly roots: () => Record<string, number>) {}
  start(): this {
    for (const [label, pid] of Object.entries(this.roots())) this.base.set(label, treeCpu(pid));
    return this;
  }
  stop(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [label, pid] of Object.entries(this.roots())) {
      const was = this.base.get(label) ?? { live: new Map<number, number>(), reaped: 0 };
      const now = treeCpu(pid);
      let ticks = now.reaped - was.reaped;
      for (const [p, t] of now.live) ticks += t - (was.live.get(p) ?? 0);
      for (const [p, t] of was.live) if (!now.live.has(p)) ticks -= t;
      out[label] = Math.round((ticks / CLK_TCK) * 10) / 10;
    }
    return out;
  }
}
