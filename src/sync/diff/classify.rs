//! The classification: a merge join of the run's rows, sorted by key hash,
//! with the pipeline's snapshot read in key order.
//!
//! The snapshot's primary key `(pipeline_id, key_hash)` makes `ORDER BY
//! key_hash` an ordered scan; it is read a page at a time, each page packed
//! by SQLite into two values: one blob of every key and payload hash back to
//! back, and the versions as text (a value per page instead of a row per key
//! keeps sqlx out of the per-key cost; binary rather than hex, because
//! SQLite's `hex`/`printf` per key cost more than the scan itself). Rows of a repeated key come out of the sort
//! adjacent, so duplicates are seen without an index. Only rows that are sent
//! or rejected leave a record (sorted back into row order for the delivery
//! pass); unchanged rows are only counted. Snapshot keys no row has are
//! "gone": with `unset_attributes` their address and attributes are copied
//! into the staging table `gone`, in key order, a batch of keys at a time.
//!
//! Memory: one page of the snapshot, one run of each sort and a read buffer
//! per run (see [`super::sort`]), whatever the number of rows.

use std::cmp::Ordering;

use sqlx::{Row as _, SqliteConnection};

use super::deliver::{sort_error, Decided};
use super::sort::{Sorted, Sorter};
use super::stage::{KeyHash, Keyed, PayloadHash};
use super::{decision, row_state, state_error, DiffCounts, KEY_HASH_BYTES, PAYLOAD_HASH_BYTES};
use crate::sync::SyncError;

/// Snapshot keys a page.
const SNAPSHOT_PAGE: i64 = 20_000;
/// Gone keys looked up at once (one variable each).
const GONE_BATCH: usize = 500;

/// One key of the snapshot.
#[derive(Debug, Clone, Copy)]
struct SnapKey {
    key: KeyHash,
    payload: PayloadHash,
    version: i64,
}

/// The snapshot of one pipeline in key order, a page at a time.
struct SnapshotPages {
    pipeline_id: String,
    page: Vec<SnapKey>,
    at: usize,
    after: Option<Vec<u8>>,
    done: bool,
}

impl SnapshotPages {
    fn new(pipeline_id: &str) -> Self {
        Self {
            pipeline_id: pipeline_id.to_owned(),
            page: Vec::new(),
            at: 0,
            after: None,
            done: false,
        }
    }

    /// The smallest key not yet passed, `None` at the end.
    async fn head(&mut self, stage: &mut SqliteConnection) -> Result<Option<SnapKey>, SyncError> {
        if self.at == self.page.len() && !self.done {
            self.load(stage).await?;
        }
        Ok(self.page.get(self.at).copied())
    }

    fn pass(&mut self) {
        self.at += 1;
    }

    async fn load(&mut self, stage: &mut SqliteConnection) -> Result<(), SyncError> {
        // The subquery picks the page (the next keys in order); the page is
        // sorted again below, so nothing relies on the order in which the
        // aggregates concatenate (both see the rows in the same order, so
        // the n-th hashes and the n-th version belong together).
        let row = sqlx::query(
            "SELECT CAST(group_concat(key_hash || payload_hash, '') AS BLOB), \
               group_concat(version), count(*) \
             FROM (SELECT key_hash, payload_hash, version FROM st.diff_snapshot \
               WHERE pipeline_id = $1 AND key_hash > coalesce($2, x'') \
               ORDER BY key_hash LIMIT $3)",
        )
        .bind(&self.pipeline_id)
        .bind(self.after.as_deref())
        .bind(SNAPSHOT_PAGE)
        .fetch_one(stage)
        .await
        .map_err(state_error)?;
        let hashes: Option<Vec<u8>> = row.get(0);
        let versions: Option<String> = row.get(1);
        let count: i64 = row.get(2);
        self.page = unpack(
            hashes.as_deref().unwrap_or_default(),
            versions.as_deref().unwrap_or_default(),
            count,
        )?;
        self.at = 0;
        self.done = count < SNAPSHOT_PAGE;
        self.after = self.page.last().map(|k| k.key.to_vec());
        Ok(())
    }
}

