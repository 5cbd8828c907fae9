import { SyncflowError, ErrorKind, notFound, type Sql } from '@syncflow/shared';

export interface ConnectionRow { name: string; agent_group: string; sealed_url: string; database: string; protected: boolean; created_at: string }

export class ConnectionStore {
  constructor(private sql: Sql) {}

  async create(c: Omit<ConnectionRow, 'created_at'>): Promise<ConnectionRow> {
    const rows = await this.sql<ConnectionRow[]>`
      INSERT INTO connections (name, agent_group, sealed_url, database, protected)
      VALUES (${c.name}, ${c.agent_group}, ${c.sealed_url}, ${c.database}, ${c.protected})
      ON CONFLICT (name) DO NOTHING
      RETURNING name, agent_group, sealed_url, database, protected, created_at::text`;
    if (rows.length === 0) throw new SyncflowError(ErrorKind.AlreadyExists, `connection "${c.name}" already exists`);
    return rows[0]!;
  }

  async list(): Promise<ConnectionRow[]> {
    return this.sql<ConnectionRow[]>`SELECT name, agent_group, sealed_url, database, protected, created_at::text FROM connections ORDER BY name`;
  }

  async get(name: string): Promise<ConnectionRow> {
    const [row] = await this.sql<ConnectionRow[]>`SELECT name, agent_group, sealed_url, database, protected, created_at::text FROM connections WHERE name = ${name}`;
    if (!row) throw notFound(`connection "${name}" does not exist`);
    return row;
  }

  async remove(name: string): Promise<void> {
    const active = await this.sql`SELECT id FROM jobs WHERE state IN ('pending', 'running') AND (from_conn = ${name} OR to_conn = ${name}) LIMIT 1`;
    if (active.length) throw new SyncflowError(ErrorKind.FailedPrecondition, `connection "${name}" is used by running job ${active[0]!.id}`);
    const r = await this.sql`DELETE FROM connections WHERE name = ${name}`;
    if (r.count === 0) throw notFound(`connection "${name}" does not exist`);
  }
}
