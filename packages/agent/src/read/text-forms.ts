import type { Sql } from '@syncflow/shared';

/**
 * The session settings that change values' text forms. Everything that hashes text forms to compare
 * two databases (verify and dry run in hash-ranges.ts, diff re-sync in buckets.ts) pins them, so two
 * databases configured differently hash equal data equally.
 */
const PINNED: readonly [string, string][] = [
  ['TimeZone', 'UTC'], ['DateStyle', 'ISO, YMD'], ['IntervalStyle', 'postgres'], ['extra_float_digits', '1'], ['bytea_output', 'hex'],
];
const NAMES = PINNED.map(([name]) => name);

/** Sets the settings `names[i]` to `values[i]` for the rest of the transaction, in one statement. */
async function setLocal(tx: Sql, names: readonly string[], values: readonly string[]): Promise<void> {
  await tx`SELECT set_config(n, v, true) FROM unnest(${names as string[]}::text[], ${values as string[]}::text[]) AS s(n, v)`;
}

/** Pins the text-form settings for the rest of the transaction. */
export async function pinTextForms(tx: Sql): Promise<void> {
  await setLocal(tx, NAMES, PINNED.map(([, value]) => value));
}

/**
 * Runs `fn` with the text forms pinned, then puts the transaction's earlier values back (the batch
 * transaction on the target parses COPY text with the session's own settings).
 */
export async function withPinnedTextForms<T>(tx: Sql, fn: () => Promise<T>): Promise<T> {
  const [{ before }] = await tx<{ before: string[] }[]>`
    SELECT array_agg(current_setting(n) ORDER BY i) AS before FROM unnest(${NAMES}::text[]) WITH ORDINALITY AS s(n, i)`;
  await pinTextForms(tx);
  try {
    return await fn();
  } finally {
    await setLocal(tx, NAMES, before);
  }
}
