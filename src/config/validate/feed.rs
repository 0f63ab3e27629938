//! `[feeds.NAME]`: where batches go (pod or `base_url`), the key and secret, and
//! the pacing and retry settings.

#[allow(clippy::wildcard_imports)] // the sections share one namespace (see mod.rs)
use super::*;

pub(super) const PODS: &[(&str, Pod)] = &[
    ("US1", Pod::Us1),
    ("US2", Pod::Us2),
    ("EU1", Pod::Eu1),
    ("AU1", Pod::Au1),
];

/// A feed whose credentials are not resolved yet.
#[derive(Debug)]
pub(crate) struct PendingFeed {
    /// Table name.
    pub name: String,
    /// Host root without trailing slash.
    pub base_url: Option<String>,
    /// API key source.
    pub api_key: Option<PendingSecret>,
    /// API secret source.
    pub api_secret: Option<PendingSecret>,
    /// Default environment of its pipelines.
    pub environment: Environment,
    /// HTTP timeout.
    pub request_timeout: Duration,
    /// Pacing and retries.
    pub delivery: DeliverySettings,
    /// Whether every check on this feed passed.
    pub valid: bool,
}

pub(super) fn validate_feed(
    ctx: &mut Ctx<'_>,
    root: &Path,
    defaults: &Defaults,
    name: &str,
    raw: &RawFeed,
) -> PendingFeed {
    let before = ctx.errors.len();
    let base = format!("feeds.{name}");
    if !valid_name(name) {
        ctx.push(
            &base,
            format!("`{name}` is not a valid feed name"),
            NAME_HINT,
        );
    }
    let base_url = match (&raw.pod, &raw.base_url) {
        (Some(pod), None) => {
            // Pods are often written in lower case (`us1`).
            ctx.choice_with(&format!("{base}.pod"), pod, "pod", PODS, true)
                .map(|p| p.base_url().to_owned())
        }
        (None, Some(url)) => match check_base_url(url, raw.allow_insecure_http.unwrap_or(false)) {
            Ok(url) => Some(url),
            Err(problem) => {
                ctx.push(&format!("{base}.base_url"), problem, BASE_URL_HINT);
                None
            }
        },
        (Some(_), Some(_)) => {
            ctx.push(
                &format!("{base}.base_url"),
                "set either pod or base_url, not both",
                "remove one of them",
            );
            None
        }
        (None, None) => {
            ctx.missing(
                &format!("{base}.pod"),
                "add pod = \"US1\" (US1, US2, EU1 or AU1), or base_url for a test server",
            );
            None
        }
    };
    let api_key = secret(
        ctx,
        root,
        &base,
        "api_key",
        &raw.api_key,
        &raw.api_key_env,
        &raw.api_key_file,
    );
    let api_secret = secret(
        ctx,
        root,
        &base,
        "api_secret",
        &raw.api_secret,
        &raw.api_secret_env,
        &raw.api_secret_file,
    );
    let environment = match &raw.environment {
        Some(v) => ctx
            .choice(
                &format!("{base}.environment"),
                v,
                "environment",
                ENVIRONMENTS,
            )
            .unwrap_or(defaults.environment),
        None => defaults.environment,
    };
    let request_timeout = ctx.seconds(
        &format!("{base}.request_timeout_secs"),
        raw.request_timeout_secs,
        defaults.request_timeout,
        MAX_SHORT_SECS,
    );
    let d = DeliverySettings::default();
    let delivery = DeliverySettings {
        rate_limit_per_sec: ctx.int_in(
            &format!("{base}.rate_limit_per_sec"),
            raw.rate_limit_per_sec,
            d.rate_limit_per_sec,
            0..=100_000,
            "mParticle's default account limit is 270 batches per second; 0 turns pacing off",
        ),
        max_in_flight: ctx.int_in(
            &format!("{base}.max_in_flight"),
            raw.max_in_flight,
            d.max_in_flight,
            1..=64,
            "the default is 4",
        ),
        gzip: raw.gzip.unwrap_or(d.gzip),
        retry_max_attempts: ctx.int_in(
            &format!("{base}.retry_max_attempts"),
            raw.retry_max_attempts,
            d.retry_max_attempts,
            1..=100,
            "the default is 8",
        ),
        retry_initial_backoff: Duration::from_millis(ctx.int_in(
            &format!("{base}.retry_initial_backoff_ms"),
            raw.retry_initial_backoff_ms,
            250,
            1..=60_000,
            "the default is 250 ms",
        )),
        retry_max_backoff: ctx.seconds(
            &format!("{base}.retry_max_backoff_secs"),
            raw.retry_max_backoff_secs,
            d.retry_max_backoff,
            MAX_SHORT_SECS,
        ),
        retry_deadline: ctx.seconds(
            &format!("{base}.retry_deadline_secs"),
            raw.retry_deadline_secs,
            d.retry_deadline,
            MAX_LONG_SECS,
        ),
    };
    PendingFeed {
        name: name.to_owned(),
        base_url,
        api_key,
        api_secret,
        environment,
        request_timeout,
        delivery,
        valid: ctx.errors.len() == before,
    }
}

/// An http(s) URL with a host, returned without trailing slashes. Plain
/// `http://` carries the credentials in clear text, so it is refused unless
/// the host is a loopback address (`127.0.0.0/8`, `::1`, `localhost`) or the
/// user opted in with `allow_insecure_http = true`.
pub(super) fn check_base_url(raw: &str, allow_insecure_http: bool) -> Result<String, String> {
    let parsed = url::Url::parse(raw).map_err(|e| format!("`{raw}` is not a valid URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("`{raw}` is not an http or https URL"));
    }
    let loopback = match parsed.host() {
        None => return Err(format!("`{raw}` has no host")),
        Some(url::Host::Domain("")) => return Err(format!("`{raw}` has no host")),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
    };
    if parsed.scheme() == "http" && !loopback && !allow_insecure_http {
        return Err(format!(
            "`{raw}` is plain http to a host that is not this machine: the API key and secret \
             would travel in clear text"
        ));
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

/// The hint for a refused `base_url`.
const BASE_URL_HINT: &str =
    "use an https:// URL such as \"https://s2s.us1.mparticle.com\" (http:// \
     only to 127.0.0.1 or localhost, or with allow_insecure_http = true)";
