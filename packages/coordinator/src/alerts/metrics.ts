import { createServer, type Server } from 'node:http';
import type { Logger } from '@syncflow/shared';

type Labels = Record<string, string>;

/**
 * A few counters in the Prometheus text format (GET /metrics), written by hand: the exposition
 * format for counters is three lines, not worth a dependency.
 */
export class Metrics {
  readonly #counters = new Map<string, { help: string; values: Map<string, number> }>();
  #server: Server | undefined;

  constructor() {
    this.define('syncflow_dead_letters_total', 'Tasks that exhausted their attempts and went to the dead-letter stream.');
    this.define('syncflow_jobs_total', 'Jobs that ended, by final state.');
    this.define('syncflow_rows_total', 'Rows read from sources by finished tasks.');
    this.define('syncflow_task_failures_total', 'Task attempts that failed, by whether the failure was final.');
    this.define('syncflow_alerts_total', 'Alerts sent to the webhook, by outcome.');
  }

  define(name: string, help: string): void {
    if (!this.#counters.has(name)) this.#counters.set(name, { help, values: new Map() });
  }

  inc(name: string, labels: Labels = {}, by = 1): void {
    const c = this.#counters.get(name);
    if (!c) throw new Error(`unknown metric ${name}`);
    const key = Object.entries(labels).sort().map(([k, v]) => `${k}="${v.replace(/["\\\n]/g, '_')}"`).join(',');
    c.values.set(key, (c.values.get(key) ?? 0) + by);
  }

  text(): string {
    const out: string[] = [];
    for (const [name, c] of this.#counters) {
      out.push(`# HELP ${name} ${c.help}`, `# TYPE ${name} counter`);
      if (c.values.size === 0) out.push(`${name} 0`);
      for (const [k, v] of c.values) out.push(k ? `${name}{${k}} ${v}` : `${name} ${v}`);
    }
    return out.join('\n') + '\n';
  }

  /** Serves GET /metrics on host:port; resolves with the bound port. */
  async listen(hostPort: string, log: Logger): Promise<number> {
    const i = hostPort.lastIndexOf(':');
    const host = hostPort.slice(0, i);
    const port = Number(hostPort.slice(i + 1));
    this.#server = createServer((req, res) => {
      if (req.method === 'GET' && req.url?.split('?')[0] === '/metrics') {
        res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' });
        res.end(this.text());
      } else {
        res.writeHead(404).end();
      }
    });
    await new Promise<void>((resolve, reject) => {
      this.#server!.once('error', reject);
      this.#server!.listen(port, host, () => resolve());
    });
    const bound = (this.#server.address() as { port: number }).port;
    log.info({ address: `${host}:${bound}` }, 'metrics listening');
    return bound;
  }

  close(): void {
    this.#server?.close();
  }
}
