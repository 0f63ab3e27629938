//! Opening a warehouse connection and setting its session up for reading
//! (the per-dialect rules are in the parent module's notes), and seeding a
//! demo SQLite file on first use.

use std::str::FromStr;

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::Connection as _;

use crate::config::model::{CloudWarehouse, Connection, ConnectionKind};
use crate::source::error::LowercaseFirst;
use crate::source::{bigquery, snowflake, SourceError};

use super::{bounded, pg_open, Conn, Warehouse, CONNECT_TIMEOUT};

impl Warehouse {
    /// Open the connection and set the session up for reading (see the module doc).
    /// For SQLite with `seed_sql` and no database file yet, the file is created and
    /// the seed script run first.
    pub async fn connect(conn: &Connection) -> Result<Warehouse, SourceError> {
        let url = conn.url.expose();
        let connect_err = |e: &sqlx::Error| SourceError::connect(&conn.name, &conn.url, e);
        let timeout = conn.statement_timeout;
        let driver = match (conn.kind, &conn.cloud) {
            (ConnectionKind::Snowflake, Some(CloudWarehouse::Snowflake(settings))) => {
                let client = snowflake::connect(&conn.name, settings, timeout).await?;
                Conn::Snowflake(Box::new(client))
            }
            (ConnectionKind::BigQuery, Some(CloudWarehouse::BigQuery(settings))) => {
                let client = bigquery::connect(&conn.name, settings, timeout).await?;
                Conn::BigQuery(Box::new(client))
            }
            (ConnectionKind::Snowflake | ConnectionKind::BigQuery, _) => {
                return Err(SourceError::Login {
                    connection: conn.name.clone(),
                    url: conn.url.expose().to_owned(),
                    cause: format!("the {} connection has no settings", conn.kind.as_str()),
                    retryable: false,
                })
            }
            _ => match conn.kind {
                ConnectionKind::Postgres | ConnectionKind::Redshift => {
                    let options = PgConnectOptions::from_str(url)
                        .map_err(|e| connect_err(&e))?
                        .application_name("wsync");
                    let c = bounded(CONNECT_TIMEOUT, pg_open(&options))
                        .await
                        .map_err(|e| connect_err(&e))?;
                    Conn::Pg {
                        conn: Some(c),
                        read_only: conn.kind == ConnectionKind::Postgres,
                        options: Box::new(options),
                        // Redshift speaks the protocol but has no COPY … TO STDOUT.
                        copy: conn.kind == ConnectionKind::Postgres,
                    }
                }
                ConnectionKind::MySql => {
                    let options =
                        MySqlConnectOptions::from_str(url).map_err(|e| connect_err(&e))?;
                    let mut c = bounded(CONNECT_TIMEOUT, MySqlConnection::connect_with(&options))
                        .await
                        .map_err(|e| connect_err(&e))?;
                    let version: String = bounded(
                        CONNECT_TIMEOUT,
                        sqlx::query_scalar("SELECT VERSION()").fetch_one(&mut c),
                    )
                    .await
                    .map_err(|e| connect_err(&e))?;
                    let limit = if version.to_ascii_lowercase().contains("mariadb") {
                        format!("SET SESSION max_statement_time = {}", timeout.as_secs_f64())
                    } else {
                        format!("SET SESSION max_execution_time = {}", timeout.as_millis())
                    };
                    let setup = format!(
                        "SET time_zone = '+00:00'; SET SESSION TRANSACTION READ ONLY; {limit}"
                    );
                    bounded(CONNECT_TIMEOUT, sqlx::raw_sql(&setup).execute(&mut c))
                        .await
                        .map_err(|e| connect_err(&e))?;
                    Conn::MySql(c)
                }
                ConnectionKind::Sqlite => {
                    let options =
                        SqliteConnectOptions::from_str(url).map_err(|e| connect_err(&e))?;
                    if let Some(seed) = &conn.seed_sql {
                        if !options.get_filename().exists() {
                            seed_sqlite(&options, seed).await?;
                        }
                    }
                    let options = options.read_only(true).create_if_missing(false);
                    let c = SqliteConnection::connect_with(&options)
                        .await
                        .map_err(|e| connect_err(&e))?;
                    Conn::Sqlite(c)
                }
                ConnectionKind::Snowflake | ConnectionKind::BigQuery => {
                    unreachable!("handled above")
                }
            },
        };
        Ok(Warehouse {
            name: conn.name.clone(),
            url: conn.url.clone(),
            statement_timeout: timeout,
            conn: driver,
            last_read_path: None,
        })
    }
}

/// Create the SQLite file and run the seed script in it; on failure remove the
/// half-built file so the next start seeds again.
async fn seed_sqlite(
    options: &SqliteConnectOptions,
    seed: &std::path::Path,
) -> Result<(), SourceError> {
    let seed_err = |message: String| SourceError::Seed {
        file: seed.to_path_buf(),
        message,
    };
    let script = tokio::fs::read_to_string(seed)
        .await
        .map_err(|e| seed_err(format!("cannot read it: {e}")))?;
    let path = options.get_filename().to_path_buf();
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| seed_err(format!("cannot create {}: {e}", parent.display())))?;
    }
    // Seeded under a name of its own, then linked into place only if the file
    // is still missing: two runs starting at once (a daemon's first pass) each
    // build a copy, one wins, and neither sees a half-made database.
    let temp = path.with_file_name(format!(
        ".{}.seeding-{}-{}",
        path.file_name()
            .map_or_else(|| "db".into(), |n| n.to_string_lossy()),
        std::process::id(),
        fastrand::u64(..)
    ));
    let result = async {
        let rw = SqliteConnectOptions::new()
            .filename(&temp)
            .create_if_missing(true);
        let mut c = SqliteConnection::connect_with(&rw).await?;
        sqlx::raw_sql(&script).execute(&mut c).await?;
        c.close().await
    }
    .await;
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&temp).await;
        let message = match e.as_database_error() {
            Some(db) => db.message().to_owned(),
            None => e.to_string(),
        };
        return Err(seed_err(message.to_lowercase_first()));
    }
    let linked = tokio::fs::hard_link(&temp, &path).await;
    let _ = tokio::fs::remove_file(&temp).await;
    match linked {
        Ok(()) => Ok(()),
        // Another run seeded it first: theirs is as good as ours.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(seed_err(format!(
            "cannot move the seeded database into place: {e}"
        ))),
    }
}
