//! Property tests of the mapping (issue 16, "keeping it fixed"): whatever
//! values a chunk holds, every row becomes batches that pass the fake Events
//! API's checks (the official batch schema's rules and mParticle's limits) or a
//! rejection with a reason, never a crash and never a silent drop; and JSON
//! text travels with its digits exactly.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Float64Array, Int64Array, ListBuilder, RecordBatch,
    StringArray, StringBuilder, TimestampMicrosecondArray,
};
use arrow::datatypes::Schema;
use proptest::prelude::*;
use wsync::config::model::{
    Environment, InputProtection, LimitPolicy, NullPolicy, Pipeline, Schedule, SyncMode,
};
use wsync::mapping::batch::{MapStats, Mapper};
use wsync::mapping::plan::MappingPlan;
use wsync::source::{ColumnInfo, ColumnKind};

use crate::support::fake_mparticle::validate_batch;

fn pipeline(null_policy: NullPolicy, limit_policy: LimitPolicy) -> Pipeline {
    Pipeline {
        id: "props".into(),
        name: "props".into(),
        path: PathBuf::from("schedules/props.toml"),
        connection: "wh".into(),
        data_model: "props".into(),
        feed: None,
        environment: Environment::Development,
        sync_mode: SyncMode::Full,
        schedule: Schedule::OnDemand,
        paused: false,
        input_protection: InputProtection::CreateAndUpdate,
        null_policy,
        limit_policy,
        mappings: Vec::new(),
        retry_dead_letters: true,
        write_batches: false,
        max_rejected_pct: None,
        export: None,
        pipeline_type: Default::default(),
        data_plan: None,
        diff: None,
    }
}

fn column(name: &str, kind: ColumnKind) -> ColumnInfo {
    ColumnInfo {
        name: name.into(),
        sql_type: "T".into(),
        kind,
        decimal: None,
    }
}

/// One row's values, one per column below.
#[derive(Debug, Clone)]
struct Row {
    customer_id: Option<String>,
    email: Option<String>,
    count: Option<i64>,
    score: Option<f64>,
    name: Option<String>,
    flag: Option<bool>,
    tags: Option<Vec<Option<String>>>,
    amount: Option<String>,
    doc: Option<String>,
    born: Option<i32>,
    seen: Option<i64>,
}

/// Text with the characters that break encoders: quotes, backslashes,
/// controls, surrogates' neighbours, emoji, and sometimes very long.
fn nasty_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9@._-]{0,12}",
        "\\PC{0,40}",
        Just(String::new()),
        Just("\"\\\n\t\u{0}\u{7f}\u{2028}\u{fffd}😀".to_owned()),
        (1usize..6000).prop_map(|n| "ü".repeat(n)),
    ]
}

/// Exact decimal text as the sources produce it.
fn decimal_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<i64>(), 0u32..12).prop_map(|(n, scale)| {
            let digits = n.unsigned_abs().to_string();
            let sign = if n < 0 { "-" } else { "" };
            if scale == 0 || (scale as usize) >= digits.len() {
                format!("{sign}{digits}")
            } else {
                let (a, b) = digits.split_at(digits.len() - scale as usize);
                format!("{sign}{a}.{b}")
            }
        }),
        Just("123456789012345678901234567890.000000001".to_owned()),
        Just("NaN".to_owned()),
        Just("Infinity".to_owned()),
        Just("-Infinity".to_owned()),
    ]
}

