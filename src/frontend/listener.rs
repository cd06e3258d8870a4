//! Accepting clients: admission limits, the login deadline, cancel dispatch, and one task per
//! session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::cancel::ClientInfo;
use super::login::{Admission, LoginError, admission, authenticate};
use super::negotiate::negotiate;
use super::params::ClientParams;
use super::session::Session;
use super::{ADMIN_DATABASE, ProxyContext};
use crate::admin::console;
use crate::auth::ScramKeys;
use crate::backend::{Intent, PoolKey, ServerPool};
use crate::config::Config;
use crate::gate::fleet::{FleetSettings, FleetSide, run_member};
use crate::health;
use crate::telemetry::TracingError;
use crate::tls::{ClientTlsMode, PgStream};
use crate::wire::sqlstate;
use crate::wire::startup::StartupRequest;

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
    /// The OTLP exporter could not be set up.
    #[error(transparent)]
    Tracing(#[from] TracingError),
}

/// Counts a logged-in client in its pool's metrics while it lives.
struct PoolClient(Arc<ServerPool>);

impl PoolClient {
    fn new(pool: Arc<ServerPool>) -> Self {
        pool.metrics().client_connected();
        Self(pool)
    }
}

impl Drop for PoolClient {
    fn drop(&mut self) {
        self.0.metrics().client_disconnected();
    }
}

/// A bound, not yet running proxy.
pub struct Proxy {
    ctx: Arc<ProxyContext>,
    /// `listen` first, then the extra listeners; the index selects the TLS policy.
    listeners: Vec<TcpListener>,
}

/// Counts a client connection for `max_client_conn` while it lives.
struct ClientCount(Arc<ProxyContext>);

impl Drop for ClientCount {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Proxy {
    /// Binds the client listeners.
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
        Ok(Self {
            ctx: ProxyContext::new(config)?,
            listeners,
        })
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

    /// Accepts clients until `shutdown` turns true or the gate starts draining; then drains:
    /// no new connections, each session ends at its next transaction boundary, and those left
    /// at the drain deadline are closed (their transactions roll back). Returns when no
    /// session is left.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut member = None;
        if let Some(fleet) = &self.ctx.config().fleet {
            let side: Arc<dyn FleetSide> = Arc::clone(&self.ctx) as _;
            member = Some(run_member(
                Arc::clone(&self.ctx.gate),
                side,
                FleetSettings {
                    control_url: fleet.url.clone(),
                    id: fleet.id.clone(),
                    host: fleet.host.clone(),
                    heartbeat: fleet.heartbeat,
                    control_role: fleet.control_role.clone(),
                    max_pause_hold: self.ctx.config().control.max_pause_hold,
                    max_pause_deadline: self.ctx.config().control.max_pause_deadline,
                    schema_version: self.ctx.config().schema_version,
                },
            ));
            if !fleet.health_interval.is_zero() {
                let metrics = Arc::clone(&self.ctx.telemetry.metrics);
                let checks = health::monitor::spawn(
                    fleet.url.clone(),
                    fleet.health_interval,
                    move |checks| {
                        for check in checks {
                            metrics.health(check.name, check.status.as_metric(), check.value);
                        }
                    },
                );
                let gate = Arc::clone(&self.ctx.gate);
                tokio::spawn(async move {
                    gate.drain_started().await;
                    checks.abort();
                });
            }
        }
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
        self.ctx
            .gate
            .drain(Instant::now() + self.ctx.config().drain_timeout);
        // Idle sessions wait on their own wake-up only, not on the gate: wake them to leave.
        self.ctx.nudge_all();
        let deadline = self.ctx.gate.drain_deadline().unwrap_or_else(Instant::now);
        tracing::info!(
            clients = self.ctx.clients.load(Ordering::Relaxed),
            "draining: no new connections; sessions end at their next transaction boundary"
        );
        if !wait_for_sessions(&self.ctx, deadline).await {
            let left = self.ctx.clients.load(Ordering::Relaxed);
            tracing::warn!(
                left,
                "drain deadline reached: closing the remaining sessions"
            );
            self.ctx.abort_all("pgsidecar's drain deadline was reached");
            wait_for_sessions(&self.ctx, Instant::now() + ABORT_GRACE).await;
        }
        self.ctx.pools.close_all().await;
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
    }
}

