//! Wrapping a model in the window/limit query, per dialect.
//!
//! The model goes on its own lines inside `SELECT * FROM (\n<model>\n) AS m` so a
//! trailing `-- comment` in it cannot swallow the closing parenthesis. Bounds are
//! always bound as parameters, never formatted into the SQL.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

use super::guard::strip_trailing_semicolon;
use super::{IteratorFilter, IteratorValue, SourceQuery};
use crate::config::model::IteratorDataType;

/// The SQL dialect of a connection, as far as query text is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// PostgreSQL and Redshift: `"x"`, `$1`.
    Postgres,
    /// MySQL and MariaDB: `` `x` ``, `?`.
    MySql,
    /// SQLite: `"x"`, `?`; timestamps compared as normalised text.
    Sqlite,
}

/// A bound parameter, typed for the driver.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Bind {
    /// `timestamptz` / MySQL `TIMESTAMP`.
    TimestampTz(DateTime<Utc>),
    /// `timestamp` / MySQL `DATETIME`.
    Timestamp(NaiveDateTime),
    /// `date`.
    Date(NaiveDate),
    /// Integers (ids, Unix seconds/milliseconds).
    Int(i64),
    /// SQLite's normalised text form of a timestamp or date.
    Text(String),
}

/// SQLite's normalised timestamp text: `strftime('%Y-%m-%dT%H:%M:%f', …)` gives
/// `2024-01-02T03:04:05.678` (UTC, milliseconds), whatever format the value was
/// stored in (space or `T`, with or without offset or fraction).
const SQLITE_TS_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3f";

/// Quote an identifier for `dialect`, doubling embedded quote characters.
pub(crate) fn quote_ident(dialect: Dialect, name: &str) -> String {
    match dialect {
        Dialect::Postgres | Dialect::Sqlite => format!("\"{}\"", name.replace('"', "\"\"")),
        Dialect::MySql => format!("`{}`", name.replace('`', "``")),
    }
}

/// The `n`-th (1-based) parameter placeholder.
fn placeholder(dialect: Dialect, n: usize) -> String {
    match dialect {
        Dialect::Postgres => format!("${n}"),
        Dialect::MySql | Dialect::Sqlite => "?".to_owned(),
    }
}

/// The expression the iterator is compared and ordered on. SQLite compares
/// timestamps and dates on a normalised text form because it stores them as text
/// in whatever format the writer chose.
fn iterator_expr(dialect: Dialect, filter: &IteratorFilter) -> String {
    let col = format!("m.{}", quote_ident(dialect, &filter.column));
    match (dialect, filter.data_type) {
        (Dialect::Sqlite, IteratorDataType::TimestampTz | IteratorDataType::TimestampNtz) => {
            format!("strftime('%Y-%m-%dT%H:%M:%f', {col})")
        }
        (Dialect::Sqlite, IteratorDataType::Date) => format!("date({col})"),
        _ => col,
    }
}

/// The bind value for a bound, converted for SQLite's normalised comparison.
fn bind_for(dialect: Dialect, value: IteratorValue) -> Bind {
    match (dialect, value) {
        (Dialect::Sqlite, IteratorValue::TimestampTz(t)) => {
            Bind::Text(t.naive_utc().format(SQLITE_TS_FORMAT).to_string())
        }
        (Dialect::Sqlite, IteratorValue::Timestamp(t)) => {
            Bind::Text(t.format(SQLITE_TS_FORMAT).to_string())
        }
        (Dialect::Sqlite, IteratorValue::Date(d)) => Bind::Text(d.format("%Y-%m-%d").to_string()),
        (_, IteratorValue::TimestampTz(t)) => Bind::TimestampTz(t),
        (_, IteratorValue::Timestamp(t)) => Bind::Timestamp(t),
        (_, IteratorValue::Date(d)) => Bind::Date(d),
        (_, IteratorValue::Integer(i)) => Bind::Int(i),
    }
}

/// `SELECT * FROM (\n<model>\n) AS m`.
pub(crate) fn base(sql: &str) -> String {
    format!("SELECT * FROM (\n{}\n) AS m", strip_trailing_semicolon(sql))
}

