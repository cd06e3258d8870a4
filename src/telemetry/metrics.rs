//! The Prometheus registry: every metric the proxy exports, and per-pool handles resolved once
//! so that the data path only touches atomics.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::hosts::HostMetrics;
use super::notifications::NotifyMetrics;

/// Query latencies, 100 µs to 30 s.
const QUERY_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Pool waits, 10 µs (a connection was idle) to 10 s (the acquire timeout's range).
const WAIT_BUCKETS: [f64; 13] = [
    0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0,
];

/// Labels of every per-pool metric.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// Client-facing database.
    pub database: String,
    /// Client-facing user.
    pub user: String,
    /// The upstream host (`host:port`) the pool's connections go to.
    pub host: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    database: String,
    user: String,
    host: String,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    database: String,
    user: String,
    host: String,
    sqlstate_class: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    origin: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

/// Distinct source addresses counted by name; later ones share the `other` series, so that a
/// scan from many addresses cannot grow the exposition without bound.
const MAX_LOGIN_FAILURE_SOURCES: usize = 1000;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    check: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn query_histogram() -> Histogram {
    Histogram::new(QUERY_BUCKETS)
}

fn wait_histogram() -> Histogram {
    Histogram::new(WAIT_BUCKETS)
}

/// Every metric family, registered once at start.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    client_connections: Family<StateLabels, Gauge>,
    server_connections: Family<StateLabels, Gauge>,
    pool_size: Family<PoolLabels, Gauge>,
    acquire_wait: HistogramFamily<PoolLabels>,
    query_duration: HistogramFamily<PoolLabels>,
    queries: Family<PoolLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    transactions: Family<PoolLabels, Counter>,
    received: Family<PoolLabels, Counter>,
    sent: Family<PoolLabels, Counter>,
    cache_hits: Family<PoolLabels, Counter>,
    cache_misses: Family<PoolLabels, Counter>,
    cache_evictions: Family<PoolLabels, Counter>,
    pinned: Family<PoolLabels, Counter>,
    settings_dropped: Family<PoolLabels, Counter>,
    acquire_timeouts: Family<PoolLabels, Counter>,
    wait_notices: Family<PoolLabels, Counter>,
    connect_errors: Family<PoolLabels, Counter>,
    clients_refused: Family<ReasonLabels, Counter>,
    client_timeouts: Family<ReasonLabels, Counter>,
    spans_exported: Counter,
    schema_version: Gauge,
    paused_scopes: Gauge,
    spans_dropped: Family<ReasonLabels, Counter>,
    health_status: Family<CheckLabels, Gauge>,
    health_value: Family<CheckLabels, Gauge<f64, AtomicU64>>,
    login_failures: Family<SourceLabels, Counter>,
    control_refused: Family<RefusalLabels, Counter>,
    config_reloads: Family<ResultLabels, Counter>,
    login_failure_sources: std::sync::Mutex<std::collections::HashSet<std::net::IpAddr>>,
    /// Role and lag of each upstream host.
    pub hosts: HostMetrics,
    /// LISTEN/NOTIFY served without pinning.
    pub notifications: NotifyMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every `pgsidecar_*` family registered and no samples yet.
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pgsidecar");
        let metrics = Self {
            client_connections: Family::default(),
            server_connections: Family::default(),
            pool_size: Family::default(),
            acquire_wait: Family::new_with_constructor(wait_histogram),
            query_duration: Family::new_with_constructor(query_histogram),
            queries: Family::default(),
            errors: Family::default(),
            transactions: Family::default(),
            received: Family::default(),
            sent: Family::default(),
            cache_hits: Family::default(),
            cache_misses: Family::default(),
            cache_evictions: Family::default(),
            pinned: Family::default(),
            settings_dropped: Family::default(),
            acquire_timeouts: Family::default(),
            wait_notices: Family::default(),
            connect_errors: Family::default(),
            clients_refused: Family::default(),
            client_timeouts: Family::default(),
            spans_exported: Counter::default(),
            schema_version: Gauge::default(),
            paused_scopes: Gauge::default(),
            spans_dropped: Family::default(),
            health_status: Family::default(),
            health_value: Family::default(),
            login_failures: Family::default(),
            control_refused: Family::default(),
            config_reloads: Family::default(),
            login_failure_sources: std::sync::Mutex::default(),
            hosts: HostMetrics::default(),
            notifications: NotifyMetrics::default(),
            registry: Registry::default(),
        };
        metrics.register_connections(&mut registry);
        metrics.register_traffic(&mut registry);
        metrics.register_health(&mut registry);
        metrics.hosts.register(&mut registry);
        metrics.notifications.register(&mut registry);
        Self {
            registry,
            ..metrics
        }
    }

    fn register_connections(&self, registry: &mut Registry) {
        registry.register(
            "pool_acquire_timeouts",
            "Clients that waited the whole acquire_timeout for a server connection and got 53300",
            self.acquire_timeouts.clone(),
        );
        registry.register(
            "pool_wait_notices",
            "Clients told with a NOTICE that their query is queued (waited query_wait_notify for a server connection)",
            self.wait_notices.clone(),
        );
        registry.register(
            "server_connect_errors",
            "Server connections that could not be opened or logged in",
            self.connect_errors.clone(),
        );
        registry.register(
            "client_timeouts",
            "Clients closed by a timeout, by its key (client_idle_timeout, idle_transaction_timeout, query_timeout, transaction_timeout)",
            self.client_timeouts.clone(),
        );
        registry.register(
            "clients_refused",
            "Client connections refused before their session began (max_client_conn, client_login_timeout)",
            self.clients_refused.clone(),
        );
        registry.register(
            "client_connections",
            "Client connections by pool and state (active: holding a server connection, waiting: for one, idle)",
            self.client_connections.clone(),
        );
        registry.register(
            "server_connections",
            "Server connections by pool and state (active: lent to a client, idle: in the pool)",
            self.server_connections.clone(),
        );
        registry.register(
            "pool_size",
            "Configured maximum of server connections per pool",
            self.pool_size.clone(),
        );
        registry.register(
            "pool_acquire_wait_seconds",
            "Time clients waited for a server connection",
            self.acquire_wait.clone(),
        );
        registry.register(
            "query_duration_seconds",
            "Time from forwarding a query (or extended batch) to the server until its ReadyForQuery",
            self.query_duration.clone(),
        );
    }

    fn register_health(&self, registry: &mut Registry) {
        registry.register(
            "client_login_failures",
            "Client logins refused for failed authentication, by source address (the first 1000 addresses; later ones as \"other\")",
            self.login_failures.clone(),
        );
        registry.register(
            "control_requests_refused",
            "Requests to change traffic that were refused, by origin (admin_http, fleet) and reason",
            self.control_refused.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads (SIGHUP, RELOAD, POST /v1/reload) by result: applied, or refused because the file did not validate",
            self.config_reloads.clone(),
        );
        registry.register(
            "database_health_status",
            "Result of each database health check the sidecar runs (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)",
            self.health_status.clone(),
        );
        registry.register(
            "database_health_value",
            "The value each database health check measured (see pgsidecar health for units)",
            self.health_value.clone(),
        );
    }

    /// Counts a failed client login (wrong password, unknown user, refused method) by the
    /// address it came from.
    ///
    /// # Panics
    /// If the source set's lock was poisoned.
    pub fn login_failed(&self, source: std::net::IpAddr) {
        let mut sources = self
            .login_failure_sources
            .lock()
            .expect("login failure sources lock");
        let label = if sources.contains(&source) || sources.len() < MAX_LOGIN_FAILURE_SOURCES {
            sources.insert(source);
            source.to_string()
        } else {
            "other".to_owned()
        };
        drop(sources);
        self.login_failures
            .get_or_create(&SourceLabels { source: label })
            .inc();
    }

    /// Counts a configuration reload, applied or refused.
    pub fn config_reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "refused" };
        self.config_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts a request to change traffic that was refused: a missing or wrong admin token, a
    /// forged fleet request, a pause beyond the configured caps.
    pub fn control_request_refused(&self, origin: &'static str, reason: &'static str) {
        self.control_refused
            .get_or_create(&RefusalLabels { origin, reason })
            .inc();
    }

    /// Counts a client closed by the timeout `key`.
    pub fn client_timed_out(&self, key: &'static str) {
        self.client_timeouts
            .get_or_create(&ReasonLabels { reason: key })
            .inc();
    }

    /// Counts a client connection refused before its session began, by `reason`.
    pub fn client_refused(&self, reason: &'static str) {
        self.clients_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Records one health check's outcome.
    pub fn health(&self, check: &'static str, status: i64, value: f64) {
        let labels = CheckLabels { check };
        self.health_status.get_or_create(&labels).set(status);
        self.health_value.get_or_create(&labels).set(value);
    }

    /// Records the schema version this sidecar's clients are served (`schema_version`).
    pub fn serve_schema_version(&self, version: i64) {
        self.schema_version.set(version);
    }

    /// Records how many scopes the gate holds paused (or is pausing), read at scrape time so
    /// that an alert can fire on a pause held too long.
    pub fn set_paused_scopes(&self, scopes: usize) {
        self.paused_scopes
            .set(i64::try_from(scopes).unwrap_or(i64::MAX));
    }

    fn register_traffic(&self, registry: &mut Registry) {
        registry.register(
            "gate_paused_scopes",
            "Scopes (a database, or * for all) this sidecar holds paused or is pausing now",
            self.paused_scopes.clone(),
        );
        registry.register(
            "schema_version",
            "The migration version whose schema this sidecar's clients are served (0: none)",
            self.schema_version.clone(),
        );
        registry.register(
            "queries",
            "Queries (simple Query messages and extended batches with an Execute) completed",
            self.queries.clone(),
        );
        registry.register(
            "query_errors",
            "Queries that failed, by SQLSTATE class",
            self.errors.clone(),
        );
        registry.register(
            "transactions",
            "Transactions completed (including single-statement ones)",
            self.transactions.clone(),
        );
        registry.register(
            "client_received_bytes",
            "Bytes received from clients and forwarded to the server",
            self.received.clone(),
        );
        registry.register(
            "client_sent_bytes",
            "Bytes sent to clients",
            self.sent.clone(),
        );
        registry.register(
            "prepared_statements_cache_hits",
            "Named statements a server connection already had prepared",
            self.cache_hits.clone(),
        );
        registry.register(
            "prepared_statements_cache_misses",
            "Named statements prepared on a server connection that lacked them",
            self.cache_misses.clone(),
        );
        registry.register(
            "prepared_statements_cache_evictions",
            "Statements closed on a server connection to stay within max_prepared_statements",
            self.cache_evictions.clone(),
        );
        registry.register(
            "pinned_clients",
            "Clients pinned to one server connection for the rest of their session",
            self.pinned.clone(),
        );
        registry.register(
            "client_settings_dropped",
            "Client settings a server connection refused to take again, dropped instead of ending the session",
            self.settings_dropped.clone(),
        );
        registry.register(
            "spans_exported",
            "Query spans handed to the OTLP exporter successfully",
            self.spans_exported.clone(),
        );
        registry.register(
            "spans_dropped",
            "Query spans lost (queue_full: the export queue was full; export_failed: the collector refused or was unreachable)",
            self.spans_dropped.clone(),
        );
    }

    /// Handles for one pool's metrics, resolved once so the data path never looks up labels.
    #[must_use]
    pub fn pool(&self, database: &str, user: &str, host: &str) -> PoolMetrics {
        let labels = PoolLabels {
            database: database.to_owned(),
            user: user.to_owned(),
            host: host.to_owned(),
        };
        PoolMetrics {
            acquire_wait: self.acquire_wait.get_or_create_owned(&labels),
            query_duration: self.query_duration.get_or_create_owned(&labels),
            queries: self.queries.get_or_create_owned(&labels),
            transactions: self.transactions.get_or_create_owned(&labels),
            received: self.received.get_or_create_owned(&labels),
            sent: self.sent.get_or_create_owned(&labels),
            cache_hits: self.cache_hits.get_or_create_owned(&labels),
            cache_misses: self.cache_misses.get_or_create_owned(&labels),
            cache_evictions: self.cache_evictions.get_or_create_owned(&labels),
            pinned: self.pinned.get_or_create_owned(&labels),
            settings_dropped: self.settings_dropped.get_or_create_owned(&labels),
            acquire_timeouts: self.acquire_timeouts.get_or_create_owned(&labels),
            wait_notices: self.wait_notices.get_or_create_owned(&labels),
            connect_errors: self.connect_errors.get_or_create_owned(&labels),
            errors: self.errors.clone(),
            clients: AtomicI64::new(0),
            errors_total: AtomicU64::new(0),
            query_micros: AtomicU64::new(0),
            wait_micros: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            labels,
        }
    }

    /// Records a point-in-time view of one pool, taken just before a scrape.
    pub fn set_pool_gauges(&self, pool: &PoolMetrics, gauges: &PoolGauges) {
        let labels = &pool.labels;
        let state = |state| StateLabels {
            database: labels.database.clone(),
            user: labels.user.clone(),
            host: labels.host.clone(),
            state,
        };
        let clients = pool.clients.load(Ordering::Relaxed);
        let active = to_i64(gauges.active);
        let waiting = to_i64(gauges.waiting);
        for (name, value) in [
            ("active", active.min(clients)),
            ("waiting", waiting),
            ("idle", (clients - active - waiting).max(0)),
        ] {
            self.client_connections
                .get_or_create(&state(name))
                .set(value);
        }
        self.server_connections
            .get_or_create(&state("active"))
            .set(active);
        self.server_connections
            .get_or_create(&state("idle"))
            .set(to_i64(gauges.idle));
        self.pool_size
            .get_or_create(labels)
            .set(to_i64(gauges.pool_size));
    }

    /// Counts spans the exporter delivered.
    pub fn spans_exported(&self, count: u64) {
        self.spans_exported.inc_by(count);
    }

    /// Counts spans lost, by reason (`queue_full`, `export_failed`).
    pub fn spans_dropped(&self, reason: &'static str, count: u64) {
        self.spans_dropped
            .get_or_create(&ReasonLabels { reason })
            .inc_by(count);
    }

    /// Spans lost so far for `reason`.
    #[must_use]
    pub fn spans_dropped_count(&self, reason: &'static str) -> u64 {
        self.spans_dropped
            .get(&ReasonLabels { reason })
            .map_or(0, |c| c.get())
    }

    /// The Prometheus text exposition of every metric.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A pool's connection counts at one instant, from the pool itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolGauges {
    /// Server connections lent to clients.
    pub active: usize,
    /// Server connections idle in the pool.
    pub idle: usize,
    /// Clients waiting for a server connection.
    pub waiting: usize,
    /// The configured maximum.
    pub pool_size: usize,
}

