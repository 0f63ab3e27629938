//! `wsync validate [PIPELINE]`: config, connectivity, a probe of each model, and
//! where each column goes.

use std::path::Path;
use std::process::ExitCode;

use crate::config::model::Project;
use crate::mapping::plan::{destination_path, Route};

use super::output::table;

/// Arguments of `wsync validate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this pipeline (default: all).
    pub pipeline: Option<String>,
}

/// Check each pipeline; exit 1 if any could not be probed.
pub async fn execute(root: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let project: Project = super::load(root)?;
    let ids: Vec<String> = match &args.pipeline {
        Some(id) => vec![crate::sync::find_pipeline(&project, id)?.id.clone()],
        None => project.pipelines.keys().cloned().collect(),
    };
    println!(
        "Config OK: {} connection(s), {} feed(s), {} model(s), {} pipeline(s).",
        project.connections.len(),
        project.feeds.len(),
        project.models.len(),
        project.pipelines.len()
    );
    let mut failed = 0;
    for id in ids {
        let pipeline = &project.pipelines[&id];
        println!();
        println!(
            "Pipeline `{id}`: connection `{}`, model `{}`, feed {}, input_protection {}, environment {}",
            pipeline.connection,
            pipeline.data_model,
            pipeline.feed.as_deref().map_or("(none)".to_owned(), |f| format!("`{f}`")),
            pipeline.input_protection.as_str(),
            pipeline.environment.as_str(),
        );
        println!("  pipeline_type: {}", pipeline.pipeline_type.as_str());
        if let Some(plan) = &pipeline.data_plan {
            println!(
                "  data_plan: {} version {}, {} violations{}",
                plan.plan_id,
                plan.plan_version
                    .map_or("latest".to_owned(), |v| v.to_string()),
                match plan.violations {
                    crate::config::model::PlanViolations::Flag => "flag",
                    crate::config::model::PlanViolations::Block => "block",
                },
                plan.document
                    .as_ref()
                    .map(|d| format!(", checked against {}", d.display()))
                    .unwrap_or_default(),
            );
        }
        let resolver = project.resolvers.get(&id);
        println!(
            "  protection: {}",
            crate::resolve::describe_protection(pipeline.input_protection, resolver)
        );
        match crate::sync::probe(&project, pipeline).await {
            Ok(probe) => {
                let mut t = table(&["column", "SQL type", "Arrow", "goes to"]);
                for c in &probe.plan.columns {
                    let dest = match &c.route {
                        Route::Send(d) => {
                            let how = if c.explicit { " (mapping)" } else { "" };
                            format!("{}{how}", destination_path(d))
                        }
                        Route::Iterator => "not sent (iterator)".to_owned(),
                        Route::Ignored => "not sent (ignore mapping)".to_owned(),
                    };
                    t.add_row(vec![
                        c.name.clone(),
                        c.sql_type.clone(),
                        c.kind.arrow_type().to_string(),
                        dest,
                    ]);
                }
                for (d, v) in &probe.plan.statics {
                    t.add_row(vec![
                        "(static)".to_owned(),
                        String::new(),
                        format!("static {v}"),
                        destination_path(d),
                    ]);
                }
                println!("{t}");
                if let Some(line) = bigquery_estimate(&project, pipeline).await {
                    println!("{line}");
                }
                let has_document = pipeline
                    .data_plan
                    .as_ref()
                    .is_some_and(|d| d.document.is_some());
                if has_document && !check_data_plan(&project, pipeline).await {
                    failed += 1;
                }
            }
            Err(e) => {
                failed += 1;
                println!("  FAILED: {e}");
            }
        }
    }
    if failed > 0 {
        println!("\n{failed} pipeline(s) failed validation.");
        Ok(ExitCode::from(1))
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

/// Map every row of an event pipeline's model and check each event against
/// its data plan document; prints the violations per rule with sample rows.
/// `false` when an event breaks the plan or the check could not run.
async fn check_data_plan(project: &Project, pipeline: &crate::config::model::Pipeline) -> bool {
    match crate::sync::inspect::check_events(project, pipeline).await {
        Err(e) => {
            println!("  data plan check FAILED: {e}");
            false
        }
        Ok(stats) => {
            let events = stats.events.recent + stats.events.historical;
            let broken: u64 = stats.plan_flagged_rows
                + stats.rows_rejected.get("data_plan").copied().unwrap_or(0);
            println!(
                "  data plan: {} rows read, {events} events, {broken} break the plan",
                stats.rows_read
            );
            for (rule, n) in &stats.plan_violations {
                println!("    {rule}: {n}");
                for v in stats.plan_samples.get(rule).into_iter().flatten() {
                    println!("      row {}: {}", v.row, v.detail);
                }
            }
            broken == 0
        }
    }
}

/// For a BigQuery pipeline, the dry run's estimate of the bytes the whole model
/// processes, against the connection's `maximum_bytes_billed` (a dry run is
/// free and reads no rows). `None` for other warehouses; a failed estimate is
/// reported as such, since the probe above already succeeded.
async fn bigquery_estimate(
    project: &Project,
    pipeline: &crate::config::model::Pipeline,
) -> Option<String> {
    use crate::config::model::CloudWarehouse;
    let connection = &project.connections[&pipeline.connection];
    let Some(CloudWarehouse::BigQuery(settings)) = &connection.cloud else {
        return None;
    };
    let model = &project.models[&pipeline.data_model];
    let query = crate::source::SourceQuery {
        model: model.name.clone(),
        sql: model.sql.clone(),
        filter: None,
        limit: None,
    };
    let estimate = async {
        let mut warehouse = crate::source::Warehouse::connect(connection).await?;
        warehouse.probe(&query).await?;
        Ok::<_, crate::source::SourceError>(warehouse.bytes_estimate())
    }
    .await;
    Some(match estimate {
        Ok(Some(bytes)) => format!(
            "  bigquery dry run: the model processes {} ({bytes} bytes) per full read; maximum_bytes_billed is {} ({} bytes)",
            human_bytes(bytes),
            human_bytes(settings.maximum_bytes_billed),
            settings.maximum_bytes_billed
        ),
        Ok(None) => "  bigquery dry run: no bytes estimate returned".to_owned(),
        Err(e) => format!("  bigquery dry run: no estimate: {e}"),
    })
}

/// `1536` → `1.5 KiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    #[allow(clippy::cast_precision_loss)] // a display value
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_bytes() {
        assert_eq!(super::human_bytes(0), "0 B");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
        assert_eq!(super::human_bytes(100 * 1024 * 1024 * 1024), "100.0 GiB");
    }
}
