//! Admin HTTP endpoints, served with axum on their own listener so that health checks never
//! queue behind client traffic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::frontend::ProxyContext;

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
}

/// The body of `GET /v1/status`.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Client connections open now.
    pub clients: usize,
    /// Clients pinned to their server connection in transaction mode, since start.
    pub pinned_clients_total: u64,
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
                }
            })
            .collect();
        pools.sort_by(|a, b| (&a.database, &a.user).cmp(&(&b.database, &b.user)));
        Self {
            clients: ctx.clients.load(Ordering::Relaxed),
            pinned_clients_total: ctx.pinned_clients.load(Ordering::Relaxed),
            pools,
        }
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz() -> &'static str {
    "ready\n"
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
