//! Admin HTTP endpoints, served with axum on their own listener so that health checks never
//! queue behind client traffic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::frontend::ProxyContext;
use crate::telemetry::{PoolGauges, PoolTotals};

/// One pool in `GET /v1/status`.
#[derive(Debug, Serialize)]
pub struct PoolStatus {
    /// Client-facing database.
    pub database: String,
    /// Client-facing user.
    pub user: String,
    /// `transaction` or `session`.
    pub mode: String,
    /// Configured maximum of server connections.
    pub pool_size: usize,
    /// Server connections open now.
    pub server_connections: usize,
    /// Of those, idle in the pool.
    pub idle: usize,
    /// Clients waiting for a server connection.
    pub waiting: usize,
    /// Cumulative traffic figures.
    pub totals: PoolTotals,
}

/// The body of `GET /v1/status`.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Client connections open now.
    pub clients: usize,
    /// Every pool created so far.
    pub pools: Vec<PoolStatus>,
}

impl Status {
    /// A snapshot of the proxy's state.
    #[must_use]
    pub fn of(ctx: &ProxyContext) -> Self {
        let mut pools: Vec<PoolStatus> = ctx
            .pools
            .all()
            .iter()
            .map(|pool| {
                let usage = pool.usage();
                PoolStatus {
                    database: pool.key().database.clone(),
                    user: pool.key().user.clone(),
                    mode: pool.settings().mode.to_string(),
                    pool_size: pool.settings().size,
                    server_connections: usage.size,
                    idle: usage.available,
                    waiting: usage.waiting,
                    totals: pool.metrics().totals(),
                }
            })
            .collect();
        pools.sort_by(|a, b| (&a.database, &a.user).cmp(&(&b.database, &b.user)));
        Self {
            clients: ctx.clients.load(Ordering::Relaxed),
            pools,
        }
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// How long `/readyz` waits for the upstream to accept a TCP connection.
const UPSTREAM_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Ready when the upstream accepts connections: a sidecar whose database is unreachable
/// should be taken out of rotation rather than hand out errors.
async fn readyz(State(ctx): State<Arc<ProxyContext>>) -> (StatusCode, String) {
    let upstream = &ctx.config.upstream;
    let address = (upstream.host.as_str(), upstream.port);
    match tokio::time::timeout(UPSTREAM_PROBE_TIMEOUT, TcpStream::connect(address)).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n".to_owned()),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "upstream {}:{} unreachable: {e}\n",
                upstream.host, upstream.port
            ),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "upstream {}:{} did not accept a connection within {UPSTREAM_PROBE_TIMEOUT:?}\n",
                upstream.host, upstream.port
            ),
        ),
    }
}

/// The Prometheus exposition, with pool gauges read at scrape time.
async fn metrics(State(ctx): State<Arc<ProxyContext>>) -> impl IntoResponse {
    let metrics = &ctx.telemetry.metrics;
    for pool in ctx.pools.all() {
        let usage = pool.usage();
        metrics.set_pool_gauges(
            pool.metrics(),
            &PoolGauges {
                active: usage.size.saturating_sub(usage.available),
                idle: usage.available,
                waiting: usage.waiting,
                pool_size: pool.settings().size,
            },
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

async fn status(State(ctx): State<Arc<ProxyContext>>) -> Json<Status> {
    Json(Status::of(&ctx))
}

/// A bound admin listener.
pub struct AdminServer {
    listener: TcpListener,
    ctx: Arc<ProxyContext>,
}

impl AdminServer {
    /// Binds `addr` for the proxy whose context is `ctx`.
    ///
    /// # Errors
    /// The bind error.
    pub async fn bind(addr: SocketAddr, ctx: Arc<ProxyContext>) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
            ctx,
        })
    }

    /// The bound address.
    ///
    /// # Errors
    /// The socket's error.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` turns true.
    ///
    /// # Errors
    /// A failure of the listener.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> std::io::Result<()> {
        let app = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .route("/v1/status", get(status))
            .with_state(self.ctx);
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move {
                while !*shutdown.borrow() {
                    if shutdown.changed().await.is_err() {
                        return;
                    }
                }
            })
            .await
    }
}