/// One pool's metric handles; shared by its sessions and read by the admin console.
#[derive(Debug)]
pub struct PoolMetrics {
    labels: PoolLabels,
    acquire_wait: Histogram,
    query_duration: Histogram,
    queries: Counter,
    transactions: Counter,
    received: Counter,
    sent: Counter,
    cache_hits: Counter,
    cache_misses: Counter,
    cache_evictions: Counter,
    pinned: Counter,
    settings_dropped: Counter,
    acquire_timeouts: Counter,
    wait_notices: Counter,
    connect_errors: Counter,
    errors: Family<ErrorLabels, Counter>,
    clients: AtomicI64,
    errors_total: AtomicU64,
    query_micros: AtomicU64,
    wait_micros: AtomicU64,
    waits: AtomicU64,
}

impl PoolMetrics {
    /// A client of this pool logged in.
    pub fn client_connected(&self) {
        self.clients.fetch_add(1, Ordering::Relaxed);
    }

    /// A client of this pool left.
    pub fn client_disconnected(&self) {
        self.clients.fetch_sub(1, Ordering::Relaxed);
    }

    /// A client gave up waiting for a server connection.
    pub fn acquire_timed_out(&self) {
        self.acquire_timeouts.inc();
    }

    /// A client waiting for a server connection was told its query is queued.
    pub fn wait_notified(&self) {
        self.wait_notices.inc();
    }

