import type { BucketSums } from './digest-builder.js';

/**
 * Memory for diff re-sync bucket sums (12 bytes a fine bucket, up to 48 MiB a table part), bounded
 * per agent process: builds reserve their bytes before they allocate, and a finished build stays
 * cached under its decision's session key until its fine round asks for it, it expires, or a build
 * needs the room (oldest first). A build waits only for other builds, which depend on nothing but
 * their own database, so the budget cannot deadlock; an evicted entry is computed again.
 */
export class DigestMemory {
  #used = 0;
  readonly #entries = new Map<string, { sums: BucketSums; bytes: number; at: number }>();
  readonly #waiters: (() => void)[] = [];

  constructor(readonly capBytes: number, readonly ttlMs: number) {}

  get usedBytes(): number { return this.#used; }
  get cachedKeys(): string[] { return [...this.#entries.keys()]; }

  /** Reserves `bytes` for a build (evicting cached entries, else waiting for builds to finish); returns the release. */
  async reserve(bytes: number): Promise<() => void> {
    for (;;) {
      this.#expire();
      while (this.#used + bytes > this.capBytes && this.#entries.size) this.#evict(this.#entries.keys().next().value!);
      // Alone, a build runs even above the cap (one part's sums are at most 48 MiB).
      if (this.#used + bytes <= this.capBytes || this.#used === 0) break;
      await new Promise<void>((r) => this.#waiters.push(r));
    }
    this.#used += bytes;
    let released = false;
    return () => { if (!released) { released = true; this.#free(bytes); } };
  }

  /** Keeps a finished build (its reservation passes to the cache; `release` must not be called after). */
  keep(key: string, sums: BucketSums, bytes: number): void {
    if (this.#entries.has(key)) this.#evict(key);
    this.#entries.set(key, { sums, bytes, at: Date.now() });
  }

  /** The cached sums of `key`, removed from the cache (their bytes are freed): read them synchronously. */
  take(key: string): BucketSums | null {
    this.#expire();
    const e = this.#entries.get(key);
    if (!e) return null;
    this.#evict(key);
    return e.sums;
  }

  drop(key: string): void { if (this.#entries.has(key)) this.#evict(key); }

  #expire(): void {
    const old = Date.now() - this.ttlMs;
    for (const [k, e] of this.#entries) if (e.at < old) this.#evict(k);
  }

  #evict(key: string): void {
    const e = this.#entries.get(key)!;
    this.#entries.delete(key);
    this.#free(e.bytes);
  }

  #free(bytes: number): void {
    this.#used -= bytes;
    for (const w of this.#waiters.splice(0)) w();
  }
}

/** The agent's budget: two builds of 2^22 buckets (2 × 48 MiB) or many small ones, plus what is cached; kept for 10 minutes. */
export const digestMemory = new DigestMemory(112 * 1024 * 1024, 10 * 60_000);
