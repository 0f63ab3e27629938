//! `on_delete = "unset_attributes"`: the batches that unset the attributes of
//! keys gone from the model, a page at a time.

use arrow::array::RecordBatch;
use sha2::{Digest, Sha256};
use sqlx::Row as _;

use crate::mapping::EncodedBatch;
use crate::sync::SyncError;

use super::{address, state_error, Diff, ID_HEX_LEN, UNSET_PAGE};

impl Diff {
    /// The next page of unset batches of keys gone from the model
    /// (`unset_attributes`), after the page that ended at `after` (0 for the
    /// first): at most [`UNSET_PAGE`] batches, numbered after the spool's
    /// rows, in an empty chunk for the outputs, with the page's end; they
    /// are marked sent. `None`
    /// when there are no more (or nothing may be sent). Paged, so that a
    /// million deleted keys never sit in memory at once.
    pub async fn unset_page(
        &mut self,
        after: u64,
    ) -> Result<Option<(u64, crate::sync::output::Transformed)>, SyncError> {
        let Some(schema) = self.schema.clone() else {
            return Ok(None);
        };
        if !self.unset || self.blocked.is_some() || self.counts.unset == 0 {
            return Ok(None);
        }
        let rows = sqlx::query(
            "SELECT n, key_hash, version, address, address_bin, attrs FROM gone \
             WHERE n > $1 ORDER BY n LIMIT $2",
        )
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(i64::try_from(UNSET_PAGE).unwrap_or(i64::MAX))
        .fetch_all(&mut self.stage)
        .await
        .map_err(state_error)?;
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            return Ok(None);
        };
        let (first, last): (i64, i64) = (first.get(0), last.get(0));
        let mut batches = Vec::with_capacity(rows.len());
        for r in rows {
            let n: i64 = r.get(0);
            let key_hash: Vec<u8> = r.get(1);
            let address = match (
                r.get::<Option<String>, _>(3),
                r.get::<Option<Vec<u8>>, _>(4),
            ) {
                (_, Some(bytes)) => address::decode(&bytes),
                // Written before the compact form (migration 0006).
                (Some(text), None) => match serde_json::from_str(&text) {
                    Ok(serde_json::Value::Object(members)) => Some(members),
                    _ => None,
                },
                (None, None) => None,
            };
            let json = self.unset_batch(&key_hash, r.get(2), address, &r.get::<String, _>(5))?;
            batches.push(EncodedBatch {
                row: self.rows_base + u64::try_from(n).unwrap_or(0),
                part: 0,
                source_request_id: json.0,
                json: json.1,
                historical: false,
            });
        }
        sqlx::query("UPDATE gone SET sent = 1 WHERE n BETWEEN $1 AND $2")
            .bind(first)
            .bind(last)
            .execute(&mut self.stage)
            .await
            .map_err(state_error)?;
        let page = crate::sync::output::Transformed {
            first_row: self.rows_base + u64::try_from(first).unwrap_or(0),
            chunk: RecordBatch::new_empty(schema),
            batches,
            rejected: Vec::new(),
        };
        Ok(Some((u64::try_from(last).unwrap_or(u64::MAX), page)))
    }

    /// (id, JSON) of the batch that unsets `attrs` (a JSON array of names)
    /// on the profile at `address`.
    fn unset_batch(
        &self,
        key_hash: &[u8],
        version: i64,
        address: Option<serde_json::Map<String, serde_json::Value>>,
        attrs: &str,
    ) -> Result<(String, Vec<u8>), SyncError> {
        let mut hasher = Sha256::new();
        hasher.update(b"wsync-diff-unset\0");
        hasher.update(self.pipeline_id.as_bytes());
        hasher.update([0u8]);
        hasher.update(key_hash);
        hasher.update((version + 1).to_le_bytes());
        let id = hex::encode(&hasher.finalize()[..ID_HEX_LEN / 2]);
        let mut batch = serde_json::Map::new();
        batch.insert(
            "source_request_id".into(),
            serde_json::Value::String(id.clone()),
        );
        batch.insert(
            "environment".into(),
            serde_json::Value::String(self.environment.clone()),
        );
        if let Some(members) = address {
            batch.extend(members);
        }
        let names: serde_json::Value =
            serde_json::from_str(attrs).unwrap_or(serde_json::Value::Null);
        batch.insert("deleted_user_attributes".into(), names);
        let json = serde_json::to_vec(&batch)
            .map_err(|e| SyncError::Internal(format!("an unset batch: {e}")))?;
        Ok((id, json))
    }
}
