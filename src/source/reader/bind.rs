//! The window bounds of an incremental query, bound per driver.

use sqlx::mysql::MySql;
use sqlx::sqlite::Sqlite;

use crate::source::sql::Bind;

/// Bind window bounds for PostgreSQL.
pub(super) fn bind_pg<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    binds: &[Bind],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    for b in binds {
        q = match b {
            Bind::TimestampTz(v) => q.bind(*v),
            Bind::Timestamp(v) => q.bind(*v),
            Bind::Date(v) => q.bind(*v),
            Bind::Int(v) => q.bind(*v),
            Bind::Text(v) => q.bind(v.clone()),
        };
    }
    q
}

/// Bind window bounds for MySQL.
pub(super) fn bind_mysql<'q>(
    mut q: sqlx::query::Query<'q, MySql, sqlx::mysql::MySqlArguments>,
    binds: &[Bind],
) -> sqlx::query::Query<'q, MySql, sqlx::mysql::MySqlArguments> {
    for b in binds {
        q = match b {
            Bind::TimestampTz(v) => q.bind(*v),
            Bind::Timestamp(v) => q.bind(*v),
            Bind::Date(v) => q.bind(*v),
            Bind::Int(v) => q.bind(*v),
            Bind::Text(v) => q.bind(v.clone()),
        };
    }
    q
}

/// Bind window bounds for SQLite.
pub(super) fn bind_sqlite<'q>(
    mut q: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    binds: &[Bind],
) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    for b in binds {
        q = match b {
            Bind::TimestampTz(v) => q.bind(*v),
            Bind::Timestamp(v) => q.bind(*v),
            Bind::Date(v) => q.bind(*v),
            Bind::Int(v) => q.bind(*v),
            Bind::Text(v) => q.bind(v.clone()),
        };
    }
    q
}
