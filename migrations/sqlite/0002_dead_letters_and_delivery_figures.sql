-- Rows and batches that could not be delivered, kept per pipeline until retried or purged.
CREATE TABLE dead_letters (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline_id       TEXT    NOT NULL,
    run_id            INTEGER NOT NULL,
    created_at        TEXT    NOT NULL,
    -- 'batch': refused by the Events API (retryable); 'row': rejected before sending
    kind              TEXT    NOT NULL,
    reason            TEXT    NOT NULL,
    message           TEXT,
    source_request_id TEXT,
    -- the batch JSON, or the row's values as JSON
    payload           TEXT    NOT NULL,
    -- content hash: the batch's source_request_id, or a hash of the row's values
    content_key       TEXT    NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX dead_letters_by_pipeline ON dead_letters (pipeline_id, kind, id);
-- The same row or batch refused again (a full sync re-reads it every run) is one
-- dead letter with more attempts, not a new one each run.
CREATE UNIQUE INDEX dead_letters_by_content ON dead_letters (pipeline_id, kind, content_key);

-- Delivery figures of a run.
ALTER TABLE pipeline_runs ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
ALTER TABLE pipeline_runs ADD COLUMN responses_429 INTEGER NOT NULL DEFAULT 0;
ALTER TABLE pipeline_runs ADD COLUMN responses_5xx INTEGER NOT NULL DEFAULT 0;
ALTER TABLE pipeline_runs ADD COLUMN timeouts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE pipeline_runs ADD COLUMN rate_limit_wait_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE pipeline_runs ADD COLUMN dead_letters INTEGER NOT NULL DEFAULT 0;
