//! All pools of one proxy, one per (database, user, upstream host), created on first use, and the
//! routing that picks a pool for each transaction: writes to the primary (waiting through a
//! failover), reads to a usable replica (or the primary as fallback).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::LoginTarget;
use super::host_watch::{WatchSettings, watch_hosts};
use super::limits::ConnectionCap;
use super::pool::{AcquireError, PoolKey, PoolPlace, ServerPool};
use super::topology::{LagLimits, Topology};
use crate::config::{Balance, Config, ReadFallback};
use crate::telemetry::Metrics;

/// What a transaction needs from its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// It may write: the primary.
    Write,
    /// It only reads: a replica will do.
    Read,
}

/// All pools of one proxy.
#[derive(Debug)]
pub struct PoolRegistry {
    config: RwLock<Arc<Config>>,
    metrics: Arc<Metrics>,
    pools: Mutex<HashMap<(PoolKey, usize), Arc<ServerPool>>>,
    /// Caps across pools, by `database:NAME@HOST` / `user:NAME@HOST`, created with their first
    /// pool.
    caps: Mutex<HashMap<String, Arc<ConnectionCap>>>,
    topology: Arc<Topology>,
    watch: Arc<RwLock<WatchSettings>>,
}

impl PoolRegistry {
    /// An empty registry for `config`, whose pools report into `metrics`. With several upstream
    /// hosts it starts the task that watches their roles and lag, so it must run inside the
    /// tokio runtime.
    #[must_use]
    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> Self {
        let topology = Arc::new(Topology::new(&config.upstream.hosts));
        let watch = Arc::new(RwLock::new(watch_settings(&config)));
        if topology.is_watched() {
            tokio::spawn(watch_hosts(
                Arc::downgrade(&topology),
                Arc::clone(&watch),
                Arc::clone(&metrics),
            ));
        }
        Self {
            config: RwLock::new(config),
            metrics,
            pools: Mutex::new(HashMap::new()),
            caps: Mutex::new(HashMap::new()),
            topology,
            watch,
        }
    }

    /// What each upstream host is now.
    #[must_use]
    pub fn topology(&self) -> &Arc<Topology> {
        &self.topology
    }

    /// Whether transactions are routed over several hosts (otherwise every transaction of a
    /// (database, user) uses its one pool and nothing is decided per transaction).
    #[must_use]
    pub fn is_routed(&self) -> bool {
        self.topology.is_watched()
    }

    /// The caps a new pool for `key` on `host` falls under. A cap's size is the one configured
    /// when its first pool was created.
    fn caps_for(&self, config: &Config, key: &PoolKey, host: usize) -> Vec<Arc<ConnectionCap>> {
        let address = config.upstream.hosts[host].address();
        let wanted = [
            config.pool_for(&key.database).max_db_connections.map(|n| {
                (
                    format!("database:{}@{address}", key.database),
                    format!(
                        "max_db_connections for database \"{}\" on {address}",
                        key.database
                    ),
                    n,
                )
            }),
            config.max_user_connections.map(|n| {
                (
                    format!("user:{}@{address}", key.user),
                    format!(
                        "max_user_connections for user \"{}\" on {address}",
                        key.user
                    ),
                    n,
                )
            }),
        ];
        let mut caps = self.caps.lock().expect("pool caps lock");
        wanted
            .into_iter()
            .flatten()
            .map(|(id, name, limit)| {
                Arc::clone(
                    caps.entry(id)
                        .or_insert_with(|| Arc::new(ConnectionCap::new(name, limit))),
                )
            })
            .collect()
    }

    /// Applies a reloaded configuration to every pool and to pools created from now on. The
    /// list of hosts itself needs a restart; their addresses, credentials and the routing
    /// limits apply at once.
    ///
    /// # Panics
    /// If a registry lock was poisoned.
    pub fn reconfigure(&self, config: Arc<Config>) {
        if config.upstream.hosts.len() != self.topology.len() {
            tracing::warn!(
                "the number of upstream hosts changed; that needs a restart, the running upstream stays"
            );
            return;
        }
        for pool in self.all() {
            let key = pool.key();
            pool.reconfigure(
                config.pool_for_user(&key.database, &key.user),
                target(&config, key, pool.host()),
            );
        }
        *self.watch.write().expect("watch settings lock") = watch_settings(&config);
        *self.config.write().expect("pool registry lock") = config;
    }

    /// The pool for `key` on `host`, created if needed.
    ///
    /// # Panics
    /// If the registry's lock was poisoned by a panic elsewhere.
    pub fn on_host(&self, key: &PoolKey, host: usize) -> Arc<ServerPool> {
        let mut pools = self.pools.lock().expect("pool registry lock");
        if let Some(pool) = pools.get(&(key.clone(), host)) {
            return Arc::clone(pool);
        }
        let config = Arc::clone(&self.config.read().expect("pool registry lock"));
        let address = config.upstream.hosts[host].address();
        let pool = ServerPool::new(
            key.clone(),
            PoolPlace {
                target: target(&config, key, host),
                caps: self.caps_for(&config, key, host),
                topology: Arc::clone(&self.topology),
                host,
            },
            config.pool_for_user(&key.database, &key.user),
            self.metrics.pool(&key.database, &key.user, &address),
        );
        pools.insert((key.clone(), host), Arc::clone(&pool));
        pool
    }

