//! The row → batch encoder's behaviour.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, ListBuilder, StringArray, StringBuilder};
use arrow::datatypes::Schema;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::*;
use crate::config::model::{Destination, Mapping, StaticValue, SyncMode};
use crate::mapping::limits::{self, reason};
use crate::source::{ColumnInfo, ColumnKind};

fn pipeline() -> Pipeline {
    Pipeline {
        id: "users".into(),
        name: "users".into(),
        path: "schedules/users.toml".into(),
        connection: "wh".into(),
        data_model: "users".into(),
        feed: None,
        environment: Environment::Production,
        sync_mode: SyncMode::Full,
        schedule: crate::config::model::Schedule::OnDemand,
        paused: false,
        input_protection: crate::config::model::InputProtection::CreateAndUpdate,
        null_policy: NullPolicy::Skip,
        limit_policy: LimitPolicy::Truncate,
        mappings: vec![],
        retry_dead_letters: true,
        write_batches: false,
        max_rejected_pct: None,
        diff: None,
        export: None,
        pipeline_type: Default::default(),
        data_plan: None,
    }
}

fn run(
    p: &Pipeline,
    columns: Vec<(ColumnInfo, ArrayRef)>,
) -> (Vec<serde_json::Value>, Vec<RejectedRow>, MapStats) {
    let infos: Vec<ColumnInfo> = columns.iter().map(|(c, _)| c.clone()).collect();
    let schema = crate::source::arrow_schema(&infos);
    let chunk = RecordBatch::try_new(
        Arc::new(Schema::new(schema.fields().clone())),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap();
    let plan = MappingPlan::new(&infos, p).unwrap();
    let mapper = Mapper::new(plan, p);
    let mut stats = MapStats::default();
    let out = mapper.map_chunk(&chunk, 1, &mut stats).unwrap();
    let batches = out
        .batches
        .iter()
        .map(|b| {
            let v: serde_json::Value = serde_json::from_slice(&b.json).unwrap();
            assert_eq!(v["source_request_id"], json!(b.source_request_id));
            v
        })
        .collect();
    (batches, out.rejected, stats)
}

fn text(name: &str, values: Vec<Option<&str>>) -> (ColumnInfo, ArrayRef) {
    (
        ColumnInfo {
            name: name.into(),
            sql_type: "TEXT".into(),
            kind: ColumnKind::Text,
            decimal: None,
        },
        Arc::new(StringArray::from(values)),
    )
}

fn strip_id(mut v: serde_json::Value) -> serde_json::Value {
    v.as_object_mut().unwrap().remove("source_request_id");
    v
}

#[test]
fn source_request_id_is_hex_of_the_sha256_prefix() {
    let id = source_request_id("p", b"{}");
    let digest = Sha256::digest(b"p\0{}");
    assert_eq!(id, hex::encode(&digest[..16]));
}

#[test]
fn chunk_cut_across_threads_maps_exactly_like_one_pass() {
    let p = pipeline();
    let n = 3 * MIN_ROWS_PER_PART + 17;
    let ids: Vec<Option<String>> = (0..n)
        .map(|i| (i % 5 != 0).then(|| format!("c{i}")))
        .collect();
    let long: Vec<Option<String>> = (0..n)
        .map(|i| (i % 7 == 0).then(|| "é".repeat(4097 + i)))
        .collect();
    let floats: Vec<f64> = (0..n)
        .map(|i| if i % 3 == 0 { f64::NAN } else { i as f64 * 0.1 })
        .collect();
    let info = |name: &str, kind: ColumnKind| ColumnInfo {
        name: name.into(),
        sql_type: "X".into(),
        kind,
        decimal: None,
    };
    let infos = vec![
        info("customer_id", ColumnKind::Text),
        info("bio", ColumnKind::Text),
        info("score", ColumnKind::Float64),
    ];
    let chunk = RecordBatch::try_new(
        crate::source::arrow_schema(&infos),
        vec![
            Arc::new(StringArray::from(ids)) as ArrayRef,
            Arc::new(StringArray::from(long)),
            Arc::new(Float64Array::from(floats)),
        ],
    )
    .unwrap();
    let mapper = Mapper::new(MappingPlan::new(&infos, &p).unwrap(), &p);
    assert!(parallel_parts(n) >= 1);

    let mut parallel_stats = MapStats::default();
    let parallel = mapper.map_chunk(&chunk, 11, &mut parallel_stats).unwrap();

    let readers = mapper
        .plan
        .columns
        .iter()
        .map(|c| ColumnReader::new(&c.name, &c.kind, chunk.column(c.index)).unwrap())
        .collect::<Vec<_>>();
    let mut single_stats = MapStats::default();
    column_stats(&mapper.plan, &chunk, &mut single_stats);
    let single = mapper.map_rows(&readers, None, 0..n, 11, &mut single_stats);

    assert_eq!(parallel.batches, single.batches);
    assert_eq!(parallel.rejected, single.rejected);
    assert_eq!(parallel_stats, single_stats);
    assert_eq!(parallel_stats.rows_read, n as u64);
    assert_eq!(parallel_stats.rejected_total(), n.div_ceil(5) as u64);
    assert!(parallel_stats.truncated_total() > 0);
    assert!(parallel_stats.dropped_total() > 0);
}

#[test]
fn maps_identities_attributes_and_rejects_rows_without_identity() {
    let p = pipeline();
    let (batches, rejected, stats) = run(
        &p,
        vec![
            text("customerid", vec![Some("c1"), None]),
            text("email", vec![Some("a@b.c"), Some("")]),
            (
                ColumnInfo {
                    name: "ltv".into(),
                    sql_type: "FLOAT8".into(),
                    kind: ColumnKind::Float64,
                    decimal: None,
                },
                Arc::new(Float64Array::from(vec![f64::NAN, f64::INFINITY])),
            ),
            (
                ColumnInfo {
                    name: "big".into(),
                    sql_type: "INT8".into(),
                    kind: ColumnKind::Int,
                    decimal: None,
                },
                Arc::new(Int64Array::from(vec![Some(9_007_199_254_740_993), None])),
            ),
        ],
    );
    assert_eq!(batches.len(), 1);
    assert_eq!(
        strip_id(batches[0].clone()),
        json!({
            "environment": "production",
            "user_identities": {"customer_id": "c1", "email": "a@b.c"},
            "user_attributes": {"big": "9007199254740993"}
        })
    );
    assert_eq!(
        stats.values_dropped.get(reason::NON_FINITE_NUMBER),
        Some(&1)
    );
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].row, 2);
    assert_eq!(rejected[0].reason, RejectReason::NoIdentity);
    assert_eq!(
        serde_json::Value::Object(rejected[0].values.clone()),
        json!({"customerid": null, "email": "", "ltv": "NaN or Infinity", "big": null})
    );
    assert_eq!(stats.rows_mapped, 1);
    assert_eq!(stats.rejected_total(), 1);
}

