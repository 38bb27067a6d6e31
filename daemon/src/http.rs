//! The HTTP endpoint (`server.http`, loopback by default): Prometheus
//! metrics, liveness, readiness and a JSON status. It serves no shard data.
//!
//! * `GET /metrics`: every metric in the Prometheus text format (see
//!   `docs/METRICS.md`).
//! * `GET /healthz`: 200 while the process serves HTTP at all.
//! * `GET /readyz`: 200 once the index is recovered and the listeners are
//!   up, while every data dir is writable and its drive has not failed and
//!   the daemon is not shutting down; otherwise 503 with the reasons, one
//!   per line.
//! * `GET /v1/status`: the `shardctl status` figures as JSON, with
//!   `version` and readiness.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use shardd_protocol::StatusResponse;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::io::fs;
use crate::server::ServerContext;

/// The running HTTP server.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// Binds `addr` and serves until [`HttpServer::stop`].
    pub async fn start(ctx: Arc<ServerContext>, addr: SocketAddr) -> anyhow::Result<HttpServer> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind the HTTP address {addr} (server.http)"))?;
        let addr = listener.local_addr()?;
        let router = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/v1/status", get(status))
            .with_state(ctx);
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the HTTP server stopped");
            }
        });
        Ok(HttpServer { addr, stop, task })
    }

    /// The address served (with the real port when 0 was asked).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and waits for requests in progress.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn metrics(State(ctx): State<Arc<ServerContext>>) -> Response {
    let status = ctx.status().await;
    ctx.metrics.refresh(&status);
    let namespaces = ctx.service.namespaces(&Default::default(), |_| true);
    ctx.metrics.refresh_namespaces(&namespaces.namespaces);
    match ctx.metrics.encode() {
        Ok(text) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the metrics: {e}\n"),
            )
                .into_response()
        }
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Why the daemon is not ready (empty when it is).
async fn not_ready(ctx: &ServerContext) -> Vec<String> {
    let mut reasons = Vec::new();
    if ctx.shutdown.is_cancelled() {
        reasons.push("shutting down".to_string());
    }
    if ctx.listen.get().is_none() {
        reasons.push("the listeners are not up yet".to_string());
    }
    let dirs = ctx.service.store().config().data_dirs.clone();
    let checked = tokio::task::spawn_blocking(move || {
        dirs.into_iter()
            .filter_map(|dir| {
                fs::check_writable(&dir)
                    .err()
                    .map(|e| format!("data dir {} is not writable: {e}", dir.display()))
            })
            .collect::<Vec<_>>()
    })
    .await;
    match checked {
        Ok(dirs) => reasons.extend(dirs),
        Err(e) => reasons.push(format!("cannot check the data dirs: {e}")),
    }
    reasons.extend(
        ctx.service
            .store()
            .failed_dirs()
            .into_iter()
            .map(|(dir, failure)| format!("data dir {} failed: {failure}", dir.display())),
    );
    reasons
}

async fn readyz(State(ctx): State<Arc<ServerContext>>) -> Response {
    let reasons = not_ready(&ctx).await;
    if reasons.is_empty() {
        // Serving already; the arena's progress, while it is populated.
        let body = match ctx.service.cache().map(|c| c.arena()) {
            Some(arena) if arena.populated_bytes() < arena.capacity() => format!(
                "ready\narena populating: {} of {} bytes resident\n",
                arena.populated_bytes(),
                arena.capacity()
            ),
            _ => "ready\n".to_string(),
        };
        (StatusCode::OK, body).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("{}\n", reasons.join("\n"))).into_response()
    }
}

/// `/v1/status`.
#[derive(Debug, Serialize)]
struct HttpStatus {
    version: &'static str,
    ready: bool,
    not_ready: Vec<String>,
    #[serde(flatten)]
    status: StatusResponse,
}

async fn status(State(ctx): State<Arc<ServerContext>>) -> Response {
    let not_ready = not_ready(&ctx).await;
    let body = HttpStatus {
        version: env!("CARGO_PKG_VERSION"),
        ready: not_ready.is_empty(),
        not_ready,
        status: ctx.status().await,
    };
    axum::Json(body).into_response()
}
