//! Validation of a pipeline's `[resolver]` (see [`crate::config::resolver`]).
//!
//! A child of `validate` so it shares its error collector and secret parsing;
//! like the rest of validation it is pure and reports every problem at once.

use std::path::Path;
use std::time::Duration;

use super::{
    check_base_url, secret, Ctx, Names, PendingSecret, MAX_LONG_SECS, MAX_SHORT_SECS, PODS,
};
use crate::config::locate::SourceFile;
use crate::config::model::{DeliverySettings, InputProtection, Pipeline};
use crate::config::resolver::{
    idsync_base_url, RawResolver, DEFAULT_CACHE_ENTRIES, DEFAULT_IDSYNC_RATE_PER_SEC,
};
use crate::config::suggest;

/// A resolver whose secrets are not read yet.
pub(crate) struct PendingResolver {
    /// The pipeline file, so secret errors point at it (not at `wsync.toml`).
    pub file: SourceFile,
    /// What kind, with its settings.
    pub kind: PendingKind,
}

impl std::fmt::Debug for PendingResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingResolver")
            .field("file", &self.file.rel)
            .field("kind", &self.kind)
            .finish()
    }
}

/// The kind-specific part of a [`PendingResolver`].
#[derive(Debug)]
pub(crate) enum PendingKind {
    /// IDSync search.
    IdSync {
        /// Host root.
        base_url: String,
        /// Key source.
        api_key: PendingSecret,
        /// Secret source.
        api_secret: PendingSecret,
        /// Search timeout.
        request_timeout: Duration,
        /// Pacing, concurrency, retries.
        delivery: DeliverySettings,
        /// Cache bound.
        cache_entries: usize,
    },
    /// Known profiles from a model.
    Sql {
        /// Connection name.
        connection: String,
        /// Model name.
        data_model: String,
    },
}

const KINDS: &[(&str, bool)] = &[("idsync", true), ("sql", false)];

/// Keys that belong to one kind only, for "this key is for the other type" errors.
fn idsync_only_keys(raw: &RawResolver) -> Vec<&'static str> {
    let set = [
        ("pod", raw.pod.is_some()),
        ("base_url", raw.base_url.is_some()),
        ("api_key", raw.api_key.is_some()),
        ("api_key_env", raw.api_key_env.is_some()),
        ("api_key_file", raw.api_key_file.is_some()),
        ("api_secret", raw.api_secret.is_some()),
        ("api_secret_env", raw.api_secret_env.is_some()),
        ("api_secret_file", raw.api_secret_file.is_some()),
        ("request_timeout_secs", raw.request_timeout_secs.is_some()),
        ("rate_limit_per_sec", raw.rate_limit_per_sec.is_some()),
        ("max_in_flight", raw.max_in_flight.is_some()),
        ("retry_max_attempts", raw.retry_max_attempts.is_some()),
        (
            "retry_initial_backoff_ms",
            raw.retry_initial_backoff_ms.is_some(),
        ),
        (
            "retry_max_backoff_secs",
            raw.retry_max_backoff_secs.is_some(),
        ),
        ("retry_deadline_secs", raw.retry_deadline_secs.is_some()),
        ("cache_entries", raw.cache_entries.is_some()),
    ];
    set.iter().filter(|(_, s)| *s).map(|(k, _)| *k).collect()
}

fn sql_only_keys(raw: &RawResolver) -> Vec<&'static str> {
    let set = [
        ("data_model", raw.data_model.is_some()),
        ("connection", raw.connection.is_some()),
    ];
    set.iter().filter(|(_, s)| *s).map(|(k, _)| *k).collect()
}

/// Check `[resolver]` against the pipeline it belongs to. Also reports an
/// `only_update` pipeline without one: it could not keep its promise.
pub(super) fn validate_resolver(
    ctx: &mut Ctx<'_>,
    root: &Path,
    names: &Names,
    pipeline: &Pipeline,
    raw: Option<&RawResolver>,
) -> Option<PendingResolver> {
    let Some(raw) = raw else {
        if pipeline.input_protection == InputProtection::OnlyUpdate {
            ctx.push(
                "input_protection",
                "only_update needs a [resolver] to tell existing profiles from new ones",
                "add [resolver] with type = \"idsync\" (IDSync search with a platform key) or type = \"sql\" (a model listing the identities of known profiles); see the README's resolver section",
            );
        }
        return None;
    };
    let before = ctx.errors.len();
    let is_idsync = if let Some(kind) = raw.kind.as_deref() {
        ctx.choice("resolver.type", kind, "resolver type", KINDS)
    } else {
        ctx.missing("resolver.type", "add type = \"idsync\" or type = \"sql\"");
        None
    }?;
    let (own, stray, other) = if is_idsync {
        ("idsync", sql_only_keys(raw), "sql")
    } else {
        ("sql", idsync_only_keys(raw), "idsync")
    };
    for key in stray {
        ctx.push(
            &format!("resolver.{key}"),
            format!("`{key}` is a setting of type = \"{other}\", not of type = \"{own}\""),
            format!("remove it, or change the resolver's type to \"{other}\""),
        );
    }
    let kind = if is_idsync {
        idsync(ctx, root, raw)
    } else {
        sql(ctx, names, pipeline, raw)
    };
    if ctx.errors.len() != before {
        return None;
    }
    Some(PendingResolver {
        // A second parse of the (small) file: secret errors found later need
        // its lines, and the raw project is gone by then.
        file: SourceFile::toml(ctx.file.rel.clone(), ctx.file.text().to_owned()),
        kind: kind?,
    })
}

