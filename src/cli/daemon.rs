//! `wsync daemon`: schedule every active pipeline until SIGTERM or SIGINT, with
//! the HTTP API (and /metrics) on `daemon.http_bind`.

use std::path::Path;
use std::process::ExitCode;

use crate::redact::Secret;
use crate::scheduler::Daemon;

/// Arguments of `wsync daemon`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Run until a signal; exit 0 after running pipelines recorded where they stopped.
pub async fn execute(root: &Path, _args: Args) -> anyhow::Result<ExitCode> {
    let ctx = super::context(root).await?;
    let settings = ctx.project.daemon.clone();
    let token = match &settings.http_token_env {
        None => None,
        Some(var) => match std::env::var(var) {
            Ok(value) if !value.is_empty() => Some(Secret::new(value)),
            _ => {
                return Err(super::UsageError(format!(
                    "wsync.toml: daemon.http_token_env names `{var}`, which is not set; \
                     export it or remove http_token_env"
                ))
                .into())
            }
        },
    };
    let daemon = Daemon::new(ctx.clone());
    // Seen by the other daemons, `wsync status` and `GET /daemons` from now
    // on; the lease heartbeat keeps it fresh.
    let me = ctx
        .state
        .register_daemon(settings.max_concurrent_runs)
        .await?;
    tracing::info!(daemon = %me.id, backend = ?ctx.state.backend(), "Daemon registered in the state store.");
    let api_stop = tokio_util::sync::CancellationToken::new();
    let api = match settings.http_bind {
        None => None,
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                super::UsageError(format!(
                    "cannot listen on {addr} ({e}); set daemon.http_bind in wsync.toml to a free \
                     address, or to \"\" to turn the HTTP API off"
                ))
            })?;
            tracing::info!(address = %listener.local_addr()?, "HTTP API listening.");
            if token.is_none() {
                // Validation refuses a non-loopback bind without a token; on
                // loopback every local user can still act on the pipelines.
                tracing::warn!(
                    address = %addr,
                    "HTTP API has no token: any local user can trigger, pause and resume \
                     pipelines; set daemon.http_token_env to require one."
                );
            }
            let router = crate::api::router(ctx.clone(), daemon.clone(), token);
            Some(tokio::spawn(crate::api::serve(
                listener,
                router,
                api_stop.clone(),
            )))
        }
    };
    let result = daemon.run().await;
    // The API answers (`/ready` says 503) until the runs have stopped.
    api_stop.cancel();
    if let Some(api) = api {
        if let Ok(Err(e)) = api.await {
            tracing::error!(error = %e, "HTTP API stopped with an error.");
        }
    }
    if let Err(e) = ctx.state.daemon_stopped().await {
        tracing::warn!(error = %e, "Cannot record the daemon's stop; others will see its heartbeat age.");
    }
    result?;
    Ok(ExitCode::SUCCESS)
}
