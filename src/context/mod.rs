//! The state every part of one running proxy shares: configuration, pools, live clients,
//! telemetry and the gate. The client side, the admin side and the fleet member all read it;
//! none of them owns it, so it lives below them and is passed as `Arc`.

mod cancel;

pub use cancel::{CancelRegistry, CancelSlot, ClientInfo};

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock, RwLock};

use crate::backend::{ListenerTarget, LoginTarget, NotifyHubs, PoolKey, PoolRegistry};
use crate::config::{Config, ConfigError, ConfigSource};
use crate::gate::fleet::FleetSide;
use crate::gate::{
    self, Gate, PauseError, PauseOptions, PauseReport, Scope, Straggler, Stragglers,
};
use crate::telemetry::{Telemetry, TracingError};

/// State shared by every task of one proxy, passed as `Arc` instead of living in globals.
#[derive(Debug)]
pub struct ProxyContext {
    /// The configuration in force (replaced on reload).
    config: RwLock<Arc<Config>>,
    /// Server pools by (database, user).
    pub pools: PoolRegistry,
    /// Cancel keys of live clients.
    pub cancels: CancelRegistry,
    /// LISTEN/NOTIFY for transaction-mode clients, one listening connection per pool key.
    pub notify: NotifyHubs,
    /// Client connections open now.
    pub clients: AtomicUsize,
    /// Metrics and query spans.
    pub telemetry: Telemetry,
    /// When the proxy started, for uptime figures.
    pub started: std::time::SystemTime,
    /// Pause, drain and resume.
    pub gate: Arc<Gate>,
    /// Where a reload reads the configuration from; unset for a proxy built in code.
    source: OnceLock<ConfigSource>,
}

/// Counts a client connection in [`ProxyContext::clients`] (for `max_client_conn`) while it
/// lives: from accept, through login, to the end of its session.
#[derive(Debug)]
pub struct ClientCount(Arc<ProxyContext>);

impl ClientCount {
    /// Counts one more client; the guard and the count including it.
    #[must_use]
    pub fn new(ctx: &Arc<ProxyContext>) -> (Self, usize) {
        let count = ctx
            .clients
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        (Self(Arc::clone(ctx)), count)
    }
}

impl Drop for ClientCount {
    fn drop(&mut self) {
        self.0
            .clients
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Why a reload left the running configuration in place.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The proxy was built from a configuration value, not from a file and flags.
    #[error("this proxy has no configuration source to reload from")]
    NoSource,
    /// The file no longer validates.
    #[error("reload refused, the running configuration stays: {0}")]
    Invalid(#[from] ConfigError),
}

impl ProxyContext {
    /// A context with no pools and no clients yet. Must run inside the tokio runtime.
    ///
    /// # Errors
    /// [`TracingError`] when the configured OTLP exporter cannot be set up.
    pub fn new(config: Config) -> Result<Arc<Self>, TracingError> {
        let plaintext = config.users_with_plaintext_passwords();
        if !plaintext.is_empty() {
            tracing::warn!(
                users = ?plaintext,
                "the config file holds plaintext passwords; use scram_verifier (pgsidecar passwd --user NAME) and server_password_file"
            );
        }
        let telemetry = Telemetry::start(&config)?;
        let config = Arc::new(config);
        Ok(Arc::new(Self {
            pools: PoolRegistry::new(Arc::clone(&config), Arc::clone(&telemetry.metrics)),
            config: RwLock::new(config),
            cancels: CancelRegistry::default(),
            notify: NotifyHubs::new(Arc::clone(&telemetry.metrics)),
            clients: AtomicUsize::new(0),
            telemetry,
            started: std::time::SystemTime::now(),
            gate: Arc::new(Gate::default()),
            source: OnceLock::new(),
        }))
    }

    /// The configuration in force; a session keeps the one it started with.
    ///
    /// # Panics
    /// If the configuration lock was poisoned.
    #[must_use]
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().expect("config lock"))
    }

