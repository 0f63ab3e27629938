//! Project configuration: `wsync.toml`, `sql/*.sql`, `schedules/*.toml`.
//!
//! Loading has three steps: parse (TOML into raw structs that mirror the files),
//! validate (pure: names resolve, enums parse, every error collected with its
//! file, key path and line), resolve (secrets read from environment variables and
//! files). The result is a [`model::Project`] that nothing downstream re-checks.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

pub mod cron_expr;
pub mod error;
mod locate;
pub mod model;
mod raw;
mod resolve;
pub mod resolver;
mod suggest;
mod validate;

pub use error::{ConfigError, ConfigErrors};
pub use resolve::EnvLookup;

/// The project's main file, relative to its root.
pub const MAIN_FILE: &str = "wsync.toml";

/// Load and validate the project in `root`, reading secrets from the process
/// environment. Every problem found is returned at once.
pub fn load(root: &Path) -> Result<model::Project, ConfigErrors> {
    load_with_env(root, &process_env)
}

/// [`load`] with environment variables read through `env` (tests, or a caller
/// that layers its own variables over the process environment).
pub fn load_with_env(root: &Path, env: EnvLookup<'_>) -> Result<model::Project, ConfigErrors> {
    let root = absolute_root(root);
    if !root.join(MAIN_FILE).is_file() {
        let what = if root.is_dir() {
            format!(
                "no {MAIN_FILE} in {}: this is not a wsync project folder",
                root.display()
            )
        } else {
            format!("project folder {} does not exist", root.display())
        };
        return Err(ConfigErrors(vec![ConfigError {
            file: PathBuf::from(MAIN_FILE),
            key_path: String::new(),
            line: None,
            message: what,
            hint: Some(
                "run wsync from the project folder (the one holding wsync.toml, sql/ and schedules/), or pass --config DIR"
                    .to_owned(),
            ),
        }]));
    }
    let mut errors = Vec::new();
    let raw = raw::read_project(&root, &mut errors);
    let validated = validate::validate(&root, &raw, &mut errors);
    let project = resolve::resolve(&root, validated, &raw.wsync.file, env, &mut errors);
    match project {
        Some(project) if errors.is_empty() => Ok(project),
        _ => {
            sort_errors(&mut errors);
            Err(ConfigErrors(errors))
        }
    }
}

/// `root` made absolute (so SQLite paths and `Project::root` are), without `.` parts.
fn absolute_root(root: &Path) -> PathBuf {
    let absolute = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
    absolute
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// Order errors as a reader goes through the project: `wsync.toml`, then the
/// models, then the pipelines, each file top to bottom. The sort is stable, so
/// errors on one line keep the order they were found in.
pub(crate) fn sort_errors(errors: &mut [ConfigError]) {
    let rank = |e: &ConfigError| {
        let file = e.file.to_string_lossy().into_owned();
        let group = if file == MAIN_FILE {
            0
        } else if file.starts_with("sql") {
            1
        } else if file.starts_with("schedules") {
            2
        } else {
            3
        };
        (group, file, e.line.unwrap_or(0))
    };
    errors.sort_by_cached_key(rank);
}

/// The OS environment as an [`EnvLookup`]-compatible function.
pub fn process_env(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(file: &str, line: Option<usize>) -> ConfigError {
        ConfigError {
            file: file.into(),
            key_path: String::new(),
            line,
            message: String::new(),
            hint: None,
        }
    }

    #[test]
    fn errors_sort_by_file_group_then_line() {
        let mut errors = vec![
            err("schedules/a.toml", Some(3)),
            err("sql/x.sql", None),
            err("wsync.toml", Some(9)),
            err("schedules/a.toml", None),
            err("wsync.toml", Some(2)),
        ];
        sort_errors(&mut errors);
        let order: Vec<(String, Option<usize>)> = errors
            .iter()
            .map(|e| (e.file.display().to_string(), e.line))
            .collect();
        assert_eq!(
            order,
            vec![
                ("wsync.toml".into(), Some(2)),
                ("wsync.toml".into(), Some(9)),
                ("sql/x.sql".into(), None),
                ("schedules/a.toml".into(), None),
                ("schedules/a.toml".into(), Some(3)),
            ]
        );
    }

    #[test]
    fn root_is_made_absolute_without_dot_parts() {
        let root = absolute_root(Path::new("./proj/./x"));
        assert!(root.is_absolute());
        assert!(root.ends_with("proj/x"));
        assert!(!root.components().any(|c| matches!(c, Component::CurDir)));
    }
}
