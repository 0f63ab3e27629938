//! [`Warehouse`]: one database connection that probes and streams a model.
//!
//! Session rules, per dialect:
//!
//! - **PostgreSQL**: session `TIME ZONE 'UTC'`; every query runs in its own
//!   `BEGIN TRANSACTION READ ONLY` with `SET LOCAL statement_timeout`, then
//!   `ROLLBACK` (nothing to keep).
//! - **Redshift**: the same, minus `READ ONLY` (Redshift rejects it); its
//!   read-only guarantee is the single-SELECT guard plus the database user's grants.
//! - **MySQL/MariaDB**: session `time_zone = '+00:00'` (so `TIMESTAMP` reads as
//!   UTC), `SET SESSION TRANSACTION READ ONLY`, and a statement timeout through
//!   `max_statement_time` (MariaDB, seconds) or `max_execution_time` (MySQL, ms),
//!   chosen from `SELECT VERSION()`.
//! - **SQLite**: opened read-only (after an optional one-time seed). There is no
//!   server-side statement timeout for a local file.
//!
//! TLS settings (`sslmode=require`, `ssl-mode=REQUIRED`) come from the URL and are
//! never overridden here.
//!
//! No wait on the network is unbounded: opening a connection (and its session
//! setup) gives up after [`CONNECT_TIMEOUT`], and every wait for the server's
//! next message after the statement timeout plus [`READ_TIMEOUT_MARGIN`] (the
//! server itself cancels a query at its statement timeout, so a longer silence
//! means the connection is half-open: a dropped peer, a NAT that forgot it).
//! sqlx does not expose the socket, so TCP keepalive cannot be set here; the
//! read timeout is what ends a run on a dead connection.
//!
//! Rows are read with sqlx's streaming `fetch`, decoded straight into Arrow
//! builders and sent every `chunk_rows` rows, so memory is bounded by one chunk.
//! PostgreSQL (not Redshift) reads through `COPY (<query>) TO STDOUT (FORMAT
//! binary)` instead (`pg_copy.rs`): the same values, decoded by the same code into
//! the same builders, inside the same read-only transaction and statement
//! timeout. A server that refuses COPY as unsupported is read through `fetch`
//! from then on.

use std::time::Duration;

use arrow::array::RecordBatch;
use futures::TryStreamExt;
use sqlx::mysql::{MySqlConnection, MySqlDatabaseError};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::sqlite::SqliteConnection;
use sqlx::{Column, Connection as _, Executor, Row, TypeInfo};
use tokio::sync::mpsc::Sender;

use super::chunker::Chunker;
use super::error::{is_transient, scrub_url_secrets, LowercaseFirst, UnsupportedColumn};
use super::pg_copy;
use super::sql::{self, Dialect};
use super::types;
use super::{ColumnInfo, ColumnKind, IteratorValue, SourceError, SourceQuery};
use crate::config::model::ConnectionKind;
use crate::redact::Secret;

use super::rows::{
    decode_mysql_row, decode_pg_row, decode_sqlite_row, mysql_iterator, mysql_text_columns,
    pg_iterator, sqlite_iterator,
};

mod bind;
mod connect;
mod describe;

use bind::{bind_mysql, bind_pg, bind_sqlite};
#[cfg(test)]
use describe::numeric_typmod;
use describe::pg_describe;
pub(super) use describe::Described;

/// The open connection, by driver.
#[derive(Debug)]
enum Conn {
    /// PostgreSQL or Redshift; `read_only` is false for Redshift.
    Pg {
        /// `None` only while a COPY owns it on another task, or after that task
        /// was lost; the next use then opens a new one.
        conn: Option<PgConnection>,
        read_only: bool,
        /// Kept to replace the connection after an abandoned COPY (see `pg_copy`).
        options: Box<PgConnectOptions>,
        /// Whether reads use `COPY … (FORMAT binary)`: never on Redshift, and off
        /// for good once the server refused it as unsupported.
        copy: bool,
    },
    /// MySQL or MariaDB.
    MySql(MySqlConnection),
    /// SQLite.
    Sqlite(SqliteConnection),
    /// Snowflake, over HTTPS.
    Snowflake(Box<super::snowflake::Client>),
    /// BigQuery, over HTTPS.
    BigQuery(Box<super::bigquery::Client>),
}

