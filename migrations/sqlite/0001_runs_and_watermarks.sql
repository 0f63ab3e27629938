-- Run history, shaped like mParticle's Warehouse Sync pipeline runs plus wsync's own counters.
CREATE TABLE pipeline_runs (
    id                      INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline_id             TEXT    NOT NULL,
    -- queued | running | success | failed | interrupted
    state                   TEXT    NOT NULL,
    -- manual | scheduled
    run_type                TEXT    NOT NULL,
    dry_run                 INTEGER NOT NULL DEFAULT 0,
    start_date              TEXT    NOT NULL,
    end_date                TEXT,
    data_interval_start     TEXT,
    data_interval_end       TEXT,
    records_extracted       INTEGER NOT NULL DEFAULT 0,
    records_mapped          INTEGER NOT NULL DEFAULT 0,
    event_batches_generated INTEGER NOT NULL DEFAULT 0,
    batches_sent            INTEGER NOT NULL DEFAULT 0,
    requests_sent           INTEGER NOT NULL DEFAULT 0,
    bytes_sent              INTEGER NOT NULL DEFAULT 0,
    rows_rejected           INTEGER NOT NULL DEFAULT 0,
    values_dropped          INTEGER NOT NULL DEFAULT 0,
    values_truncated        INTEGER NOT NULL DEFAULT 0,
    -- JSON: {"rejected": "...jsonl", "batches": "...jsonl"}
    files                   TEXT    NOT NULL DEFAULT '{}',
    error                   TEXT
);
CREATE INDEX pipeline_runs_by_pipeline ON pipeline_runs (pipeline_id, id);

-- The incremental watermark: the end of the last window whose batches were all acknowledged.
CREATE TABLE watermarks (
    pipeline_id TEXT PRIMARY KEY,
    value       TEXT    NOT NULL,
    run_id      INTEGER NOT NULL,
    updated_at  TEXT    NOT NULL
);