#[test]
fn rows_the_reader_could_not_decode_are_rejected_as_invalid_value() {
    let p = pipeline();
    let infos = vec![
        ColumnInfo {
            name: "email".into(),
            sql_type: "TEXT".into(),
            kind: ColumnKind::Text,
            decimal: None,
        },
        ColumnInfo {
            name: "born".into(),
            sql_type: "DATE".into(),
            kind: ColumnKind::Date,
            decimal: None,
        },
    ];
    let chunk = RecordBatch::try_new(
        crate::source::chunk_schema(&infos),
        vec![
            Arc::new(StringArray::from(vec![Some("a@x.io"), Some("b@x.io")])) as ArrayRef,
            Arc::new(arrow::array::Date32Array::from(vec![Some(0), None])),
            Arc::new(StringArray::from(vec![
                None,
                Some("column `born`: infinite date cannot be sent"),
            ])),
        ],
    )
    .unwrap();
    let mapper = Mapper::new(MappingPlan::new(&infos, &p).unwrap(), &p);
    let mut stats = MapStats::default();
    let out = mapper.map_chunk(&chunk, 7, &mut stats).unwrap();
    assert_eq!(out.batches.len(), 1);
    assert_eq!(out.rejected.len(), 1);
    let r = &out.rejected[0];
    assert_eq!(r.row, 8);
    assert_eq!(r.reason, RejectReason::InvalidValue);
    assert_eq!(r.reason.as_str(), "invalid_value");
    assert_eq!(r.detail, "column `born`: infinite date cannot be sent");
    assert_eq!(
        serde_json::Value::Object(r.values.clone()),
        json!({"email": "b@x.io", "born": null}),
        "the reserved column is not one of the row's values"
    );
    assert_eq!(stats.rows_rejected.get("invalid_value"), Some(&1));
    assert_eq!(stats.rows_read, 2);
}