/// The keys of one packed page: `hashes` holds each key's hash and payload
/// hash back to back, `versions` their versions, comma-separated. Sorted by
/// key.
fn unpack(hashes: &[u8], versions: &str, count: i64) -> Result<Vec<SnapKey>, SyncError> {
    let bad = || {
        SyncError::Internal(
            "the diff snapshot holds a key or payload hash of an unexpected size".to_owned(),
        )
    };
    const ONE: usize = KEY_HASH_BYTES + PAYLOAD_HASH_BYTES;
    let count = usize::try_from(count).map_err(|_| bad())?;
    if count * ONE != hashes.len() {
        return Err(bad());
    }
    let mut keys = Vec::with_capacity(count);
    let mut versions = versions.split(',').filter(|v| !v.is_empty());
    for one in hashes.chunks_exact(ONE) {
        let version = versions
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(bad)?;
        let mut k = SnapKey {
            key: [0; KEY_HASH_BYTES],
            payload: [0; PAYLOAD_HASH_BYTES],
            version,
        };
        k.key.copy_from_slice(&one[..KEY_HASH_BYTES]);
        k.payload.copy_from_slice(&one[KEY_HASH_BYTES..]);
        keys.push(k);
    }
    if versions.next().is_some() {
        return Err(bad());
    }
    // Already in order in practice: a linear check of the sort.
    keys.sort_unstable_by_key(|k| k.key);
    Ok(keys)
}

/// The merge's running state.
pub(super) struct Merge<'a> {
    /// Every row is sent (first run, invalidation, resync).
    pub(super) resync: bool,
    /// Collect gone keys (`unset_attributes`).
    pub(super) unset: bool,
    pub(super) counts: &'a mut DiffCounts,
    pub(super) decided: &'a mut Sorter<Decided>,
    snapshot: SnapshotPages,
    /// The snapshot's head key has a row in this run.
    head_matched: bool,
    gone: Vec<KeyHash>,
}

impl<'a> Merge<'a> {
    pub(super) fn new(
        pipeline_id: &str,
        resync: bool,
        unset: bool,
        counts: &'a mut DiffCounts,
        decided: &'a mut Sorter<Decided>,
    ) -> Self {
        Self {
            resync,
            unset,
            counts,
            decided,
            snapshot: SnapshotPages::new(pipeline_id),
            head_matched: false,
            gone: Vec::new(),
        }
    }

    /// Merge the run's keyed rows with the snapshot.
    pub(super) async fn run(
        mut self,
        stage: &mut SqliteConnection,
        keys: Sorted<Keyed>,
    ) -> Result<(), SyncError> {
        let mut keys = keys.peekable();
        let mut repeated: Option<KeyHash> = None;
        while let Some(row) = keys.next().transpose().map_err(sort_error)? {
            let duplicate = repeated == Some(row.key)
                || matches!(keys.peek(), Some(Ok(next)) if next.key == row.key);
            if duplicate {
                repeated = Some(row.key);
            }
            let known = self.find(stage, &row.key).await?;
            self.decide(row, duplicate, known).map_err(sort_error)?;
            if self.gone.len() >= GONE_BATCH {
                self.flush_gone(stage).await?;
            }
        }
        // Every snapshot key after the last row's is gone.
        while let Some(head) = self.snapshot.head(stage).await? {
            self.pass_head(head.key);
            if self.gone.len() >= GONE_BATCH {
                self.flush_gone(stage).await?;
            }
        }
        self.flush_gone(stage).await
    }

    /// The snapshot's entry for `key`, passing (as gone) smaller keys no row
    /// had.
    async fn find(
        &mut self,
        stage: &mut SqliteConnection,
        key: &KeyHash,
    ) -> Result<Option<SnapKey>, SyncError> {
        while let Some(head) = self.snapshot.head(stage).await? {
            match head.key.cmp(key) {
                Ordering::Less => self.pass_head(head.key),
                Ordering::Equal => {
                    self.head_matched = true;
                    return Ok(Some(head));
                }
                Ordering::Greater => return Ok(None),
            }
        }
        Ok(None)
    }

    fn pass_head(&mut self, key: KeyHash) {
        if !self.head_matched && self.unset {
            self.gone.push(key);
        }
        self.head_matched = false;
        self.snapshot.pass();
    }

    /// Decide one row with a key: rejected when its key repeats (rows
    /// rejected by mapping keep their own reason), else new, changed or
    /// unchanged. Only sent and rejected rows leave a record.
    fn decide(
        &mut self,
        row: Keyed,
        duplicate: bool,
        known: Option<SnapKey>,
    ) -> std::io::Result<()> {
        let c = &mut *self.counts;
        if !row.mapped || duplicate {
            let state = if row.mapped {
                c.duplicate_keys += 1;
                row_state::DUPLICATE_KEY
            } else {
                c.mapping_rejected += 1;
                row_state::REJECTED
            };
            return self
                .decided
                .push(Decided::rejected(row.row, state, row.key, row.payload));
        }
        let (decision, version) = match known {
            Some(k) if k.payload == row.payload && !self.resync => {
                c.unchanged += 1;
                return Ok(());
            }
            Some(k) => {
                c.changed += 1;
                (decision::CHANGED, k.version + 1)
            }
            None => {
                c.new += 1;
                (decision::NEW, 1)
            }
        };
        self.decided.push(Decided {
            row: row.row,
            state: row_state::KEYED,
            decision,
            version,
            key: row.key,
            payload: row.payload,
        })
    }

