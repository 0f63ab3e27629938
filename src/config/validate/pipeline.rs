//! `schedules/PIPELINE.toml`: references, input protection, policies and
//! `[export]`.

#[allow(clippy::wildcard_imports)] // the sections share one namespace (see mod.rs)
use super::*;

pub(super) const ENVIRONMENTS: &[(&str, Environment)] = &[
    ("development", Environment::Development),
    ("production", Environment::Production),
];
pub(super) const NULL_POLICIES: &[(&str, NullPolicy)] =
    &[("skip", NullPolicy::Skip), ("delete", NullPolicy::Delete)];
pub(super) const LIMIT_POLICIES: &[(&str, LimitPolicy)] = &[
    ("truncate", LimitPolicy::Truncate),
    ("reject", LimitPolicy::Reject),
];

pub(super) const INPUT_PROTECTIONS: &[(&str, InputProtection)] = &[
    ("create_and_update", InputProtection::CreateAndUpdate),
    ("only_update", InputProtection::OnlyUpdate),
    ("only_read", InputProtection::OnlyRead),
];

pub(super) const PIPELINE_TYPES: &[(&str, PipelineType)] = &[
    ("user_attributes", PipelineType::UserAttributes),
    ("events", PipelineType::Events),
];
pub(super) const PLAN_VIOLATIONS: &[(&str, PlanViolations)] = &[
    ("flag", PlanViolations::Flag),
    ("block", PlanViolations::Block),
];

pub(super) fn validate_pipeline(
    ctx: &mut Ctx<'_>,
    root: &Path,
    defaults: &Defaults,
    names: &Names,
    id: &str,
    raw: &RawPipeline,
) -> Pipeline {
    if !valid_name(id) {
        ctx.errors.push(ctx.file.file_error(
            None,
            format!("`{id}` is not a valid pipeline id (the file name is the id)"),
            Some(format!("rename the file; {NAME_HINT}")),
        ));
    }
    let connection = reference(
        ctx,
        "connection",
        raw.connection.as_deref(),
        names.connections.as_deref(),
        |n| format!("add [connections.{n}] to wsync.toml"),
    );
    let data_model = match raw.data_model.as_deref() {
        None => {
            ctx.missing(
                "data_model",
                format!(
                    "add data_model = \"NAME\" for sql/NAME.sql (available: {})",
                    model_list(names)
                ),
            );
            String::new()
        }
        Some(m) => {
            if !names.models.contains(m) {
                let hint = match suggest::closest(m, names.models.iter().map(String::as_str)) {
                    Some(best) => {
                        format!("did you mean `{best}`? available: {}", model_list(names))
                    }
                    None => format!("create sql/{m}.sql (available: {})", model_list(names)),
                };
                ctx.push("data_model", format!("data model `{m}` not found"), hint);
            }
            m.to_owned()
        }
    };
    // Create & Update is mParticle's default protection level, and the issue's.
    let input_protection = match &raw.input_protection {
        Some(v) => ctx.choice("input_protection", v, "input protection", INPUT_PROTECTIONS),
        None => Some(InputProtection::CreateAndUpdate),
    };
    let feed_names: Option<Vec<String>> = names.feeds.as_ref().map(|f| f.keys().cloned().collect());
    let export = raw.export.as_ref().map(|e| validate_export(ctx, e));
    let feed = match (&raw.feed, input_protection) {
        (None, Some(InputProtection::OnlyRead) | None) => None,
        // An export-only pipeline: reads and writes Parquet, sends nothing.
        (None, Some(_)) if export.is_some() => None,
        (None, Some(_)) => {
            ctx.missing(
                "feed",
                format!(
                    "add feed = \"NAME\" (available: {}), set input_protection = \"only_read\" for a dry run, or add an [export] section for an export-only pipeline",
                    feed_names.as_deref().map(suggest::list).unwrap_or_default()
                ),
            );
            None
        }
        (Some(f), _) => reference(ctx, "feed", Some(f), feed_names.as_deref(), |n| {
            format!("add [feeds.{n}] to wsync.toml")
        }),
    };
    let environment = match &raw.environment {
        Some(v) => ctx.choice("environment", v, "environment", ENVIRONMENTS),
        None => None,
    }
    .or_else(|| {
        feed.as_ref()
            .and_then(|f| names.feeds.as_ref()?.get(f).copied())
    })
    .unwrap_or(defaults.environment);
    let null_policy = raw
        .null_policy
        .as_ref()
        .and_then(|v| ctx.choice("null_policy", v, "null policy", NULL_POLICIES))
        .unwrap_or(defaults.null_policy);
    let limit_policy = raw
        .limit_policy
        .as_ref()
        .and_then(|v| ctx.choice("limit_policy", v, "limit policy", LIMIT_POLICIES))
        .unwrap_or(defaults.limit_policy);
    let sync_mode = raw
        .sync_mode
        .as_ref()
        .map_or(SyncMode::Full, |s| validate_sync_mode(ctx, s));
    let schedule = raw
        .schedule
        .as_ref()
        .map_or(Schedule::OnDemand, |s| validate_schedule(ctx, s));
    let iterator = match &sync_mode {
        SyncMode::Incremental { iterator_field, .. } => Some(iterator_field.as_str()),
        SyncMode::Full => None,
    };
    let pipeline_type = raw
        .pipeline_type
        .as_ref()
        .and_then(|v| ctx.choice("pipeline_type", v, "pipeline type", PIPELINE_TYPES))
        .unwrap_or_default();
    let mappings = validate_mappings(ctx, &raw.mappings, iterator, pipeline_type);
    let data_plan = raw
        .data_plan
        .as_ref()
        .and_then(|d| validate_data_plan(ctx, d));
    if data_plan.as_ref().is_some_and(|d| d.document.is_some())
        && pipeline_type != PipelineType::Events
    {
        ctx.push(
            "data_plan.document",
            "only event pipelines are checked against a data plan document",
            "set pipeline_type = \"events\", or remove `document`",
        );
    }
    let diff = raw
        .diff
        .as_ref()
        .and_then(|d| validate_diff(ctx, d, iterator));
    Pipeline {
        id: id.to_owned(),
        name: raw.name.clone().unwrap_or_else(|| id.to_owned()),
        path: root.join(&ctx.file.rel),
        connection: connection.unwrap_or_default(),
        data_model,
        feed,
        environment,
        sync_mode,
        schedule,
        paused: raw.paused.unwrap_or(false),
        input_protection: input_protection.unwrap_or(InputProtection::OnlyRead),
        null_policy,
        limit_policy,
        mappings,
        retry_dead_letters: raw.retry_dead_letters.unwrap_or(true),
        write_batches: match raw.write_batches {
            Some(true) if input_protection.is_some_and(|p| p != InputProtection::OnlyRead) => {
                ctx.push(
                    "write_batches",
                    "only applies to only_read pipelines",
                    "remove it, or set input_protection = \"only_read\" for a dry run",
                );
                false
            }
            other => other.unwrap_or(false),
        },
        max_rejected_pct: match raw.max_rejected_pct {
            Some(p) if !(0.0..=100.0).contains(&p) => {
                ctx.push(
                    "max_rejected_pct",
                    format!("must be a percentage between 0 and 100, not {p}"),
                    "e.g. max_rejected_pct = 1.5",
                );
                None
            }
            other => other,
        },
        export,
        pipeline_type,
        data_plan,
        diff,
    }
}