fn idsync(ctx: &mut Ctx<'_>, root: &Path, raw: &RawResolver) -> Option<PendingKind> {
    let base_url = match (&raw.pod, &raw.base_url) {
        (Some(pod), None) => ctx
            .choice_with("resolver.pod", pod, "pod", PODS, true)
            .map(|p| idsync_base_url(p).to_owned()),
        (None, Some(url)) => match check_base_url(url, raw.allow_insecure_http.unwrap_or(false)) {
            Ok(url) => Some(url),
            Err(problem) => {
                ctx.push(
                    "resolver.base_url",
                    problem,
                    "use the IDSync host root over https, e.g. https://identity.mparticle.com \
                     (/v1/search is appended); http:// only to 127.0.0.1 or localhost, or with \
                     allow_insecure_http = true",
                );
                None
            }
        },
        (Some(_), Some(_)) => {
            ctx.push(
                "resolver.base_url",
                "`pod` and `base_url` are both set",
                "remove one of them",
            );
            None
        }
        (None, None) => {
            ctx.missing(
                "resolver.pod",
                "add pod = \"US1\" (US1, US2, EU1 or AU1): IDSync is asked on the pod's identity host; or base_url for a proxy or test server",
            );
            None
        }
    };
    let api_key = secret(
        ctx,
        root,
        "resolver",
        "api_key",
        &raw.api_key,
        &raw.api_key_env,
        &raw.api_key_file,
    );
    let api_secret = secret(
        ctx,
        root,
        "resolver",
        "api_secret",
        &raw.api_secret,
        &raw.api_secret_env,
        &raw.api_secret_file,
    );
    let d = DeliverySettings::default();
    let delivery = DeliverySettings {
        rate_limit_per_sec: ctx.int_in(
            "resolver.rate_limit_per_sec",
            raw.rate_limit_per_sec,
            DEFAULT_IDSYNC_RATE_PER_SEC,
            0..=100_000,
            "searches per second; the default is 100, 0 turns pacing off",
        ),
        max_in_flight: ctx.int_in(
            "resolver.max_in_flight",
            raw.max_in_flight,
            d.max_in_flight,
            1..=64,
            "the default is 4",
        ),
        gzip: false,
        retry_max_attempts: ctx.int_in(
            "resolver.retry_max_attempts",
            raw.retry_max_attempts,
            d.retry_max_attempts,
            1..=100,
            "the default is 8",
        ),
        retry_initial_backoff: Duration::from_millis(ctx.int_in(
            "resolver.retry_initial_backoff_ms",
            raw.retry_initial_backoff_ms,
            250,
            1..=60_000,
            "the default is 250 ms",
        )),
        retry_max_backoff: ctx.seconds(
            "resolver.retry_max_backoff_secs",
            raw.retry_max_backoff_secs,
            d.retry_max_backoff,
            MAX_SHORT_SECS,
        ),
        retry_deadline: ctx.seconds(
            "resolver.retry_deadline_secs",
            raw.retry_deadline_secs,
            d.retry_deadline,
            MAX_LONG_SECS,
        ),
    };
    let request_timeout = ctx.seconds(
        "resolver.request_timeout_secs",
        raw.request_timeout_secs,
        Duration::from_secs(30),
        MAX_SHORT_SECS,
    );
    let cache_entries = ctx.int_in(
        "resolver.cache_entries",
        raw.cache_entries,
        DEFAULT_CACHE_ENTRIES,
        0..=100_000_000,
        "identity sets remembered per run; the default is 100000, 0 turns the cache off",
    );
    Some(PendingKind::IdSync {
        base_url: base_url?,
        api_key: api_key?,
        api_secret: api_secret?,
        request_timeout,
        delivery,
        cache_entries,
    })
}

fn sql(
    ctx: &mut Ctx<'_>,
    names: &Names,
    pipeline: &Pipeline,
    raw: &RawResolver,
) -> Option<PendingKind> {
    let data_model = match raw.data_model.as_deref() {
        None => {
            ctx.missing(
                "resolver.data_model",
                "add data_model = \"NAME\" for sql/NAME.sql, a SELECT returning identity columns (customer_id, email, mpid, …) of the profiles that exist",
            );
            None
        }
        Some(m) if !names.models.contains(m) => {
            let available = names.models.iter().cloned().collect::<Vec<_>>();
            let hint = match suggest::closest(m, available.iter().map(String::as_str)) {
                Some(best) => format!(
                    "did you mean `{best}`? available: {}",
                    suggest::list(&available)
                ),
                None => format!(
                    "create sql/{m}.sql (available: {})",
                    suggest::list(&available)
                ),
            };
            ctx.push(
                "resolver.data_model",
                format!("data model `{m}` not found"),
                hint,
            );
            None
        }
        Some(m) if m == pipeline.data_model => {
            ctx.push(
                "resolver.data_model",
                format!("`{m}` is the pipeline's own model: every row would match itself"),
                "use a model over the profiles mParticle already has (e.g. the users table of mParticle's warehouse output)",
            );
            None
        }
        Some(m) => Some(m.to_owned()),
    };
    let connection = match raw.connection.as_deref() {
        None => Some(pipeline.connection.clone()),
        Some(c) => match &names.connections {
            Some(known) if !known.iter().any(|k| k == c) => {
                let hint = match suggest::closest(c, known.iter().map(String::as_str)) {
                    Some(best) => format!(
                        "did you mean `{best}`? available: {}",
                        suggest::list(known)
                    ),
                    None => format!("add [connections.{c}] to wsync.toml, or remove the key to use the pipeline's connection"),
                };
                ctx.push(
                    "resolver.connection",
                    format!("connection `{c}` is not defined in wsync.toml"),
                    hint,
                );
                None
            }
            _ => Some(c.to_owned()),
        },
    };
    Some(PendingKind::Sql {
        connection: connection?,
        data_model: data_model?,
    })
}
