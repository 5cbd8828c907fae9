import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Sql, Logger } from '@syncflow/shared';

const DIR = fileURLToPath(new URL('../../migrations/', import.meta.url));

/** Applies the numbered SQL files in migrations/ that the control DB has not seen, each in its own transaction. */
export async function migrate(sql: Sql, log: Logger): Promise<number> {
  await sql`CREATE TABLE IF NOT EXISTS schema_migrations (version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`;
  const files = readdirSync(DIR).filter((f) => /^\d{3}_.+\.sql$/.test(f)).sort();
  let applied = 0;
  for (const f of files) {
    const version = Number(f.slice(0, 3));
    await sql.begin(async (tx) => {
      // Serialises coordinators starting together against one control DB.
      await tx`SELECT pg_advisory_xact_lock(hashtext('syncflow.migrate'))`;
      const done = await tx`SELECT 1 FROM schema_migrations WHERE version = ${version}`;
      if (done.length) return;
      await tx.unsafe(readFileSync(DIR + f, 'utf8'));
      await tx`INSERT INTO schema_migrations (version, name) VALUES (${version}, ${f})`;
      applied++;
      log.info({ migration: f }, 'migration applied');
    });
  }
  return applied;
}
