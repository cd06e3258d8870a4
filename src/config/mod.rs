//! Typed configuration: a TOML file, overridden key by key by `PGSIDECAR_*` environment variables
//! and command-line flags (the binary feeds both in as [`Overrides`]). Every validation error
//! names the key at fault so that a bad deploy is fixed in one look.

mod control;
mod file;
mod security;
mod show;
mod source;
mod telemetry_file;
mod upstream;
mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

pub use control::{AdminToken, ControlSettings};
use file::FileConfig;
pub use file::Overrides;
pub use security::{AuthQuery, ExtraListener, TlsSettings};
pub use show::Setting;
pub use source::ConfigSource;
pub use upstream::{Balance, HostRole, ReadFallback, RoutingSettings, Upstream, UpstreamHost};
pub use values::{parse_duration, parse_size};

use crate::auth::Secret;

/// Why a configuration could not be loaded. The binary exits with status 2 on any of these.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The TOML parser's message, which names the key.
        message: String,
    },
    /// A value is missing or out of range.
    #[error("invalid config key `{key}`: {message}")]
    Invalid {
        /// Dotted key, e.g. `databases.app.pool_size`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// How long a client keeps a server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// From the first message of a transaction to its ReadyForQuery `I`.
    Transaction,
    /// For the client's whole session; reset with `DISCARD ALL` before reuse.
    Session,
}

impl FromStr for PoolMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "transaction" => Ok(Self::Transaction),
            "session" => Ok(Self::Session),
            other => Err(format!(
                "expected `transaction` or `session`, got `{other}`"
            )),
        }
    }
}

impl fmt::Display for PoolMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Transaction => "transaction",
            Self::Session => "session",
        })
    }
}

/// How clients prove who they are to the proxy (the pg_hba.conf method names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// Anyone is let in under the name they give: for the local dev profile only.
    Trust,
    /// A cleartext password, accepted only over TLS, checked against the stored secret.
    Password,
    /// md5 for users whose stored secret is md5; SCRAM for those with a SCRAM verifier.
    Md5,
    /// SCRAM-SHA-256 (and -PLUS over TLS) only.
    ScramSha256,
}

impl FromStr for AuthMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "trust" => Ok(Self::Trust),
            "password" => Ok(Self::Password),
            "md5" => Ok(Self::Md5),
            "scram-sha-256" => Ok(Self::ScramSha256),
            other => Err(format!(
                "expected `scram-sha-256`, `md5`, `password` or `trust`, got `{other}`"
            )),
        }
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Trust => "trust",
            Self::Password => "password",
            Self::Md5 => "md5",
            Self::ScramSha256 => "scram-sha-256",
        })
    }
}

/// Pool sizing and server-connection lifetimes for one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// Transaction or session pooling.
    pub mode: PoolMode,
    /// Maximum server connections per (database, user).
    pub size: usize,
    /// Server connections kept open even when idle.
    pub min_idle: usize,
    /// How long a client waits for a server connection before 53300.
    pub acquire_timeout: Duration,
    /// A client waiting this long for a server connection is told so once (NOTICE).
    pub query_wait_notify: Option<Duration>,
    /// Idle server connections older than this are closed.
    pub server_idle_timeout: Duration,
    /// Server connections are replaced after this age.
    pub server_lifetime: Duration,
    /// Limit on opening and logging in one server connection.
    pub server_connect_timeout: Duration,
    /// Statements each server connection keeps prepared for transaction-mode clients (LRU).
    pub max_prepared_statements: usize,
    /// How long a client may hold or wait (PgBouncer's timeouts). Shared: every session of a
    /// pool keeps a pointer to them, not a copy.
    pub timeouts: Arc<SessionTimeouts>,
    /// Most server connections to this database across all its users' pools.
    pub max_db_connections: Option<usize>,
}

/// Limits on how long a client may hold a server connection or keep it waiting, with
/// PgBouncer's meanings; `None` is off. The affected client is told why (in PostgreSQL's
/// SQLSTATE for the same limit) and closed; its server connection is rolled back and returned,
/// or closed when a query was still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionTimeouts {
    /// `client_idle_timeout`: a client that sends nothing for this long between transactions.
    pub client_idle: Option<Duration>,
    /// `idle_transaction_timeout`: a client that sends nothing for this long inside a
    /// transaction, holding a server connection.
    pub idle_transaction: Option<Duration>,
    /// `query_timeout`: the server works on a client's requests for this long.
    pub query: Option<Duration>,
    /// `transaction_timeout`: a transaction stays open this long.
    pub transaction: Option<Duration>,
}

/// How query spans leave the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (`grpc`), usually port 4317.
    Grpc,
    /// OTLP protobuf over HTTP (`http/protobuf`), usually port 4318.
    HttpProtobuf,
}