/// How long opening a connection and setting its session up may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How much longer than the statement timeout a read waits for the server's
/// next message before it declares the connection dead.
pub const READ_TIMEOUT_MARGIN: Duration = Duration::from_secs(30);

/// The longest wait for the server's next message on a connection whose
/// statement timeout is `statement_timeout`.
fn read_timeout(statement_timeout: Duration) -> Duration {
    statement_timeout.saturating_add(READ_TIMEOUT_MARGIN)
}

/// The driver error a read that waited too long ends with (I/O class: a later
/// run on a new connection may well succeed).
pub(crate) fn read_timed_out(waited: Duration) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "the server sent nothing for {}s: the connection is dead or half-open",
            waited.as_secs()
        ),
    ))
}

/// `fut` (a driver call), failing with [`read_timed_out`] after `limit`.
pub(super) async fn bounded<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| Err(read_timed_out(limit)))
}

/// One open warehouse connection (not a pool: a run reads one model at a time).
#[derive(Debug)]
pub struct Warehouse {
    /// Connection name, for messages.
    name: String,
    /// The URL, kept only to scrub it out of driver messages.
    url: Secret,
    /// Server-side limit for one query.
    statement_timeout: Duration,
    /// The driver connection.
    conn: Conn,
    /// How the last extraction read its rows.
    last_read_path: Option<ReadPath>,
}

/// How rows were read from the warehouse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPath {
    /// PostgreSQL `COPY (…) TO STDOUT (FORMAT binary)`.
    Copy,
    /// The driver's row protocol.
    Rows,
}

/// Run `$body` (which uses `$c: &mut PgConnection`) inside the per-query
/// PostgreSQL transaction, always ending it with `ROLLBACK`.
macro_rules! in_pg_tx {
    ($errs:ident, $model:expr, $c:ident, $read_only:ident, $body:expr) => {{
        let timeout_ms = $errs.statement_timeout.as_millis();
        let begin = if *$read_only {
            format!("BEGIN TRANSACTION READ ONLY; SET LOCAL statement_timeout = {timeout_ms}")
        } else {
            format!("BEGIN; SET LOCAL statement_timeout = {timeout_ms}")
        };
        let limit = read_timeout($errs.statement_timeout);
        bounded(limit, sqlx::raw_sql(&begin).execute(&mut *$c))
            .await
            .map_err(|e| $errs.query($model, &e))?;
        let result = $body;
        // Always end the transaction, even after an error; a failed ROLLBACK only
        // matters when the query itself succeeded.
        let end = bounded(limit, sqlx::raw_sql("ROLLBACK").execute(&mut *$c)).await;
        let value = result?;
        end.map_err(|e| $errs.query($model, &e))?;
        value
    }};
}
impl Warehouse {
    /// The connection name this warehouse was opened for.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The SQL dialect the server speaks, for the single-SELECT guard.
    fn dialect(&self) -> ConnectionKind {
        match &self.conn {
            Conn::Pg {
                read_only: true, ..
            } => ConnectionKind::Postgres,
            Conn::Pg { .. } => ConnectionKind::Redshift,
            Conn::MySql(_) => ConnectionKind::MySql,
            Conn::Sqlite(_) => ConnectionKind::Sqlite,
            Conn::Snowflake(_) => ConnectionKind::Snowflake,
            Conn::BigQuery(_) => ConnectionKind::BigQuery,
        }
    }

    /// Check the connection is alive.
    pub async fn ping(&mut self) -> Result<(), SourceError> {
        self.ensure_pg().await?;
        let result = match &mut self.conn {
            Conn::Pg { conn, .. } => match conn.as_mut() {
                Some(conn) => conn.ping().await,
                None => Err(sqlx::Error::PoolClosed),
            },
            Conn::MySql(conn) => conn.ping().await,
            Conn::Sqlite(conn) => conn.ping().await,
            Conn::Snowflake(client) => return super::snowflake::ping(client).await,
            Conn::BigQuery(client) => return super::bigquery::ping(client).await,
        };
        result.map_err(|e| SourceError::connect(&self.name, &self.url, &e))
    }

