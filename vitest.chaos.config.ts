import { defineConfig, mergeConfig } from 'vitest/config';
import base from './vitest.config.js';

// `npm run chaos`: only the chaos tests (excluded from the default run), CHAOS_KILLS=N.
export default mergeConfig(base, defineConfig({
  test: { include: ['test/chaos/**/*.test.ts'], exclude: ['**/node_modules/**', '**/dist/**'], testTimeout: 30 * 60_000 },
}));