pub(super) const ON_DELETE: &[(&str, OnDelete)] = &[
    ("ignore", OnDelete::Ignore),
    ("unset_attributes", OnDelete::UnsetAttributes),
];

/// The longest `diff.full_resync_every`: a year.
const MAX_RESYNC: Duration = Duration::from_secs(366 * 24 * 3600);
/// The shortest: an hour (more often is no diff at all).
const MIN_RESYNC: Duration = Duration::from_secs(3600);

/// `[diff]`: key columns, `on_delete`, `full_resync_every`.
pub(super) fn validate_diff(
    ctx: &mut Ctx<'_>,
    raw: &RawDiff,
    iterator: Option<&str>,
) -> Option<DiffSettings> {
    let primary_key = match &raw.primary_key {
        None => {
            ctx.missing(
                "diff.primary_key",
                "add primary_key = [\"COLUMN\"]: the result columns that identify a row",
            );
            None
        }
        Some(k) if k.is_empty() => {
            ctx.push(
                "diff.primary_key",
                "names no column",
                "list the result columns that identify a row, e.g. primary_key = [\"customer_id\"]",
            );
            None
        }
        Some(k) => Some(k.clone()),
    };
    let mut ok = true;
    let keys = primary_key.as_deref().unwrap_or_default();
    for (i, column) in keys.iter().enumerate() {
        if column.trim().is_empty() {
            ctx.push(
                "diff.primary_key",
                format!("entry {} is empty", i + 1),
                "name a result column of the model",
            );
            ok = false;
        } else if keys[..i].iter().any(|c| c.eq_ignore_ascii_case(column)) {
            ctx.push(
                "diff.primary_key",
                format!("`{column}` is listed twice"),
                "list each key column once",
            );
            ok = false;
        } else if iterator.is_some_and(|it| it.eq_ignore_ascii_case(column)) {
            ctx.push(
                "diff.primary_key",
                format!("`{column}` is the iterator field, which changes with every update"),
                "use the columns that identify the row, e.g. the customer id",
            );
            ok = false;
        }
    }
    let on_delete = match raw.on_delete.as_deref() {
        None => Some(OnDelete::Ignore),
        Some(v) => ctx.choice("diff.on_delete", v, "on_delete policy", ON_DELETE),
    };
    if on_delete == Some(OnDelete::UnsetAttributes) && iterator.is_some() {
        ctx.push(
            "diff.on_delete",
            "`unset_attributes` needs sync_mode.type = \"full\": an incremental window does not show which rows are gone",
            "use on_delete = \"ignore\", or a full sync",
        );
        ok = false;
    }
    let full_resync_every = match &raw.full_resync_every {
        None => None,
        Some(v) => match parse_duration(v) {
            Ok(d) if (MIN_RESYNC..=MAX_RESYNC).contains(&d) => Some(d),
            Ok(d) => {
                ctx.push(
                    "diff.full_resync_every",
                    format!("{} seconds is out of range", d.as_secs()),
                    "use a duration between 1h and 366d, e.g. full_resync_every = \"7d\"",
                );
                ok = false;
                None
            }
            Err(message) => {
                ctx.push(
                    "diff.full_resync_every",
                    message,
                    "write a number of seconds or a duration such as \"7d\", \"12h\" or \"90m\"",
                );
                ok = false;
                None
            }
        },
    };
    Some(DiffSettings {
        primary_key: primary_key?,
        on_delete: on_delete?,
        full_resync_every,
    })
    .filter(|_| ok)
}

