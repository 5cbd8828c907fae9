import { describe, expect, it } from 'vitest';
import { JobRunner, type RunnerDeps } from '../../packages/coordinator/src/run/advance.js';

// An operator's requeue (retry) runs between the runner's advances of a job, never beside one: the
// advance that sees every table ended and finalizes the job must not count a table requeued meanwhile.
describe('JobRunner.exclusive', () => {
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  it('waits for an advance in progress, and the next advance waits for it', async () => {
    const order: string[] = [];
    const deps = {
      jobs: {
        get: async () => {
          order.push('advance reads the job');
          await sleep(50); // e.g. the finalize of a job whose tables have all ended
          order.push('advance done');
          return { state: 'completed' };
        },
      },
    } as unknown as RunnerDeps;
    const runner = new JobRunner(deps);
    const first = runner.advance('j');
    const retry = runner.exclusive('j', async () => {
      order.push('retry starts');
      await sleep(20);
      order.push('retry ends');
      return 42;
    });
    const second = runner.advance('j');
    expect(await retry).toBe(42);
    await Promise.all([first, second]);
    expect(order).toEqual(['advance reads the job', 'advance done', 'retry starts', 'retry ends', 'advance reads the job', 'advance done']);
  });

  it('hands its error to its caller and leaves the job usable', async () => {
    const runner = new JobRunner({ jobs: { get: async () => ({ state: 'completed' }) } } as unknown as RunnerDeps);
    await expect(runner.exclusive('j', async () => { throw new Error('nothing to retry'); })).rejects.toThrow('nothing to retry');
    expect(await runner.exclusive('j', async () => 'next')).toBe('next');
  });
});
