//! The SQL-type → [`ColumnKind`] table, one per dialect.
//!
//! Each table is a single declarative `match` on the type name the driver reports
//! (sqlx `TypeInfo::name()`, compared uppercase). A type outside a table is
//! refused with [`Unsupported`], which carries the cast that makes the model
//! readable; the reader turns it into `SourceError::UnsupportedType`.

use super::ColumnKind;

/// A type with no mapping, and the model expression that fixes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    /// The type name as reported.
    pub sql_type: String,
    /// The fix with `{col}` standing for the column name, e.g.
    /// `CAST({col} AS NUMERIC) AS {col}`.
    pub fix_template: &'static str,
}

impl Unsupported {
    fn new(sql_type: &str, fix_template: &'static str) -> Self {
        Self {
            sql_type: sql_type.to_owned(),
            fix_template,
        }
    }

    /// The concrete fix for column `column`, e.g. `CAST(balance AS NUMERIC) AS balance`.
    pub fn fix_for(&self, column: &str) -> String {
        self.fix_template.replace("{col}", column)
    }
}

/// PostgreSQL and Redshift.
///
/// | reported type name                                              | kind          |
/// |-----------------------------------------------------------------|---------------|
/// | `BOOL`, `BOOLEAN`                                               | `Bool`        |
/// | `INT2`, `INT4`, `INT8`, `SMALLINT`, `INT`, `INTEGER`, `BIGINT`  | `Int`         |
/// | `FLOAT4`, `REAL`                                                | `Float32`     |
/// | `FLOAT8`, `DOUBLE PRECISION`                                    | `Float64`     |
/// | `NUMERIC`, `DECIMAL`                                            | `Decimal`     |
/// | `TEXT`, `VARCHAR`, `CHARACTER VARYING`, `BPCHAR`, `CHAR`, `CHARACTER`, `NAME`, `CITEXT` | `Text` |
/// | `BYTEA`                                                         | `Bytes`       |
/// | `DATE`                                                          | `Date`        |
/// | `TIME`                                                          | `Time`        |
/// | `TIMESTAMP`                                                     | `Timestamp`   |
/// | `TIMESTAMPTZ`                                                   | `TimestampTz` |
/// | `UUID`                                                          | `Uuid`        |
/// | `JSON`, `JSONB`                                                 | `Json`        |
/// | `X[]` (or `_x`) of any type above                               | `List(X)`     |
///
/// Refused, with the fix offered: `MONEY` (`CAST(col AS NUMERIC)`), `INTERVAL`
/// (`EXTRACT(EPOCH FROM col)`), `TIMETZ` (`CAST(col AS TIME)`), `OID`-like ids
/// (`CAST(col AS BIGINT)`), `RECORD` (`to_jsonb(col)`), and everything else
/// (`INET`, `CIDR`, `MACADDR`, `BIT`, `XML`, geometry, ranges, unknown OIDs, …:
/// `CAST(col AS TEXT)`). Enums and domains are resolved by the reader before this
/// table (enum → `TEXT`, domain → its base type).
pub fn postgres_kind(type_name: &str) -> Result<ColumnKind, Unsupported> {
    let name = type_name.trim().to_ascii_uppercase();
    let element = name.strip_suffix("[]").or_else(|| name.strip_prefix('_'));
    if let Some(element) = element {
        return match postgres_scalar(element) {
            Ok(kind) => Ok(ColumnKind::List(Box::new(kind))),
            Err(_) => Err(Unsupported::new(
                type_name,
                "CAST({col} AS TEXT[]) AS {col}",
            )),
        };
    }
    postgres_scalar(&name).map_err(|fix| Unsupported::new(type_name, fix))
}

