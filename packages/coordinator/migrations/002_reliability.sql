-- syncflow control database, version 2: per-table recovery, dead letters, pause
ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check
  CHECK (state IN ('pending', 'running', 'completed', 'completed_with_errors', 'failed', 'cancelled', 'paused'));
ALTER TABLE tasks DROP CONSTRAINT IF EXISTS tasks_state_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_state_check
  CHECK (state IN ('pending', 'queued', 'running', 'done', 'failed', 'cancelled', 'blocked'));
-- How often a task was republished (retry, resume): the JetStream message id is task_id#<publishes>.
ALTER TABLE tasks ADD COLUMN publishes int NOT NULL DEFAULT 0;
-- When a job with spec.timeout_seconds is cancelled (set when it goes running; reset by a retry).
ALTER TABLE jobs ADD COLUMN timeout_at timestamptz;
DROP INDEX IF EXISTS jobs_active;
CREATE INDEX jobs_active ON jobs (state) WHERE state IN ('pending', 'running', 'paused');

-- A task that exhausted its attempts, as put into the dead-letter stream.
CREATE TABLE dead_letters (
  id          bigserial PRIMARY KEY,
  job_id      uuid NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
  task_id     text NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
  error_code  text NOT NULL,
  error       text NOT NULL,
  attempts    int NOT NULL,
  history     jsonb NOT NULL DEFAULT '[]',
  publish     int NOT NULL DEFAULT 0,    -- tasks.publishes when it failed: one dead letter per publish of the task
  stream_seq  bigint NOT NULL DEFAULT 0,
  created_at  timestamptz NOT NULL DEFAULT now(),
  retried_at  timestamptz,
  UNIQUE (task_id, publish)
);
CREATE INDEX dead_letters_job ON dead_letters (job_id, id);
