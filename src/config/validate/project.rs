//! The entry point: every file of the project validated, cross-references
//! (pipeline → connection, feed, model) resolved by name, and the output
//! ([`Validated`]) handed to `resolve`.

#[allow(clippy::wildcard_imports)] // the sections share one namespace (see mod.rs)
use super::*;

/// Validation's output: final models and pipelines, connections and feeds
/// awaiting their secrets.
#[derive(Debug)]
pub(crate) struct Validated {
    /// State store settings, when valid.
    pub state: Option<StateConfig>,
    /// `[daemon]` settings.
    pub daemon: DaemonSettings,
    /// Connections by name order.
    pub connections: Vec<PendingConnection>,
    /// Feeds by name order.
    pub feeds: Vec<PendingFeed>,
    /// Data models that are valid.
    pub models: BTreeMap<String, DataModel>,
    /// Pipelines that are valid.
    pub pipelines: BTreeMap<String, Pipeline>,
    /// `[resolver]`s of valid pipelines, by pipeline id, secrets not yet read.
    pub resolvers: BTreeMap<String, resolver::PendingResolver>,
}

/// Validate the whole project. Errors go to `errors`.
pub(crate) fn validate(root: &Path, raw: &RawProject, errors: &mut Vec<ConfigError>) -> Validated {
    let mut out = Validated {
        state: None,
        daemon: DaemonSettings::default(),
        connections: Vec::new(),
        feeds: Vec::new(),
        models: BTreeMap::new(),
        pipelines: BTreeMap::new(),
        resolvers: BTreeMap::new(),
    };
    let mut defaults = Defaults::default();
    let mut feed_environments: BTreeMap<String, Environment> = BTreeMap::new();
    let mut names = Names::default();

    if let Some(wsync) = &raw.wsync.raw {
        let mut ctx = Ctx {
            file: &raw.wsync.file,
            errors: &mut *errors,
        };
        defaults = validate_defaults(&mut ctx, wsync.defaults.as_ref());
        out.state = validate_state(&mut ctx, root, wsync.state.as_ref());
        out.daemon = validate_daemon(&mut ctx, wsync.daemon.as_ref());
        for (name, c) in &wsync.connections {
            out.connections
                .push(validate_connection(&mut ctx, root, &defaults, name, c));
        }
        for (name, f) in &wsync.feeds {
            let feed = validate_feed(&mut ctx, root, &defaults, name, f);
            feed_environments.insert(name.clone(), feed.environment);
            out.feeds.push(feed);
        }
        names.connections = Some(wsync.connections.keys().cloned().collect());
        names.feeds = Some(feed_environments.clone());
    }

    for model in &raw.models {
        let before = errors.len();
        let sql = model_sql(model.file.text());
        if sql.is_empty() {
            errors.push(model.file.file_error(
                None,
                "data model is empty",
                Some("write one SELECT statement in this file".to_owned()),
            ));
        } else if let Err(e) = crate::source::check_single_select(&sql) {
            // Checked once here, so every command refuses the model with exit 2
            // before anything connects; the run trusts the loaded model.
            errors.push(
                model.file.file_error(
                    None,
                    format!("data model `{}` was refused: {e}", model.name),
                    Some(
                        "a model is one SELECT (or WITH … SELECT) statement; wsync only reads"
                            .to_owned(),
                    ),
                ),
            );
        }
        names.models.insert(model.name.clone());
        if errors.len() == before {
            out.models.insert(
                model.name.clone(),
                DataModel {
                    name: model.name.clone(),
                    path: root.join(&model.file.rel),
                    sql,
                },
            );
        }
    }

    for (id, parsed) in &raw.pipelines {
        let Some(pipeline) = &parsed.raw else {
            continue;
        };
        let mut ctx = Ctx {
            file: &parsed.file,
            errors: &mut *errors,
        };
        let before = ctx.errors.len();
        let validated = validate_pipeline(&mut ctx, root, &defaults, &names, id, pipeline);
        let resolver = resolver::validate_resolver(
            &mut ctx,
            root,
            &names,
            &validated,
            pipeline.resolver.as_ref(),
        );
        // The model must be one SELECT as this pipeline's warehouse reads it
        // (quoting and comments differ by dialect and server settings).
        let kind = out
            .connections
            .iter()
            .find(|c| c.name == validated.connection)
            .and_then(|c| c.kind);
        if let (Some(kind), Some(model)) = (kind, out.models.get(&validated.data_model)) {
            if let Err(e) = crate::source::guard::check_select_for(&model.sql, kind) {
                ctx.push(
                    "data_model",
                    format!(
                        "data model `{}` is not a single SELECT as {} reads it: {e}",
                        model.name,
                        kind.as_str()
                    ),
                    "a model is one SELECT (or WITH … SELECT) statement; wsync only reads",
                );
            }
        }
        if ctx.errors.len() == before {
            out.resolvers.extend(resolver.map(|r| (id.clone(), r)));
            out.pipelines.insert(id.clone(), validated);
        }
    }
    out
}

/// The SQL of a model file: surrounding whitespace and one trailing `;` removed.
pub(crate) fn model_sql(text: &str) -> String {
    let trimmed = text.trim();
    trimmed
        .strip_suffix(';')
        .unwrap_or(trimmed)
        .trim()
        .to_owned()
}

/// What pipelines may refer to. `None` when `wsync.toml` did not parse, in
/// which case references are not checked (that would only add noise).
#[derive(Default)]
pub(super) struct Names {
    pub(super) connections: Option<Vec<String>>,
    pub(super) feeds: Option<BTreeMap<String, Environment>>,
    pub(super) models: BTreeSet<String>,
}
