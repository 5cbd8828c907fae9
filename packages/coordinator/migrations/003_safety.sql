-- Safety (issue 4): per-job reports and rollbacks.
CREATE TABLE job_reports (
  job_id      uuid PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
  report      jsonb NOT NULL,           -- pb.JobReport as JSON: per-table counts, durations, verification
  created_at  timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE jobs ADD COLUMN rolled_back_at timestamptz;
ALTER TABLE jobs ADD COLUMN rollback jsonb;   -- what the rollback undid: rows deleted, restored, re-inserted