    /// Copy what unsetting needs of the gone keys collected so far.
    async fn flush_gone(&mut self, stage: &mut SqliteConnection) -> Result<(), SyncError> {
        if self.gone.is_empty() {
            return Ok(());
        }
        let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO gone (key_hash, version, address, address_bin, attrs) \
             SELECT key_hash, version, address, address_bin, attrs FROM snap \
             WHERE (address IS NOT NULL OR address_bin IS NOT NULL) \
             AND attrs IS NOT NULL AND attrs != '[]' AND key_hash IN (",
        );
        let mut list = insert.separated(", ");
        for key in self.gone.drain(..) {
            list.push_bind(key.to_vec());
        }
        // Ordered, so that a resumed spool numbers them alike.
        insert.push(") ORDER BY key_hash");
        let done = insert.build().execute(stage).await.map_err(state_error)?;
        self.counts.unset += done.rows_affected();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_page_unpacks_in_key_order() {
        let mut hashes = Vec::new();
        hashes.extend([0xff; 16]);
        hashes.extend([3; 8]);
        hashes.extend([1; 16]);
        hashes.extend([2; 8]);
        let keys = unpack(&hashes, "1,7", 2).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].key, [1; 16]);
        assert_eq!(keys[0].payload, [2; 8]);
        assert_eq!(keys[0].version, 7, "the version follows its key");
        assert_eq!(keys[1].key, [0xff; 16]);
        assert_eq!(keys[1].payload, [3; 8]);
        assert_eq!(keys[1].version, 1);
        assert!(
            unpack(&hashes, "1,7", 3).is_err(),
            "a count that does not match"
        );
        assert!(unpack(&hashes[..47], "1,7", 2).is_err());
        assert!(unpack(&hashes, "1", 2).is_err(), "a version missing");
        assert!(unpack(&hashes, "1,7,9", 2).is_err(), "a version too many");
        assert!(unpack(&[], "", 0).unwrap().is_empty());
    }

    /// A staging connection with a snapshot of `keys` (key byte, payload
    /// byte, version, with an address and attributes) attached as `st`.
    async fn stage_with(keys: &[(u8, u8, i64, bool)]) -> SqliteConnection {
        use sqlx::Connection as _;
        let mut stage = SqliteConnection::connect("sqlite::memory:").await.unwrap();
        sqlx::raw_sql(
            "ATTACH DATABASE ':memory:' AS st; \
             CREATE TABLE st.diff_snapshot (pipeline_id TEXT NOT NULL, key_hash BLOB NOT NULL, \
               payload_hash BLOB NOT NULL, version INTEGER NOT NULL, address TEXT, \
               address_bin BLOB, attribute_set INTEGER, PRIMARY KEY (pipeline_id, key_hash)) \
               WITHOUT ROWID; \
             CREATE TABLE st.diff_attribute_sets (id INTEGER PRIMARY KEY, names TEXT NOT NULL); \
             INSERT INTO st.diff_attribute_sets VALUES (1, '[\"plan\"]'); \
             CREATE TABLE gone (n INTEGER PRIMARY KEY, key_hash BLOB NOT NULL, \
               version INTEGER NOT NULL, address TEXT, address_bin BLOB, attrs TEXT NOT NULL, \
               sent INTEGER NOT NULL DEFAULT 0);",
        )
        .execute(&mut stage)
        .await
        .unwrap();
        for (key, payload, version, address) in keys {
            // Another pipeline's key in between must not interfere.
            for pipeline in ["p", "other"] {
                sqlx::query("INSERT INTO st.diff_snapshot VALUES ($1, $2, $3, $4, NULL, $5, $6)")
                    .bind(pipeline)
                    .bind(vec![*key; KEY_HASH_BYTES])
                    .bind(vec![*payload; PAYLOAD_HASH_BYTES])
                    .bind(*version)
                    .bind(address.then(|| vec![1u8, 4, 1, b'x']))
                    .bind(address.then_some(1i64))
                    .execute(&mut stage)
                    .await
                    .unwrap();
            }
        }
        super::super::snapshot::create_snap_view(&mut stage, "p")
            .await
            .unwrap();
        stage
    }

    fn keyed(key: u8, row: u64, payload: u8, mapped: bool) -> Keyed {
        Keyed {
            key: [key; KEY_HASH_BYTES],
            row,
            payload: [payload; PAYLOAD_HASH_BYTES],
            mapped,
        }
    }

    #[tokio::test]
    async fn the_merge_decides_every_row_against_the_snapshot() {
        let mut stage = stage_with(&[
            (1, 10, 3, false), // unchanged
            (2, 20, 1, false), // changed
            (3, 30, 5, true),  // gone, with an address: unset
            (4, 40, 1, true),  // its only row is rejected by mapping: not gone
            (5, 50, 1, false), // gone, nothing to unset
        ])
        .await;
        let dir = tempfile::tempdir().unwrap();
        // Runs of two records: key 7's rows (4 and 9) land in different runs.
        let mut keys = Sorter::with_run_records(dir.path(), "keys", 2);
        for k in [
            keyed(1, 1, 10, true),
            keyed(2, 2, 21, true),
            keyed(6, 3, 60, true),
            keyed(7, 4, 70, true),
            keyed(4, 5, 0, false),
            keyed(8, 6, 80, true),
            keyed(8, 7, 0, false),
            keyed(9, 8, 90, true),
            keyed(7, 9, 71, true),
        ] {
            keys.push(k).unwrap();
        }
        let mut decided = Sorter::with_run_records(dir.path(), "decided", 2);
        let mut c = DiffCounts::default();
        Merge::new("p", false, true, &mut c, &mut decided)
            .run(&mut stage, keys.finish().unwrap())
            .await
            .unwrap();
        assert_eq!(
            (
                c.unchanged,
                c.changed,
                c.new,
                c.duplicate_keys,
                c.mapping_rejected,
                c.unset
            ),
            (1, 1, 2, 3, 2, 1)
        );
        let rows: Vec<(u64, u8, u8, i64)> = decided
            .finish()
            .unwrap()
            .map(|d| {
                let d = d.unwrap();
                (d.row, d.state, d.decision, d.version)
            })
            .collect();
        use super::super::{decision as d, row_state as s};
        assert_eq!(
            rows,
            vec![
                (2, s::KEYED, d::CHANGED, 2),
                (3, s::KEYED, d::NEW, 1),
                (4, s::DUPLICATE_KEY, 0, 0),
                (5, s::REJECTED, 0, 0),
                (6, s::DUPLICATE_KEY, 0, 0),
                (7, s::REJECTED, 0, 0),
                (8, s::KEYED, d::NEW, 1),
                (9, s::DUPLICATE_KEY, 0, 0),
            ]
        );
        let gone: Vec<(Vec<u8>, i64, String)> =
            sqlx::query_as("SELECT key_hash, version, attrs FROM gone ORDER BY n")
                .fetch_all(&mut stage)
                .await
                .unwrap();
        assert_eq!(gone, vec![(vec![3; 16], 5, "[\"plan\"]".to_owned())]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_resync_sends_unchanged_rows_and_pages_cover_the_whole_snapshot() {
        // More keys than a page, all unchanged: a resync sends each with
        // its next version; without one, nothing is sent.
        let mut stage = stage_with(&[]).await;
        let n = SNAPSHOT_PAGE as u32 + 7;
        sqlx::query(
            "WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i + 1 < $1) \
             INSERT INTO st.diff_snapshot (pipeline_id, key_hash, payload_hash, version) \
             SELECT 'p', unhex(printf('%032x', i)), zeroblob(8), 2 FROM k",
        )
        .bind(n)
        .execute(&mut stage)
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        for resync in [false, true] {
            let mut keys = Sorter::new(dir.path(), "keys");
            for i in (0..u128::from(n)).rev() {
                let row = u64::try_from(i).unwrap() + 1;
                keys.push(Keyed {
                    key: i.to_be_bytes(),
                    row,
                    payload: [0; PAYLOAD_HASH_BYTES],
                    mapped: true,
                })
                .unwrap();
            }
            let mut decided = Sorter::new(dir.path(), "decided");
            let mut c = DiffCounts::default();
            Merge::new("p", resync, false, &mut c, &mut decided)
                .run(&mut stage, keys.finish().unwrap())
                .await
                .unwrap();
            let sent: Vec<Decided> = decided.finish().unwrap().map(Result::unwrap).collect();
            if resync {
                assert_eq!((c.unchanged, c.changed, c.new), (0, u64::from(n), 0));
                assert_eq!(sent.len(), n as usize);
                assert!(sent.iter().all(|d| d.version == 3));
                assert!(sent.windows(2).all(|w| w[0].row < w[1].row));
            } else {
                assert_eq!((c.unchanged, c.changed, c.new), (u64::from(n), 0, 0));
                assert!(sent.is_empty());
            }
        }
    }
}
