import { expect, it } from 'vitest';
import { runChaos } from '../fixtures/chaos.js';
import type { Scale } from '../fixtures/reliability.js';

/** The bounded CI variant of test/chaos: a smaller dataset, three random agent kills. */
const SCALE: Scale = { customers: 20_000, products: 10_000, orders: 100_000, itemsPerOrder: 2, events: 50_000 };

it('a sync survives 3 random agent kills, at most one batch of rework per kill', async () => {
  // 380 000 rows at 25 000 rows/s: ~15 s, so the three kills (every 1.5–3 s) land while the job runs
  // (unthrottled it ends in ~3 s, often before the first kill).
  const r = await runChaos({ scale: SCALE, kills: 3, everyMs: [1_500, 3_000], batchBytes: 64 * 1024, maxRowsPerS: 25_000 });
  expect(r.state, r.error).toBe('JOB_STATE_COMPLETED');
  expect(r.kills).toHaveLength(3);
  expect(r.diff).toEqual([]);
  expect(r.duplicates).toBe(0);
  expect(r.ledgerRows).toBe(r.expectedRows);
  expect(r.reworkBatches).toBeLessThanOrEqual(r.kills.length);
}, 600_000);