/// The scalar part of [`postgres_kind`]; the error is the fix template.
fn postgres_scalar(name: &str) -> Result<ColumnKind, &'static str> {
    Ok(match name {
        "BOOL" | "BOOLEAN" => ColumnKind::Bool,
        "INT2" | "INT4" | "INT8" | "SMALLINT" | "INT" | "INTEGER" | "BIGINT" => ColumnKind::Int,
        "FLOAT4" | "REAL" => ColumnKind::Float32,
        "FLOAT8" | "DOUBLE PRECISION" => ColumnKind::Float64,
        "NUMERIC" | "DECIMAL" => ColumnKind::Decimal,
        "TEXT" | "VARCHAR" | "CHARACTER VARYING" | "BPCHAR" | "CHAR" | "CHARACTER" | "NAME"
        | "CITEXT" => ColumnKind::Text,
        "BYTEA" => ColumnKind::Bytes,
        "DATE" => ColumnKind::Date,
        "TIME" => ColumnKind::Time,
        "TIMESTAMP" => ColumnKind::Timestamp,
        "TIMESTAMPTZ" => ColumnKind::TimestampTz,
        "UUID" => ColumnKind::Uuid,
        "JSON" | "JSONB" => ColumnKind::Json,
        "MONEY" => return Err("CAST({col} AS NUMERIC) AS {col}"),
        "INTERVAL" => return Err("EXTRACT(EPOCH FROM {col}) AS {col}"),
        "TIMETZ" => return Err("CAST({col} AS TIME) AS {col}"),
        "OID" | "XID" | "XID8" | "CID" | "REGCLASS" | "REGPROC" | "REGTYPE" => {
            return Err("CAST({col} AS BIGINT) AS {col}")
        }
        "RECORD" => return Err("to_jsonb({col}) AS {col}"),
        _ => return Err("CAST({col} AS TEXT) AS {col}"),
    })
}

/// MySQL and MariaDB.
///
/// | reported type name                                                    | kind          |
/// |-----------------------------------------------------------------------|---------------|
/// | `BOOLEAN` (sqlx's name for `TINYINT(1)`)                              | `Bool`        |
/// | `TINYINT`, `SMALLINT`, `MEDIUMINT`, `INT`, `BIGINT`, `YEAR`            | `Int`         |
/// | `TINYINT UNSIGNED` … `INT UNSIGNED`                                    | `Int`         |
/// | `BIGINT UNSIGNED`                                                     | `UInt`        |
/// | `FLOAT`                                                               | `Float32`     |
/// | `DOUBLE`                                                              | `Float64`     |
/// | `DECIMAL`                                                             | `Decimal`     |
/// | `CHAR`, `VARCHAR`, `TINYTEXT`, `TEXT`, `MEDIUMTEXT`, `LONGTEXT`, `ENUM`, `SET` | `Text` |
/// | `NULL` (an expression that is always NULL)                            | `Text`        |
/// | `BINARY`, `VARBINARY`, `TINYBLOB`, `BLOB`, `MEDIUMBLOB`, `LONGBLOB`    | `Bytes`       |
/// | `DATE`                                                                | `Date`        |
/// | `TIME`                                                                | `Time`        |
/// | `DATETIME`                                                            | `Timestamp`   |
/// | `TIMESTAMP` (read in the session time zone, `+00:00`)                 | `TimestampTz` |
/// | `JSON` (MySQL; MariaDB reports its JSON columns as `LONGTEXT`)         | `Json`        |
///
/// Refused: `BIT` (`CAST(col AS UNSIGNED)`), `GEOMETRY` (`ST_AsText(col)`), anything
/// else (`CAST(col AS CHAR)`). Note that the driver reports text columns with a
/// binary collation (`utf8mb4_bin`) as `VARBINARY`/`BLOB`; they arrive as bytes.
pub fn mysql_kind(type_name: &str) -> Result<ColumnKind, Unsupported> {
    let name = type_name.trim().to_ascii_uppercase();
    Ok(match name.as_str() {
        "BOOLEAN" | "BOOL" => ColumnKind::Bool,
        "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "INTEGER" | "BIGINT" | "YEAR"
        | "TINYINT UNSIGNED" | "SMALLINT UNSIGNED" | "MEDIUMINT UNSIGNED" | "INT UNSIGNED" => {
            ColumnKind::Int
        }
        "BIGINT UNSIGNED" => ColumnKind::UInt,
        "FLOAT" => ColumnKind::Float32,
        "DOUBLE" => ColumnKind::Float64,
        "DECIMAL" => ColumnKind::Decimal,
        "CHAR" | "VARCHAR" | "TINYTEXT" | "TEXT" | "MEDIUMTEXT" | "LONGTEXT" | "ENUM" | "SET"
        | "NULL" => ColumnKind::Text,
        "BINARY" | "VARBINARY" | "TINYBLOB" | "BLOB" | "MEDIUMBLOB" | "LONGBLOB" => {
            ColumnKind::Bytes
        }
        "DATE" => ColumnKind::Date,
        "TIME" => ColumnKind::Time,
        "DATETIME" => ColumnKind::Timestamp,
        "TIMESTAMP" => ColumnKind::TimestampTz,
        "JSON" => ColumnKind::Json,
        "BIT" => {
            return Err(Unsupported::new(
                type_name,
                "CAST({col} AS UNSIGNED) AS {col}",
            ))
        }
        "GEOMETRY" => return Err(Unsupported::new(type_name, "ST_AsText({col}) AS {col}")),
        _ => return Err(Unsupported::new(type_name, "CAST({col} AS CHAR) AS {col}")),
    })
}

