//! The `sql` resolver: the identities of the profiles that exist, read from a
//! warehouse model (for example the users table mParticle's warehouse output
//! keeps up to date).
//!
//! The model returns identity columns named like the pipeline's (`customer_id`
//! or `customerid`, `email`, `mpid`, device ids, …). It is streamed in chunks
//! like any model; only a 128-bit hash per non-empty value is kept, so memory
//! is about 16 bytes per known identity (plus the set's overhead) however wide
//! the values are. A column that is not an identity name is an error rather
//! than ignored: a misspelt `customer_id` would otherwise match nothing and
//! silently skip every row.

use std::collections::HashSet;

use arrow::array::RecordBatch;
use tokio::sync::mpsc;

use crate::config::model::{Pipeline, Project};
use crate::config::resolver::SqlResolverSettings;
use crate::mapping::convert::{Cell, ColumnReader};
use crate::mapping::identity::{DeviceIdType, IdentityType};
use crate::source::guard::check_select_for;
use crate::source::{SourceQuery, Warehouse};

use super::{key_hash, names::IdentityKey, ResolveError, RowIdentities};

/// What a column of the known-profiles model holds.
#[derive(Debug, Clone, Copy)]
enum KeyColumn {
    Identity(IdentityKey),
    Mpid,
}

/// The identities of known profiles, as hashes.
#[derive(Debug, Default)]
pub struct KnownProfiles {
    keys: HashSet<u128>,
    rows: u64,
}

impl KnownProfiles {
    /// Stream the model of `settings` and keep its identities.
    pub async fn load(
        project: &Project,
        pipeline: &Pipeline,
        settings: &SqlResolverSettings,
    ) -> Result<Self, ResolveError> {
        let model = &project.models[&settings.data_model];
        let refused = |message: String| ResolveError::KnownProfiles {
            pipeline: pipeline.id.clone(),
            model: model.name.clone(),
            file: model.path.clone(),
            message,
        };
        let connection = &project.connections[&settings.connection];
        check_select_for(&model.sql, connection.kind).map_err(|e| refused(e.to_string()))?;
        let mut warehouse = Warehouse::connect(connection).await?;
        let query = SourceQuery {
            model: model.name.clone(),
            sql: model.sql.clone(),
            filter: None,
            limit: None,
        };
        let columns = warehouse.probe(&query).await?;
        let mut kinds = Vec::with_capacity(columns.len());
        for column in &columns {
            let name = column.name.as_str();
            let kind = if name.eq_ignore_ascii_case("mpid") {
                KeyColumn::Mpid
            } else if let Some(t) = IdentityType::from_column(name) {
                KeyColumn::Identity(IdentityKey::User(t))
            } else if let Some(t) = DeviceIdType::from_column(name) {
                KeyColumn::Identity(IdentityKey::Device(t))
            } else {
                return Err(refused(format!(
                    "column `{name}` is not an identity name; return only identity columns \
                     named like the pipeline's (customer_id, email, mpid, device ids, …), \
                     e.g. `SELECT id AS customer_id, email FROM users`"
                )));
            };
            kinds.push(kind);
        }
        let (tx, mut rx) = mpsc::channel::<RecordBatch>(2);
        let mut known = KnownProfiles::default();
        let collect = async {
            while let Some(chunk) = rx.recv().await {
                known.add_chunk(&columns, &kinds, &chunk).map_err(refused)?;
            }
            Ok::<_, ResolveError>(())
        };
        let (read, collected) = tokio::join!(
            warehouse.extract(&query, &columns, connection.chunk_rows, tx),
            collect
        );
        collected?;
        known.rows = read?;
        tracing::info!(
            model = %model.name,
            rows = known.rows,
            identities = known.keys.len(),
            "Known profiles loaded."
        );
        Ok(known)
    }

    fn add_chunk(
        &mut self,
        columns: &[crate::source::ColumnInfo],
        kinds: &[KeyColumn],
        chunk: &RecordBatch,
    ) -> Result<(), String> {
        for ((column, kind), array) in columns.iter().zip(kinds).zip(chunk.columns()) {
            let reader =
                ColumnReader::new(&column.name, &column.kind, array).map_err(|e| e.to_string())?;
            for row in 0..chunk.num_rows() {
                let Cell::Value(value) = reader.cell(row) else {
                    continue;
                };
                let text = value.to_text();
                if text.is_empty() {
                    continue;
                }
                let key = match kind {
                    KeyColumn::Identity(k) => key_hash(k.events_name(), &text),
                    // Normalised as the batch writes it, so `007` finds mpid 7;
                    // a value that is no MPID cannot match any batch.
                    KeyColumn::Mpid => match text.trim().parse::<i64>() {
                        Ok(mpid) => key_hash("mpid", &mpid.to_string()),
                        Err(_) => continue,
                    },
                };
                self.keys.insert(key);
            }
        }
        Ok(())
    }

    /// Whether any of the row's identities (or its mpid) belongs to a known profile.
    pub fn matches(&self, row: &RowIdentities) -> bool {
        row.key_hashes().any(|k| self.keys.contains(&k))
    }

    /// Distinct identities held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no identity is known.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Rows the model returned.
    pub fn rows(&self) -> u64 {
        self.rows
    }
}
