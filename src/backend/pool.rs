//! Bounded pools of server connections per (database, user, upstream host), built on deadpool,
//! and the checkout guard that decides whether a connection goes back or is closed.

use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use deadpool::Runtime;
use deadpool::managed::{self, Object, Pool, PoolError, QueueMode, RecycleResult, Timeouts};

use super::limits::{self, ConnectionCap};
use super::params::Settings;
use super::shared_settings::SharedSettings;
use super::topology::{HostState, Topology};
use super::{
    BackendError, CancelTarget, FIXED_PARAMS_SQL, FixedParams, Greeting, KnownStatements,
    LoginTarget, ServerConn,
};
use crate::auth::ScramKeys;
use crate::config::{PoolMode, PoolSettings};
use crate::telemetry::PoolMetrics;

/// Identifies a pool: the database and user a client logged in with.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    /// Client-facing database name.
    pub database: String,
    /// Client-facing user name.
    pub user: String,
}

impl std::fmt::Display for PoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.database, self.user)
    }
}

/// Creates and vets server connections for deadpool. Its target and settings can change at
/// run time (SIGHUP): new connections use the new ones.
#[derive(Debug)]
pub struct ServerManager {
    target: RwLock<LoginTarget>,
    settings: RwLock<PoolSettings>,
    /// The reported parameters no session can change, learned from the first connection.
    fixed: OnceLock<FixedParams>,
    /// What the server reports at login, for logging clients in without a server connection.
    greeting: Greeting,
    /// Caps across pools (`max_db_connections`, `max_user_connections`) this pool is under.
    caps: Vec<Arc<ConnectionCap>>,
    /// The upstream's hosts, and which of them this pool's connections go to.
    topology: Arc<Topology>,
    host: usize,
}

impl ServerManager {
    fn settings(&self) -> PoolSettings {
        self.settings.read().expect("pool settings lock").clone()
    }

    /// The pool's fixed parameters, read from `pg_settings` on the first connection; without
    /// the catalog (an error from the server), PostgreSQL's known internal ones.
    async fn fixed_params(&self, conn: &mut ServerConn) -> Result<FixedParams, BackendError> {
        if let Some(fixed) = self.fixed.get() {
            return Ok(fixed.clone());
        }
        let fixed = match conn.fetch_row(FIXED_PARAMS_SQL).await {
            Ok(row) => {
                FixedParams::from_catalog(&row.into_iter().flatten().next().unwrap_or_default())
            }
            Err(BackendError::Server(e)) => {
                tracing::warn!(error = %e.message, "cannot read pg_settings; using the known read-only parameters");
                FixedParams::default()
            }
            Err(e) => return Err(e),
        };
        Ok(self.fixed.get_or_init(|| fixed).clone())
    }
}

impl managed::Manager for ServerManager {
    /// Boxed: deadpool moves its objects several times per checkout and return, and a pointer
    /// is cheaper to move than a whole connection.
    type Type = Box<ServerConn>;
    type Error = BackendError;

    async fn create(&self) -> Result<Box<ServerConn>, BackendError> {
        // Boxed: deadpool holds this future inside every checkout's, and a login's state is
        // large; a checkout that finds an idle connection should not carry (and copy) it.
        Box::pin(self.open()).await.map(Box::new)
    }

    async fn recycle(
        &self,
        conn: &mut Box<ServerConn>,
        metrics: &managed::Metrics,
    ) -> RecycleResult<BackendError> {
        let settings = self.settings();
        let reason = if metrics.age() > settings.server_lifetime {
            "server_lifetime reached"
        } else if metrics.last_used() > settings.server_idle_timeout {
            "server_idle_timeout reached"
        } else if conn.epoch != self.topology.epoch(self.host) {
            "the host changed role since the connection was opened"
        } else if !conn.is_idle_and_open() {
            "server connection closed or not idle"
        } else {
            return Ok(());
        };
        // deadpool drops the connection after this: close it in order while it is still ours.
        Box::pin(conn.close()).await;
        Err(managed::RecycleError::message(reason))
    }
}

