//! The daemon's HTTP API (axum): health, readiness, Prometheus metrics, and
//! pipelines: list, status (shaped like mParticle's pipeline status), paged
//! runs, trigger, pause and resume; the daemons on the state store and the
//! chunked backfills.
//!
//! It binds 127.0.0.1 unless told otherwise. With `daemon.http_token_env` set,
//! every route but `/health` and `/ready` wants `Authorization: Bearer <token>`.
//! Errors are JSON `{"status": N, "message": "..."}`; a 500's message has the
//! known secrets scrubbed, and state-store errors carry redacted URLs only.

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::redact::Secret;
use crate::scheduler::status::{pipeline_status, run_json};
use crate::scheduler::{Daemon, SchedulerError};
use crate::sync::SyncContext;

/// What the handlers share.
#[derive(Clone)]
struct AppState {
    ctx: SyncContext,
    daemon: Daemon,
    token: Option<Arc<Secret>>,
}

/// An API error: a status and a message a person can act on.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"status": self.status.as_u16(), "message": self.message})),
        )
            .into_response()
    }
}

impl From<SchedulerError> for ApiError {
    fn from(e: SchedulerError) -> Self {
        let status = match &e {
            SchedulerError::AlreadyRunning(_) | SchedulerError::Paused(_) => StatusCode::CONFLICT,
            SchedulerError::Sync(crate::sync::SyncError::UnknownPipeline { .. }) => {
                StatusCode::NOT_FOUND
            }
            SchedulerError::Sync(_) | SchedulerError::State(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

impl From<crate::state::StateError> for ApiError {
    fn from(e: crate::state::StateError) -> Self {
        // State errors name the store by its redacted URL only.
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

/// The router for `daemon`. `token`: the bearer token, if one is required.
pub fn router(ctx: SyncContext, daemon: Daemon, token: Option<Secret>) -> Router {
    let state = AppState {
        ctx,
        daemon,
        token: token.map(Arc::new),
    };
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/pipelines", get(pipelines))
        .route("/daemons", get(daemons))
        .route("/backfills", get(backfills))
        .route("/pipelines/{id}/status", get(status))
        .route("/pipelines/{id}/runs", get(runs))
        .route("/pipelines/{id}/trigger", post(trigger))
        .route("/pipelines/{id}/pause", post(pause))
        .route("/pipelines/{id}/resume", post(resume))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .merge(protected)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such endpoint; see /pipelines, /metrics, /health",
            )
        })
        .with_state(state)
}

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.expose().as_bytes())) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "send the token from daemon.http_token_env as `Authorization: Bearer <token>`",
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// Compare without leaking where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the state store answers and no shutdown is under way.
async fn ready(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    if state.ctx.shutdown.is_cancelled() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down: no new runs start",
        ));
    }
    state.ctx.state.count_runs(None).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("state store unavailable: {e}"),
        )
    })?;
    Ok(Json(json!({"status": "ready"})))
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let now = state.ctx.clock.now();
    for pipeline in state.ctx.project.pipelines.values() {
        let s = pipeline_status(
            &state.ctx.state,
            &state.ctx.project.state.spool_dir,
            pipeline,
            now,
        )
        .await?;
        state
            .ctx
            .metrics
            .set_pipeline_gauges(&s.id, s.watermark_lag_secs, s.last_success);
    }
    let mut response = state.ctx.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(response)
}

async fn pipelines(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let now = state.ctx.clock.now();
    let mut out = Vec::new();
    for pipeline in state.ctx.project.pipelines.values() {
        out.push(
            pipeline_status(
                &state.ctx.state,
                &state.ctx.project.state.spool_dir,
                pipeline,
                now,
            )
            .await?
            .to_json(),
        );
    }
    Ok(Json(json!({ "pipelines": out })))
}

/// The chunked backfills, newest first, with where each chunk stands.
async fn backfills(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let backfills = state.ctx.state.backfills(false, 100).await?;
    Ok(Json(serde_json::json!({ "backfills": backfills })))
}

/// The daemons sharing the state store: id, host, heartbeat, runs held.
async fn daemons(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let daemons = state.ctx.state.daemons().await?;
    Ok(Json(serde_json::json!({ "daemons": daemons })))
}

fn known(state: &AppState, id: &str) -> Result<(), ApiError> {
    state
        .ctx
        .pipeline(id)
        .map(|_| ())
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e.to_string()))
}

async fn status(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    known(&state, &id)?;
    let pipeline = &state.ctx.project.pipelines[&id];
    let s = pipeline_status(
        &state.ctx.state,
        &state.ctx.project.state.spool_dir,
        pipeline,
        state.ctx.clock.now(),
    )
    .await?;
    Ok(Json(s.to_json()))
}

/// `?page=1&page_size=20`.
#[derive(Debug, Deserialize)]
struct Paging {
    page: Option<u32>,
    page_size: Option<u32>,
}

async fn runs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(paging): Query<Paging>,
) -> Result<Json<serde_json::Value>, ApiError> {
    known(&state, &id)?;
    let page = paging.page.unwrap_or(1).max(1);
    let page_size = paging.page_size.unwrap_or(20);
    if !(1..=500).contains(&page_size) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("page_size must be between 1 and 500, not {page_size}"),
        ));
    }
    let total = state.ctx.state.count_runs(Some(&id)).await?;
    let items = state
        .ctx
        .state
        .runs(Some(&id), page_size, (page - 1).saturating_mul(page_size))
        .await?;
    Ok(Json(json!({
        "page": page,
        "page_size": page_size,
        "total": total,
        "items": items.iter().map(run_json).collect::<Vec<_>>(),
    })))
}

/// `?full_resync=true`.
#[derive(Debug, Deserialize)]
struct TriggerOptions {
    full_resync: Option<bool>,
}

async fn trigger(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(options): Query<TriggerOptions>,
) -> Result<Response, ApiError> {
    known(&state, &id)?;
    state
        .daemon
        .trigger_with(&id, options.full_resync.unwrap_or(false))
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"status": 202, "message": format!("run of `{id}` started")})),
    )
        .into_response())
}

async fn pause(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    set_paused(state, id, true).await
}

async fn resume(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    set_paused(state, id, false).await
}

async fn set_paused(
    state: AppState,
    id: String,
    paused: bool,
) -> Result<Json<serde_json::Value>, ApiError> {
    known(&state, &id)?;
    let pipeline = &state.ctx.project.pipelines[&id];
    if !paused && pipeline.paused {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "pipeline `{id}` is paused in its file; remove `paused = true` from {}",
                pipeline.path.display()
            ),
        ));
    }
    state
        .ctx
        .state
        .set_paused(&id, paused, state.ctx.clock.now())
        .await?;
    let s = pipeline_status(
        &state.ctx.state,
        &state.ctx.project.state.spool_dir,
        pipeline,
        state.ctx.clock.now(),
    )
    .await?;
    Ok(Json(s.to_json()))
}

/// Serve `router` on `listener` until the shutdown token is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
