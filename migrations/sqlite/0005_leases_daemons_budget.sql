-- Several daemons on one state store: pipeline leases with fencing tokens
-- (replacing the process-id locks), the daemons' heartbeats, claims that make
-- a scheduled run start once across daemons, and the feeds' shared budget.

-- The process-id locks meant something on one host only.
DROP TABLE pipeline_locks;

-- One row per pipeline that ever ran. `holder` is '' while nobody holds it;
-- `fencing_token` only grows (each taking of the lease adds one); instants
-- are unix milliseconds.
CREATE TABLE pipeline_leases (
    pipeline_id   TEXT    PRIMARY KEY,
    holder        TEXT    NOT NULL,
    host          TEXT    NOT NULL,
    pid           INTEGER NOT NULL,
    run_id        INTEGER NOT NULL,
    fencing_token INTEGER NOT NULL,
    acquired_at   TEXT    NOT NULL,
    expires_at    INTEGER NOT NULL
);

-- The token a run's writes must still find on its pipeline's lease.
ALTER TABLE pipeline_runs ADD COLUMN fencing_token INTEGER NOT NULL DEFAULT 0;

-- A scheduled run, as the daemons' plan names it (the latest scheduled run it
-- follows, and its interval or fire time), is claimed once.
CREATE TABLE schedule_claims (
    pipeline_id TEXT    NOT NULL,
    due_key     TEXT    NOT NULL,
    run_id      INTEGER NOT NULL,
    claimed_at  TEXT    NOT NULL,
    PRIMARY KEY (pipeline_id, due_key)
);

-- The daemons sharing this store, and when each was last heard from.
CREATE TABLE daemons (
    id                  TEXT    PRIMARY KEY,
    host                TEXT    NOT NULL,
    pid                 INTEGER NOT NULL,
    version             TEXT    NOT NULL,
    started_at          TEXT    NOT NULL,
    heartbeat_at        INTEGER NOT NULL,
    max_concurrent_runs INTEGER NOT NULL,
    stopped_at          TEXT
);

-- Who is sending to a feed now: each sender renews its row while it sends,
-- and the feed's configured rate is split between the live rows. `feed` is
-- a hash of the feed's host and API key, never the key itself.
CREATE TABLE feed_senders (
    feed       TEXT    NOT NULL,
    holder     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (feed, holder)
);

-- The account limit learned from the Events API's answers, per feed, so the
-- next run starts there instead of at the configured rate.
CREATE TABLE feed_limits (
    feed       TEXT PRIMARY KEY,
    rate       REAL NOT NULL,
    learned_at TEXT NOT NULL
);