impl ServerManager {
    /// Opens and logs in a new server connection under the pool's caps.
    async fn open(&self) -> Result<ServerConn, BackendError> {
        let target = self.target.read().expect("pool target lock").clone();
        let settings = self.settings();
        let permits = limits::acquire(&self.caps, settings.acquire_timeout).await?;
        let mut conn = ServerConn::connect(
            &target,
            settings.server_connect_timeout,
            settings.max_prepared_statements,
        )
        .await?;
        self.greeting.learn_login(&conn.params.reported);
        conn.params.fixed = self.fixed_params(&mut conn).await?;
        conn.permits = permits;
        conn.epoch = self.topology.epoch(self.host);
        Ok(conn)
    }
}

/// Why a client could not get a server connection.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    /// Every connection stayed busy for the whole acquire timeout.
    #[error("no server connection became free within {0:?} (pool {1} is exhausted)")]
    Timeout(Duration, String),
    /// A new connection could not be opened.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The pool is shutting down.
    #[error("pool {0} is closed")]
    Closed(String),
    /// No upstream host could take the transaction for the whole acquire timeout (no primary
    /// during a failover, no usable replica with `routing.fallback = "wait"`).
    #[error("no {wanted} available for {database} within {waited:?}")]
    NoHost {
        /// `primary` or `replica`.
        wanted: &'static str,
        /// The database.
        database: String,
        /// How long the client waited.
        waited: Duration,
    },
}

/// One bounded pool and the settings it was built with.
#[derive(Debug)]
pub struct ServerPool {
    /// Shared with the pool's clients' entries in the client list.
    key: Arc<PoolKey>,
    /// `host:port` of the upstream host its connections go to.
    address: String,
    /// Fixed for the pool's life: sessions depend on it.
    mode: PoolMode,
    pool: Pool<ServerManager>,
    known: KnownStatements,
    metrics: PoolMetrics,
    /// The startup settings its clients sent, one copy per distinct set.
    startup_settings: SharedSettings,
}

/// Where a new pool's connections go and what they count against.
pub(super) struct PoolPlace {
    pub target: LoginTarget,
    pub caps: Vec<Arc<ConnectionCap>>,
    pub topology: Arc<Topology>,
    pub host: usize,
}

impl ServerPool {
    pub(super) fn new(
        key: PoolKey,
        place: PoolPlace,
        settings: PoolSettings,
        metrics: PoolMetrics,
    ) -> Arc<Self> {
        let PoolPlace {
            target,
            caps,
            topology,
            host,
        } = place;
        let address = target.address.clone();
        let mode = settings.mode;
        let size = settings.size;
        let pool = Pool::builder(ServerManager {
            target: RwLock::new(target),
            settings: RwLock::new(settings),
            fixed: OnceLock::new(),
            greeting: Greeting::default(),
            caps,
            topology,
            host,
        })
        .max_size(size)
        .queue_mode(QueueMode::Lifo)
        .runtime(Runtime::Tokio1)
        .build()
        .expect("a runtime is set, so the pool builds");
        let pool = Arc::new(Self {
            key: Arc::new(key),
            address,
            mode,
            pool,
            known: KnownStatements::default(),
            metrics,
            startup_settings: SharedSettings::default(),
        });
        for cap in &pool.pool.manager().caps {
            cap.share(&pool);
        }
        tokio::spawn(maintain(Arc::downgrade(&pool)));
        pool
    }

    /// Closes one idle server connection, to make room under a cap shared with another pool.
    pub(super) async fn evict_one_idle(&self) -> bool {
        let mut taken = false;
        let removed = self.pool.retain(|_, _| std::mem::replace(&mut taken, true));
        let evicted = !removed.removed.is_empty();
        for mut conn in removed.removed {
            conn.close().await;
        }
        evicted
    }

    /// The pool's key.
    #[must_use]
    pub fn key(&self) -> &PoolKey {
        &self.key
    }

    /// The pool's key, for a client's entry in the client list to share instead of copying.
    #[must_use]
    pub fn shared_key(&self) -> Arc<PoolKey> {
        Arc::clone(&self.key)
    }

    /// `host:port` of the upstream host this pool's connections go to.
    #[must_use]
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The index of its upstream host.
    #[must_use]
    pub fn host(&self) -> usize {
        self.pool.manager().host
    }

    /// Its upstream host's state epoch (see [`Topology::epoch`]): a cheap way to notice that
    /// the host's role may have changed.
    #[must_use]
    pub fn host_epoch(&self) -> u64 {
        let manager = self.pool.manager();
        manager.topology.epoch(manager.host)
    }