    /// Applies a reloaded configuration without dropping anyone: pool sizes and timeouts at
    /// once, the upstream for new server connections, users and limits for new clients. The
    /// listeners and the telemetry exporter keep their start-up settings.
    ///
    /// # Panics
    /// If the configuration lock was poisoned.
    pub fn reload(&self, config: Config) {
        let old = self.config();
        for (what, changed) in [
            (
                "listen",
                old.listen_addresses() != config.listen_addresses(),
            ),
            ("admin_listen", old.admin_listen != config.admin_listen),
            ("threads", old.threads != config.threads),
            ("telemetry", old.telemetry != config.telemetry),
        ] {
            if changed {
                tracing::warn!("{what} changes need a restart; the running value stays");
            }
        }
        let config = Arc::new(config);
        self.pools.reconfigure(Arc::clone(&config));
        *self.config.write().expect("config lock") = config;
        tracing::info!("configuration reloaded");
    }

    /// Remembers where the configuration came from, so that [`Self::reload_from_source`] can
    /// read it again. The first source given stays.
    pub fn keep_source(&self, source: ConfigSource) {
        let _ = self.source.set(source);
    }

    /// Reads the configuration file again and applies it, as SIGHUP, the console's `RELOAD`
    /// and `POST /v1/reload` do. Returns the keys whose file values did not apply because a
    /// flag or an environment variable set them at start (also logged as a warning).
    ///
    /// # Errors
    /// [`ReloadError`]; the running configuration then stays as it was.
    pub fn reload_from_source(&self) -> Result<Vec<&'static str>, ReloadError> {
        let source = self.source.get().ok_or(ReloadError::NoSource)?;
        let config = source.load().inspect_err(|e| {
            self.telemetry.metrics.config_reload(false);
            tracing::error!("reload refused, the running configuration stays: {e}");
        })?;
        self.telemetry.metrics.config_reload(true);
        let pinned = source.pinned_keys();
        if !pinned.is_empty() {
            tracing::warn!(
                keys = ?pinned,
                "set by a flag or environment variable at start: the file's values for these keys do not apply until a restart"
            );
        }
        self.reload(config);
        Ok(pinned)
    }

    /// Pauses as `options` say, reporting and ending this proxy's transactions in the way.
    ///
    /// # Errors
    /// As [`gate::pause`].
    pub async fn pause(&self, options: &PauseOptions) -> Result<PauseReport, PauseError> {
        gate::pause(&self.gate, options, self).await
    }

    /// Wakes every session that waits between transactions, so that it sees a drain that
    /// started and ends at once.
    pub fn nudge_all(&self) {
        for client in self.cancels.all() {
            client.nudge();
        }
    }

    /// Ends every session now (transactions roll back), telling each client `reason`.
    pub fn abort_all(&self, reason: &'static str) {
        for client in self.cancels.all() {
            client.abort(reason);
        }
    }
}

impl ListenerTarget for ProxyContext {
    fn primary_target(&self, key: &PoolKey) -> Option<LoginTarget> {
        let primary = self.pools.topology().primary()?;
        Some(self.pools.on_host(key, primary).login_target())
    }

    fn connect_timeout(&self) -> std::time::Duration {
        self.config().pool.server_connect_timeout
    }
}

impl FleetSide for ProxyContext {
    fn schema_changed(&self) {
        for pool in self.pools.all() {
            pool.known_statements().invalidate_all();
        }
    }

    fn control_request_refused(&self, reason: &'static str) {
        self.telemetry
            .metrics
            .control_request_refused("fleet", reason);
    }
}

impl Stragglers for ProxyContext {
    fn list(&self, scope: &Scope) -> Vec<Straggler> {
        let mut stragglers: Vec<Straggler> = self
            .cancels
            .all()
            .into_iter()
            .filter(|c| scope.covers(&c.info.pool.database))
            .filter_map(|c| {
                let age = c.transaction_age()?;
                Some(Straggler {
                    database: c.info.pool.database.clone(),
                    user: c.info.pool.user.clone(),
                    application_name: c.info.application_name.to_string(),
                    client_addr: c.info.peer.to_string(),
                    server_pid: c.current().map(|s| s.pid),
                    transaction_seconds: age.as_secs_f64(),
                    query: None,
                })
            })
            .collect();
        stragglers.sort_by(|a, b| b.transaction_seconds.total_cmp(&a.transaction_seconds));
        stragglers
    }

    fn terminate(&self, scope: &Scope) -> usize {
        let in_the_way: Vec<_> = self
            .cancels
            .all()
            .into_iter()
            .filter(|c| scope.covers(&c.info.pool.database) && c.transaction_age().is_some())
            .collect();
        for client in &in_the_way {
            client.abort("the transaction was in the way of a pause (cancel stragglers)");
        }
        in_the_way.len()
    }
}