    /// The pool a client of `key` starts with, without waiting: the primary's, else a usable
    /// replica's, else the first host's (its first transaction is routed again).
    #[must_use]
    pub fn get(&self, key: &PoolKey) -> Arc<ServerPool> {
        self.get_for(key, Intent::Write)
    }

    /// As [`Self::get`], preferring what `intent` needs.
    #[must_use]
    pub fn get_for(&self, key: &PoolKey, intent: Intent) -> Arc<ServerPool> {
        let host = self
            .choose(key, intent, true)
            .or_else(|| self.choose(key, Intent::Read, true))
            .unwrap_or(0);
        self.on_host(key, host)
    }

    /// The pool for a transaction of `key` that needs `intent`, waiting up to `wait` while no
    /// host can take it (a failover in progress, every replica lagging with fallback `wait`).
    ///
    /// # Errors
    /// [`AcquireError::NoHost`] when the wait ends with no host.
    pub async fn pick(
        &self,
        key: &PoolKey,
        intent: Intent,
        wait: Duration,
    ) -> Result<Arc<ServerPool>, AcquireError> {
        let started = Instant::now();
        let mut changes = self.topology.subscribe();
        loop {
            changes.borrow_and_update();
            if let Some(host) = self.choose(key, intent, false) {
                return Ok(self.on_host(key, host));
            }
            let left = wait.saturating_sub(started.elapsed());
            if left.is_zero() || tokio::time::timeout(left, changes.changed()).await.is_err() {
                return Err(AcquireError::NoHost {
                    wanted: match intent {
                        Intent::Write => "primary",
                        Intent::Read => "replica",
                    },
                    database: key.database.clone(),
                    waited: started.elapsed(),
                });
            }
        }
    }

    /// The host for `intent` now. Reads go to a usable replica, balanced as configured, and to
    /// the primary when none is usable and the fallback (or `any`) allows it.
    fn choose(&self, key: &PoolKey, intent: Intent, any: bool) -> Option<usize> {
        let primary = self.topology.primary();
        if intent == Intent::Write {
            return primary;
        }
        let replicas = self.topology.usable_replicas();
        let config = Arc::clone(&self.config.read().expect("pool registry lock"));
        let routing = &config.routing;
        if replicas.is_empty() {
            return match routing.fallback {
                ReadFallback::Primary => primary,
                ReadFallback::Wait if any => primary,
                ReadFallback::Wait => None,
            };
        }
        let turn = self.topology.next_turn();
        let start = turn % replicas.len();
        let in_turn = replicas[start..].iter().chain(&replicas[..start]);
        match routing.balance {
            Balance::RoundRobin => Some(replicas[start]),
            Balance::LeastBusy => {
                let pools = self.pools.lock().expect("pool registry lock");
                in_turn.copied().min_by_key(|&host| {
                    pools.get(&(key.clone(), host)).map_or(0, |pool| {
                        let usage = pool.usage();
                        usage.size.saturating_sub(usage.available)
                    })
                })
            }
        }
    }

    /// Every pool, for reporting.
    ///
    /// # Panics
    /// If the registry's lock was poisoned.
    #[must_use]
    pub fn all(&self) -> Vec<Arc<ServerPool>> {
        self.pools
            .lock()
            .expect("pool registry lock")
            .values()
            .cloned()
            .collect()
    }

    /// Closes every pool.
    pub async fn close_all(&self) {
        for pool in self.all() {
            pool.close().await;
        }
    }
}

/// How the pool for `key` on `host` logs in.
fn target(config: &Config, key: &PoolKey, host: usize) -> LoginTarget {
    let upstream = &config.upstream;
    let server = &upstream.hosts[host];
    LoginTarget {
        address: server.address(),
        host: server.host.clone(),
        tls: config.tls.server.clone(),
        scram_keys: None,
        user: upstream.user.clone().unwrap_or_else(|| key.user.clone()),
        database: upstream
            .database
            .clone()
            .unwrap_or_else(|| key.database.clone()),
        password: upstream.password.clone().or_else(|| {
            config
                .users
                .get(&key.user)
                .and_then(|u| u.server_password.clone())
        }),
    }
}

/// What the host watcher needs from `config`: it logs in as `routing.monitor_user` (else the
/// upstream URL's user) to the upstream's database (else `postgres`).
fn watch_settings(config: &Config) -> WatchSettings {
    let user = config
        .routing
        .monitor_user
        .clone()
        .or_else(|| config.upstream.user.clone())
        .unwrap_or_else(|| "postgres".to_owned());
    let database = config
        .upstream
        .database
        .clone()
        .unwrap_or_else(|| "postgres".to_owned());
    let key = PoolKey { database, user };
    WatchSettings {
        targets: (0..config.upstream.hosts.len())
            .map(|host| target(config, &key, host))
            .collect(),
        interval: config.routing.check_interval,
        connect_timeout: config.pool.server_connect_timeout,
        limits: LagLimits {
            bytes: config.routing.max_lag_bytes,
            age: config.routing.max_lag,
        },
    }
}