    /// What its upstream host is now.
    #[must_use]
    pub fn host_state(&self) -> HostState {
        let manager = self.pool.manager();
        manager.topology.state(manager.host)
    }

    /// Statements known to parse on this pool's server.
    #[must_use]
    pub fn known_statements(&self) -> &KnownStatements {
        &self.known
    }

    /// The pool's counters and histograms.
    #[must_use]
    pub fn metrics(&self) -> &PoolMetrics {
        &self.metrics
    }

    /// The parameters this pool's server reports, for greeting clients without a server.
    #[must_use]
    pub fn greeting(&self) -> &Greeting {
        &self.pool.manager().greeting
    }

    /// Transaction or session pooling.
    #[must_use]
    pub fn mode(&self) -> PoolMode {
        self.mode
    }

    /// The shared copy of a client's startup settings (see [`SharedSettings`]).
    pub fn share_settings(&self, settings: Settings) -> Settings {
        self.startup_settings.share(settings)
    }

    /// The pool's settings now.
    ///
    /// # Panics
    /// If the settings lock was poisoned.
    #[must_use]
    pub fn settings(&self) -> PoolSettings {
        self.pool.manager().settings()
    }

    /// Applies reloaded settings and upstream: the size at once (extra idle connections are
    /// closed, busy ones when they come back), timeouts from the next checkout, the target for
    /// connections opened from now on. The pool mode cannot change while clients use the pool.
    ///
    /// # Panics
    /// If the settings lock was poisoned.
    pub fn reconfigure(&self, mut settings: PoolSettings, target: LoginTarget) {
        if settings.mode != self.mode {
            tracing::warn!(pool = %self.key, "pool_mode changes need a restart; keeping {}", self.mode);
            settings.mode = self.mode;
        }
        let manager = self.pool.manager();
        if settings.size != self.pool.status().max_size {
            tracing::info!(pool = %self.key, size = settings.size, "pool resized");
            self.pool.resize(settings.size);
        }
        *manager.settings.write().expect("pool settings lock") = settings;
        let mut current = manager.target.write().expect("pool target lock");
        let keys = current.scram_keys.take();
        *current = LoginTarget {
            scram_keys: keys,
            ..target
        };
    }

    /// How this pool logs in now (with the SCRAM keys its clients proved), for a connection
    /// of the proxy's own to the same server as the same user.
    ///
    /// # Panics
    /// If the target lock was poisoned.
    #[must_use]
    pub fn login_target(&self) -> LoginTarget {
        self.pool
            .manager()
            .target
            .read()
            .expect("pool target lock")
            .clone()
    }

    /// Remembers the SCRAM keys a client of this pool just proved, so that server connections
    /// can be opened for a user whose password pgsidecar does not have (pass-through). The
    /// latest keys win: after a password change, the next client brings the new ones.
    ///
    /// # Panics
    /// If the target lock was poisoned.
    pub fn offer_scram_keys(&self, keys: ScramKeys) {
        let mut target = self
            .pool
            .manager()
            .target
            .write()
            .expect("pool target lock");
        if target.password.is_none() && target.scram_keys.as_ref() != Some(&keys) {
            target.scram_keys = Some(keys);
        }
    }

    /// Server connections open, idle, and clients waiting, right now.
    #[must_use]
    pub fn usage(&self) -> deadpool::Status {
        self.pool.status()
    }

    /// Waits (FIFO, up to the acquire timeout) for a server connection.
    ///
    /// # Errors
    /// [`AcquireError`].
    pub async fn checkout(&self) -> Result<Checkout, AcquireError> {
        let asked = Instant::now();
        let wait = self.settings().acquire_timeout;
        let timeouts = Timeouts {
            wait: Some(wait),
            ..self.pool.timeouts()
        };
        match self.pool.timeout_get(&timeouts).await {
            Ok(object) => {
                self.metrics.acquired(asked.elapsed());
                Ok(Checkout {
                    object: Some(object),
                })
            }
            Err(PoolError::Timeout(_)) => {
                self.metrics.acquire_timed_out();
                Err(AcquireError::Timeout(wait, self.key.to_string()))
            }
            Err(PoolError::Backend(e @ BackendError::Capped(_))) => {
                self.metrics.acquire_timed_out();
                Err(AcquireError::Backend(e))
            }
            Err(PoolError::Backend(e)) => {
                self.metrics.connect_failed();
                Err(AcquireError::Backend(e))
            }
            Err(_) => Err(AcquireError::Closed(self.key.to_string())),
        }
    }

