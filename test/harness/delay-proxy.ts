import { createConnection, createServer, type Server, type Socket } from 'node:net';

export interface DelayProxyOptions {
  /** Where connections are forwarded (host:port). */
  target: string;
  /** Added to every chunk in each direction (ms); 0 = a pass-through that only counts bytes. */
  delayMs?: number;
  /**
   * Bytes held in flight (delayed, not yet written) per direction before the sender is paused:
   * the proxy's "bandwidth-delay product". Default 8 MiB.
   */
  maxInFlightBytes?: number;
}

/**
 * A TCP proxy on 127.0.0.1 that delays each chunk by `delayMs` in each direction, keeping order (one
 * FIFO per direction), and counts the bytes it carries both ways: a WAN link between two agents.
 */
export class DelayProxy {
  /** Bytes client → target and target → client since start (or the last resetCounters()). */
  bytesUp = 0;
  bytesDown = 0;
  private readonly sockets = new Set<Socket>();

  private constructor(
    private readonly server: Server,
    readonly port: number,
    private readonly opts: Required<DelayProxyOptions>,
  ) {}

  static async start(opts: DelayProxyOptions): Promise<DelayProxy> {
    const full = { delayMs: 0, maxInFlightBytes: 8 << 20, ...opts };
    let proxy: DelayProxy | undefined;
    const server = createServer((client) => proxy?.accept(client));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    const addr = server.address();
    if (!addr || typeof addr !== 'object') throw new Error('DelayProxy: no listening address');
    proxy = new DelayProxy(server, addr.port, full);
    return proxy;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  get bytes(): number {
    return this.bytesUp + this.bytesDown;
  }

  resetCounters(): void {
    this.bytesUp = 0;
    this.bytesDown = 0;
  }

  private accept(client: Socket): void {
    const [host, port] = splitHostPort(this.opts.target);
    const upstream = createConnection({ host, port });
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    for (const s of [client, upstream]) {
      this.sockets.add(s);
      s.once('close', () => {
        this.sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
      s.on('error', () => {
        client.destroy();
        upstream.destroy();
      });
    }
    this.forward(client, upstream, (n) => (this.bytesUp += n));
    this.forward(upstream, client, (n) => (this.bytesDown += n));
  }

  /** One direction: every chunk is written `delayMs` after it arrived, in arrival order. */
  private forward(from: Socket, to: Socket, count: (n: number) => void): void {
    const { delayMs, maxInFlightBytes } = this.opts;
    if (delayMs <= 0) {
      from.on('data', (chunk: Buffer) => count(chunk.length));
      from.pipe(to);
      return;
    }
    const queue: { due: number; chunk: Buffer | null }[] = []; // null = end of stream
    let inFlight = 0;
    let timer: NodeJS.Timeout | null = null;
    const pump = () => {
      timer = null;
      const now = Date.now();
      while (queue.length && queue[0]!.due <= now) {
        const { chunk } = queue.shift()!;
        if (chunk === null) {
          to.end();
          return;
        }
        inFlight -= chunk.length;
        if (!to.destroyed) to.write(chunk);
      }
      if (from.isPaused() && inFlight < maxInFlightBytes && to.writableLength < maxInFlightBytes) from.resume();
      if (queue.length) timer = setTimeout(pump, Math.max(0, queue[0]!.due - Date.now()));
    };
    const enqueue = (chunk: Buffer | null) => {
      queue.push({ due: Date.now() + delayMs, chunk });
      if (!timer) timer = setTimeout(pump, delayMs);
    };
    from.on('data', (chunk: Buffer) => {
      count(chunk.length);
      inFlight += chunk.length;
      enqueue(chunk);
      if (inFlight >= maxInFlightBytes || to.writableLength >= maxInFlightBytes) from.pause();
    });
    to.on('drain', () => {
      if (from.isPaused() && inFlight < maxInFlightBytes) from.resume();
    });
    from.once('end', () => enqueue(null));
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

function splitHostPort(hp: string): [string, number] {
  const i = hp.lastIndexOf(':');
  return [hp.slice(0, i), Number(hp.slice(i + 1))];
}
