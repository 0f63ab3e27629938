//! The HTTP side of the Snowflake protocol: login, query requests (with
//! asynchronous polling of long queries), result chunk downloads, and the
//! retries of transient failures.
//!
//! Protocol facts (as Snowflake's own drivers speak it):
//! - `POST /session/v1/login-request?databaseName=…&schemaName=…&warehouse=…&roleName=…`
//!   with `{"data": {…}}` returns `data.token`, the session token.
//! - Every later request carries `Authorization: Snowflake Token="<token>"`.
//! - `POST /queries/v1/query-request?requestId=<uuid>` with `sqlText`,
//!   `bindings` and `describeOnly` returns `rowtype`, the first rows inline
//!   (`rowsetBase64`, an Arrow IPC stream, or `rowset`, JSON) and the `chunks`
//!   (`url`, `rowCount`, …) holding the rest, to be downloaded with the
//!   `chunkHeaders` given (or, for older accounts, the SSE-C key `qrmk`).
//! - A query still running after ~45 s answers code `333333`/`333334` with a
//!   `getResultUrl` to poll until the result is there.
//! - Errors are `success: false` with a `code` (`000630` = statement timeout,
//!   `390112` = session expired) and a `message`.
//!
//! Secrets: the session token, the login JWT or password, the chunk URLs (they
//! are pre-signed) and the chunk headers (an encryption key) never appear in an
//! error or a log line.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth;
use super::types::RowType;
use crate::config::model::{SnowflakeAuth, SnowflakeSettings};
use crate::redact::{scrub, Secret};
use crate::source::error::LowercaseFirst as _;
use crate::source::jwt::RsaKey;
use crate::source::SourceError;

/// Attempts for one HTTP request that fails transiently.
const MAX_ATTEMPTS: u32 = 4;
/// First backoff between attempts (doubled each time, full jitter).
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait between two polls of a running query.
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Codes of a query that is still running.
const IN_PROGRESS: &[&str] = &["333333", "333334"];
/// Codes of an expired or unknown session token: log in again, once.
const SESSION_GONE: &[&str] = &["390112", "390104", "390114"];
/// Statement timeout.
const TIMEOUT_CODE: &str = "000630";

/// A failed exchange, before it becomes a [`SourceError`].
#[derive(Debug)]
pub(crate) struct Failure {
    /// Snowflake's error code, when it sent one.
    pub code: Option<String>,
    /// What happened (scrubbed of secrets).
    pub message: String,
    /// Whether trying again may succeed.
    pub retryable: bool,
}

/// The response envelope of every Snowflake endpoint.
#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    data: Value,
}

/// One remote result chunk.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ChunkRef {
    /// Pre-signed download URL (a secret: it grants access).
    pub url: String,
    /// Rows in it.
    #[serde(rename = "rowCount", default)]
    pub row_count: u64,
}

impl std::fmt::Display for ChunkRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a chunk of {} rows", self.row_count)
    }
}

/// The `data` of a successful query response.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct QueryData {
    /// The result's columns.
    #[serde(default)]
    pub rowtype: Vec<RowType>,
    /// `arrow` or `json`.
    #[serde(rename = "queryResultFormat", default)]
    pub format: Option<String>,
    /// First rows, base64 Arrow IPC stream.
    #[serde(rename = "rowsetBase64", default)]
    pub rowset_base64: Option<String>,
    /// First rows, JSON.
    #[serde(default)]
    pub rowset: Option<Vec<Vec<Option<String>>>>,
    /// The remaining rows.
    #[serde(default)]
    pub chunks: Vec<ChunkRef>,
    /// Headers for the chunk downloads.
    #[serde(rename = "chunkHeaders", default)]
    pub chunk_headers: Option<HashMap<String, String>>,
    /// SSE-C key for the chunk downloads when no headers are given.
    #[serde(default)]
    pub qrmk: Option<String>,
}

