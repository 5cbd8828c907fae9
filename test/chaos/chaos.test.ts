import { expect, it } from 'vitest';
import { runChaos } from '../fixtures/chaos.js';
import { MILLION } from '../fixtures/reliability.js';

/**
 * `npm run chaos` (CHAOS_KILLS=N, default 10): 1.05 million rows while a random agent is killed every
 * 2-5 s. Excluded from the default run (vitest.config.ts excludes test/chaos).
 */
const kills = Number(process.env.CHAOS_KILLS ?? 10);

it(`survives ${kills} random agent kills with at most one batch of rework per kill`, async () => {
  const r = await runChaos({ scale: MILLION, kills, everyMs: [2_000, 5_000], batchBytes: 128 * 1024 });
  expect(r.state, r.error).toBe('JOB_STATE_COMPLETED');
  expect(r.diff).toEqual([]);
  expect(r.duplicates).toBe(0);
  expect(r.ledgerRows).toBe(r.expectedRows);
  expect(r.reworkBatches).toBeLessThanOrEqual(r.kills.length);
}, 30 * 60_000);
