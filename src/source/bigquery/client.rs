//! The BigQuery REST calls wsync makes: `jobs.query` (also as a dry run) and
//! `jobs.getQueryResults` paging, with an OAuth token from the service account
//! (refreshed before it expires) and retries of transient failures (I/O, 408,
//! 429, 5xx but 501, and the `backendError`/`rateLimitExceeded` reasons).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{fetch_token, AccessToken, ServiceAccountKey};
use super::types::Field;
use crate::config::model::{BigQueryAuth, BigQuerySettings};
use crate::redact::{scrub, Secret};
use crate::source::SourceError;

/// Attempts for one request that fails transiently.
const MAX_ATTEMPTS: u32 = 4;
/// First backoff (doubled each attempt, full jitter).
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Rows per page asked for: bounds one page's memory (BigQuery also caps a
/// page at about 10 MB).
pub(crate) const PAGE_ROWS: u64 = 10_000;
/// How long one `jobs.query`/`getQueryResults` call waits for the job.
const WAIT_MS: u64 = 10_000;

/// A query answer (`jobs.query` and `jobs.getQueryResults` share the shape).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct QueryAnswer {
    /// Result schema.
    #[serde(default)]
    pub schema: Option<Schema>,
    /// The job, for paging.
    #[serde(rename = "jobReference", default)]
    pub job_reference: Option<JobReference>,
    /// Rows of this page.
    #[serde(default)]
    pub rows: Vec<Row>,
    /// Next page, if any.
    #[serde(rename = "pageToken", default)]
    pub page_token: Option<String>,
    /// Whether the job finished (rows are only there when it did).
    #[serde(rename = "jobComplete", default)]
    pub job_complete: Option<bool>,
    /// Bytes the query processes (dry run: the estimate).
    #[serde(rename = "totalBytesProcessed", default)]
    pub total_bytes_processed: Option<String>,
    /// Errors (or warnings) of the job.
    #[serde(default)]
    pub errors: Vec<ErrorProto>,
}

/// One entry of `errors`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ErrorProto {
    /// Machine-readable reason (`invalidQuery`, `notFound`, …).
    #[serde(default)]
    pub reason: Option<String>,
    /// What happened.
    #[serde(default)]
    pub message: Option<String>,
}

/// `schema`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Schema {
    /// Columns.
    #[serde(default)]
    pub fields: Vec<Field>,
}

/// `jobReference`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct JobReference {
    /// Job id (a dry run has none).
    #[serde(rename = "jobId", default)]
    pub job_id: String,
    /// Where it runs.
    #[serde(default)]
    pub location: Option<String>,
}

/// One row: `{"f": [{"v": …}, …]}`.
#[derive(Debug, Deserialize)]
pub(crate) struct Row {
    /// Cells.
    #[serde(default)]
    pub f: Vec<Cell>,
}

/// One cell.
#[derive(Debug, Deserialize)]
pub(crate) struct Cell {
    /// Value (string, null, array or struct).
    #[serde(default)]
    pub v: Value,
}

/// A failed call: message (scrubbed), whether a retry may help, and whether
/// it was the job's time limit.
#[derive(Debug)]
pub(crate) struct Failure {
    /// What happened.
    pub message: String,
    /// Whether trying again may succeed.
    pub retryable: bool,
    /// The job hit its time limit.
    pub timeout: bool,
}

/// An open BigQuery "connection": HTTP client, settings and token.
pub(crate) struct Client {
    /// Connection name, for messages.
    pub(crate) name: String,
    /// HTTP connection pool.
    http: reqwest::Client,
    /// Settings.
    pub(crate) settings: BigQuerySettings,
    /// Parsed service-account key (`None` for `auth = "none"`).
    key: Option<ServiceAccountKey>,
    /// Current access token.
    token: Option<AccessToken>,
    /// Job time limit.
    pub(crate) statement_timeout: Duration,
    /// The last dry run's bytes estimate.
    pub(crate) last_estimate: Option<u64>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BigQueryClient")
            .field("name", &self.name)
            .field("base_url", &self.settings.base_url)
            .field("project", &self.settings.project)
            .finish_non_exhaustive()
    }
}

/// Whether an HTTP status is worth retrying.
fn retryable_status(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || (status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED)
}

/// Full-jitter backoff before retry `attempt`.
fn backoff(attempt: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << attempt.min(6))
        .mul_f64(fastrand::f64())
}