    /// The model's columns and kinds, without reading any row. Every column of an
    /// unsupported type is reported in one [`SourceError::UnsupportedType`].
    pub async fn probe(&mut self, query: &SourceQuery) -> Result<Vec<ColumnInfo>, SourceError> {
        check_guard(query, self.dialect())?;
        self.ensure_pg().await?;
        let sql = sql::base(&query.sql);
        let model = query.model.as_str();
        // (name, reported type, table result) per column.
        let errs = ErrCtx {
            url: &self.url,
            statement_timeout: self.statement_timeout,
        };
        let described: Vec<Described> = match &mut self.conn {
            Conn::Pg {
                conn, read_only, ..
            } => {
                let conn: &mut PgConnection = live(conn)?;
                in_pg_tx!(errs, model, conn, read_only, {
                    pg_describe(&mut *conn, &sql)
                        .await
                        .map_err(|e| errs.query(model, &e))
                })
            }
            Conn::MySql(conn) => {
                let mut described: Vec<Described> = conn
                    .describe(&sql)
                    .await
                    .map_err(|e| errs.query(model, &e))?
                    .columns()
                    .iter()
                    .map(|c| {
                        let mut name = c.type_info().name().to_owned();
                        // The server sends one type id for every blob size, and
                        // sqlx keeps the length to itself except in `Debug`; a
                        // 4 GiB blob is a `LONGBLOB`/`LONGTEXT` (and MariaDB's JSON).
                        if name == "BLOB"
                            && format!("{:?}", c.type_info()).contains("max_size: Some(4294967295)")
                        {
                            name = "LONGBLOB".to_owned();
                        }
                        let kind = types::mysql_kind(&name);
                        // sqlx keeps MySQL's DECIMAL(p,s) to itself (`max_size` and the
                        // column definition's `decimals` are crate-private), so MySQL
                        // decimals export as their exact text.
                        (c.name().to_owned(), name, kind, None)
                    })
                    .collect();
                mysql_text_columns(
                    conn,
                    &query.sql,
                    &mut described,
                    read_timeout(errs.statement_timeout),
                )
                .await;
                described
            }
            Conn::Sqlite(conn) => conn
                .describe(&sql)
                .await
                .map_err(|e| errs.query(model, &e))?
                .columns()
                .iter()
                .map(|c| {
                    let name = c.type_info().name().to_owned();
                    let kind = types::sqlite_kind(&name);
                    (c.name().to_owned(), name, kind, None)
                })
                .collect(),
            Conn::Snowflake(client) => super::snowflake::probe(client, query).await?,
            Conn::BigQuery(client) => super::bigquery::probe(client, query).await?,
        };
        let mut columns = Vec::with_capacity(described.len());
        let mut unsupported = Vec::new();
        for (name, sql_type, kind, decimal) in described {
            match kind {
                Ok(kind) => columns.push(ColumnInfo {
                    name,
                    sql_type,
                    // Only a scalar decimal carries its precision on.
                    decimal: decimal.filter(|_| kind == ColumnKind::Decimal),
                    kind,
                }),
                Err(u) => unsupported.push(UnsupportedColumn {
                    fix: u.fix_for(&name),
                    column: name,
                    sql_type,
                }),
            }
        }
        if unsupported.is_empty() {
            Ok(columns)
        } else {
            Err(SourceError::UnsupportedType {
                model: query.model.clone(),
                columns: unsupported,
            })
        }
    }