/// Compact JSON text, with numbers no float can hold.
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("123456789012345678901234567890".to_owned()),
        Just("1.000000000000000000001".to_owned()),
        Just("-0.0".to_owned()),
        "[a-z\"\\\\]{0,8}".prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(("[a-z]{1,5}", inner), 0..4).prop_map(|v| {
                let members: Vec<String> = v
                    .into_iter()
                    .map(|(k, val)| {
                        format!("{}:{val}", serde_json::to_string(&k).unwrap_or_default())
                    })
                    .collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
}

fn row() -> impl Strategy<Value = Row> {
    (
        (
            prop::option::of(nasty_text()),
            prop::option::of(prop_oneof!["[a-z]{1,8}@example\\.com", nasty_text()]),
            prop::option::of(any::<i64>()),
            prop::option::of(prop_oneof![
                any::<f64>(),
                Just(f64::NAN),
                Just(f64::INFINITY),
                Just(f64::NEG_INFINITY),
                Just(-0.0),
                Just(f64::MAX),
            ]),
            prop::option::of(nasty_text()),
            prop::option::of(any::<bool>()),
        ),
        (
            prop::option::of(prop::collection::vec(prop::option::of(nasty_text()), 0..5)),
            prop::option::of(decimal_text()),
            prop::option::of(json_text()),
            prop::option::of(-1_000_000i32..3_000_000),
            prop::option::of(-62_000_000_000_000_000i64..250_000_000_000_000_000),
        ),
    )
        .prop_map(
            |((customer_id, email, count, score, name, flag), (tags, amount, doc, born, seen))| {
                Row {
                    customer_id,
                    email,
                    count,
                    score,
                    name,
                    flag,
                    tags,
                    amount,
                    doc,
                    born,
                    seen,
                }
            },
        )
}

fn columns() -> Vec<ColumnInfo> {
    vec![
        column("customer_id", ColumnKind::Text),
        column("email", ColumnKind::Text),
        column("count", ColumnKind::Int),
        column("score", ColumnKind::Float64),
        column("name", ColumnKind::Text),
        column("flag", ColumnKind::Bool),
        column("tags", ColumnKind::List(Box::new(ColumnKind::Text))),
        column("amount", ColumnKind::Decimal),
        column("doc", ColumnKind::Json),
        column("born", ColumnKind::Date),
        column("seen", ColumnKind::TimestampTz),
    ]
}

fn chunk(rows: &[Row]) -> RecordBatch {
    let columns = columns();
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(ColumnInfo::arrow_field)
            .collect::<Vec<_>>(),
    ));
    let text = |f: fn(&Row) -> Option<String>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<StringArray>())
    };
    let mut tags = ListBuilder::new(StringBuilder::new());
    for r in rows {
        match &r.tags {
            Some(items) => {
                for item in items {
                    tags.values().append_option(item.as_deref());
                }
                tags.append(true);
            }
            None => tags.append(false),
        }
    }
    let arrays: Vec<ArrayRef> = vec![
        text(|r| r.customer_id.clone()),
        text(|r| r.email.clone()),
        Arc::new(rows.iter().map(|r| r.count).collect::<Int64Array>()),
        Arc::new(rows.iter().map(|r| r.score).collect::<Float64Array>()),
        text(|r| r.name.clone()),
        Arc::new(rows.iter().map(|r| r.flag).collect::<BooleanArray>()),
        Arc::new(tags.finish()),
        text(|r| r.amount.clone()),
        text(|r| r.doc.clone()),
        Arc::new(rows.iter().map(|r| r.born).collect::<Date32Array>()),
        Arc::new(
            rows.iter()
                .map(|r| r.seen)
                .collect::<TimestampMicrosecondArray>()
                .with_timezone("UTC"),
        ),
    ];
    RecordBatch::try_new(schema, arrays).expect("chunk")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn every_row_maps_to_valid_batches_or_a_reasoned_rejection(
        rows in prop::collection::vec(row(), 1..12usize),
        null_policy in prop_oneof![Just(NullPolicy::Skip), Just(NullPolicy::Delete)],
        limit_policy in prop_oneof![Just(LimitPolicy::Truncate), Just(LimitPolicy::Reject)],
    ) {
        let pipeline = pipeline(null_policy, limit_policy);
        let plan = MappingPlan::new(&columns(), &pipeline).expect("plan");
        let mapper = Mapper::new(plan, &pipeline);
        let mut stats = MapStats::default();
        let mapped = mapper.map_chunk(&chunk(rows.as_slice()), 1, &mut stats).expect("map_chunk never fails on values");
        let mut accounted = std::collections::BTreeSet::new();
        for batch in &mapped.batches {
            let json: serde_json::Value = serde_json::from_slice(&batch.json).expect("batch JSON parses");
            prop_assert!(batch.json.len() <= 128 * 1024, "batch of {} bytes", batch.json.len());
            if let Err(e) = validate_batch(&json) {
                prop_assert!(false, "row {}: {e}: {json}", batch.row);
            }
            prop_assert_eq!(json["source_request_id"].as_str(), Some(batch.source_request_id.as_str()));
            accounted.insert(batch.row);
        }
        for rejected in &mapped.rejected {
            prop_assert!(!rejected.detail.is_empty());
            prop_assert!(!rejected.reason.as_str().is_empty());
            prop_assert!(accounted.insert(rejected.row), "row {} both sent and rejected", rejected.row);
        }
        // Every row is sent or rejected: nothing vanishes.
        let all: std::collections::BTreeSet<u64> = (1..=rows.len() as u64).collect();
        prop_assert_eq!(accounted, all);
    }

    #[test]
    fn json_text_travels_with_its_digits(doc in json_text()) {
        let row = Row {
            customer_id: Some("c1".into()),
            email: None,
            count: None,
            score: None,
            name: None,
            flag: None,
            tags: None,
            amount: None,
            doc: Some(doc.clone()),
            born: None,
            seen: None,
        };
        let pipeline = pipeline(NullPolicy::Skip, LimitPolicy::Truncate);
        let mapper = Mapper::new(MappingPlan::new(&columns(), &pipeline).expect("plan"), &pipeline);
        let mapped = mapper.map_chunk(&chunk(&[row]), 1, &mut MapStats::default()).expect("map");
        prop_assert_eq!(mapped.batches.len(), 1);
        let json: serde_json::Value = serde_json::from_slice(&mapped.batches[0].json).expect("json");
        let sent = &json["user_attributes"]["doc"];
        if doc.len() <= 4096 {
            prop_assert_eq!(sent.as_str(), Some(doc.as_str()), "sent {}", sent);
        }
    }
}
