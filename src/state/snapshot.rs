//! The diff snapshot of a pipeline (`[diff]`): for each key, the hash of the
//! payload last acknowledged and the key's version, plus the mapping
//! fingerprint the snapshot was built under.
//!
//! A run never reads this table while it delivers: it reads it once, in key
//! order, to classify its rows (see `sync::diff`; a PostgreSQL store's
//! snapshot is first copied into a local file), and writes back only the rows
//! whose batches were acknowledged, in the transaction that records the run's
//! outcome.

use chrono::{DateTime, Utc};
use futures::TryStreamExt as _;
use sqlx::{Any, Row, SqliteConnection, Transaction};

use super::{parse_time, StateError, StateStore};

/// What a pipeline's snapshot was built under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffMeta {
    /// The mapping fingerprint (model SQL, mappings, protection).
    pub fingerprint: String,
    /// When every row was last sent (first run, invalidation or resync).
    pub resynced_at: DateTime<Utc>,
}

/// The rows a successful run acknowledged, to be written with its outcome.
#[derive(Debug)]
pub struct SnapshotCommit<'a> {
    /// The mapping fingerprint of the run.
    pub fingerprint: &'a str,
    /// The run sent every row (the resync time moves).
    pub resynced: bool,
    /// The run's staging database. Its table `rows` holds one row per run
    /// row whose batches went out; those still `sent = 1` (not
    /// dead-lettered) were acknowledged and carry `key_hash`, `payload`,
    /// `version` and (`unset_attributes`) `address` (the compact form,
    /// stored as `address_bin`) and `attrs`.
    /// Its table `gone` holds the keys whose attributes were unset; those
    /// with `sent = 1` leave the snapshot.
    pub stage: &'a mut SqliteConnection,
}

impl StateStore {
    /// What the snapshot of `pipeline_id` was built under, if it has one.
    pub async fn diff_meta(&self, pipeline_id: &str) -> Result<Option<DiffMeta>, StateError> {
        let row = sqlx::query(
            "SELECT fingerprint, resynced_at FROM diff_pipelines WHERE pipeline_id = $1",
        )
        .bind(pipeline_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(DiffMeta {
                fingerprint: r.try_get("fingerprint")?,
                resynced_at: parse_time(r.try_get("resynced_at")?),
            })
        })
        .transpose()
    }

    /// The number of keys in a pipeline's snapshot.
    pub async fn snapshot_keys(&self, pipeline_id: &str) -> Result<u64, StateError> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM diff_snapshot WHERE pipeline_id = $1")
                .bind(pipeline_id)
                .fetch_one(&self.pool)
                .await?;
        Ok(super::to_u64(n))
    }
}

/// One key of a snapshot, as stored: what a run copies when the state store
/// is not a local SQLite file it can attach.
#[derive(Debug, Clone)]
pub struct SnapshotRow {
    /// Hash of the key.
    pub key_hash: Vec<u8>,
    /// Hash of the payload last acknowledged.
    pub payload_hash: Vec<u8>,
    /// The key's version.
    pub version: i64,
    /// The profile's address as JSON (keys written before migration 0006).
    pub address: Option<String>,
    /// The profile's address, compact (`unset_attributes`).
    pub address_bin: Option<Vec<u8>>,
    /// The id of its set of attribute names (`unset_attributes`).
    pub attribute_set: Option<i64>,
}