    /// A server connection could not be opened.
    pub fn connect_failed(&self) {
        self.connect_errors.inc();
    }

    /// A client waited `wait` for a server connection.
    pub fn acquired(&self, wait: Duration) {
        self.acquire_wait.observe(wait.as_secs_f64());
        self.waits.fetch_add(1, Ordering::Relaxed);
        self.wait_micros.fetch_add(micros(wait), Ordering::Relaxed);
    }

    /// A query spent `server` at the server; `sqlstate` is its error, if it failed.
    pub fn query(&self, server: Duration, sqlstate: Option<&str>) {
        self.queries.inc();
        self.query_duration.observe(server.as_secs_f64());
        self.query_micros
            .fetch_add(micros(server), Ordering::Relaxed);
        if let Some(code) = sqlstate {
            self.errors_total.fetch_add(1, Ordering::Relaxed);
            let class = code.get(..2).unwrap_or(code).to_owned();
            self.errors
                .get_or_create(&ErrorLabels {
                    database: self.labels.database.clone(),
                    user: self.labels.user.clone(),
                    host: self.labels.host.clone(),
                    sqlstate_class: class,
                })
                .inc();
        }
    }

    /// A transaction (or a statement outside one) ended.
    pub fn transaction(&self) {
        self.transactions.inc();
    }

