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
    /// Snowflake: `"x"` (case-sensitive), `?` bound as typed bindings.
    Snowflake,
    /// BigQuery (GoogleSQL): `` `x` ``, `?` bound as typed positional parameters.
    BigQuery,
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
        Dialect::Postgres | Dialect::Sqlite | Dialect::Snowflake => {
            format!("\"{}\"", name.replace('"', "\"\""))
        }
        Dialect::MySql => format!("`{}`", name.replace('`', "``")),
        // GoogleSQL escapes inside quoted identifiers with a backslash.
        Dialect::BigQuery => format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`")),
    }
}

/// The `n`-th (1-based) parameter placeholder.
fn placeholder(dialect: Dialect, n: usize) -> String {
    match dialect {
        Dialect::Postgres => format!("${n}"),
        Dialect::MySql | Dialect::Sqlite | Dialect::Snowflake | Dialect::BigQuery => "?".to_owned(),
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
    wrap_selecting(dialect, query, None)
}

/// [`wrap`] with `select` (see [`size_guard`]) instead of `*`.
pub(crate) fn wrap_selecting(
    dialect: Dialect,
    query: &SourceQuery,
    select: Option<&str>,
) -> (String, Vec<Bind>) {
    let mut binds = Vec::new();
    let sql = wrap_with(dialect, query, select, |bind| {
        binds.push(bind);
        Some(placeholder(dialect, binds.len()))
    });
    (sql.unwrap_or_default(), binds)
}

/// The PostgreSQL extraction query with its bounds written as typed literals,
/// for `COPY (…) TO STDOUT`, which takes no parameters. The literals come from
/// typed values ([`Bind`]), never from text, so nothing can be injected; `None`
/// when a bound has no exact literal (a year outside 1–9999), and the caller
/// reads through the row protocol with bound parameters instead.
pub(crate) fn wrap_pg_inline(query: &SourceQuery, select: Option<&str>) -> Option<String> {
    wrap_with(Dialect::Postgres, query, select, |bind| pg_literal(&bind))
}

/// The select list that keeps the server from sending values larger than
/// [`MAX_VALUE_BYTES`](super::MAX_VALUE_BYTES): it sends NULL instead, and one
/// more column last, `i:bytes` for each column `i` so replaced (comma-separated,
/// empty when none), from which the reader rejects the row. PostgreSQL and MySQL
/// send a row as one message, and the drivers hold a message whole, so a value is
/// cut on the server or not at all.
///
/// Sizes: PostgreSQL `octet_length` for text types and bytea (the exact size,
/// read from the TOAST header without decompressing), `pg_column_size` for json,
/// jsonb and arrays (their stored size, which compression may make smaller than
/// what is sent); MySQL `LENGTH` (bytes) for text, blobs and JSON. `None` when no
/// column needs it, or when two columns share a name (they cannot be told apart
/// by name).
pub(crate) fn size_guard(dialect: Dialect, columns: &[super::ColumnInfo]) -> Option<String> {
    use super::ColumnKind;
    let limit = super::MAX_VALUE_BYTES;
    // MySQL compares column names without case.
    let mut names: Vec<String> = columns
        .iter()
        .map(|c| match dialect {
            Dialect::MySql => c.name.to_lowercase(),
            _ => c.name.clone(),
        })
        .collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return None;
    }
    let mut list = Vec::with_capacity(columns.len() + 1);
    let mut reports = Vec::new();
    for (i, c) in columns.iter().enumerate() {
        let col = format!("m.{}", quote_ident(dialect, &c.name));
        let size = match (dialect, &c.kind) {
            // `::text` for enums, `name` and `char`, a no-op (no detoasting) for text.
            (Dialect::Postgres, ColumnKind::Text) => format!("octet_length({col}::text)"),
            (Dialect::Postgres, ColumnKind::Bytes) => format!("octet_length({col})"),
            (Dialect::Postgres, ColumnKind::Json | ColumnKind::List(_)) => {
                format!("pg_column_size({col})")
            }
            (Dialect::MySql, ColumnKind::Text | ColumnKind::Bytes | ColumnKind::Json) => {
                format!("LENGTH({col})")
            }
            _ => {
                list.push(col);
                continue;
            }
        };
        list.push(format!(
            "CASE WHEN {size} > {limit} THEN NULL ELSE {col} END AS {}",
            quote_ident(dialect, &c.name)
        ));
        reports.push(match dialect {
            Dialect::MySql => format!("CASE WHEN {size} > {limit} THEN CONCAT('{i}:', {size}) END"),
            _ => format!("CASE WHEN {size} > {limit} THEN '{i}:' || {size} END"),
        });
    }
    if reports.is_empty() || dialect == Dialect::Sqlite {
        return None;
    }
    let concat = match dialect {
        Dialect::MySql => "CONCAT_WS",
        _ => "concat_ws",
    };
    list.push(format!(
        "{concat}(',', {}) AS {}",
        reports.join(", "),
        quote_ident(dialect, super::REJECTED_COLUMN)
    ));
    Some(list.join(", "))
}

/// `bind` as a PostgreSQL literal of the type the row protocol binds it as.
fn pg_literal(bind: &Bind) -> Option<String> {
    use chrono::Datelike as _;
    let year_ok = |year: i32| (1..=9999).contains(&year);
    Some(match bind {
        Bind::Int(i) => format!("CAST({i} AS BIGINT)"),
        Bind::TimestampTz(t) if year_ok(t.year()) => format!(
            "CAST('{}' AS TIMESTAMPTZ)",
            micros_exact(t.naive_utc())?.format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
        ),
        Bind::Timestamp(t) if year_ok(t.year()) => format!(
            "CAST('{}' AS TIMESTAMP)",
            micros_exact(*t)?.format("%Y-%m-%dT%H:%M:%S%.6f")
        ),
        Bind::Date(d) if year_ok(d.year()) => {
            format!("CAST('{}' AS DATE)", d.format("%Y-%m-%d"))
        }
        _ => return None,
    })
}

/// `t` at microsecond precision, rounded as sqlx encodes a bound timestamp
/// (microseconds since 2000-01-01, truncated toward zero), so the literal and the
/// parameter select the same rows.
fn micros_exact(t: NaiveDateTime) -> Option<NaiveDateTime> {
    let epoch = NaiveDate::from_ymd_opt(2000, 1, 1)?.and_hms_opt(0, 0, 0)?;
    let micros = (t - epoch).num_microseconds()?;
    epoch.checked_add_signed(chrono::Duration::microseconds(micros))
}

/// The extraction query; `render` turns each bound into its SQL text (a
/// placeholder or a literal), or `None` to give up.
fn wrap_with(
    dialect: Dialect,
    query: &SourceQuery,
    select: Option<&str>,
    mut render: impl FnMut(Bind) -> Option<String>,
) -> Option<String> {
    let mut sql = match select {
        Some(select) => format!(
            "SELECT {select} FROM (\n{}\n) AS m",
            strip_trailing_semicolon(&query.sql)
        ),
        None => base(&query.sql),
    };
    if let Some(filter) = &query.filter {
        let expr = iterator_expr(dialect, filter);
        let mut conditions = Vec::new();
        if let Some(lower) = filter.lower {
            conditions.push(format!("{expr} >= {}", render(bind_for(dialect, lower))?));
        }
        if let Some(upper) = filter.upper {
            conditions.push(format!("{expr} < {}", render(bind_for(dialect, upper))?));
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
    Some(sql)
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
        Dialect::Snowflake if integer => format!("CAST(MAX({col}) AS NUMBER(18,0))"),
        Dialect::BigQuery if integer => format!("CAST(MAX({col}) AS INT64)"),
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

    #[test]
    fn huge_values_are_cut_on_the_server() {
        use crate::source::{ColumnInfo, ColumnKind};
        let col = |name: &str, kind: ColumnKind| ColumnInfo {
            name: name.into(),
            sql_type: "X".into(),
            kind,
            decimal: None,
        };
        let columns = vec![
            col("id", ColumnKind::Int),
            col("bio", ColumnKind::Text),
            col("doc", ColumnKind::Json),
            col("raw", ColumnKind::Bytes),
        ];
        let select = size_guard(Dialect::Postgres, &columns).expect("text columns need it");
        assert!(select.starts_with(r#"m."id", CASE WHEN octet_length(m."bio"::text) > 8388608 THEN NULL ELSE m."bio" END AS "bio", "#), "{select}");
        assert!(
            select.contains(
                r#"CASE WHEN pg_column_size(m."doc") > 8388608 THEN NULL ELSE m."doc" END AS "doc""#
            ),
            "{select}"
        );
        assert!(select.ends_with(r#"CASE WHEN octet_length(m."raw") > 8388608 THEN '3:' || octet_length(m."raw") END) AS "__wsync_rejected""#), "{select}");
        let q = SourceQuery {
            model: "m".into(),
            sql: "SELECT 1 AS id;".into(),
            filter: None,
            limit: Some(5),
        };
        let sql = wrap_pg_inline(&q, Some(&select)).unwrap();
        assert!(sql.starts_with("SELECT m.\"id\", CASE"), "{sql}");
        assert!(sql.ends_with(") AS m\nLIMIT 5"), "{sql}");
        // Nothing to cut, or names that cannot be told apart: plain `*`.
        assert_eq!(size_guard(Dialect::Postgres, &columns[..1]), None);
        let twice = vec![col("a", ColumnKind::Text), col("a", ColumnKind::Text)];
        assert_eq!(size_guard(Dialect::Postgres, &twice), None);
        let my = size_guard(Dialect::MySql, &columns).expect("mysql too");
        assert!(
            my.contains("CASE WHEN LENGTH(m.`bio`) > 8388608 THEN NULL ELSE m.`bio` END AS `bio`"),
            "{my}"
        );
        assert!(
            my.ends_with("CONCAT('3:', LENGTH(m.`raw`)) END) AS `__wsync_rejected`"),
            "{my}"
        );
        let cased = vec![col("A", ColumnKind::Text), col("a", ColumnKind::Text)];
        assert_eq!(size_guard(Dialect::MySql, &cased), None);
        assert!(size_guard(Dialect::Postgres, &cased).is_some());
    }

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
        assert_eq!(
            quote_ident(Dialect::Snowflake, "Mixed \"Case"),
            "\"Mixed \"\"Case\""
        );
        assert_eq!(quote_ident(Dialect::BigQuery, "a`b\\c"), "`a\\`b\\\\c`");
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
    fn postgres_inline_bounds_are_typed_literals() {
        let t = NaiveDate::from_ymd_opt(2024, 1, 2)
            .and_then(|d| d.and_hms_nano_opt(3, 4, 5, 678_901_999))
            .map(|t| t.and_utc());
        let filter = IteratorFilter {
            column: "ts".into(),
            data_type: IteratorDataType::TimestampTz,
            lower: t.map(IteratorValue::TimestampTz),
            upper: Some(IteratorValue::Integer(-7)),
        };
        let sql = wrap_pg_inline(&query(Some(filter.clone()), Some(3)), None).unwrap();
        assert!(
            sql.ends_with(
                "WHERE m.\"ts\" >= CAST('2024-01-02T03:04:05.678901+00:00' AS TIMESTAMPTZ) \
                 AND m.\"ts\" < CAST(-7 AS BIGINT)\nORDER BY m.\"ts\"\nLIMIT 3"
            ),
            "{sql}"
        );
        let far = NaiveDate::from_ymd_opt(-44, 3, 15).map(IteratorValue::Date);
        let filter = IteratorFilter {
            data_type: IteratorDataType::Date,
            lower: far,
            ..filter
        };
        assert_eq!(wrap_pg_inline(&query(Some(filter), None), None), None);
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
