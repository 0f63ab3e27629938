//! What a probe learns of a model's columns: each column's type as the
//! driver reports it, resolved to a [`ColumnKind`] (PostgreSQL domains, enums
//! and arrays through the catalog), with the declared decimal precision.

use sqlx::postgres::{PgConnection, PgTypeInfo, PgTypeKind};
use sqlx::{Column, Executor, TypeInfo};

use crate::source::types::{self, Unsupported};
use crate::source::ColumnKind;

/// One probed column: name, reported type, kind (or why not) and the declared
/// decimal `(precision, scale)` when known.
pub(crate) type Described = (
    String,
    String,
    Result<ColumnKind, Unsupported>,
    Option<(u8, i8)>,
);

/// Describe `sql` on PostgreSQL, then look up the declared precision and scale of
/// every `NUMERIC(p,s)` column that comes straight from a table column. The row
/// description does carry the type modifier, but sqlx does not expose it, so it is
/// read from `pg_attribute` (one query for all such columns; a domain column's
/// modifier lives on the domain's `pg_type` row).
pub(super) async fn pg_describe(
    conn: &mut PgConnection,
    sql: &str,
) -> Result<Vec<Described>, sqlx::Error> {
    let description = (&mut *conn).describe(sql).await?;
    let mut described: Vec<Described> = description
        .columns()
        .iter()
        .map(|c| {
            let ti = c.type_info();
            (c.name().to_owned(), ti.name().to_owned(), pg_kind(ti), None)
        })
        .collect();
    // (column index, table oid, attribute number) of decimals with a table origin.
    let origins: Vec<(usize, i64, i16)> = description
        .columns()
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(described[*i].2, Ok(ColumnKind::Decimal)))
        .filter_map(|(i, c)| Some((i, i64::from(c.relation_id()?.0), c.relation_attribute_no()?)))
        .collect();
    if origins.is_empty() {
        return Ok(described);
    }
    let relations: Vec<i64> = origins.iter().map(|o| o.1).collect();
    let attributes: Vec<i16> = origins.iter().map(|o| o.2).collect();
    let lookup = sqlx::query_as::<_, (i64, i16, i32)>(
        "SELECT r.rel, r.att, CASE WHEN a.atttypmod >= 0 THEN a.atttypmod ELSE t.typtypmod END \
         FROM unnest($1::int8[], $2::int2[]) AS r(rel, att) \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = r.rel::oid AND a.attnum = r.att \
         JOIN pg_catalog.pg_type t ON t.oid = a.atttypid",
    )
    .bind(relations)
    .bind(attributes)
    .fetch_all(&mut *conn)
    .await;
    let typmods = match lookup {
        Ok(rows) => rows,
        Err(e) => {
            // Precision only refines exports (a decimal without it is written as its
            // exact text), so a catalog that refuses the lookup must not fail the
            // read. It is the last statement of this read-only transaction.
            tracing::warn!(error = %e, "cannot read NUMERIC precision from pg_attribute; decimals export as text");
            return Ok(described);
        }
    };
    for (index, rel, att) in origins {
        if let Some((_, _, typmod)) = typmods.iter().find(|t| t.0 == rel && t.1 == att) {
            described[index].3 = numeric_typmod(*typmod);
        }
    }
    Ok(described)
}

/// `(precision, scale)` from a PostgreSQL `numeric` type modifier: `-1` (or any
/// value below the 4-byte header) means unconstrained. The scale is an 11-bit
/// signed field (PostgreSQL 15 allows negative scales). `None` when either does
/// not fit `(u8, i8)`.
pub(crate) fn numeric_typmod(typmod: i32) -> Option<(u8, i8)> {
    if typmod < 4 {
        return None;
    }
    let t = typmod - 4;
    let precision = (t >> 16) & 0xffff;
    let scale = ((t & 0x7ff) ^ 1024) - 1024;
    Some((u8::try_from(precision).ok()?, i8::try_from(scale).ok()?))
}

/// The table lookup for a PostgreSQL type, resolving what only the catalog knows:
/// domains read as their base type, enums as text, arrays of either as lists.
pub(super) fn pg_kind(ti: &PgTypeInfo) -> Result<ColumnKind, Unsupported> {
    fn resolve(ti: &PgTypeInfo) -> String {
        match ti.kind() {
            PgTypeKind::Domain(base) => resolve(base),
            PgTypeKind::Enum(_) => "TEXT".to_owned(),
            PgTypeKind::Array(element) if !matches!(element.kind(), PgTypeKind::Simple) => {
                format!("{}[]", resolve(element))
            }
            _ => ti.name().to_owned(),
        }
    }
    types::postgres_kind(&resolve(ti)).map_err(|u| Unsupported {
        sql_type: ti.name().to_owned(),
        ..u
    })
}