    /// Close the connection politely (the server ends the session at once),
    /// so a run that spooled its extract holds no warehouse session while it
    /// delivers. Errors are ignored: the socket is dropped either way.
    pub async fn close(self) {
        use sqlx::Connection as _;
        match self.conn {
            Conn::Pg { conn: Some(c), .. } => {
                let _ = c.close().await;
            }
            Conn::Pg { conn: None, .. } => {}
            Conn::MySql(c) => {
                let _ = c.close().await;
            }
            Conn::Sqlite(c) => {
                let _ = c.close().await;
            }
            Conn::Snowflake(client) => client.close().await,
            // Stateless HTTP: nothing is held on the server between calls.
            Conn::BigQuery(_) => {}
        }
    }

    /// Stream the model's rows (windowed and limited as `query` says) as record
    /// batches of at most `chunk_rows` rows into `tx`. Returns the number of rows
    /// read. If the receiver goes away, reading stops and the count so far is
    /// returned. `columns` must come from [`Warehouse::probe`] on the same model.
    /// No batch is sent for an empty result.
    pub async fn extract(
        &mut self,
        query: &SourceQuery,
        columns: &[ColumnInfo],
        chunk_rows: usize,
        tx: Sender<RecordBatch>,
    ) -> Result<u64, SourceError> {
        check_guard(query, self.dialect())?;
        self.ensure_pg().await?;
        if let Some(copied) = self.extract_pg_copy(query, columns, chunk_rows, &tx).await {
            self.last_read_path = Some(ReadPath::Copy);
            return copied;
        }
        self.last_read_path = Some(ReadPath::Rows);
        let model = query.model.as_str();
        let mut chunker = Chunker::new(model, columns, chunk_rows.max(1), tx);
        // Borrowed field by field so `conn` can be borrowed mutably alongside.
        let errs = ErrCtx {
            url: &self.url,
            statement_timeout: self.statement_timeout,
        };
        match &mut self.conn {
            Conn::Pg {
                conn, read_only, ..
            } => {
                let conn: &mut PgConnection = live(conn)?;
                // Redshift (not read-only) has neither `pg_column_size` nor
                // `concat_ws`: its values are not cut on the server.
                let guard = if *read_only {
                    sql::size_guard(Dialect::Postgres, columns)
                } else {
                    None
                };
                let (sql, binds) = sql::wrap_selecting(Dialect::Postgres, query, guard.as_deref());
                if guard.is_some() {
                    chunker = chunker.with_size_report();
                }
                in_pg_tx!(errs, model, conn, read_only, {
                    let q = bind_pg(sqlx::query(&sql), &binds);
                    let mut rows = q.fetch(&mut *conn);
                    let mut result = Ok(());
                    let limit = read_timeout(errs.statement_timeout);
                    loop {
                        match bounded(limit, rows.try_next()).await {
                            Ok(Some(row)) => {
                                let row_bytes = match decode_pg_row(&row, &mut chunker) {
                                    Ok(bytes) => bytes,
                                    Err(e) => {
                                        result = Err(e);
                                        break;
                                    }
                                };
                                match chunker.row_done(row_bytes).await {
                                    Ok(true) => {}
                                    Ok(false) => break,
                                    Err(e) => {
                                        result = Err(e);
                                        break;
                                    }
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                result = Err(errs.query(model, &e));
                                break;
                            }
                        }
                    }
                    result
                });
            }
            Conn::MySql(conn) => {
                let guard = sql::size_guard(Dialect::MySql, columns);
                let (sql, binds) = sql::wrap_selecting(Dialect::MySql, query, guard.as_deref());
                if guard.is_some() {
                    chunker = chunker.with_size_report();
                }
                let unsigned: Vec<bool> = columns
                    .iter()
                    .map(|c| c.sql_type.to_ascii_uppercase().ends_with("UNSIGNED"))
                    .collect();
                let q = bind_mysql(sqlx::query(&sql), &binds);
                let mut rows = q.fetch(&mut *conn);
                let limit = read_timeout(errs.statement_timeout);
                while let Some(row) = bounded(limit, rows.try_next())
                    .await
                    .map_err(|e| errs.query(model, &e))?
                {
                    decode_mysql_row(&row, &unsigned, &mut chunker)?;
                    // Unknown wire size: the chunk is measured after every row.
                    if !chunker.row_done(usize::MAX).await? {
                        break;
                    }
                }
            }
            Conn::Sqlite(conn) => {
                let (sql, binds) = sql::wrap(Dialect::Sqlite, query);
                let q = bind_sqlite(sqlx::query(&sql), &binds);
                let mut rows = q.fetch(&mut *conn);
                while let Some(row) = rows.try_next().await.map_err(|e| errs.query(model, &e))? {
                    decode_sqlite_row(&row, &mut chunker)?;
                    // Unknown wire size: the chunk is measured after every row.
                    if !chunker.row_done(usize::MAX).await? {
                        break;
                    }
                }
            }
            Conn::Snowflake(client) => {
                super::snowflake::extract(client, query, columns, &mut chunker).await?;
            }
            Conn::BigQuery(client) => {
                super::bigquery::extract(client, query, columns, &mut chunker).await?;
            }
        }
        chunker.finish().await
    }

    /// The PostgreSQL fast path of [`Self::extract`]: the wrapped query through
    /// `COPY … TO STDOUT (FORMAT binary)` (see `pg_copy`), in the same read-only
    /// transaction with the same statement timeout. `None` = use the row protocol:
    /// not PostgreSQL, COPY turned off, a bound that has no exact literal, or the
    /// server refused COPY as unsupported (then COPY stays off for this connection).
    async fn extract_pg_copy(
        &mut self,
        query: &SourceQuery,
        columns: &[ColumnInfo],
        chunk_rows: usize,
        tx: &Sender<RecordBatch>,
    ) -> Option<Result<u64, SourceError>> {
        let Conn::Pg {
            conn,
            read_only,
            copy: true,
            ..
        } = &mut self.conn
        else {
            return None;
        };
        let guard = sql::size_guard(Dialect::Postgres, columns);
        let inlined = sql::wrap_pg_inline(query, guard.as_deref())?;
        let model = query.model.as_str();
        // A copy, so the connection can be replaced while errors are still built.
        let url = self.url.clone();
        let errs = ErrCtx {
            url: &url,
            statement_timeout: self.statement_timeout,
        };
        let timeout_ms = self.statement_timeout.as_millis();
        let begin = if *read_only {
            format!("BEGIN TRANSACTION READ ONLY; SET LOCAL statement_timeout = {timeout_ms}")
        } else {
            format!("BEGIN; SET LOCAL statement_timeout = {timeout_ms}")
        };
        let live_conn = match live(conn) {
            Ok(c) => c,
            Err(e) => return Some(Err(e)),
        };
        let limit = read_timeout(self.statement_timeout);
        if let Err(e) = bounded(limit, sqlx::raw_sql(&begin).execute(&mut *live_conn)).await {
            return Some(Err(errs.query(model, &e)));
        }
        let mut chunker = Chunker::new(model, columns, chunk_rows, tx.clone());
        if guard.is_some() {
            chunker = chunker.with_size_report();
        }
        // The socket is read on its own task: the caller usually polls this
        // future in the same task as the consumer of the chunks (`join!`), and
        // the server must not wait while a chunk is being mapped. The connection
        // goes with the task and comes back at its end.
        let mut owned = conn.take()?;
        let statement = pg_copy::statement(&inlined);
        let task = tokio::spawn(async move {
            let end = pg_copy::copy_out(&mut owned, &statement, chunker, limit).await;
            (owned, end)
        });
        let end = match task.await {
            Ok((back, end)) => {
                *conn = Some(back);
                end
            }
            // The connection is gone with the task; the next use opens another.
            Err(join) => {
                return Some(Err(SourceError::Decode {
                    model: model.to_owned(),
                    column: String::new(),
                    row: 0,
                    message: format!("the COPY task ended abnormally: {join}"),
                }))
            }
        };
        match end {
            pg_copy::CopyEnd::Refused(e) => {
                // sqlx left the connection one answer behind: replace it (the
                // transaction goes with it).
                let unsupported = pg_copy::is_unsupported(&e);
                let error = errs.query(model, &e);
                if let Err(reset) = self.reset_pg().await {
                    return Some(Err(reset));
                }
                if !unsupported {
                    return Some(Err(error));
                }
                tracing::warn!(
                    connection = %self.name,
                    error = %error,
                    "The server refused COPY; reading through the row protocol from now on."
                );
                if let Conn::Pg { copy, .. } = &mut self.conn {
                    *copy = false;
                }
                None
            }
            pg_copy::CopyEnd::Ended {
                rows,
                abandoned,
                result,
            } => {
                let end = if abandoned {
                    // Unread rows are still on the wire: a new connection is
                    // quicker than draining them, and closing this one makes the
                    // server stop.
                    self.reset_pg().await
                } else {
                    let Some(conn) = conn.as_mut() else {
                        return Some(Err(live(conn).err()?));
                    };
                    bounded(limit, sqlx::raw_sql("ROLLBACK").execute(&mut *conn))
                        .await
                        .map(|_| ())
                        .map_err(|e| errs.query(model, &e))
                };
                Some(match result {
                    Err(pg_copy::CopyFailure::Server(e)) => Err(errs.query(model, &e)),
                    Err(pg_copy::CopyFailure::Decode(e)) => Err(e),
                    Ok(()) => end.map(|()| rows),
                })
            }
        }
    }

    /// Replace the PostgreSQL connection with a new one set up the same way.
    async fn reset_pg(&mut self) -> Result<(), SourceError> {
        if let Conn::Pg { conn, options, .. } = &mut self.conn {
            // Dropping the old connection first closes its socket; that is what
            // ends a COPY the server is still sending.
            drop(conn.take());
            let fresh = bounded(CONNECT_TIMEOUT, pg_open(options))
                .await
                .map_err(|e| SourceError::connect(&self.name, &self.url, &e))?;
            *conn = Some(fresh);
        }
        Ok(())
    }

    /// Open a new PostgreSQL connection if the last one was lost with a COPY
    /// task (an extraction dropped before its end).
    async fn ensure_pg(&mut self) -> Result<(), SourceError> {
        match &self.conn {
            Conn::Pg { conn: None, .. } => self.reset_pg().await,
            _ => Ok(()),
        }
    }

    /// Turn the PostgreSQL `COPY` fast path on (the default for `postgres`
    /// connections) or off (always off for `redshift`). For comparing the two
    /// read paths; runs never need it.
    #[doc(hidden)]
    pub fn set_pg_copy(&mut self, enabled: bool) {
        if let Conn::Pg {
            copy, read_only, ..
        } = &mut self.conn
        {
            // `read_only` is false exactly for Redshift, which has no COPY TO STDOUT.
            *copy = enabled && *read_only;
        }
    }

    /// The bytes BigQuery estimated the last probed model processes (its dry
    /// run); `None` for every other warehouse.
    pub fn bytes_estimate(&self) -> Option<u64> {
        match &self.conn {
            Conn::BigQuery(client) => super::bigquery::last_estimate(client),
            _ => None,
        }
    }

    /// Which protocol the last [`Self::extract`] read with (`None` before any).
    #[doc(hidden)]
    pub fn last_read_path(&self) -> Option<ReadPath> {
        self.last_read_path
    }

    /// `MAX(<iterator>)` over the whole model (no window), used to fix the upper
    /// bound of an integer-iterator window before reading. `None` when the model is
    /// empty or `query` has no filter.
    pub async fn max_iterator(
        &mut self,
        query: &SourceQuery,
    ) -> Result<Option<IteratorValue>, SourceError> {
        check_guard(query, self.dialect())?;
        self.ensure_pg().await?;
        let Some(filter) = &query.filter else {
            return Ok(None);
        };
        let model = query.model.as_str();
        let data_type = filter.data_type;
        let decode_err = |message: String| SourceError::Decode {
            model: model.to_owned(),
            column: filter.column.clone(),
            row: 1,
            message,
        };
        // Borrowed field by field so `conn` can be borrowed mutably alongside.
        let errs = ErrCtx {
            url: &self.url,
            statement_timeout: self.statement_timeout,
        };
        match &mut self.conn {
            Conn::Pg {
                conn, read_only, ..
            } => {
                let conn: &mut PgConnection = live(conn)?;
                let sql = sql::max_iterator(Dialect::Postgres, query, filter);
                Ok(in_pg_tx!(errs, model, conn, read_only, {
                    match sqlx::query(&sql).fetch_one(&mut *conn).await {
                        Ok(row) => pg_iterator(&row, data_type).map_err(decode_err),
                        Err(e) => Err(errs.query(model, &e)),
                    }
                }))
            }
            Conn::MySql(conn) => {
                let sql = sql::max_iterator(Dialect::MySql, query, filter);
                let row = sqlx::query(&sql)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(|e| errs.query(model, &e))?;
                mysql_iterator(&row, data_type).map_err(decode_err)
            }
            Conn::Sqlite(conn) => {
                let sql = sql::max_iterator(Dialect::Sqlite, query, filter);
                let row = sqlx::query(&sql)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(|e| errs.query(model, &e))?;
                sqlite_iterator(&row, data_type).map_err(decode_err)
            }
            Conn::Snowflake(client) => super::snowflake::max_iterator(client, query, filter).await,
            Conn::BigQuery(client) => super::bigquery::max_iterator(client, query, filter).await,
        }
    }

    /// Run `sql` (any single SELECT returning one text-castable value) under the
    /// same session rules as a model and return the first column of the first row
    /// as text. For diagnostics and tests (e.g. `SHOW transaction_read_only`).
    #[doc(hidden)]
    pub async fn query_scalar_text(&mut self, sql: &str) -> Result<Option<String>, SourceError> {
        self.ensure_pg().await?;
        let model = "<diagnostic>";
        // Borrowed field by field so `conn` can be borrowed mutably alongside.
        let errs = ErrCtx {
            url: &self.url,
            statement_timeout: self.statement_timeout,
        };
        match &mut self.conn {
            Conn::Pg {
                conn, read_only, ..
            } => {
                let conn: &mut PgConnection = live(conn)?;
                Ok(in_pg_tx!(errs, model, conn, read_only, {
                    sqlx::query(sql)
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(|e| errs.query(model, &e))
                        .and_then(|row| match row {
                            Some(row) => row
                                .try_get::<Option<String>, _>(0)
                                .map_err(|e| errs.query(model, &e)),
                            None => Ok(None),
                        })
                }))
            }
            Conn::MySql(conn) => sqlx::query_scalar::<_, Option<String>>(sql)
                .fetch_optional(&mut *conn)
                .await
                .map(Option::flatten)
                .map_err(|e| errs.query(model, &e)),
            Conn::Sqlite(conn) => sqlx::query_scalar::<_, Option<String>>(sql)
                .fetch_optional(&mut *conn)
                .await
                .map(Option::flatten)
                .map_err(|e| errs.query(model, &e)),
            Conn::Snowflake(client) => super::snowflake::scalar_text(client, sql).await,
            Conn::BigQuery(client) => super::bigquery::scalar_text(client, sql).await,
        }
    }
}

/// What turning a driver error into a [`SourceError`] needs.
struct ErrCtx<'a> {
    /// Secret to scrub from messages.
    url: &'a Secret,
    /// The configured limit, for timeout messages.
    statement_timeout: Duration,
}

