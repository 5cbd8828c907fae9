import { TestStack, type TestStackOptions } from './stack.js';
import type { PgCluster } from './postgres.js';
import { Api } from './api.js';

/** What most e2e files start with: a TestStack, an API client, and the clusters of regions a and b. */
export interface Regions { stack: TestStack; api: Api; a: PgCluster; b: PgCluster }

export async function startRegions(opts?: TestStackOptions): Promise<Regions> {
  const stack = await TestStack.start(opts);
  return { stack, api: new Api(stack.coordinatorAddress), a: stack.region('a'), b: stack.region('b') };
}

/** Closes the client and stops everything (safe when the start failed half-way). */
export async function stopRegions(r: { stack?: TestStack; api?: Api }): Promise<void> {
  r.api?.close();
  await r.stack?.stop();
}