    async fn evict_expired(&self) {
        let settings = self.settings();
        let manager = self.pool.manager();
        let epoch = manager.topology.epoch(manager.host);
        let expired = self.pool.retain(|conn, metrics| {
            metrics.last_used() < settings.server_idle_timeout
                && metrics.age() < settings.server_lifetime
                && conn.epoch == epoch
        });
        for mut conn in expired.removed {
            conn.close().await;
        }
    }

    async fn top_up_idle(&self) {
        if !matches!(self.host_state(), HostState::Primary | HostState::Replica) {
            return;
        }
        let status = self.pool.status();
        let missing = self.settings().min_idle.saturating_sub(status.available);
        let room = status.max_size.saturating_sub(status.size);
        let wanted = missing.min(room);
        if wanted == 0 {
            return;
        }
        let timeouts = Timeouts {
            wait: Some(Duration::ZERO),
            ..self.pool.timeouts()
        };
        let mut fresh = Vec::with_capacity(wanted);
        for _ in 0..wanted {
            match self.pool.timeout_get(&timeouts).await {
                Ok(object) => fresh.push(object),
                Err(e) => {
                    self.metrics.connect_failed();
                    tracing::warn!(pool = %self.key, error = ?e, "cannot open min_idle server connection");
                    break;
                }
            }
        }
    }

    /// The idle server connections, for the admin console: where each runs and how long it
    /// has been open and idle.
    #[must_use]
    pub fn idle_servers(&self) -> Vec<IdleServer> {
        let mut idle = Vec::new();
        self.pool.retain(|conn, metrics| {
            idle.push(IdleServer {
                server: conn.cancel_target(),
                age: metrics.age(),
                idle_for: metrics.last_used(),
            });
            true
        });
        idle
    }

    /// Stops handing out connections and closes the idle ones in order.
    pub async fn close(&self) {
        let idle = self.pool.retain(|_, _| false);
        self.pool.close();
        for mut conn in idle.removed {
            conn.close().await;
        }
    }
}

/// One idle server connection, as the admin console lists it.
#[derive(Debug, Clone, Copy)]
pub struct IdleServer {
    /// Address and backend pid.
    pub server: CancelTarget,
    /// Time since it was opened.
    pub age: Duration,
    /// Time since it was last handed out.
    pub idle_for: Duration,
}

/// Evicts idle and aged connections and keeps `min_idle` open, for as long as the pool lives.
async fn maintain(pool: Weak<ServerPool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        if pool.pool.is_closed() {
            return;
        }
        pool.evict_expired().await;
        pool.top_up_idle().await;
    }
}

/// A server connection lent to one client. Unless [`Checkout::release`] says it is clean, it is
/// closed rather than returned: a connection in an unknown state must never reach another client.
#[derive(Debug)]
pub struct Checkout {
    object: Option<Object<ServerManager>>,
}

impl Checkout {
    /// The connection.
    ///
    /// # Panics
    /// Never: the object is only taken by `release`/`discard`, which consume the guard.
    #[must_use]
    pub fn conn(&mut self) -> &mut ServerConn {
        self.object
            .as_mut()
            .expect("checkout holds its object until consumed")
    }

    /// Returns a connection known to be idle (ReadyForQuery `I`, nothing pending) to the pool.
    pub fn release(mut self) {
        drop(self.object.take());
    }

    /// Closes the connection instead of returning it; if it may be running something, asks the
    /// server to cancel that first so that locks are released promptly.
    pub async fn discard(mut self, cancel_running: bool) {
        if let Some(object) = self.object.take() {
            let conn = Object::take(object);
            let mut conn = conn;
            if cancel_running && let Err(e) = conn.cancel_target().send().await {
                tracing::debug!(error = %e, "cancel of an abandoned server query failed");
            }
            conn.close().await;
        }
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(object) = self.object.take() {
            drop(Object::take(object));
        }
    }
}
