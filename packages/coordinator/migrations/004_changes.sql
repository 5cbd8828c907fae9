-- Diff re-sync from tracked changes (agent read/change-log.ts).
-- The change slot a job created with its snapshot, and that snapshot's consistent point.
ALTER TABLE jobs ADD COLUMN change_slot text NOT NULL DEFAULT '', ADD COLUMN change_lsn text NOT NULL DEFAULT '';

-- Per table of a (source, target) pair: the change slot of its last completed sync. The target then
-- held the table as of that slot's point (or later); the next re-sync decodes the keys changed since.
-- `shape`: the columns and types on both sides then; a table whose shape changed is hashed instead.
-- `exact`: the target then held exactly the source's rows (a mirror job, or a load into an empty
-- table); an upsert job's leaves rows deleted on the source, so only upsert jobs use that baseline.
CREATE TABLE change_baselines (
  from_conn   text NOT NULL,
  to_conn     text NOT NULL,
  schema_name text NOT NULL,
  table_name  text NOT NULL,
  slot        text NOT NULL,
  shape       text NOT NULL,
  exact       boolean NOT NULL,
  job_id      uuid NOT NULL,
  at          timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (from_conn, to_conn, schema_name, table_name)
);
CREATE INDEX change_baselines_slot ON change_baselines (from_conn, slot);

-- Change slots no baseline needs: dropped on the source, retried until gone (a slot keeps WAL).
CREATE TABLE retired_slots (
  from_conn text NOT NULL,
  slot      text NOT NULL,
  at        timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (from_conn, slot)
);