impl ErrCtx<'_> {
    /// Turn a driver error during a query into a [`SourceError`]: statement
    /// timeouts become `Timeout`, everything else `Query` with the database's own
    /// message (scrubbed of the URL's secrets).
    fn query(&self, model: &str, err: &sqlx::Error) -> SourceError {
        if is_statement_timeout(err) {
            return SourceError::Timeout {
                model: model.to_owned(),
                seconds: self.statement_timeout.as_secs(),
            };
        }
        let message = match err.as_database_error() {
            Some(db) => db.message().to_owned(),
            None => err.to_string(),
        };
        SourceError::Query {
            model: model.to_owned(),
            message: scrub_url_secrets(&message, self.url).to_lowercase_first(),
            retryable: is_transient(err),
        }
    }
}

/// The open PostgreSQL connection ([`Warehouse::ensure_pg`] ran first).
fn live(conn: &mut Option<PgConnection>) -> Result<&mut PgConnection, SourceError> {
    conn.as_mut().ok_or_else(|| SourceError::Query {
        model: String::new(),
        message: "the connection was lost with an interrupted read; run again".to_owned(),
        retryable: true,
    })
}

/// Open a PostgreSQL connection and set its session up (UTC).
pub(super) async fn pg_open(options: &PgConnectOptions) -> Result<PgConnection, sqlx::Error> {
    let mut c = PgConnection::connect_with(options).await?;
    sqlx::raw_sql("SET TIME ZONE 'UTC'").execute(&mut c).await?;
    // sqlx gives no handle on its socket, so the client side of a half-open
    // connection is bounded by the read timeouts; the server side is asked to
    // probe, so a session whose wsync vanished does not linger on the
    // warehouse. Best effort: Redshift and poolers may refuse these settings.
    let idle = super::TCP_KEEPALIVE.as_secs();
    let keepalive = format!(
        "SET tcp_keepalives_idle = {idle}; SET tcp_keepalives_interval = 10; SET tcp_keepalives_count = 3"
    );
    if let Err(e) = sqlx::raw_sql(&keepalive).execute(&mut c).await {
        tracing::debug!(error = %e, "The server refused TCP keepalive settings; read timeouts still apply.");
    }
    Ok(c)
}