/// Accepts clients on one listener until told to stop; the listener closes when this returns.
async fn accept_clients(
    ctx: Arc<ProxyContext>,
    listener: TcpListener,
    index: usize,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let ctx = Arc::clone(&ctx);
                    tokio::spawn(async move { handle_client(ctx, stream, peer, index).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

/// How long a refused connection is kept to let the client read why.
const CLOSE_LINGER: Duration = Duration::from_millis(250);

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

async fn handle_client(ctx: Arc<ProxyContext>, tcp: TcpStream, peer: SocketAddr, listener: usize) {
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().ok();
    let count = ctx.clients.fetch_add(1, Ordering::Relaxed) + 1;
    let counted = ClientCount(Arc::clone(&ctx));
    let config = ctx.config();
    let policy = config.client_tls_for(listener);
    let deadline = tokio::time::Instant::now() + config.client_login_timeout;
    // A client that does not finish negotiating in time is closed without a word, as
    // PostgreSQL does: it may be half-way through a TLS handshake.
    let (mut stream, request) = match tokio::time::timeout_at(
        deadline,
        negotiate(&config, policy, tcp),
    )
    .await
    {
        Ok(Ok(negotiated)) => negotiated,
        Ok(Err(refusal)) => {
            tracing::info!(%peer, error = %refusal.error, "connection refused");
            if let Some(stream) = refusal.stream {
                stream
                    .send_and_close(&refusal.error.to_client(), CLOSE_LINGER)
                    .await;
            }
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "client did not send a startup packet within client_login_timeout");
            ctx.telemetry.metrics.client_refused("login_timeout");
            return;
        }
    };
    let login =
        match tokio::time::timeout_at(deadline, login(&ctx, &mut stream, request, policy, count))
            .await
        {
            Ok(Ok(Some(login))) => login,
            Ok(Ok(None)) => {
                // A cancel request: its connection ends cleanly (libpq 17+ sends cancels over
                // TLS and reports a missing close_notify as a failed cancel).
                stream.close().await;
                return;
            }
            Ok(Err(e)) => {
                tracing::info!(%peer, error = %e, "login refused");
                if e.is_auth_failure() {
                    ctx.telemetry.metrics.login_failed(peer.ip());
                    tokio::time::sleep(config.auth_failure_delay).await;
                }
                stream.send_and_close(&e.to_client(), CLOSE_LINGER).await;
                return;
            }
            Err(_) => {
                ctx.telemetry.metrics.client_refused("login_timeout");
                let e = LoginError::new(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!(
                        "login not completed within client_login_timeout ({:?})",
                        config.client_login_timeout
                    ),
                );
                stream.send_and_close(&e.to_client(), CLOSE_LINGER).await;
                return;
            }
        };
    if login.database == ADMIN_DATABASE {
        let _counted = counted;
        if let Err(e) = console::serve(&ctx, &mut stream, &login.user).await {
            tracing::info!(%peer, error = %e, "admin console session ended with an error");
        }
        stream.close().await;
        return;
    }
    start_session(ctx, stream, login, peer, local, counted).await;
}

/// Gives a logged-in client its pool, cancel key and server greeting, then runs its session as
/// a task of its own.
async fn start_session(
    ctx: Arc<ProxyContext>,
    stream: PgStream,
    login: Login,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    counted: ClientCount,
) {
    // A read alias shares its database's pools, gate and pause (it is listed under the database
    // it stands for); its transactions go to
    // replicas.
    let config = ctx.config();
    let (database, reads_only) = config.routing.resolve(&login.database);
    let info = ClientInfo {
        application_name: login
            .params
            .wanted()
            .get("application_name")
            .cloned()
            .unwrap_or_default(),
        user: login.user.clone(),
        database: database.to_owned(),
        peer,
        local,
        connected_at: SystemTime::now(),
        tls: stream.tls_description(),
    };
    let intent = if reads_only {
        Intent::Read
    } else {
        Intent::Write
    };
    let pool = ctx.pools.get_for(
        &PoolKey {
            database: database.to_owned(),
            user: login.user,
        },
        intent,
    );
    if let Some(keys) = login.scram_keys {
        pool.offer_scram_keys(keys);
    }
    let in_pool = PoolClient::new(Arc::clone(&pool));
    let cancel = ctx.cancels.issue(info);
    // Boxed: the task below then holds a pointer to the session, not a copy of it beside the
    // one its running future holds.
    let mut session = Box::new(Session::new(
        Arc::clone(&ctx),
        stream,
        pool,
        login.params,
        cancel,
        reads_only,
    ));
    let held = match session.greet().await {
        Ok(held) => held,
        Err(e) => {
            tracing::info!(%peer, error = %e, "no server for a new client");
            session.fail(&e).await;
            session.close().await;
            return;
        }
    };
    // The session runs as a task of its own so that an idle client costs only the session's
    // state, not the (larger) login state machine this task carries.
    tokio::spawn(async move {
        let _counted = (counted, in_pool);
        if let Err(e) = session.run(held).await {
            tracing::info!(%peer, error = %e, "session ended with an error");
        }
    });
}

/// A client that has authenticated.
struct Login {
    user: String,
    database: String,
    params: ClientParams,
    /// The keys a SCRAM login proved, for logging in to the server on the client's behalf.
    scram_keys: Option<ScramKeys>,
}

/// Checks the startup packet and authenticates; `None` means the connection was a cancel
/// request and is done.
async fn login(
    ctx: &Arc<ProxyContext>,
    stream: &mut PgStream,
    request: StartupRequest,
    policy: ClientTlsMode,
    count: usize,
) -> Result<Option<Login>, LoginError> {
    let (user, database, mut params) = match admission(stream, request, policy).await? {
        Admission::Cancel { pid, secret } => {
            if let Some(target) = ctx.cancels.resolve(pid, secret)
                && let Err(e) = target.send().await
            {
                tracing::warn!(error = %e, "forwarding a cancel request failed");
            }
            return Ok(None);
        }
        Admission::Startup {
            user,
            database,
            params,
        } => (user, database, params),
    };
    if count > ctx.config().max_client_conn {
        ctx.telemetry.metrics.client_refused("max_client_conn");
        return Err(LoginError::new(
            sqlstate::TOO_MANY_CONNECTIONS,
            format!(
                "sorry, too many clients already (max_client_conn is {})",
                ctx.config().max_client_conn
            ),
        ));
    }
    if database != ADMIN_DATABASE
        && let Some(path) = ctx.config().version_search_path()
    {
        params.default_to("search_path", &path);
    }
    let scram_keys = authenticate(ctx, stream, &user, &database).await?;
    if database == ADMIN_DATABASE && !ctx.config().admin_users.contains(&user) {
        return Err(LoginError::new(
            sqlstate::INVALID_AUTHORIZATION,
            format!(
                "user \"{user}\" may not open the pgsidecar admin console (not in admin_users)"
            ),
        ));
    }
    Ok(Some(Login {
        user,
        database,
        params,
        scram_keys,
    }))
}
