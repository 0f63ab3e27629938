-- The scheduled daemon: schedule intervals, in-run checkpoints, resumption,
-- pause/resume and one-run-per-pipeline locks.

-- The schedule interval a run covers (RFC 3339 instants), for interval
-- schedules; data_interval_start/end keep the iterator window the SQL read.
ALTER TABLE pipeline_runs ADD COLUMN interval_start TEXT;
ALTER TABLE pipeline_runs ADD COLUMN interval_end TEXT;
-- The iterator value below which every row of the window was acknowledged,
-- committed as batches are acknowledged; the next run resumes from it.
ALTER TABLE pipeline_runs ADD COLUMN checkpoint TEXT;
-- The interrupted or failed run this one resumed.
ALTER TABLE pipeline_runs ADD COLUMN resumed_from INTEGER;

-- Pause/resume from the command line, on top of `paused` in the pipeline file.
CREATE TABLE pipeline_state (
    pipeline_id TEXT PRIMARY KEY,
    paused      INTEGER NOT NULL DEFAULT 0,
    changed_at  TEXT    NOT NULL
);

-- One run per pipeline at a time, across processes: the holder's process id
-- and a per-process token (a restarted container reuses pid 1).
CREATE TABLE pipeline_locks (
    pipeline_id TEXT PRIMARY KEY,
    run_id      INTEGER NOT NULL,
    pid         INTEGER NOT NULL,
    instance    TEXT    NOT NULL,
    acquired_at TEXT    NOT NULL
);