impl QueryData {
    /// The headers a chunk download needs, as secrets.
    pub(crate) fn download_headers(&self) -> Vec<(String, Secret)> {
        match (&self.chunk_headers, &self.qrmk) {
            (Some(headers), _) if !headers.is_empty() => headers
                .iter()
                .map(|(k, v)| (k.clone(), Secret::new(v.clone())))
                .collect(),
            (_, Some(qrmk)) => vec![
                (
                    "x-amz-server-side-encryption-customer-algorithm".to_owned(),
                    Secret::new("AES256"),
                ),
                (
                    "x-amz-server-side-encryption-customer-key".to_owned(),
                    Secret::new(qrmk.clone()),
                ),
            ],
            _ => Vec::new(),
        }
    }
}

/// One logged-in Snowflake session.
pub(crate) struct Client {
    /// Connection name, for messages.
    pub(crate) name: String,
    /// Shared HTTP client (connection pool).
    http: reqwest::Client,
    /// The connection's settings (holds the password or key; never printed).
    settings: SnowflakeSettings,
    /// The parsed private key, for key-pair auth.
    key: Option<RsaKey>,
    /// The session token.
    token: Secret,
    /// Server-side statement limit.
    pub(crate) statement_timeout: Duration,
    /// Sequence number of the next query.
    sequence: u64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnowflakeClient")
            .field("name", &self.name)
            .field("base_url", &self.settings.base_url)
            .field("account", &self.settings.account)
            .field("user", &self.settings.user)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// End the session on the server and wait for the answer (errors are
    /// ignored: the token expires on its own).
    pub(crate) async fn close(mut self) {
        if let Some(request) = self.delete_session_request() {
            let _ = request.send().await;
        }
        self.token = Secret::new("");
    }

    /// `POST /session?delete=true` for this session; `None` when not logged in.
    fn delete_session_request(&self) -> Option<RequestBuilder> {
        if self.token.expose().is_empty() {
            return None;
        }
        Some(
            self.http
                .post(format!("{}/session?delete=true", self.settings.base_url))
                .header("Authorization", auth_header(&self.token))
                .header("Accept", "application/json")
                .timeout(Duration::from_secs(5)),
        )
    }
}

impl Drop for Client {
    /// End the session on the server (best effort, in the background).
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(request) = self.delete_session_request() else {
            return;
        };
        runtime.spawn(async move {
            let _ = request.send().await;
        });
    }
}

/// `Snowflake Token="<token>"`.
fn auth_header(token: &Secret) -> String {
    format!("Snowflake Token=\"{}\"", token.expose())
}

/// Whether an HTTP status is worth retrying (408, 429, 5xx except 501).
fn retryable_status(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || (status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED)
}

/// Full-jitter backoff before attempt `attempt` (1-based retry number).
fn backoff(attempt: u32) -> Duration {
    let cap = FIRST_BACKOFF.saturating_mul(1 << attempt.min(6));
    cap.mul_f64(fastrand::f64())
}

