import { existsSync, readFileSync } from 'node:fs';

// Last-resort cleanup: if a test file dies without calling stop()/destroy(), the servers it started
// (postmasters, nats-server, agents) would outlive the test process and hold ports. On exit we
// SIGKILL whatever is still registered. Only synchronous work is possible in an 'exit' handler.
const killers = new Set<() => void>();
let installed = false;

/** Registers a synchronous killer to run at process exit; returns a function that unregisters it. */
export function killOnExit(kill: () => void): () => void {
  if (!installed) {
    installed = true;
    process.once('exit', () => {
      for (const k of killers) {
        try {
          k();
        } catch {
          // best effort
        }
      }
    });
  }
  killers.add(kill);
  return () => void killers.delete(kill);
}

/** True while `pid` is a live (non-zombie) process. */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    // A killed daemon reparented to a PID 1 that does not reap stays a zombie: that counts as dead.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    // /proc/<pid> vanished in between (dead), unless there is no /proc at all.
    return !existsSync('/proc/self');
  }
}