/// SQLite, by declared type and SQLite's affinity rules.
///
/// What sqlx 0.8's `describe` actually reports (checked by the
/// `source_sqlite_*` integration tests): a declared type it recognises is reduced
/// to `INTEGER`, `REAL`, `TEXT`, `BLOB`, `BOOLEAN`, `DATE`, `TIME` or `DATETIME`
/// (its `FromStr` on the declaration: `int4`/`int8`/`bool`/`date`/`time`/
/// `datetime`/`timestamp`, then "contains int/char/clob/text/blob/real/floa/doub").
/// For a declaration it does not recognise (`DECIMAL(20,2)`, `NUMERIC`, `JSON`)
/// and for expression columns it falls back to the type inferred from the query
/// plan: `SELECT 'a' AS x, 1 AS y, 1.5 AS z, NULL AS n` reports `TEXT`,
/// `INTEGER`, `REAL`, `NULL`; a `DECIMAL(20,2)` column holding `12.5` reports
/// `REAL`, a `JSON` column `TEXT`. So in practice SQLite decimals arrive as
/// `Float64` and JSON as `Text` (unchanged text); `NULL` (nothing inferred, e.g. a
/// bare `NULL` or an untyped function) is read as `Text` so the column still
/// exists. The table accepts both sqlx's names and raw declared names:
///
/// | name (first match wins)                         | kind        |
/// |-------------------------------------------------|-------------|
/// | `BOOLEAN`, `BOOL`                               | `Bool`      |
/// | `DATE`                                          | `Date`      |
/// | `TIME`                                          | `Time`      |
/// | `DATETIME`, `TIMESTAMP`                         | `Timestamp` (text, numbers read as Unix seconds) |
/// | `JSON`                                          | `Json`      |
/// | `NULL` or empty (type unknown)                  | `Text` (any stored value, as text) |
/// | contains `INT`                                  | `Int`       |
/// | contains `CHAR`, `CLOB`, `TEXT`                 | `Text`      |
/// | contains `BLOB`                                 | `Bytes`     |
/// | contains `REAL`, `FLOA`, `DOUB`                 | `Float64`   |
/// | anything else (`NUMERIC`, `DECIMAL(p,s)`, …)    | `Decimal` (the stored value's text) |
///
/// SQLite stores values dynamically, so the decoder converts whatever storage
/// class a value has to the column's kind (and fails with the row number when it
/// cannot). A `NUMERIC` value is stored as an integer or a float, so its "exact"
/// text is whatever SQLite kept (`12.50` reads back as `12.5`). Nothing is refused.
pub fn sqlite_kind(type_name: &str) -> Result<ColumnKind, Unsupported> {
    let name = type_name.trim().to_ascii_uppercase();
    let has = |needle: &str| name.contains(needle);
    Ok(match name.as_str() {
        "BOOLEAN" | "BOOL" => ColumnKind::Bool,
        "DATE" => ColumnKind::Date,
        "TIME" => ColumnKind::Time,
        "DATETIME" | "TIMESTAMP" => ColumnKind::Timestamp,
        "JSON" => ColumnKind::Json,
        "NULL" | "" => ColumnKind::Text,
        _ if has("INT") => ColumnKind::Int,
        _ if has("CHAR") || has("CLOB") || has("TEXT") => ColumnKind::Text,
        _ if has("BLOB") => ColumnKind::Bytes,
        _ if has("REAL") || has("FLOA") || has("DOUB") => ColumnKind::Float64,
        _ => ColumnKind::Decimal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ColumnKind::*;

    fn list(k: ColumnKind) -> ColumnKind {
        List(Box::new(k))
    }

    #[test]
    fn postgres_table() {
        for (name, kind) in [
            ("INT2", Int),
            ("int4", Int),
            ("BIGINT", Int),
            ("FLOAT4", Float32),
            ("FLOAT8", Float64),
            ("NUMERIC", Decimal),
            ("BOOL", Bool),
            ("TEXT", Text),
            ("VARCHAR", Text),
            ("CHAR", Text),
            ("BPCHAR", Text),
            ("NAME", Text),
            ("citext", Text),
            ("BYTEA", Bytes),
            ("DATE", Date),
            ("TIME", Time),
            ("TIMESTAMP", Timestamp),
            ("TIMESTAMPTZ", TimestampTz),
            ("UUID", Uuid),
            ("JSON", Json),
            ("JSONB", Json),
            ("TEXT[]", list(Text)),
            ("INT8[]", list(Int)),
            ("_citext", list(Text)),
            ("NUMERIC[]", list(Decimal)),
        ] {
            assert_eq!(postgres_kind(name), Ok(kind), "{name}");
        }
        let money = postgres_kind("MONEY").unwrap_err();
        assert_eq!(
            money.fix_for("balance"),
            "CAST(balance AS NUMERIC) AS balance"
        );
        let interval = postgres_kind("INTERVAL").unwrap_err();
        assert_eq!(interval.fix_for("age"), "EXTRACT(EPOCH FROM age) AS age");
        for name in [
            "TIMETZ",
            "INET",
            "CIDR",
            "MACADDR",
            "BIT",
            "XML",
            "POINT",
            "INT4RANGE",
            "?",
        ] {
            assert!(postgres_kind(name).is_err(), "{name}");
        }
        assert_eq!(
            postgres_kind("INTERVAL[]").unwrap_err().fix_for("x"),
            "CAST(x AS TEXT[]) AS x"
        );
    }

    #[test]
    fn mysql_table() {
        for (name, kind) in [
            ("BOOLEAN", Bool),
            ("TINYINT", Int),
            ("INT UNSIGNED", Int),
            ("BIGINT", Int),
            ("BIGINT UNSIGNED", UInt),
            ("YEAR", Int),
            ("FLOAT", Float32),
            ("DOUBLE", Float64),
            ("DECIMAL", Decimal),
            ("VARCHAR", Text),
            ("LONGTEXT", Text),
            ("ENUM", Text),
            ("SET", Text),
            ("VARBINARY", Bytes),
            ("MEDIUMBLOB", Bytes),
            ("DATE", Date),
            ("TIME", Time),
            ("DATETIME", Timestamp),
            ("TIMESTAMP", TimestampTz),
            ("JSON", Json),
        ] {
            assert_eq!(mysql_kind(name), Ok(kind), "{name}");
        }
        assert_eq!(
            mysql_kind("BIT").unwrap_err().fix_for("f"),
            "CAST(f AS UNSIGNED) AS f"
        );
        assert_eq!(
            mysql_kind("GEOMETRY").unwrap_err().fix_for("g"),
            "ST_AsText(g) AS g"
        );
    }

    #[test]
    fn sqlite_table() {
        for (name, kind) in [
            ("INTEGER", Int),
            ("BIGINT", Int),
            ("UNSIGNED BIG INT", Int),
            ("REAL", Float64),
            ("DOUBLE PRECISION", Float64),
            ("VARCHAR(20)", Text),
            ("CLOB", Text),
            ("BLOB", Bytes),
            ("BOOLEAN", Bool),
            ("DATE", Date),
            ("TIME", Time),
            ("DATETIME", Timestamp),
            ("TIMESTAMP", Timestamp),
            ("NUMERIC", Decimal),
            ("DECIMAL(10,2)", Decimal),
            ("JSON", Json),
            ("NULL", Text),
        ] {
            assert_eq!(sqlite_kind(name), Ok(kind), "{name}");
        }
    }
}