impl StateStore {
    /// A page of `pipeline_id`'s snapshot: up to `limit` keys after `after`
    /// (a key hash), in key order.
    pub async fn snapshot_page(
        &self,
        pipeline_id: &str,
        after: &[u8],
        limit: u32,
    ) -> Result<Vec<SnapshotRow>, StateError> {
        let rows = sqlx::query(
            "SELECT key_hash, payload_hash, version, address, address_bin, attribute_set \
             FROM diff_snapshot WHERE pipeline_id = $1 AND key_hash > $2 \
             ORDER BY key_hash LIMIT $3",
        )
        .bind(pipeline_id)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SnapshotRow {
                    key_hash: r.try_get(0)?,
                    payload_hash: r.try_get(1)?,
                    version: r.try_get(2)?,
                    address: r.try_get(3)?,
                    address_bin: r.try_get(4)?,
                    attribute_set: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// Every set of attribute names (id, JSON array): a small dictionary.
    pub async fn attribute_sets(&self) -> Result<Vec<(i64, String)>, StateError> {
        let rows = sqlx::query("SELECT id, names FROM diff_attribute_sets ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }
}

/// Write the acknowledged rows of `commit.stage` and the snapshot's metadata
/// inside the run's commit transaction.
pub(super) async fn write(
    tx: &mut Transaction<'_, Any>,
    pipeline_id: &str,
    now: DateTime<Utc>,
    commit: SnapshotCommit<'_>,
) -> Result<(), StateError> {
    let stage = commit.stage;
    // Attribute-name sets by text: few distinct ones per model.
    let mut sets: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    {
        let mut rows = sqlx::query(
            "SELECT key_hash, payload, version, address, attrs FROM rows WHERE sent = 1",
        )
        .fetch(&mut *stage);
        while let Some(row) = rows.try_next().await? {
            let names: Option<String> = row.try_get(4)?;
            let set = match names {
                None => None,
                Some(names) => Some(if let Some(id) = sets.get(&names) {
                    *id
                } else {
                    {
                        sqlx::query(
                            "INSERT INTO diff_attribute_sets (names) VALUES ($1) \
                             ON CONFLICT (names) DO NOTHING",
                        )
                        .bind(&names)
                        .execute(&mut **tx)
                        .await?;
                        let id: i64 = sqlx::query_scalar(
                            "SELECT id FROM diff_attribute_sets WHERE names = $1",
                        )
                        .bind(&names)
                        .fetch_one(&mut **tx)
                        .await?;
                        sets.insert(names, id);
                        id
                    }
                }),
            };
            sqlx::query(
                "INSERT INTO diff_snapshot (pipeline_id, key_hash, payload_hash, version, \
                 address_bin, attribute_set) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (pipeline_id, key_hash) DO UPDATE SET \
                 payload_hash = excluded.payload_hash, version = excluded.version, \
                 address = NULL, address_bin = excluded.address_bin, \
                 attribute_set = excluded.attribute_set",
            )
            .bind(pipeline_id)
            .bind(row.try_get::<Vec<u8>, _>(0)?)
            .bind(row.try_get::<Vec<u8>, _>(1)?)
            .bind(row.try_get::<i64, _>(2)?)
            .bind(row.try_get::<Option<Vec<u8>>, _>(3)?)
            .bind(set)
            .execute(&mut **tx)
            .await?;
        }
    }
    let mut gone = sqlx::query("SELECT key_hash FROM gone WHERE sent = 1").fetch(&mut *stage);
    while let Some(row) = gone.try_next().await? {
        sqlx::query("DELETE FROM diff_snapshot WHERE pipeline_id = $1 AND key_hash = $2")
            .bind(pipeline_id)
            .bind(row.try_get::<Vec<u8>, _>(0)?)
            .execute(&mut **tx)
            .await?;
    }
    drop(gone);
    let now = now.to_rfc3339();
    sqlx::query(
        "INSERT INTO diff_pipelines (pipeline_id, fingerprint, resynced_at) VALUES ($1, $2, $3) \
         ON CONFLICT (pipeline_id) DO UPDATE SET fingerprint = excluded.fingerprint, \
         resynced_at = CASE WHEN $4 = 1 THEN excluded.resynced_at ELSE diff_pipelines.resynced_at END",
    )
    .bind(pipeline_id)
    .bind(commit.fingerprint)
    .bind(&now)
    .bind(i64::from(commit.resynced))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The on-disk size of a million-key snapshot (BENCHMARKS.md):
    /// `cargo test --lib state::snapshot::tests::snapshot_size_per_million_keys -- --ignored --nocapture`.
    #[tokio::test]
    #[ignore = "a measurement: writes a million keys"]
    async fn snapshot_size_per_million_keys() {
        // (setting, address_bin per key i): the compact form of
        // `sync::diff::address` (its tests pin the same bytes).
        let cases = [
            ("on_delete = ignore", "NULL"),
            (
                "on_delete = unset_attributes, key customer_id (an identity): its identity only",
                "unhex('010200' || printf('%02x', length('c' || i)) || hex('c' || i))",
            ),
            (
                "on_delete = unset_attributes, key not an identity: customer_id and email",
                "unhex('010200' || printf('%02x', length('c' || i)) || hex('c' || i) \
                 || '0201' || printf('%02x', length('u' || i || '@example.com')) \
                 || hex('u' || i || '@example.com'))",
            ),
        ];
        for (setting, address) in cases {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("state.db");
            let store = StateStore::open(&format!("sqlite://{}", path.display()))
                .await
                .unwrap();
            let set = if address == "NULL" {
                "NULL"
            } else {
                sqlx::query("INSERT INTO diff_attribute_sets (id, names) VALUES (1, '[\"ltv\",\"plan\",\"tier\"]')")
                    .execute(&store.pool)
                    .await
                    .unwrap();
                "1"
            };
            sqlx::query(&format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000) \
                 INSERT INTO diff_snapshot (pipeline_id, key_hash, payload_hash, version, \
                 address_bin, attribute_set) SELECT 'customers', randomblob(16), randomblob(8), \
                 1 + i % 3, {address}, {set} FROM n"
            ))
            .execute(&store.pool)
            .await
            .unwrap();
            sqlx::query("VACUUM").execute(&store.pool).await.unwrap();
            let bytes: i64 = sqlx::query_scalar(
                "SELECT SUM(pgsize) FROM dbstat WHERE name IN ('diff_snapshot', \
                 'sqlite_autoindex_diff_snapshot_1')",
            )
            .fetch_one(&store.pool)
            .await
            .unwrap_or(0);
            let file: i64 = sqlx::query_scalar(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            )
            .fetch_one(&store.pool)
            .await
            .unwrap();
            // A measurement for BENCHMARKS.md (an ignored test, run with --nocapture).
            eprintln!(
                "snapshot of 1,000,000 keys ({setting}): table {:.1} MB, whole state file {:.1} MB",
                bytes as f64 / 1e6,
                file as f64 / 1e6
            );
            if !setting.contains("not an identity") {
                assert!(
                    file < 60_000_000,
                    "{setting}: {file} bytes per million keys"
                );
            }
        }
    }
}
