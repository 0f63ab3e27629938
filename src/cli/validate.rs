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