/// A duration written as seconds (an integer) or as text: `"7d"`, `"12h"`,
/// `"90m"`, `"30s"`, or a bare number of seconds.
pub(super) fn parse_duration(value: &toml::Value) -> Result<Duration, String> {
    match value {
        toml::Value::Integer(n) => u64::try_from(*n)
            .map(Duration::from_secs)
            .map_err(|_| format!("{n} is negative")),
        toml::Value::String(text) => {
            let t = text.trim();
            let (digits, unit) =
                t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
            let n: u64 = digits
                .parse()
                .map_err(|_| format!("`{text}` is not a duration"))?;
            let scale = match unit.trim() {
                "" | "s" => 1,
                "m" => 60,
                "h" => 3600,
                "d" => 86_400,
                "w" => 7 * 86_400,
                other => return Err(format!("`{text}`: unknown unit `{other}`")),
            };
            n.checked_mul(scale)
                .map(Duration::from_secs)
                .ok_or_else(|| format!("`{text}` is too long"))
        }
        other => Err(format!("expected a duration, found {}", other.type_str())),
    }
}

/// `data_plan = { plan_id, plan_version, document, violations }`.
pub(super) fn validate_data_plan(ctx: &mut Ctx<'_>, raw: &RawDataPlan) -> Option<DataPlanRef> {
    let plan_id = match raw.plan_id.as_deref().map(str::trim) {
        Some(id) if !id.is_empty() => Some(id.to_owned()),
        Some(_) => {
            ctx.push(
                "data_plan.plan_id",
                "is empty",
                "write the plan's id as shown in mParticle's data plan editor",
            );
            None
        }
        None => {
            ctx.missing(
                "data_plan.plan_id",
                "add plan_id = \"ID\" (the plan's id in mParticle)",
            );
            None
        }
    };
    let plan_version = match raw.plan_version {
        None => None,
        Some(v) => match u32::try_from(v) {
            Ok(v) if v >= 1 => Some(v),
            _ => {
                ctx.push(
                    "data_plan.plan_version",
                    format!("must be a version number of 1 or more, not {v}"),
                    "e.g. plan_version = 2, or leave it out for the latest version",
                );
                None
            }
        },
    };
    let document = match raw.document.as_deref() {
        Some(d) if d.trim().is_empty() => {
            ctx.push(
                "data_plan.document",
                "is empty",
                "a path relative to the project, e.g. \"plans/purchases.json\"",
            );
            None
        }
        Some(d) => Some(PathBuf::from(d)),
        None => None,
    };
    let violations = raw
        .violations
        .as_ref()
        .and_then(|v| {
            ctx.choice(
                "data_plan.violations",
                v,
                "violation policy",
                PLAN_VIOLATIONS,
            )
        })
        .unwrap_or_default();
    if violations == PlanViolations::Block && document.is_none() {
        ctx.push(
            "data_plan.violations",
            "`block` needs a data plan document to check events against",
            "add document = \"plans/NAME.json\" (the JSON mParticle's data plan editor exports)",
        );
    }
    Some(DataPlanRef {
        plan_id: plan_id?,
        plan_version,
        document,
        violations,
    })
}

