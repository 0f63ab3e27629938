//! Where a run's classification finds the pipeline's snapshot: the SQLite
//! state file attached to the staging connection as `st`, or, for a
//! PostgreSQL state store, a copy of the pipeline's snapshot in a file of the
//! same shape, attached the same way.

use std::path::Path;

use sqlx::{Connection as _, SqliteConnection};

use crate::state::StateStore;

use super::{remove_file, state_error};
use crate::sync::SyncError;

/// Rows per multi-row INSERT when copying a snapshot (7 values a row, well
/// under SQLite's bound-parameter limit).
const ROWS_PER_INSERT: usize = 400;

/// Read the snapshot in place: the SQLite state file attached to the
/// staging connection as `st` (read-only in spirit: nothing here writes to it).
pub(super) async fn attach(
    stage: &mut SqliteConnection,
    file: &Path,
    pipeline_id: &str,
) -> Result<(), SyncError> {
    sqlx::query("ATTACH DATABASE ? AS st")
        .bind(file.display().to_string())
        .execute(&mut *stage)
        .await
        .map_err(state_error)?;
    create_snap_view(stage, pipeline_id).await
}

/// The `snap` view the classification reads besides `st.diff_snapshot`.
pub(super) async fn create_snap_view(
    stage: &mut SqliteConnection,
    pipeline_id: &str,
) -> Result<(), SyncError> {
    sqlx::raw_sql(&format!(
        "CREATE TEMP VIEW snap AS SELECT s.key_hash AS key_hash, s.payload_hash AS payload, \
           s.version AS version, s.address AS address, s.address_bin AS address_bin, \
           a.names AS attrs \
         FROM st.diff_snapshot s LEFT JOIN st.diff_attribute_sets a ON a.id = s.attribute_set \
         WHERE s.pipeline_id = '{}'",
        pipeline_id.replace('\'', "''")
    ))
    .execute(&mut *stage)
    .await
    .map_err(state_error)?;
    Ok(())
}

/// A remote state store (PostgreSQL): copy the pipeline's snapshot into a
/// file of the state file's shape (`copy`, beside the staging file), a page of
/// keys at a time so memory stays flat, and attach it as `st`: the
/// classification then reads it exactly as it reads a local state file.
pub(super) async fn copy(
    stage: &mut SqliteConnection,
    state: &StateStore,
    pipeline_id: &str,
    copy: &Path,
) -> Result<(), SyncError> {
    const PAGE: u32 = 20_000;
    remove_file(copy)?;
    sqlx::query("ATTACH DATABASE ? AS st")
        .bind(copy.display().to_string())
        .execute(&mut *stage)
        .await
        .map_err(state_error)?;
    sqlx::raw_sql(
        "CREATE TABLE st.diff_snapshot (pipeline_id TEXT NOT NULL, key_hash BLOB NOT NULL, \
           payload_hash BLOB NOT NULL, version INTEGER NOT NULL, address TEXT, address_bin BLOB, \
           attribute_set INTEGER, PRIMARY KEY (pipeline_id, key_hash)) WITHOUT ROWID; \
         CREATE TABLE st.diff_attribute_sets (id INTEGER PRIMARY KEY, names TEXT NOT NULL);",
    )
    .execute(&mut *stage)
    .await
    .map_err(state_error)?;
    for (id, names) in state.attribute_sets().await? {
        sqlx::query("INSERT INTO st.diff_attribute_sets (id, names) VALUES (?, ?)")
            .bind(id)
            .bind(names)
            .execute(&mut *stage)
            .await
            .map_err(state_error)?;
    }
    let mut after = Vec::new();
    loop {
        let page = state.snapshot_page(pipeline_id, &after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after.clone_from(&last.key_hash);
        let mut tx = stage.begin().await.map_err(state_error)?;
        for group in page.chunks(ROWS_PER_INSERT) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO st.diff_snapshot (pipeline_id, key_hash, payload_hash, version, \
                 address, address_bin, attribute_set) ",
            );
            insert.push_values(group, |mut b, r| {
                b.push_bind(pipeline_id)
                    .push_bind(r.key_hash.clone())
                    .push_bind(r.payload_hash.clone())
                    .push_bind(r.version)
                    .push_bind(r.address.clone())
                    .push_bind(r.address_bin.clone())
                    .push_bind(r.attribute_set);
            });
            insert
                .build()
                .execute(&mut *tx)
                .await
                .map_err(state_error)?;
        }
        tx.commit().await.map_err(state_error)?;
        if page.len() < PAGE as usize {
            break;
        }
    }
    create_snap_view(stage, pipeline_id).await
}
