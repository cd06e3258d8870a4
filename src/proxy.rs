//! The composition root: binds the listeners, builds the shared [`ProxyContext`], and runs what a
//! proxy is made of (the client listeners, the admin endpoints, the fleet member and the health
//! monitor) until shutdown or drain, then drains. `main`, `dev` and the tests start a proxy here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::AdminServer;
use crate::config::Config;
use crate::context::ProxyContext;
use crate::frontend::accept_clients;
use crate::gate::fleet::{FleetSettings, FleetSide, run_member};
use crate::health;
use crate::telemetry::TracingError;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The client listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The configured address.
        addr: SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
    /// The admin listener (`admin_listen`) could not be bound.
    #[error("cannot listen on admin address {addr}: {source}")]
    AdminListen {
        /// The configured address.
        addr: SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
    /// The OTLP exporter could not be set up.
    #[error(transparent)]
    Tracing(#[from] TracingError),
}

/// A bound, not yet running proxy.
pub struct Proxy {
    ctx: Arc<ProxyContext>,
    /// `listen` first, then the extra listeners; the index selects the TLS policy.
    listeners: Vec<TcpListener>,
    /// The admin endpoints, when `admin_listen` is set.
    admin: Option<AdminServer>,
}

impl Proxy {
    /// Binds the client listeners and, when `admin_listen` is set, the admin endpoints.
    ///
    /// # Errors
    /// The bind error, e.g. the address is in use.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let mut listeners = Vec::new();
        for addr in config.listen_addresses() {
            listeners.push(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Listen { addr, source })?,
            );
        }
        let admin_listen = config.admin_listen;
        let ctx = ProxyContext::new(config)?;
        let admin = match admin_listen {
            Some(addr) => Some(
                AdminServer::bind(addr, Arc::clone(&ctx))
                    .await
                    .map_err(|source| StartError::AdminListen { addr, source })?,
            ),
            None => None,
        };
        Ok(Self {
            ctx,
            listeners,
            admin,
        })
    }

    /// The admin endpoints' address, when `admin_listen` is set.
    ///
    /// # Errors
    /// The socket's error.
    pub fn admin_addr(&self) -> std::io::Result<Option<SocketAddr>> {
        self.admin.as_ref().map(AdminServer::local_addr).transpose()
    }

    /// The address clients connect to (useful when configured with port 0).
    ///
    /// # Errors
    /// The socket's error.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listeners[0].local_addr()
    }

    /// Every listener's address, `listen` first.
    ///
    /// # Errors
    /// The socket's error.
    pub fn local_addrs(&self) -> std::io::Result<Vec<SocketAddr>> {
        self.listeners.iter().map(TcpListener::local_addr).collect()
    }

    /// The shared context, for the admin side.
    #[must_use]
    pub fn context(&self) -> Arc<ProxyContext> {
        Arc::clone(&self.ctx)
    }

    /// Runs the proxy: the admin endpoints, the fleet member and the health monitor, and the
    /// client listeners until `shutdown` turns true or the gate starts draining; then drains: no
    /// new connections, each session ends at its next transaction boundary, and those left at
    /// the drain deadline are closed (their transactions roll back). Returns when no session is
    /// left; the admin endpoints stay up until then (`/readyz` reports the drain).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let admin_stop = watch::Sender::new(false);
        if let Some(admin) = self.admin {
            let stopped = admin_stop.subscribe();
            tokio::spawn(async move {
                if let Err(e) = admin.run(stopped).await {
                    tracing::error!(error = %e, "admin listener failed");
                }
            });
        }
        let member = start_fleet_member(&self.ctx);
        let (stop_accepting, stop) = watch::channel(false);
        let mut accepting = tokio::task::JoinSet::new();
        for (index, listener) in self.listeners.into_iter().enumerate() {
            accepting.spawn(accept_clients(
                Arc::clone(&self.ctx),
                listener,
                index,
                stop.clone(),
            ));
        }
        loop {
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                () = self.ctx.gate.drain_started() => break,
            }
        }
        let _ = stop_accepting.send(true);
        while accepting.join_next().await.is_some() {}
        drain(&self.ctx).await;
        // The member leaves the fleet registry when the drain starts; the process must not end
        // before it has, or the registry lists a gone sidecar as live until its heartbeat is
        // stale (and `migrate complete` waits for it).
        if let Some(member) = member
            && tokio::time::timeout(DEREGISTER_GRACE, member)
                .await
                .is_err()
        {
            tracing::warn!("leaving the fleet registry took too long; its row goes stale instead");
        }
        let _ = admin_stop.send(true);
    }
}

/// Joins the fleet when `[fleet]` is configured, with the health monitor beside it when
/// `health_interval` is set (stopped when the drain starts). The handle ends once the member
/// has left the registry.
fn start_fleet_member(ctx: &Arc<ProxyContext>) -> Option<tokio::task::JoinHandle<()>> {
    let config = ctx.config();
    let fleet = config.fleet.as_ref()?;
    let side: Arc<dyn FleetSide> = Arc::clone(ctx) as _;
    let member = run_member(
        Arc::clone(&ctx.gate),
        side,
        FleetSettings {
            control_url: fleet.url.clone(),
            id: fleet.id.clone(),
            host: fleet.host.clone(),
            heartbeat: fleet.heartbeat,
            control_role: fleet.control_role.clone(),
            max_pause_hold: config.control.max_pause_hold,
            max_pause_deadline: config.control.max_pause_deadline,
            schema_version: config.schema_version,
        },
    );
    if !fleet.health_interval.is_zero() {
        let metrics = Arc::clone(&ctx.telemetry.metrics);
        let checks =
            health::monitor::spawn(fleet.url.clone(), fleet.health_interval, move |checks| {
                for check in checks {
                    metrics.health(check.name, check.status.as_metric(), check.value);
                }
            });
        let gate = Arc::clone(&ctx.gate);
        tokio::spawn(async move {
            gate.drain_started().await;
            checks.abort();
        });
    }
    Some(member)
}

/// Ends every session at its next transaction boundary, or at the drain deadline, then closes
/// the pools.
async fn drain(ctx: &ProxyContext) {
    ctx.gate.drain(Instant::now() + ctx.config().drain_timeout);
    // Idle sessions wait on their own wake-up only, not on the gate: wake them to leave.
    ctx.nudge_all();
    let deadline = ctx.gate.drain_deadline().unwrap_or_else(Instant::now);
    tracing::info!(
        clients = ctx.clients.load(Ordering::Relaxed),
        "draining: no new connections; sessions end at their next transaction boundary"
    );
    if !wait_for_sessions(ctx, deadline).await {
        let left = ctx.clients.load(Ordering::Relaxed);
        tracing::warn!(
            left,
            "drain deadline reached: closing the remaining sessions"
        );
        ctx.abort_all("pgsidecar's drain deadline was reached");
        wait_for_sessions(ctx, Instant::now() + ABORT_GRACE).await;
    }
    ctx.pools.close_all().await;
}

/// How long the fleet member gets to leave the registry once sessions are gone.
const DEREGISTER_GRACE: Duration = Duration::from_secs(5);

/// How long sessions that were told to end get to close before the pools are closed under them.
const ABORT_GRACE: Duration = Duration::from_secs(2);

/// Waits until no client is connected; false if `deadline` came first.
async fn wait_for_sessions(ctx: &ProxyContext, deadline: Instant) -> bool {
    while ctx.clients.load(Ordering::Relaxed) > 0 {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}