impl FromStr for OtlpProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" => Ok(Self::HttpProtobuf),
            other => Err(format!("expected `grpc` or `http/protobuf`, got `{other}`")),
        }
    }
}

/// The decision for a query that has no sampled parent to follow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RootSampling {
    /// Every query.
    Always,
    /// None at all, not even errors or slow queries.
    Never,
    /// This fraction of queries (plus every error and slow query).
    Ratio(f64),
}

/// The sampler, in the terms of `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerSettings {
    /// A query carrying a `traceparent` follows its sampled flag.
    pub parent_based: bool,
    /// What happens to the others.
    pub root: RootSampling,
}

impl SamplerSettings {
    /// Parses a sampler name and its argument as the OpenTelemetry environment variables
    /// spell them (`parentbased_traceidratio` and `0.25`).
    ///
    /// # Errors
    /// A message naming the accepted values.
    pub fn parse(name: &str, arg: Option<&str>) -> Result<Self, String> {
        let (parent_based, root) = match name.strip_prefix("parentbased_") {
            Some(root) => (true, root),
            None => (false, name),
        };
        let root = match root {
            "always_on" => RootSampling::Always,
            "always_off" => RootSampling::Never,
            "traceidratio" => {
                let ratio = match arg {
                    None => 1.0,
                    Some(arg) => arg
                        .trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|r| (0.0..=1.0).contains(r))
                        .ok_or_else(|| {
                            format!("sampler argument must be a ratio between 0 and 1, got `{arg}`")
                        })?,
                };
                RootSampling::Ratio(ratio)
            }
            _ => {
                return Err(format!(
                    "expected always_on, always_off, traceidratio or their parentbased_ forms, got `{name}`"
                ));
            }
        };
        Ok(Self { parent_based, root })
    }
}

/// Per-query tracing: where spans go and which are kept.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySettings {
    /// OTLP collector endpoint; tracing is off without one.
    pub otlp_endpoint: Option<String>,
    /// gRPC or HTTP/protobuf.
    pub otlp_protocol: OtlpProtocol,
    /// The collector's CA and the client identity for an `https://` endpoint, when configured.
    pub collector_tls: Option<crate::tls::CollectorTls>,
    /// `service.name` of the spans, unless `OTEL_RESOURCE_ATTRIBUTES` names one.
    pub service_name: Option<String>,
    /// Which queries become spans.
    pub sampler: SamplerSettings,
    /// Queries at least this slow are always kept.
    pub slow_query_threshold: Duration,
}

/// How this sidecar joins the fleet of sidecars in front of one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// Direct connection (not through a pooler) to the database, for the control channel.
    pub url: String,
    /// This sidecar's id in `pgsidecar.sidecars`.
    pub id: String,
    /// The machine it runs on.
    pub host: String,
    /// How often it heartbeats.
    pub heartbeat: Duration,
    /// How often it runs the database health checks over the control URL (zero: never).
    pub health_interval: Duration,
    /// Besides superusers, members of this role may send fleet requests that sidecars obey.
    pub control_role: Option<String>,
}

/// A user's own timeouts (`[users.NAME]`); each one, where set, wins over the database's and
/// the global value (`Some(None)` turns it off for the user).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserTimeouts {
    /// `client_idle_timeout`.
    pub client_idle: Option<Option<Duration>>,
    /// `idle_transaction_timeout`.
    pub idle_transaction: Option<Option<Duration>>,
    /// `query_timeout`.
    pub query: Option<Option<Duration>>,
    /// `transaction_timeout`.
    pub transaction: Option<Option<Duration>>,
}

impl SessionTimeouts {
    /// These limits with `user`'s own where it sets them.
    #[must_use]
    pub fn for_user(self, user: &UserTimeouts) -> Self {
        Self {
            client_idle: user.client_idle.unwrap_or(self.client_idle),
            idle_transaction: user.idle_transaction.unwrap_or(self.idle_transaction),
            query: user.query.unwrap_or(self.query),
            transaction: user.transaction.unwrap_or(self.transaction),
        }
    }
}

/// A user clients may log in as, and the secret the proxy uses toward the server for them.
#[derive(Clone, Default)]
pub struct UserSecret {
    /// The stored secret clients' proofs are checked against (SCRAM verifier or md5 hash).
    pub secret: Option<Secret>,
    /// Password for the server-side login.
    pub server_password: Option<String>,
    /// The file gave a plaintext `password` (development setups; warned about at start).
    pub plaintext_in_file: bool,
    /// The user's own timeouts.
    pub timeouts: UserTimeouts,
}

