-- A backfill cut into chunks that any process (daemons, the `wsync backfill`
-- that asked for it) runs in parallel. A chunk is a range of the iterator with
-- a lease of its own (key `<pipeline>/backfill/<id>/<chunk>`), so chunks run
-- side by side and beside the pipeline's own runs; whether a chunk is done is
-- read from its runs (a success), never stored apart from them, so it cannot
-- disagree with what was committed.

CREATE TABLE backfills (
    id            BIGSERIAL PRIMARY KEY,
    pipeline_id   TEXT    NOT NULL,
    from_bound    TEXT    NOT NULL,
    until_bound   TEXT    NOT NULL,
    chunks        BIGINT NOT NULL,
    created_at    TEXT    NOT NULL,
    created_by    TEXT    NOT NULL,
    cancelled_at  TEXT
);

-- `retry_after_run`: failed runs up to this id no longer count against the
-- chunk's attempts (`wsync backfill --resume`).
CREATE TABLE backfill_chunks (
    backfill_id     BIGINT NOT NULL,
    chunk           BIGINT NOT NULL,
    lease_key       TEXT    NOT NULL,
    from_bound      TEXT    NOT NULL,
    until_bound     TEXT    NOT NULL,
    retry_after_run BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (backfill_id, chunk)
);

-- A chunk's runs hold the chunk's lease, not the pipeline's: `lease_key` is
-- NULL for every other run (its lease is its pipeline's).
ALTER TABLE pipeline_runs ADD COLUMN lease_key TEXT;
-- The process that started the run (`host:pid:instance`): which daemon ran
-- what, once several share the store.
ALTER TABLE pipeline_runs ADD COLUMN holder TEXT;
ALTER TABLE pipeline_runs ADD COLUMN backfill_id BIGINT;
ALTER TABLE pipeline_runs ADD COLUMN backfill_chunk BIGINT;
CREATE INDEX pipeline_runs_by_chunk ON pipeline_runs (backfill_id, backfill_chunk);