impl Client {
    /// Build the client and fetch the first token.
    pub(crate) async fn connect(
        name: &str,
        settings: &BigQuerySettings,
        statement_timeout: Duration,
    ) -> Result<Self, SourceError> {
        let connect_error = |cause: String, retryable: bool| SourceError::Login {
            connection: name.to_owned(),
            url: settings.base_url.clone(),
            cause,
            retryable,
        };
        let key = match &settings.auth {
            BigQueryAuth::ServiceAccount(text) => {
                Some(ServiceAccountKey::parse(text).map_err(|e| connect_error(e, false))?)
            }
            BigQueryAuth::None => None,
        };
        let http = reqwest::Client::builder()
            // A half-open connection is noticed by the OS, not only by the timeout.
            .tcp_keepalive(crate::source::TCP_KEEPALIVE)
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| connect_error(e.to_string(), false))?;
        let mut client = Self {
            name: name.to_owned(),
            http,
            settings: settings.clone(),
            key,
            token: None,
            statement_timeout,
            last_estimate: None,
        };
        client
            .bearer()
            .await
            .map_err(|f| connect_error(f.message, f.retryable))?;
        Ok(client)
    }

    /// The current bearer token, fetched or refreshed when needed; `None`
    /// for `auth = "none"`.
    async fn bearer(&mut self) -> Result<Option<Secret>, Failure> {
        let Some(key) = &self.key else {
            return Ok(None);
        };
        if let Some(token) = &self.token {
            if Instant::now() < token.refresh_at {
                return Ok(Some(token.token.clone()));
            }
        }
        let mut attempt = 0;
        let token = loop {
            attempt += 1;
            match fetch_token(&self.http, key).await {
                Ok(token) => break token,
                Err((message, true)) if attempt < MAX_ATTEMPTS => {
                    tracing::warn!(attempt, cause = %message, "BigQuery token request failed transiently; retrying.");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err((message, retryable)) => {
                    return Err(Failure {
                        message,
                        retryable,
                        timeout: false,
                    })
                }
            }
        };
        let secret = token.token.clone();
        self.token = Some(token);
        Ok(Some(secret))
    }

    /// `text` with the token masked.
    fn scrub(&self, text: &str) -> String {
        match &self.token {
            Some(t) => scrub(text, &[&t.token]),
            None => text.to_owned(),
        }
    }

    /// Send a JSON request to `path` under the API root and read the JSON
    /// answer, retrying transient failures.
    async fn call(
        &mut self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Failure> {
        let url = format!("{}/bigquery/v2{path}", self.settings.base_url);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let bearer = self.bearer().await?;
            let mut request = self
                .http
                .request(method.clone(), &url)
                .header("Accept", "application/json")
                .timeout(Duration::from_millis(WAIT_MS) + Duration::from_secs(60));
            if let Some(token) = &bearer {
                request = request.bearer_auth(token.expose());
            }
            if let Some(body) = body {
                request = request
                    .header("Content-Type", "application/json")
                    .body(body.to_string());
            }
            let result = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    match response.bytes().await {
                        Ok(bytes) if status.is_success() => serde_json::from_slice::<Value>(&bytes)
                            .map_err(|e| Failure {
                                message: format!("cannot read the answer: {e}"),
                                retryable: false,
                                timeout: false,
                            }),
                        Ok(bytes) => Err(api_error(status, &bytes)),
                        Err(e) => Err(Failure {
                            message: format!("reading the answer failed: {}", e.without_url()),
                            retryable: true,
                            timeout: false,
                        }),
                    }
                }
                Err(e) => Err(Failure {
                    message: format!("the request failed: {}", e.without_url()),
                    retryable: true,
                    timeout: false,
                }),
            };
            match result {
                Err(f) if f.retryable && attempt < MAX_ATTEMPTS => {
                    tracing::warn!(connection = %self.name, attempt, cause = %self.scrub(&f.message), "BigQuery request failed transiently; retrying.");
                    tokio::time::sleep(backoff(attempt)).await;
                    // An expired token is refreshed on the next `bearer`.
                }
                Err(f) => {
                    return Err(Failure {
                        message: self.scrub(&f.message),
                        ..f
                    })
                }
                Ok(v) => return Ok(v),
            }
        }
    }

    /// `jobs.query`: run `sql` with positional `parameters` (or only plan it
    /// when `dry_run`).
    pub(crate) async fn query(
        &mut self,
        sql: &str,
        parameters: Vec<Value>,
        dry_run: bool,
    ) -> Result<QueryAnswer, Failure> {
        let mut body = json!({
            "query": sql,
            "useLegacySql": false,
            "dryRun": dry_run,
            "maxResults": PAGE_ROWS,
            "timeoutMs": WAIT_MS,
            "maximumBytesBilled": self.settings.maximum_bytes_billed.to_string(),
            "jobTimeoutMs": self.statement_timeout.as_millis().to_string(),
            "formatOptions": {"useInt64Timestamp": true},
            "labels": {"client": "wsync"},
        });
        if !parameters.is_empty() {
            body["parameterMode"] = json!("POSITIONAL");
            body["queryParameters"] = Value::Array(parameters);
        }
        if let Some(location) = &self.settings.location {
            body["location"] = json!(location);
        }
        if let Some(dataset) = &self.settings.dataset {
            body["defaultDataset"] =
                json!({"projectId": self.settings.project, "datasetId": dataset});
        }
        let path = format!("/projects/{}/queries", self.settings.project);
        let value = self.call(reqwest::Method::POST, &path, Some(&body)).await?;
        parse_answer(value)
    }

    /// `jobs.getQueryResults`: the next page (or the first, once the job is done).
    pub(crate) async fn results(
        &mut self,
        job: &JobReference,
        page_token: Option<&str>,
    ) -> Result<QueryAnswer, Failure> {
        let mut url = url::Url::parse("http://x/").map_err(|e| Failure {
            message: e.to_string(),
            retryable: false,
            timeout: false,
        })?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("maxResults", &PAGE_ROWS.to_string());
            q.append_pair("timeoutMs", &WAIT_MS.to_string());
            q.append_pair("formatOptions.useInt64Timestamp", "true");
            if let Some(location) = job.location.as_ref().or(self.settings.location.as_ref()) {
                q.append_pair("location", location);
            }
            if let Some(token) = page_token {
                q.append_pair("pageToken", token);
            }
        }
        let path = format!(
            "/projects/{}/queries/{}?{}",
            self.settings.project,
            job.job_id,
            url.query().unwrap_or_default()
        );
        let value = self.call(reqwest::Method::GET, &path, None).await?;
        parse_answer(value)
    }
}