impl fmt::Debug for UserSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserSecret")
            .field("secret", &self.secret.is_some())
            .field("plaintext_in_file", &self.plaintext_in_file)
            .field("server_password", &self.server_password.is_some())
            .field("timeouts", &self.timeouts)
            .finish()
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Client listener address; its TLS policy is `tls.client_mode`.
    pub listen: SocketAddr,
    /// More client listeners, each with its own TLS policy (e.g. plaintext on localhost for the
    /// app in the same pod, TLS required on the pod address for everyone else).
    pub extra_listeners: Vec<ExtraListener>,
    /// Admin HTTP listener, if enabled.
    pub admin_listen: Option<SocketAddr>,
    /// The servers fronted.
    pub upstream: Upstream,
    /// How transactions are routed over the upstream's hosts.
    pub routing: RoutingSettings,
    /// Client authentication.
    pub auth: AuthMethod,
    /// Users looked up in the upstream when the file does not list them.
    pub auth_query: Option<AuthQuery>,
    /// Failed logins are answered after this long.
    pub auth_failure_delay: Duration,
    /// TLS toward clients and the upstream.
    pub tls: TlsSettings,
    /// Defaults for every pool.
    pub pool: PoolSettings,
    /// Per-database overrides of the pool defaults.
    pub databases: BTreeMap<String, PoolSettings>,
    /// Known users.
    pub users: BTreeMap<String, UserSecret>,
    /// A client must finish logging in within this.
    pub client_login_timeout: Duration,
    /// Client connections beyond this are refused with 53300.
    pub max_client_conn: usize,
    /// Most server connections of one user across all databases' pools.
    pub max_user_connections: Option<usize>,
    /// Largest client message accepted, in bytes.
    pub max_message_size: usize,
    /// Threads that run the proxy. One (the default) runs everything on one thread, as
    /// PgBouncer does, with no cross-thread wake-ups: the least CPU per transaction. More spread
    /// sessions over that many worker threads, for a proxy whose one core is saturated.
    pub threads: usize,
    /// On SIGTERM (or a drain request), how long sessions get to reach a transaction boundary.
    pub drain_timeout: Duration,
    /// Fleet membership, when `fleet_url` is set.
    pub fleet: Option<FleetConfig>,
    /// Users who may open the admin console (database `pgsidecar`).
    pub admin_users: Vec<String>,
    /// Who may change traffic through the admin API and the fleet, and how far.
    pub control: ControlSettings,
    /// Per-query spans.
    pub telemetry: TelemetrySettings,
    /// The migration version whose schema this sidecar's application expects: every client
    /// session gets that version's schema first in its `search_path` (unless it sets its own),
    /// and the fleet registry records it for `migrate complete`.
    pub schema_version: Option<i64>,
}

impl Config {
    /// The `search_path` every client session starts with when `schema_version` is set.
    #[must_use]
    pub fn version_search_path(&self) -> Option<String> {
        self.schema_version.map(|v| {
            format!(
                "{}, \"$user\", public",
                crate::migrate::expand::version_schema(v)
            )
        })
    }
}

impl Config {
    /// Users whose client secret the file gives as a plaintext `password`.
    #[must_use]
    pub fn users_with_plaintext_passwords(&self) -> Vec<&str> {
        self.users
            .iter()
            .filter(|(_, u)| u.plaintext_in_file)
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// The TLS policy of listener `index` (0 is `listen`, then `extra_listeners` in order).
    #[must_use]
    pub fn client_tls_for(&self, index: usize) -> crate::tls::ClientTlsMode {
        index
            .checked_sub(1)
            .and_then(|i| self.extra_listeners.get(i))
            .map_or(self.tls.client_mode, |l| l.client_tls)
    }

    /// Every client listener address, `listen` first.
    #[must_use]
    pub fn listen_addresses(&self) -> Vec<SocketAddr> {
        std::iter::once(self.listen)
            .chain(self.extra_listeners.iter().map(|l| l.address))
            .collect()
    }

    /// The pool settings that apply to `database`.
    #[must_use]
    pub fn pool_for(&self, database: &str) -> &PoolSettings {
        self.databases.get(database).unwrap_or(&self.pool)
    }

    /// The settings of the pool of `user` on `database`: `database`'s, with the user's own
    /// timeouts where it sets them.
    #[must_use]
    pub fn pool_for_user(&self, database: &str, user: &str) -> PoolSettings {
        let mut settings = self.pool_for(database).clone();
        if let Some(secret) = self.users.get(user)
            && secret.timeouts != UserTimeouts::default()
        {
            settings.timeouts = Arc::new(settings.timeouts.for_user(&secret.timeouts));
        }
        settings
    }

    /// Loads the file (if any), applies the overrides and validates.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file or key at fault.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut file = match path {
            Some(path) => FileConfig::read(path)?,
            None => FileConfig::default(),
        };
        overrides.apply(&mut file);
        file.validate()
    }
}
