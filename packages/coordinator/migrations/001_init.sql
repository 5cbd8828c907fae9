-- syncflow control database, version 1
CREATE TABLE connections (
  name        text PRIMARY KEY,
  agent_group text NOT NULL,
  sealed_url  text NOT NULL,          -- AES-256-GCM; the plain URL is never stored
  database    text NOT NULL,          -- host:port/db, for display
  protected   boolean NOT NULL DEFAULT false,
  created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE jobs (
  id            uuid PRIMARY KEY,
  from_conn     text NOT NULL,
  to_conn       text NOT NULL,
  mode          text NOT NULL CHECK (mode IN ('upsert', 'mirror')),
  state         text NOT NULL CHECK (state IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
  spec          jsonb NOT NULL,
  plan          jsonb NOT NULL,
  snapshot_id   text NOT NULL DEFAULT '',
  trace_id      text NOT NULL DEFAULT '',
  trace         jsonb NOT NULL DEFAULT '{}',
  error         text NOT NULL DEFAULT '',
  rows_deleted  bigint NOT NULL DEFAULT 0,
  finalized     boolean NOT NULL DEFAULT false,
  created_at    timestamptz NOT NULL DEFAULT now(),
  started_at    timestamptz,
  finished_at   timestamptz
);
CREATE INDEX jobs_created ON jobs (created_at DESC);
CREATE INDEX jobs_active ON jobs (state) WHERE state IN ('pending', 'running');

CREATE TABLE tasks (
  id            text PRIMARY KEY,
  job_id        uuid NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
  level         int NOT NULL,
  schema_name   text NOT NULL,
  table_name    text NOT NULL,
  state         text NOT NULL CHECK (state IN ('pending', 'queued', 'running', 'done', 'failed', 'cancelled')),
  method        text NOT NULL,
  message       jsonb NOT NULL,       -- the task as published, sealed URLs included (never plain)
  row_estimate  bigint NOT NULL DEFAULT 0,
  rows          bigint NOT NULL DEFAULT 0,
  bytes         bigint NOT NULL DEFAULT 0,
  batches       bigint NOT NULL DEFAULT 0,
  inserted      bigint NOT NULL DEFAULT 0,
  updated       bigint NOT NULL DEFAULT 0,
  marked_for_delete bigint NOT NULL DEFAULT 0,
  checkpoint    jsonb,                -- {seq, last_key}: only ever a key the target committed
  attempts      int NOT NULL DEFAULT 0,
  error         text NOT NULL DEFAULT '',
  started_at    timestamptz,
  finished_at   timestamptz
);
CREATE INDEX tasks_job ON tasks (job_id, level);

CREATE TABLE sync_logs (
  id       bigserial PRIMARY KEY,
  job_id   uuid NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
  task_id  text,
  level    text NOT NULL,
  message  text NOT NULL,
  at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sync_logs_job ON sync_logs (job_id, id);