/// Refuse a model that is not a single SELECT, as `dialect` reads it, before
/// sending it anywhere.
fn check_guard(query: &SourceQuery, dialect: ConnectionKind) -> Result<(), SourceError> {
    super::guard::check_select_for(&query.sql, dialect).map_err(|e| SourceError::RefusedSql {
        model: query.model.clone(),
        line: e.line,
        message: e.message,
    })
}

/// Whether the server cancelled the statement at its time limit: PostgreSQL
/// `57014`, MySQL 3024 (`max_execution_time`), MariaDB 1969 (`max_statement_time`).
fn is_statement_timeout(err: &sqlx::Error) -> bool {
    let Some(db) = err.as_database_error() else {
        return false;
    };
    if db.code().as_deref() == Some("57014") {
        return true;
    }
    db.try_downcast_ref::<MySqlDatabaseError>()
        .is_some_and(|e| matches!(e.number(), 3024 | 1969))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{bounded, numeric_typmod, read_timeout, READ_TIMEOUT_MARGIN};

    #[tokio::test(start_paused = true)]
    async fn half_open_connections_time_out() {
        // A server that never answers: the wait ends at the limit, as an I/O
        // (retryable) error that says what happened.
        let limit = read_timeout(Duration::from_secs(5));
        assert_eq!(limit, Duration::from_secs(5) + READ_TIMEOUT_MARGIN);
        let started = tokio::time::Instant::now();
        let never = std::future::pending::<Result<(), sqlx::Error>>();
        let err = bounded(limit, never).await.unwrap_err();
        assert_eq!(started.elapsed(), limit);
        assert!(crate::source::error::is_transient(&err), "{err}");
        assert!(err.to_string().contains("sent nothing for 35s"), "{err}");
        // An answer in time passes through.
        let answered = bounded(limit, async { Ok::<_, sqlx::Error>(7) }).await;
        assert_eq!(answered.unwrap(), 7);
    }

    #[test]
    fn numeric_typmods() {
        let typmod = |p: i32, s: i32| ((p << 16) | (s & 0x7ff)) + 4;
        assert_eq!(numeric_typmod(typmod(30, 9)), Some((30, 9)));
        assert_eq!(numeric_typmod(typmod(12, 2)), Some((12, 2)));
        assert_eq!(numeric_typmod(typmod(5, 0)), Some((5, 0)));
        // PostgreSQL 15's negative scales.
        assert_eq!(numeric_typmod(typmod(3, -2)), Some((3, -2)));
        assert_eq!(numeric_typmod(-1), None, "unconstrained");
        assert_eq!(numeric_typmod(typmod(1000, 0)), None, "precision beyond u8");
    }
}
