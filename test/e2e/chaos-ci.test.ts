import { expect, it } from 'vitest';
import { runChaos } from '../fixtures/chaos.js';
import type { Scale } from '../fixtures/reliability.js';

/** The bounded CI variant of test/chaos: a smaller dataset, three random agent kills. */
const SCALE: Scale = { customers: 20_000, products: 10_000, orders: 100_000, itemsPerOrder: 2, events: 50_000 };

it('a sync survives 3 random agent kills, at most one batch of rework per kill', async () => {
  const r = await runChaos({ scale: SCALE, kills: 3, everyMs: [1_500, 3_000], batchBytes: 64 * 1024 });
  expect(r.state, r.error).toBe('JOB_STATE_COMPLETED');
  expect(r.diff).toEqual([]);
  expect(r.duplicates).toBe(0);
  expect(r.ledgerRows).toBe(r.expectedRows);
  expect(r.reworkBatches).toBeLessThanOrEqual(r.kills.length);
}, 600_000);
