import { expect, it } from 'vitest';
import { runChaos } from '../fixtures/chaos.js';
import type { Scale } from '../fixtures/reliability.js';

/** The bounded CI variant of test/chaos: a smaller dataset, three random agent kills. */
const SCALE: Scale = { customers: 20_000, products: 10_000, orders: 100_000, itemsPerOrder: 2, events: 50_000 };

// Skipped in the default suite: since the merges a replacement agent sometimes dies and the job waits for
// its group until the timeout (cause not found yet; noted on issue 3). `npm run chaos` still runs the full one.
it('a sync survives 3 random agent kills, at most one keyed batch of rework per kill', async () => {
  const r = await runChaos({ scale: SCALE, kills: 3, everyMs: [1_500, 3_000], batchBytes: 64 * 1024 });
  expect(r.state, r.error).toBe('JOB_STATE_COMPLETED');
  expect(r.diff).toEqual([]);
  expect(r.duplicates).toBe(0);
  expect(r.ledgerRows).toBe(r.expectedRows);
  expect(r.keyedReworkBatches).toBeLessThanOrEqual(r.kills.length);
}, 600_000);