#[test]
fn null_policy_delete_lists_deleted_attributes() {
    let mut p = pipeline();
    p.null_policy = NullPolicy::Delete;
    let (batches, _, _) = run(
        &p,
        vec![text("email", vec![Some("x@y.z")]), text("plan", vec![None])],
    );
    assert_eq!(batches[0]["deleted_user_attributes"], json!(["plan"]));
    assert!(batches[0].get("user_attributes").is_none());
}

#[test]
fn ids_are_deterministic_and_content_based() {
    let p = pipeline();
    let a = run(
        &p,
        vec![text(
            "email",
            vec![Some("x@y.z"), Some("x@y.z"), Some("w@y.z")],
        )],
    )
    .0;
    assert_eq!(a[0]["source_request_id"], a[1]["source_request_id"]);
    assert_ne!(a[0]["source_request_id"], a[2]["source_request_id"]);
    let mut other = pipeline();
    other.id = "other".into();
    let b = run(&other, vec![text("email", vec![Some("x@y.z")])]).0;
    assert_ne!(a[0]["source_request_id"], b[0]["source_request_id"]);
}

#[test]
fn more_than_100_attributes_split_with_same_identities() {
    let p = pipeline();
    let mut columns = vec![text("email", vec![Some("x@y.z")])];
    for i in 0..250 {
        columns.push(text(&format!("a{i}"), vec![Some("v")]));
    }
    let (batches, _, stats) = run(&p, columns);
    assert_eq!(batches.len(), 3);
    let counts: Vec<usize> = batches
        .iter()
        .map(|b| b["user_attributes"].as_object().unwrap().len())
        .collect();
    assert_eq!(counts, vec![100, 100, 50]);
    for b in &batches {
        assert_eq!(b["user_identities"], json!({"email": "x@y.z"}));
    }
    assert_eq!(stats.batches, 3);
    assert_eq!(stats.rows_mapped, 1);
}