/// Read a query answer. A finished job with `errors` and neither columns nor
/// rows failed (BigQuery answers most failures with an HTTP error; the
/// emulator, and some job failures, with a 200 carrying `errors`, which may
/// otherwise be mere warnings).
fn parse_answer(value: Value) -> Result<QueryAnswer, Failure> {
    let answer: QueryAnswer = serde_json::from_value(value).map_err(|e| Failure {
        message: format!("cannot read the query answer: {e}"),
        retryable: false,
        timeout: false,
    })?;
    let no_result =
        answer.rows.is_empty() && answer.schema.as_ref().is_none_or(|s| s.fields.is_empty());
    if let (Some(first), true) = (answer.errors.first(), no_result) {
        let reason = first.reason.clone().unwrap_or_default();
        return Err(Failure {
            message: format!(
                "{} ({reason})",
                first.message.as_deref().unwrap_or("the query failed")
            ),
            retryable: matches!(
                reason.as_str(),
                "backendError" | "rateLimitExceeded" | "internalError"
            ),
            timeout: matches!(reason.as_str(), "timeout" | "jobTimeout"),
        });
    }
    Ok(answer)
}

/// A Google API error answer (`{"error": {"code", "message", "errors": [{"reason"}]}}`).
fn api_error(status: StatusCode, body: &[u8]) -> Failure {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let error = &value["error"];
    let message = error["message"]
        .as_str()
        .map_or_else(|| format!("HTTP {status}"), ToOwned::to_owned);
    let reasons: Vec<&str> = error["errors"]
        .as_array()
        .map(|errors| errors.iter().filter_map(|e| e["reason"].as_str()).collect())
        .unwrap_or_default();
    let transient_reason = reasons
        .iter()
        .any(|r| matches!(*r, "backendError" | "rateLimitExceeded" | "internalError"));
    let timeout = reasons
        .iter()
        .any(|r| matches!(*r, "timeout" | "jobTimeout"))
        || message.to_ascii_lowercase().contains("timed out");
    Failure {
        message: match reasons.first() {
            Some(reason) => format!("{message} ({reason})"),
            None => message,
        },
        retryable: !timeout && (retryable_status(status) || transient_reason),
        timeout,
    }
}