    /// Bytes forwarded from the client to the server.
    pub fn received(&self, bytes: usize) {
        self.received.inc_by(bytes as u64);
    }

    /// Bytes written to the client.
    pub fn sent(&self, bytes: usize) {
        self.sent.inc_by(bytes as u64);
    }

    /// A named statement was found prepared on the server connection.
    pub fn cache_hit(&self) {
        self.cache_hits.inc();
    }

    /// A named statement had to be prepared on the server connection.
    pub fn cache_miss(&self) {
        self.cache_misses.inc();
    }

    /// A statement was closed to make room.
    pub fn cache_eviction(&self) {
        self.cache_evictions.inc();
    }

    /// A client setting was refused by a server connection and dropped.
    pub fn setting_dropped(&self) {
        self.settings_dropped.inc();
    }

    /// Client settings dropped so far.
    #[must_use]
    pub fn settings_dropped(&self) -> u64 {
        self.settings_dropped.get()
    }

    /// A client was pinned to its server connection.
    pub fn pinned(&self) {
        self.pinned.inc();
    }

    /// Totals for `SHOW STATS` and `/v1/status`.
    #[must_use]
    pub fn totals(&self) -> PoolTotals {
        PoolTotals {
            clients: usize::try_from(self.clients.load(Ordering::Relaxed)).unwrap_or(0),
            queries: self.queries.get(),
            errors: self.errors_total.load(Ordering::Relaxed),
            transactions: self.transactions.get(),
            received_bytes: self.received.get(),
            sent_bytes: self.sent.get(),
            query_micros: self.query_micros.load(Ordering::Relaxed),
            wait_micros: self.wait_micros.load(Ordering::Relaxed),
            waits: self.waits.load(Ordering::Relaxed),
            pinned_clients: self.pinned.get(),
            cache_hits: self.cache_hits.get(),
            cache_misses: self.cache_misses.get(),
        }
    }
}

/// Cumulative figures of one pool since start.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PoolTotals {
    /// Clients logged in now.
    pub clients: usize,
    /// Queries completed.
    pub queries: u64,
    /// Of those, failed.
    pub errors: u64,
    /// Transactions completed.
    pub transactions: u64,
    /// Bytes from clients.
    pub received_bytes: u64,
    /// Bytes to clients.
    pub sent_bytes: u64,
    /// Server time of all queries, in microseconds.
    pub query_micros: u64,
    /// Time spent waiting for server connections, in microseconds.
    pub wait_micros: u64,
    /// Server connections handed out.
    pub waits: u64,
    /// Clients pinned to a server connection.
    pub pinned_clients: u64,
    /// Prepared-statement cache hits.
    pub cache_hits: u64,
    /// Prepared-statement cache misses.
    pub cache_misses: u64,
}
