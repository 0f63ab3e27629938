//! Export file paths from a template such as
//! `exports/{pipeline}/{run_id}/{dataset}.parquet`.

use std::path::PathBuf;

use chrono::NaiveDate;

use super::ExportError;

/// The default path template, relative to the project folder.
pub const DEFAULT_PATH_TEMPLATE: &str = "exports/{pipeline}/{run_id}/{dataset}.parquet";

/// The three export datasets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dataset {
    /// The extracted rows, with their SQL types kept.
    Rows,
    /// The mapped batches, identities and attributes as columns.
    Batches,
    /// The rejected rows, with the reason.
    Rejected,
}

impl Dataset {
    /// Every dataset, in file order.
    pub const ALL: [Dataset; 3] = [Dataset::Rows, Dataset::Batches, Dataset::Rejected];

    /// Its name in configuration and paths.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rows => "rows",
            Self::Batches => "batches",
            Self::Rejected => "rejected",
        }
    }
}

/// The values a path template may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathVars<'a> {
    /// `{pipeline}`: the pipeline id.
    pub pipeline: &'a str,
    /// `{run_id}`: the run's id.
    pub run_id: &'a str,
    /// `{date}`: the run's start date (UTC), as `YYYY-MM-DD`.
    pub date: NaiveDate,
    /// `{window_start}`: the incremental window's lower bound as text, `None` for
    /// an unbounded one (rendered `unbounded`).
    pub window_start: Option<&'a str>,
    /// `{window_end}`: the upper bound, likewise.
    pub window_end: Option<&'a str>,
    /// `{dataset}`: `rows`, `batches` or `rejected`.
    pub dataset: Dataset,
}

/// Fill `template`'s placeholders (`{pipeline}`, `{run_id}`, `{date}`,
/// `{window_start}`, `{window_end}`, `{dataset}`). Values are made safe as one path
/// component: `/`, `\` and `:` (timestamps) become `-`, other characters outside
/// letters, digits, `.`, `_`, `-`, `+` and `=` become `_`, and a value of only dots
/// becomes `_`, so no value can climb out of or add folders. An unknown or
/// unclosed placeholder is an error.
pub fn render_path(template: &str, vars: &PathVars<'_>) -> Result<PathBuf, ExportError> {
    let err = |message: String| ExportError::Template {
        template: template.to_owned(),
        message,
    };
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| {
            err(format!(
                "`{{` at byte {} is never closed",
                template.len() - rest.len() + open
            ))
        })?;
        let key = &after[..close];
        let date;
        let value = match key {
            "pipeline" => vars.pipeline,
            "run_id" => vars.run_id,
            "date" => {
                date = vars.date.format("%Y-%m-%d").to_string();
                date.as_str()
            }
            "window_start" => vars.window_start.unwrap_or("unbounded"),
            "window_end" => vars.window_end.unwrap_or("unbounded"),
            "dataset" => vars.dataset.as_str(),
            other => {
                return Err(err(format!(
                    "unknown placeholder `{{{other}}}`; use {{pipeline}}, {{run_id}}, {{date}}, {{window_start}}, {{window_end}} or {{dataset}}"
                )))
            }
        };
        out.push_str(&path_safe(value));
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    if out.is_empty() {
        return Err(err("the path is empty".to_owned()));
    }
    Ok(PathBuf::from(out))
}

/// `value` as a single safe path component (see [`render_path`]).
fn path_safe(value: &str) -> String {
    if value.is_empty() || value.chars().all(|c| c == '.') {
        return "_".to_owned();
    }
    value
        .chars()
        .map(|c| match c {
            '/' | '\\' | ':' => '-',
            c if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '=') => c,
            _ => '_',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> PathVars<'static> {
        PathVars {
            pipeline: "users",
            run_id: "20240102T030405Z-ab12",
            date: NaiveDate::from_ymd_opt(2024, 1, 2).expect("date"),
            window_start: Some("2024-01-01T00:00:00+00:00"),
            window_end: None,
            dataset: Dataset::Rejected,
        }
    }

    #[test]
    fn default_template() {
        assert_eq!(
            render_path(DEFAULT_PATH_TEMPLATE, &vars()).expect("render"),
            PathBuf::from("exports/users/20240102T030405Z-ab12/rejected.parquet")
        );
    }

    #[test]
    fn every_placeholder_and_safe_values() {
        let t = "/data/{date}/{pipeline}_{window_start}_{window_end}/{dataset}-{run_id}.parquet";
        assert_eq!(
            render_path(t, &vars()).expect("render"),
            PathBuf::from(
                "/data/2024-01-02/users_2024-01-01T00-00-00+00-00_unbounded/rejected-20240102T030405Z-ab12.parquet"
            )
        );
        let evil = PathVars {
            pipeline: "../etc/passwd x",
            run_id: "..",
            ..vars()
        };
        assert_eq!(
            render_path("{pipeline}/{run_id}/f", &evil).expect("render"),
            PathBuf::from("..-etc-passwd_x/_/f")
        );
    }

    #[test]
    fn bad_templates() {
        let e = render_path("x/{nope}.parquet", &vars()).expect_err("unknown");
        assert!(
            e.to_string().contains("unknown placeholder `{nope}`"),
            "{e}"
        );
        let e = render_path("x/{dataset.parquet", &vars()).expect_err("unclosed");
        assert!(e.to_string().contains("never closed"), "{e}");
    }
}