/// `[export]`: path template, datasets, compression, row group size.
pub(super) fn validate_export(ctx: &mut Ctx<'_>, raw: &RawExport) -> ExportSettings {
    const DATASETS: &[(&str, ExportDataset)] = &[
        ("rows", ExportDataset::Rows),
        ("batches", ExportDataset::Batches),
        ("rejected", ExportDataset::Rejected),
    ];
    const COMPRESSIONS: &[(&str, ExportCompression)] = &[
        ("zstd", ExportCompression::Zstd),
        ("snappy", ExportCompression::Snappy),
        ("none", ExportCompression::None),
    ];
    let path = raw
        .path
        .clone()
        .unwrap_or_else(|| "exports/{pipeline}/{run_id}/{dataset}.parquet".to_owned());
    if !path.contains("{dataset}") {
        ctx.push(
            "export.path",
            format!("`{path}` has no `{{dataset}}`, so the datasets would overwrite each other"),
            "put {dataset} in the file name, e.g. \"exports/{pipeline}/{run_id}/{dataset}.parquet\"",
        );
    }
    if !path.contains("{run_id}") {
        ctx.push(
            "export.path",
            format!("`{path}` has no `{{run_id}}`, so every run would overwrite the last one"),
            "put {run_id} in the path, e.g. \"exports/{pipeline}/{run_id}/{dataset}.parquet\"",
        );
    }
    let mut datasets = Vec::new();
    match &raw.datasets {
        None => {
            datasets = vec![
                ExportDataset::Rows,
                ExportDataset::Batches,
                ExportDataset::Rejected,
            ];
        }
        Some(list) => {
            for (i, name) in list.iter().enumerate() {
                if let Some(d) =
                    ctx.choice(&format!("export.datasets[{i}]"), name, "dataset", DATASETS)
                {
                    if !datasets.contains(&d) {
                        datasets.push(d);
                    }
                }
            }
            if list.is_empty() {
                ctx.push(
                    "export.datasets",
                    "is empty",
                    "list at least one of \"rows\", \"batches\", \"rejected\"",
                );
            }
        }
    }
    let compression = match &raw.compression {
        Some(c) => ctx
            .choice("export.compression", c, "compression", COMPRESSIONS)
            .unwrap_or(ExportCompression::Zstd),
        None => ExportCompression::Zstd,
    };
    let row_group_rows = ctx.int_in(
        "export.row_group_rows",
        raw.row_group_rows,
        100_000usize,
        1..=10_000_000,
        "the default is 100000 rows; smaller groups use less memory",
    );
    ExportSettings {
        path,
        datasets,
        compression,
        row_group_rows,
    }
}

pub(super) fn model_list(names: &Names) -> String {
    suggest::list(&names.models.iter().collect::<Vec<_>>())
}

/// A required reference to a connection or feed. `available` is `None` when
/// `wsync.toml` did not parse (then the name is taken as is).
pub(super) fn reference(
    ctx: &mut Ctx<'_>,
    key: &str,
    value: Option<&str>,
    available: Option<&[String]>,
    create: impl Fn(&str) -> String,
) -> Option<String> {
    let list = available.map(suggest::list).unwrap_or_default();
    let Some(value) = value else {
        ctx.missing(key, format!("add {key} = \"NAME\" (available: {list})"));
        return None;
    };
    if let Some(available) = available {
        if !available.iter().any(|a| a == value) {
            let hint = match suggest::closest(value, available.iter().map(String::as_str)) {
                Some(best) => format!("did you mean `{best}`? available: {list}"),
                None => format!("{} (available: {list})", create(value)),
            };
            ctx.push(
                key,
                format!("{key} `{value}` is not defined in wsync.toml"),
                hint,
            );
        }
    }
    Some(value.to_owned())
}

/// A `from`/`start`/`end` value: a string, or a TOML integer or date-time written bare.
pub(super) fn scalar_text(
    ctx: &mut Ctx<'_>,
    key_path: &str,
    value: &toml::Value,
) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Datetime(d) => Some(d.to_string()),
        other => {
            ctx.push(
                key_path,
                format!("expected a string, found {}", other.type_str()),
                "quote the value",
            );
            None
        }
    }
}

pub(super) fn not_for(ctx: &mut Ctx<'_>, key_path: &str, key: &str, kind: &str, valid: &str) {
    ctx.push(
        key_path,
        format!("`{key}` does not apply to {kind}"),
        format!("remove it ({valid})"),
    );
}