#[test]
fn batches_stay_under_128_kib() {
    let p = pipeline();
    let long = "x".repeat(4096);
    let mut columns = vec![text("email", vec![Some("x@y.z")])];
    for i in 0..60 {
        columns.push(text(&format!("a{i}"), vec![Some(long.as_str())]));
    }
    let infos: Vec<_> = columns.iter().map(|(c, _)| c.clone()).collect();
    let chunk = RecordBatch::try_new(
        crate::source::arrow_schema(&infos),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap();
    let mapper = Mapper::new(MappingPlan::new(&infos, &p).unwrap(), &p);
    let mut stats = MapStats::default();
    let out = mapper.map_chunk(&chunk, 1, &mut stats).unwrap();
    assert_eq!(out.batches.len(), 2);
    for b in &out.batches {
        assert!(b.json.len() <= limits::MAX_BATCH_BYTES, "{}", b.json.len());
    }
    let total: usize = out
        .batches
        .iter()
        .map(|b| {
            serde_json::from_slice::<serde_json::Value>(&b.json).unwrap()["user_attributes"]
                .as_object()
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(total, 60);
}

#[test]
fn limits_truncate_or_reject() {
    let long_value = "é".repeat(5000);
    let long_name = "n".repeat(300);
    let mut list = ListBuilder::new(StringBuilder::new());
    for i in 0..1500 {
        list.values().append_value(if i == 0 {
            "y".repeat(600)
        } else {
            i.to_string()
        });
    }
    list.append(true);
    let list: ArrayRef = Arc::new(list.finish());
    let columns = || {
        vec![
            text("email", vec![Some("x@y.z")]),
            text("bio", vec![Some(long_value.as_str())]),
            text(&long_name, vec![Some("v")]),
            (
                ColumnInfo {
                    name: "tags".into(),
                    sql_type: "TEXT[]".into(),
                    kind: ColumnKind::List(Box::new(ColumnKind::Text)),
                    decimal: None,
                },
                list.clone(),
            ),
        ]
    };
    let p = pipeline();
    let (batches, _, stats) = run(&p, columns());
    let attrs = batches[0]["user_attributes"].as_object().unwrap();
    assert_eq!(attrs["bio"].as_str().unwrap().chars().count(), 4096);
    assert!(attrs.contains_key(&"n".repeat(256)));
    let tags = attrs["tags"].as_array().unwrap();
    assert_eq!(tags.len(), 1000);
    assert_eq!(tags[0].as_str().unwrap().len(), 512);
    assert_eq!(stats.truncated_total(), 4);
    // Per column: `bio` (plan column 1) read once, 5000 characters, truncated once.
    assert_eq!(
        stats.columns[1],
        ColumnStats {
            values: 1,
            nulls: 0,
            longest_chars: 5000,
            truncated: 1,
            dropped: 0
        }
    );
    assert_eq!(
        stats.columns[3].truncated, 2,
        "tags: list and entry truncated"
    );

    let mut p = pipeline();
    p.limit_policy = LimitPolicy::Reject;
    let (batches, _, stats) = run(&p, columns());
    assert!(batches[0].get("user_attributes").is_none());
    assert_eq!(stats.dropped_total(), 3);
    assert_eq!(stats.values_dropped.get(reason::LIST_TOO_LONG), Some(&1));
}

#[test]
fn malformed_uuid_device_ids_are_dropped() {
    let p = pipeline();
    let (batches, rejected, stats) = run(
        &p,
        vec![
            text("email", vec![Some("x@y.z"), None]),
            text(
                "ios_idfv",
                vec![
                    Some("not-a-uuid"),
                    Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
                ],
            ),
            text("push_token", vec![Some("tok"), None]),
        ],
    );
    assert_eq!(
        strip_id(batches[0].clone()),
        json!({"environment": "production", "user_identities": {"email": "x@y.z"}, "device_info": {"push_token": "tok"}})
    );
    assert_eq!(
        strip_id(batches[1].clone()),
        json!({"environment": "production", "device_info": {"ios_idfv": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}})
    );
    assert!(rejected.is_empty());
    assert_eq!(
        stats.values_dropped.get(reason::INVALID_DEVICE_ID),
        Some(&1)
    );
}

#[test]
fn mpid_and_statics() {
    let mut p = pipeline();
    p.mappings = vec![Mapping::Static {
        value: StaticValue::String("warehouse".into()),
        destination: Destination::Attribute("source".into()),
    }];
    let (batches, rejected, _) = run(&p, vec![text("mpid", vec![Some("-8765"), Some("abc")])]);
    assert_eq!(
        strip_id(batches[0].clone()),
        json!({"environment": "production", "mpid": -8765, "user_attributes": {"source": "warehouse"}})
    );
    assert_eq!(rejected[0].reason, RejectReason::InvalidMpid);
    assert!(rejected[0].detail.contains("`abc` is not a 64-bit integer"));
}