impl Client {
    /// Log in.
    pub(crate) async fn connect(
        name: &str,
        settings: &SnowflakeSettings,
        statement_timeout: Duration,
    ) -> Result<Self, SourceError> {
        let key = match &settings.auth {
            SnowflakeAuth::KeyPair {
                private_key,
                passphrase,
            } => Some(
                RsaKey::from_pem(private_key, passphrase.as_ref())
                    .map_err(|cause| connect_error(name, settings, cause, false))?,
            ),
            SnowflakeAuth::Password(_) => None,
        };
        let http = reqwest::Client::builder()
            // A half-open connection is noticed by the OS, not only by the timeout.
            .tcp_keepalive(crate::source::TCP_KEEPALIVE)
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| connect_error(name, settings, e.to_string(), false))?;
        let mut client = Self {
            name: name.to_owned(),
            http,
            settings: settings.clone(),
            key,
            token: Secret::new(""),
            statement_timeout,
            sequence: 0,
        };
        client.login().await?;
        Ok(client)
    }

    /// The secrets that must never appear in a message.
    fn secrets(&self) -> Vec<Secret> {
        let mut secrets = vec![self.token.clone()];
        match &self.settings.auth {
            SnowflakeAuth::Password(p) => secrets.push(p.clone()),
            SnowflakeAuth::KeyPair {
                private_key,
                passphrase,
            } => {
                secrets.push(private_key.clone());
                secrets.extend(passphrase.clone());
            }
        }
        secrets
    }

    /// `text` with every secret of this session masked.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let secrets = self.secrets();
        let refs: Vec<&Secret> = secrets.iter().collect();
        scrub(text, &refs)
    }

    /// POST the login request and keep the session token.
    async fn login(&mut self) -> Result<(), SourceError> {
        let jwt = match &self.key {
            Some(key) => Some(
                auth::key_pair_jwt(
                    key,
                    &self.settings.account,
                    &self.settings.user,
                    chrono::Utc::now(),
                )
                .map_err(|cause| connect_error(&self.name, &self.settings, cause, false))?,
            ),
            None => None,
        };
        let body = auth::login_body(
            &self.settings,
            jwt.as_ref(),
            self.statement_timeout.as_secs(),
        );
        let mut url = url::Url::parse(&format!(
            "{}/session/v1/login-request",
            self.settings.base_url
        ))
        .map_err(|e| connect_error(&self.name, &self.settings, e.to_string(), false))?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("request_id", &uuid::Uuid::new_v4().to_string());
            if let Some(d) = &self.settings.database {
                q.append_pair("databaseName", d);
            }
            if let Some(s) = &self.settings.schema {
                q.append_pair("schemaName", s);
            }
            if let Some(w) = &self.settings.warehouse {
                q.append_pair("warehouse", w);
            }
            if let Some(r) = &self.settings.role {
                q.append_pair("roleName", r);
            }
        }
        let body = body.to_string();
        let http = self.http.clone();
        let envelope = self
            .exchange(|| {
                http.post(url.as_str())
                    .header("Content-Type", "application/json")
                    .header("Accept", "application/json")
                    .timeout(Duration::from_secs(60))
                    .body(body.clone())
            })
            .await;
        // The JWT or password went out in this body: scrub both from any answer.
        let scrub_all = |text: &str| {
            let mut secrets = self.secrets();
            secrets.extend(jwt.clone());
            let refs: Vec<&Secret> = secrets.iter().collect();
            scrub(text, &refs)
        };
        let envelope = envelope.map_err(|f| {
            connect_error(
                &self.name,
                &self.settings,
                scrub_all(&f.message),
                f.retryable,
            )
        })?;
        if !envelope.success {
            let code = envelope.code.unwrap_or_default();
            let message = envelope
                .message
                .unwrap_or_else(|| "login refused".to_owned());
            let hint = match code.as_str() {
                "390144" | "394304" => " (the JWT was refused: check that the user's RSA_PUBLIC_KEY matches private_key_file, and account and user)",
                "390100" => " (check user and password)",
                _ => "",
            };
            return Err(connect_error(
                &self.name,
                &self.settings,
                format!(
                    "login failed with code {code}: {}{hint}",
                    scrub_all(&message)
                ),
                false,
            ));
        }
        let token = envelope
            .data
            .get("token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                connect_error(
                    &self.name,
                    &self.settings,
                    "the login answer has no session token".to_owned(),
                    false,
                )
            })?;
        self.token = Secret::new(token);
        Ok(())
    }

    /// Send a request (rebuilt by `build` for each attempt) and read the JSON
    /// envelope, retrying transient failures (I/O, 408, 429, 5xx).
    async fn exchange(&self, build: impl Fn() -> RequestBuilder) -> Result<Envelope, Failure> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match build().send().await {
                Ok(response) => {
                    let status = response.status();
                    match response.bytes().await {
                        Ok(body) => match serde_json::from_slice::<Envelope>(&body) {
                            Ok(envelope) if status.is_success() || envelope.code.is_some() => {
                                Ok(envelope)
                            }
                            _ => Err(Failure {
                                code: None,
                                message: format!("the server answered HTTP {status}"),
                                retryable: retryable_status(status),
                            }),
                        },
                        Err(e) => Err(Failure {
                            code: None,
                            message: format!("reading the answer failed: {}", without_url(&e)),
                            retryable: true,
                        }),
                    }
                }
                Err(e) => Err(Failure {
                    code: None,
                    message: format!("the request failed: {}", without_url(&e)),
                    retryable: true,
                }),
            };
            match result {
                Err(f) if f.retryable && attempt < MAX_ATTEMPTS => {
                    let wait = backoff(attempt);
                    tracing::warn!(
                        attempt,
                        wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        cause = %f.message,
                        "Snowflake request failed transiently; retrying."
                    );
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }

    /// Run `sql` with `bindings` (`{"1": {"type": …, "value": …}, …}`) and return
    /// the result's description and first rows; `describe_only` returns the
    /// columns without running the query.
    pub(crate) async fn query(
        &mut self,
        model: &str,
        sql: &str,
        bindings: Value,
        describe_only: bool,
    ) -> Result<QueryData, SourceError> {
        let mut relogged = false;
        loop {
            match self.query_once(sql, &bindings, describe_only).await {
                Ok(data) => return Ok(data),
                Err(f)
                    if !relogged
                        && f.code.as_deref().is_some_and(|c| SESSION_GONE.contains(&c)) =>
                {
                    tracing::info!(connection = %self.name, "Snowflake session expired; logging in again.");
                    relogged = true;
                    self.login().await?;
                }
                Err(f)
                    if f.code.as_deref() == Some(TIMEOUT_CODE)
                        || f.code.as_deref() == Some("timeout") =>
                {
                    return Err(SourceError::Timeout {
                        model: model.to_owned(),
                        seconds: self.statement_timeout.as_secs(),
                    })
                }
                Err(f) => {
                    return Err(SourceError::Query {
                        model: model.to_owned(),
                        message: match &f.code {
                            Some(code) if code != "timeout" => {
                                format!("snowflake error {code}: {}", f.message)
                            }
                            _ => f.message.to_lowercase_first(),
                        },
                        retryable: f.retryable,
                    })
                }
            }
        }
    }

    /// One query request, polled to its end.
    async fn query_once(
        &mut self,
        sql: &str,
        bindings: &Value,
        describe_only: bool,
    ) -> Result<QueryData, Failure> {
        self.sequence += 1;
        let mut body = json!({
            "sqlText": sql,
            "asyncExec": false,
            "sequenceId": self.sequence,
            "querySubmissionTime": chrono::Utc::now().timestamp_millis(),
            "describeOnly": describe_only,
            "parameters": {
                "STATEMENT_TIMEOUT_IN_SECONDS": self.statement_timeout.as_secs(),
                "PYTHON_CONNECTOR_QUERY_RESULT_FORMAT": "ARROW",
            },
        });
        if bindings.as_object().is_some_and(|b| !b.is_empty()) {
            body["bindings"] = bindings.clone();
        }
        let body = body.to_string();
        let request_id = uuid::Uuid::new_v4().to_string();
        let url = format!(
            "{}/queries/v1/query-request?requestId={request_id}",
            self.settings.base_url
        );
        let http = self.http.clone();
        let header = auth_header(&self.token);
        let started = Instant::now();
        let mut envelope = self
            .exchange(|| {
                http.post(&url)
                    .header("Authorization", &header)
                    .header("Content-Type", "application/json")
                    .header("Accept", "application/snowflake")
                    .timeout(Duration::from_secs(120))
                    .body(body.clone())
            })
            .await
            .map_err(|f| self.scrubbed(f))?;
        // Long queries: poll the result URL until it is ready.
        let deadline = self.statement_timeout + Duration::from_secs(60);
        let mut interval = Duration::from_millis(100);
        while envelope
            .code
            .as_deref()
            .is_some_and(|c| IN_PROGRESS.contains(&c))
        {
            if started.elapsed() > deadline {
                return Err(Failure {
                    code: Some("timeout".to_owned()),
                    message: "the query did not finish in time".to_owned(),
                    retryable: false,
                });
            }
            let path = envelope
                .data
                .get("getResultUrl")
                .and_then(Value::as_str)
                .ok_or_else(|| Failure {
                    code: None,
                    message: "a running query came back without a result URL".to_owned(),
                    retryable: false,
                })?
                .to_owned();
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(MAX_POLL_INTERVAL);
            let poll_url = if path.starts_with("http://") || path.starts_with("https://") {
                path
            } else {
                format!("{}{path}", self.settings.base_url)
            };
            envelope = self
                .exchange(|| {
                    http.request(Method::GET, &poll_url)
                        .header("Authorization", &header)
                        .header("Accept", "application/snowflake")
                        .timeout(Duration::from_secs(120))
                })
                .await
                .map_err(|f| self.scrubbed(f))?;
        }
        if !envelope.success {
            return Err(Failure {
                code: envelope.code,
                message: self.scrub(envelope.message.as_deref().unwrap_or("the query failed")),
                retryable: false,
            });
        }
        serde_json::from_value::<QueryData>(envelope.data).map_err(|e| Failure {
            code: None,
            message: format!("cannot read the query answer: {e}"),
            retryable: false,
        })
    }

    /// A failure with this session's secrets scrubbed from its message.
    fn scrubbed(&self, f: Failure) -> Failure {
        Failure {
            message: self.scrub(&f.message),
            ..f
        }
    }

    /// Download one result chunk (gzip or plain), with retries. The URL and the
    /// headers are secrets and stay out of every message.
    pub(crate) fn download(
        &self,
        chunk: &ChunkRef,
        headers: &[(String, Secret)],
    ) -> impl std::future::Future<Output = Result<Vec<u8>, Failure>> + Send + 'static {
        let http = self.http.clone();
        let url = chunk.url.clone();
        let headers = headers.to_vec();
        let description = chunk.to_string();
        async move {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let mut request = http.get(&url).timeout(Duration::from_secs(300));
                for (name, value) in &headers {
                    request = request.header(name.as_str(), value.expose());
                }
                let result = match request.send().await {
                    Ok(response) if response.status().is_success() => {
                        response.bytes().await.map_err(|e| Failure {
                            code: None,
                            message: format!(
                                "downloading {description} failed: {}",
                                without_url(&e)
                            ),
                            retryable: true,
                        })
                    }
                    Ok(response) => Err(Failure {
                        code: None,
                        message: format!(
                            "downloading {description} failed with HTTP {}",
                            response.status()
                        ),
                        retryable: retryable_status(response.status()),
                    }),
                    Err(e) => Err(Failure {
                        code: None,
                        message: format!("downloading {description} failed: {}", without_url(&e)),
                        retryable: true,
                    }),
                };
                match result {
                    Ok(bytes) => return gunzip_if_needed(&bytes),
                    Err(f) if f.retryable && attempt < MAX_ATTEMPTS => {
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                    Err(f) => return Err(f),
                }
            }
        }
    }
}

/// The bytes, decompressed when they start with the gzip magic number.
fn gunzip_if_needed(bytes: &[u8]) -> Result<Vec<u8>, Failure> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(bytes), &mut out)
            .map_err(|e| Failure {
                code: None,
                message: format!("cannot decompress a result chunk: {e}"),
                retryable: false,
            })?;
        Ok(out)
    } else {
        Ok(bytes.to_vec())
    }
}

/// A reqwest error's text without the URL (chunk URLs are pre-signed).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "<url>");
    }
    text
}

/// A login failure for connection `name`.
fn connect_error(
    name: &str,
    settings: &SnowflakeSettings,
    cause: String,
    retryable: bool,
) -> SourceError {
    SourceError::Login {
        connection: name.to_owned(),
        url: settings.base_url.clone(),
        cause: format!(
            "{} (account `{}`, user `{}`)",
            cause.to_lowercase_first(),
            settings.account,
            settings.user
        ),
        retryable,
    }
}
