import { defineConfig } from 'vitest/config';

// `npm run chaos`: only the chaos tests (excluded from the default run), CHAOS_KILLS=N kills.
export default defineConfig({
  test: {
    include: ['test/chaos/**/*.test.ts'],
    pool: 'forks',
    fileParallelism: false,
    testTimeout: 30 * 60_000,
    hookTimeout: 180_000,
    reporters: ['default'],
  },
});
