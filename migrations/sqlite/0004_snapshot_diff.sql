-- Snapshot diff ([diff] in a pipeline file): per pipeline, what was last
-- acknowledged for each key, so a run sends only new and changed rows.

-- One row per key of a pipeline: 16-byte key hash, 8-byte payload hash and the
-- key's version (bumped each time a new payload is sent; it goes into the
-- batches' source_request_id). With on_delete = "unset_attributes" also what
-- unsetting needs: the profile's address (mpid and user identities, as JSON)
-- and the set of attribute names last sent. WITHOUT ROWID keeps it one B-tree.
CREATE TABLE diff_snapshot (
    pipeline_id  TEXT    NOT NULL,
    key_hash     BLOB    NOT NULL,
    payload_hash BLOB    NOT NULL,
    version      INTEGER NOT NULL,
    address      TEXT,
    attribute_set INTEGER,
    PRIMARY KEY (pipeline_id, key_hash)
) WITHOUT ROWID;

-- Distinct sets of attribute names (a JSON array, sorted): most rows of a
-- model send the same set, so each key stores a small integer.
CREATE TABLE diff_attribute_sets (
    id    INTEGER PRIMARY KEY,
    names TEXT NOT NULL UNIQUE
);

-- What the snapshot of a pipeline was built under: the mapping fingerprint
-- (model SQL, mappings, protection; a change invalidates the snapshot) and when
-- every row was last sent (diff.full_resync_every, wsync run --full-resync).
CREATE TABLE diff_pipelines (
    pipeline_id  TEXT PRIMARY KEY,
    fingerprint  TEXT NOT NULL,
    resynced_at  TEXT NOT NULL
);

-- Diff figures of a run.
ALTER TABLE pipeline_runs ADD COLUMN rows_new INTEGER NOT NULL DEFAULT 0;
ALTER TABLE pipeline_runs ADD COLUMN rows_changed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE pipeline_runs ADD COLUMN rows_unchanged INTEGER NOT NULL DEFAULT 0;
ALTER TABLE pipeline_runs ADD COLUMN rows_unset INTEGER NOT NULL DEFAULT 0;