/// The full extraction query and its parameters, in placeholder order.
pub(crate) fn wrap(dialect: Dialect, query: &SourceQuery) -> (String, Vec<Bind>) {
    let mut sql = base(&query.sql);
    let mut binds = Vec::new();
    if let Some(filter) = &query.filter {
        let expr = iterator_expr(dialect, filter);
        let mut conditions = Vec::new();
        if let Some(lower) = filter.lower {
            binds.push(bind_for(dialect, lower));
            conditions.push(format!("{expr} >= {}", placeholder(dialect, binds.len())));
        }
        if let Some(upper) = filter.upper {
            binds.push(bind_for(dialect, upper));
            conditions.push(format!("{expr} < {}", placeholder(dialect, binds.len())));
        }
        if !conditions.is_empty() {
            sql.push_str("\nWHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str("\nORDER BY ");
        sql.push_str(&expr);
    }
    if let Some(limit) = query.limit {
        sql.push_str(&format!("\nLIMIT {limit}"));
    }
    (sql, binds)
}

/// `SELECT MAX(<it>) FROM (\n<model>\n) AS m`, typed so one decoder fits every
/// column type: integers are cast to 64 bits, SQLite timestamps and dates are
/// normalised text.
pub(crate) fn max_iterator(
    dialect: Dialect,
    query: &SourceQuery,
    filter: &IteratorFilter,
) -> String {
    let col = format!("m.{}", quote_ident(dialect, &filter.column));
    let integer = matches!(
        filter.data_type,
        IteratorDataType::Integer | IteratorDataType::UnixSeconds | IteratorDataType::UnixMillis
    );
    let expr = match dialect {
        Dialect::Postgres if integer => format!("CAST(MAX({col}) AS BIGINT)"),
        Dialect::MySql if integer => format!("CAST(MAX({col}) AS SIGNED)"),
        Dialect::Sqlite if !integer => format!("MAX({})", iterator_expr(dialect, filter)),
        _ => format!("MAX({col})"),
    };
    format!(
        "SELECT {expr} FROM (\n{}\n) AS m",
        strip_trailing_semicolon(&query.sql)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(filter: Option<IteratorFilter>, limit: Option<u64>) -> SourceQuery {
        SourceQuery {
            model: "m".into(),
            sql: "SELECT 1 AS id -- note;\n;".into(),
            filter,
            limit,
        }
    }

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(quote_ident(Dialect::Postgres, "a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident(Dialect::MySql, "a`b"), "`a``b`");
    }

    #[test]
    fn plain_wrap_keeps_comment_on_its_own_line() {
        let (sql, binds) = wrap(Dialect::Postgres, &query(None, Some(10)));
        assert_eq!(
            sql,
            "SELECT * FROM (\nSELECT 1 AS id -- note\n) AS m\nLIMIT 10"
        );
        assert!(binds.is_empty());
    }

    #[test]
    fn window_binds_both_bounds() {
        let filter = IteratorFilter {
            column: "id".into(),
            data_type: IteratorDataType::Integer,
            lower: Some(IteratorValue::Integer(5)),
            upper: Some(IteratorValue::Integer(9)),
        };
        let (sql, binds) = wrap(Dialect::Postgres, &query(Some(filter.clone()), None));
        assert!(
            sql.ends_with("WHERE m.\"id\" >= $1 AND m.\"id\" < $2\nORDER BY m.\"id\""),
            "{sql}"
        );
        assert_eq!(binds, vec![Bind::Int(5), Bind::Int(9)]);
        let (sql, _) = wrap(Dialect::MySql, &query(Some(filter), None));
        assert!(
            sql.ends_with("WHERE m.`id` >= ? AND m.`id` < ?\nORDER BY m.`id`"),
            "{sql}"
        );
    }

    #[test]
    fn sqlite_timestamps_compare_normalised() {
        let t = NaiveDate::from_ymd_opt(2024, 1, 2)
            .and_then(|d| d.and_hms_milli_opt(3, 4, 5, 6))
            .map(|t| t.and_utc());
        let filter = IteratorFilter {
            column: "ts".into(),
            data_type: IteratorDataType::TimestampTz,
            lower: t.map(IteratorValue::TimestampTz),
            upper: None,
        };
        let (sql, binds) = wrap(Dialect::Sqlite, &query(Some(filter), None));
        assert!(
            sql.contains("WHERE strftime('%Y-%m-%dT%H:%M:%f', m.\"ts\") >= ?"),
            "{sql}"
        );
        assert_eq!(binds, vec![Bind::Text("2024-01-02T03:04:05.006".into())]);
    }
}
