import { sleep } from './retry.js';

/**
 * A token bucket: `rate` units per second, bursts up to one second's worth. `take(n)` waits until n
 * units are available (a request larger than the burst is let through once the bucket is full, so a
 * big batch is slowed, never stuck). A rate of 0 means unlimited. The rate can change at any time.
 */
export class TokenBucket {
  // Starts empty: a limit holds from the first batch, with no initial burst.
  #tokens = 0;
  #last = Date.now();
  constructor(private rate = 0) {}

  setRate(rate: number): void {
    this.#refill();
    this.rate = Math.max(0, rate);
    this.#tokens = Math.min(this.#tokens, this.rate);
  }

  get limited(): boolean { return this.rate > 0; }

  async take(n: number): Promise<number> {
    let waited = 0;
    while (this.rate > 0) {
      this.#refill();
      const need = Math.min(n, this.rate);
      if (this.#tokens >= need) { this.#tokens -= n; break; }
      const ms = Math.ceil(((need - this.#tokens) / this.rate) * 1000);
      await sleep(Math.min(ms, 1000));
      waited += Math.min(ms, 1000);
    }
    return waited;
  }

  #refill(): void {
    const now = Date.now();
    this.#tokens = Math.min(this.rate, this.#tokens + ((now - this.#last) / 1000) * this.rate);
    this.#last = now;
  }
}

/** Rows and bytes per second together: waits for both. */
export class RateLimiter {
  readonly rows = new TokenBucket();
  readonly bytes = new TokenBucket();
  set(rowsPerS: number, bytesPerS: number): void {
    this.rows.setRate(rowsPerS);
    this.bytes.setRate(bytesPerS);
  }
  async take(rows: number, bytes: number): Promise<number> {
    return (await this.rows.take(rows)) + (await this.bytes.take(bytes));
  }
}

/**
 * Batch size by AIMD on the target's commit latency: grow by a step while acks come back fast, halve
 * when they slow down (a busy target, a slow link) or when this process's memory runs high, always
 * within [min, max].
 */
export class BatchSizer {
  #bytes: number;
  constructor(private min: number, private max: number, private targetLatencyMs = 1000) {
    this.#bytes = Math.max(min, Math.min(max, 1 << 20));
  }
  get bytes(): number { return this.#bytes; }
  observe(latencyMs: number, memoryTight = false): void {
    if (memoryTight || latencyMs > 2 * this.targetLatencyMs) this.#bytes = Math.max(this.min, Math.floor(this.#bytes / 2));
    else if (latencyMs < this.targetLatencyMs) this.#bytes = Math.min(this.max, this.#bytes + Math.max(this.min, this.max >> 4));
  }
}
