import { defineConfig } from 'vitest/config';

// `npm run bench` (scripts/bench.sh): the benchmark is a vitest file outside the normal suite
// (vitest.config.ts excludes test/bench/**). It runs alone, for as long as it takes (up to 3 h).
export default defineConfig({
  test: {
    root: new URL('..', import.meta.url).pathname,
    include: [process.env.BENCH_FILE ?? 'test/bench/bench.test.ts'],
    pool: 'forks',
    fileParallelism: false,
    testTimeout: 3 * 3600_000,
    hookTimeout: 3600_000,
    teardownTimeout: 120_000,
    reporters: ['default'],
  },
});
