import { defineConfig } from 'vitest/config';

// End-to-end tests start PostgreSQL clusters, nats-server and syncflow processes: on a 2-core machine
// test files run one at a time, each in its own forked process.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts', 'packages/*/test/**/*.test.ts'],
    exclude: ['**/node_modules/**', '**/dist/**', 'test/bench/**', 'test/chaos/**'],
    pool: 'forks',
    fileParallelism: false,
    testTimeout: 180_000,
    hookTimeout: 180_000,
    teardownTimeout: 60_000,
    reporters: ['default'],
  },
});
