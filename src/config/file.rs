//! The file's shape and its validation into [`Config`]: every value, from TOML, environment or
//! flag, goes through one path that names its key when it is wrong.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::control::{ControlFile, FleetFile};
use super::security::{ListenerFile, SecurityFile, UserFile};
use super::telemetry_file::TelemetryFile;
use super::upstream::RoutingFile;
use super::values::Scalar;
use super::values::{UserList, field, optional_duration, ranged, socket_addr};
use super::{
    AuthMethod, Config, ConfigError, PoolMode, PoolSettings, RoutingSettings, SessionTimeouts,
    Upstream, invalid, parse_duration, parse_size,
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolFile {
    pool_mode: Option<Scalar>,
    pool_size: Option<Scalar>,
    min_idle: Option<Scalar>,
    acquire_timeout: Option<Scalar>,
    query_wait_notify: Option<Scalar>,
    server_idle_timeout: Option<Scalar>,
    server_lifetime: Option<Scalar>,
    server_connect_timeout: Option<Scalar>,
    max_prepared_statements: Option<Scalar>,
    client_idle_timeout: Option<Scalar>,
    idle_transaction_timeout: Option<Scalar>,
    query_timeout: Option<Scalar>,
    transaction_timeout: Option<Scalar>,
    max_db_connections: Option<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    listen: Option<Scalar>,
    admin_listen: Option<Scalar>,
    upstream: Option<Scalar>,
    auth: Option<Scalar>,
    auth_query: Option<Scalar>,
    auth_user: Option<Scalar>,
    auth_failure_delay: Option<Scalar>,
    tls_cert: Option<Scalar>,
    tls_key: Option<Scalar>,
    client_tls: Option<Scalar>,
    server_tls_mode: Option<Scalar>,
    server_ca: Option<Scalar>,
    client_login_timeout: Option<Scalar>,
    max_client_conn: Option<Scalar>,
    max_user_connections: Option<Scalar>,
    max_message_size: Option<Scalar>,
    threads: Option<Scalar>,
    drain_timeout: Option<Scalar>,
    schema_version: Option<Scalar>,
    fleet_url: Option<Scalar>,
    fleet_id: Option<Scalar>,
    fleet_heartbeat: Option<Scalar>,
    fleet_control_role: Option<Scalar>,
    health_interval: Option<Scalar>,
    admin_users: Option<UserList>,
    admin_token_file: Option<Scalar>,
    max_pause_hold: Option<Scalar>,
    max_pause_deadline: Option<Scalar>,
    /// Never read from the file (a secret does not belong there): `PGSIDECAR_ADMIN_TOKEN`.
    #[serde(skip)]
    admin_token: Option<String>,
    #[serde(default)]
    telemetry: TelemetryFile,
    #[serde(default)]
    routing: RoutingFile,
    #[serde(flatten)]
    pool: PoolFile,
    #[serde(default)]
    databases: BTreeMap<String, PoolFile>,
    #[serde(default)]
    users: BTreeMap<String, UserFile>,
    #[serde(default)]
    listeners: Vec<ListenerFile>,
}

/// Values from flags and environment variables; each one that is set replaces the file's.
#[derive(Debug, Default, Clone)]
#[allow(missing_docs)]
pub struct Overrides {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub upstream: Option<String>,
    pub auth: Option<String>,
    pub auth_query: Option<String>,
    pub auth_user: Option<String>,
    pub auth_failure_delay: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub client_tls: Option<String>,
    pub server_tls_mode: Option<String>,
    pub server_ca: Option<String>,
    pub pool_mode: Option<String>,
    pub pool_size: Option<String>,
    pub min_idle: Option<String>,
    pub acquire_timeout: Option<String>,
    pub query_wait_notify: Option<String>,
    pub server_idle_timeout: Option<String>,
    pub server_lifetime: Option<String>,
    pub server_connect_timeout: Option<String>,
    pub max_prepared_statements: Option<String>,
    pub client_idle_timeout: Option<String>,
    pub idle_transaction_timeout: Option<String>,
    pub query_timeout: Option<String>,
    pub transaction_timeout: Option<String>,
    pub max_db_connections: Option<String>,
    pub max_user_connections: Option<String>,
    pub client_login_timeout: Option<String>,
    pub max_client_conn: Option<String>,
    pub max_message_size: Option<String>,
    pub threads: Option<String>,
    pub drain_timeout: Option<String>,
    pub schema_version: Option<String>,
    pub fleet_url: Option<String>,
    pub fleet_id: Option<String>,
    pub fleet_heartbeat: Option<String>,
    pub fleet_control_role: Option<String>,
    pub health_interval: Option<String>,
    pub admin_token_file: Option<String>,
    /// The admin token itself, from `PGSIDECAR_ADMIN_TOKEN`.
    pub admin_token: Option<String>,
    pub max_pause_hold: Option<String>,
    pub max_pause_deadline: Option<String>,
    /// Comma-separated admin console users.
    pub admin_users: Option<String>,
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: Option<String>,
    pub otlp_certificate: Option<String>,
    pub otlp_client_certificate: Option<String>,
    pub otlp_client_key: Option<String>,
    pub service_name: Option<String>,
    pub traces_sampler: Option<String>,
    pub traces_sampler_arg: Option<String>,
    pub slow_query_threshold: Option<String>,
    /// `DATABASE_URL`, used only when no upstream is set anywhere else.
    pub database_url: Option<String>,
}

impl Overrides {
    /// The keys set here that a reload would otherwise take from the file (what the listeners,
    /// the TLS identity and the telemetry pipeline read is fixed until a restart anyway).
    pub(super) fn reloadable_keys_set(&self) -> Vec<&'static str> {
        [
            ("upstream", &self.upstream),
            ("auth", &self.auth),
            ("auth_query", &self.auth_query),
            ("auth_user", &self.auth_user),
            ("auth_failure_delay", &self.auth_failure_delay),
            ("server_tls_mode", &self.server_tls_mode),
            ("server_ca", &self.server_ca),
            ("pool_mode", &self.pool_mode),
            ("pool_size", &self.pool_size),
            ("min_idle", &self.min_idle),
            ("acquire_timeout", &self.acquire_timeout),
            ("query_wait_notify", &self.query_wait_notify),
            ("server_idle_timeout", &self.server_idle_timeout),
            ("server_lifetime", &self.server_lifetime),
            ("server_connect_timeout", &self.server_connect_timeout),
            ("max_prepared_statements", &self.max_prepared_statements),
            ("client_idle_timeout", &self.client_idle_timeout),
            ("idle_transaction_timeout", &self.idle_transaction_timeout),
            ("query_timeout", &self.query_timeout),
            ("transaction_timeout", &self.transaction_timeout),
            ("max_db_connections", &self.max_db_connections),
            ("max_user_connections", &self.max_user_connections),
            ("client_login_timeout", &self.client_login_timeout),
            ("max_client_conn", &self.max_client_conn),
            ("max_message_size", &self.max_message_size),
            ("threads", &self.threads),
            ("drain_timeout", &self.drain_timeout),
            ("schema_version", &self.schema_version),
            ("health_interval", &self.health_interval),
            ("max_pause_hold", &self.max_pause_hold),
            ("max_pause_deadline", &self.max_pause_deadline),
            ("admin_users", &self.admin_users),
            ("admin_token_file", &self.admin_token_file),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.is_some().then_some(key))
        .collect()
    }

    pub(super) fn apply(&self, file: &mut FileConfig) {
        fn set(slot: &mut Option<Scalar>, value: Option<&String>) {
            if let Some(value) = value {
                *slot = Some(Scalar::Str(value.clone()));
            }
        }
        set(&mut file.listen, self.listen.as_ref());
        set(&mut file.admin_listen, self.admin_listen.as_ref());
        set(&mut file.upstream, self.upstream.as_ref());
        set(&mut file.auth, self.auth.as_ref());
        set(&mut file.auth_query, self.auth_query.as_ref());
        set(&mut file.auth_user, self.auth_user.as_ref());
        set(
            &mut file.auth_failure_delay,
            self.auth_failure_delay.as_ref(),
        );
        set(&mut file.tls_cert, self.tls_cert.as_ref());
        set(&mut file.tls_key, self.tls_key.as_ref());
        set(&mut file.client_tls, self.client_tls.as_ref());
        set(&mut file.server_tls_mode, self.server_tls_mode.as_ref());
        set(&mut file.server_ca, self.server_ca.as_ref());
        let pool = &mut file.pool;
        for (slot, value) in [
            (&mut pool.pool_mode, &self.pool_mode),
            (&mut pool.pool_size, &self.pool_size),
            (&mut pool.min_idle, &self.min_idle),
            (&mut pool.acquire_timeout, &self.acquire_timeout),
            (&mut pool.query_wait_notify, &self.query_wait_notify),
            (&mut pool.server_idle_timeout, &self.server_idle_timeout),
            (&mut pool.server_lifetime, &self.server_lifetime),
            (
                &mut pool.server_connect_timeout,
                &self.server_connect_timeout,
            ),
            (
                &mut pool.max_prepared_statements,
                &self.max_prepared_statements,
            ),
            (&mut pool.client_idle_timeout, &self.client_idle_timeout),
            (
                &mut pool.idle_transaction_timeout,
                &self.idle_transaction_timeout,
            ),
            (&mut pool.query_timeout, &self.query_timeout),
            (&mut pool.transaction_timeout, &self.transaction_timeout),
            (&mut pool.max_db_connections, &self.max_db_connections),
        ] {
            set(slot, value.as_ref());
        }
        set(
            &mut file.client_login_timeout,
            self.client_login_timeout.as_ref(),
        );
        set(&mut file.max_client_conn, self.max_client_conn.as_ref());
        set(
            &mut file.max_user_connections,
            self.max_user_connections.as_ref(),
        );
        set(&mut file.max_message_size, self.max_message_size.as_ref());
        set(&mut file.threads, self.threads.as_ref());
        set(&mut file.drain_timeout, self.drain_timeout.as_ref());
        set(&mut file.schema_version, self.schema_version.as_ref());
        set(&mut file.fleet_url, self.fleet_url.as_ref());
        set(&mut file.fleet_id, self.fleet_id.as_ref());
        set(&mut file.fleet_heartbeat, self.fleet_heartbeat.as_ref());
        set(
            &mut file.fleet_control_role,
            self.fleet_control_role.as_ref(),
        );
        set(&mut file.health_interval, self.health_interval.as_ref());
        set(&mut file.admin_token_file, self.admin_token_file.as_ref());
        set(&mut file.max_pause_hold, self.max_pause_hold.as_ref());
        set(
            &mut file.max_pause_deadline,
            self.max_pause_deadline.as_ref(),
        );
        if self.admin_token.is_some() {
            file.admin_token.clone_from(&self.admin_token);
        }
        if let Some(users) = &self.admin_users {
            file.admin_users = Some(UserList::from_text(users));
        }
        file.telemetry.apply(self);
        if file.upstream.is_none() {
            set(&mut file.upstream, self.database_url.as_ref());
        }
    }
}

impl FileConfig {
    /// A file that sets only what has no default, to learn every other key's default.
    pub(super) fn minimal() -> Self {
        Self {
            upstream: Some(Scalar::Str("postgres://localhost".into())),
            auth: Some(Scalar::Str("trust".into())),
            ..Self::default()
        }
    }

    #[cfg(test)]
    pub(super) fn telemetry_sampler_for_test(&mut self, name: &str, arg: &str) {
        self.telemetry.set_sampler_for_test(name, arg);
    }

    pub(super) fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.display().to_string(),
            message,
        })
    }

    /// The file's text as a [`FileConfig`]; the error names the key at fault.
    pub(super) fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| {
            let message = e.to_string().trim_end().to_owned();
            match wrong_key(text) {
                Some(key) => format!("key `{key}`: {message}"),
                None => message,
            }
        })
    }

    pub(super) fn validate(self) -> Result<Config, ConfigError> {
        let (fleet, control) = self.control_plane()?;
        let (upstream, routing) = self.upstream_and_routing()?;
        let max_message_size = self.max_message_size()?;
        let (max_client_conn, max_user_connections) = self.connection_limits()?;
        let pool = self.pool.validate("", &default_pool())?;
        let mut databases = BTreeMap::new();
        for (name, file) in &self.databases {
            databases.insert(
                name.clone(),
                file.validate(&format!("databases.{name}."), &pool)?,
            );
        }
        let mut users = BTreeMap::new();
        for (name, file) in self.users {
            users.insert(name.clone(), file.validate(&format!("users.{name}."))?);
        }
        if upstream.hosts.len() > 1 && routing.monitor_user.is_none() && upstream.user.is_none() {
            return Err(invalid(
                "routing.monitor_user",
                "several upstream hosts are watched for their role and lag: name the role that logs in to check them (or put a user in the upstream URL)",
            ));
        }
        let auth = field(
            "auth",
            self.auth.as_ref(),
            AuthMethod::ScramSha256,
            str::parse,
        )?;
        let security = SecurityFile {
            tls_cert: self.tls_cert.as_ref(),
            tls_key: self.tls_key.as_ref(),
            client_tls: self.client_tls.as_ref(),
            server_tls_mode: self.server_tls_mode.as_ref(),
            server_ca: self.server_ca.as_ref(),
            auth_query: self.auth_query.as_ref(),
            auth_user: self.auth_user.as_ref(),
            auth_failure_delay: self.auth_failure_delay.as_ref(),
            listeners: &self.listeners,
        }
        .validate(auth, &users, upstream.password.is_some())?;
        let admin_listen = match &self.admin_listen {
            None => None,
            Some(v) if v.text().is_empty() => None,
            Some(v) => Some(socket_addr(&v.text()).map_err(|m| invalid("admin_listen", m))?),
        };
        let telemetry = self.telemetry.validate()?;
        Ok(Config {
            admin_users: self
                .admin_users
                .map(UserList::into_names)
                .unwrap_or_default(),
            fleet,
            control,
            drain_timeout: field(
                "drain_timeout",
                self.drain_timeout.as_ref(),
                Duration::from_secs(30),
                parse_duration,
            )?,
            telemetry,
            schema_version: match &self.schema_version {
                Some(v) if !v.text().is_empty() => Some(
                    super::values::parse_schema_version(&v.text())
                        .map_err(|m| invalid("schema_version", m))?,
                ),
                _ => None,
            },
            listen: field(
                "listen",
                self.listen.as_ref(),
                default_listen(),
                socket_addr,
            )?,
            admin_listen,
            upstream,
            routing,
            auth,
            auth_query: security.auth_query,
            auth_failure_delay: security.auth_failure_delay,
            tls: security.tls,
            extra_listeners: security.extra_listeners,
            pool,
            databases,
            users,
            client_login_timeout: field(
                "client_login_timeout",
                self.client_login_timeout.as_ref(),
                Duration::from_secs(15),
                parse_duration,
            )?,
            max_client_conn,
            max_user_connections,
            max_message_size,
            threads: field("threads", self.threads.as_ref(), 1, ranged(1, 256))?,
        })
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 6432))
}

fn default_pool() -> PoolSettings {
    PoolSettings {
        mode: PoolMode::Transaction,
        size: 20,
        min_idle: 0,
        acquire_timeout: Duration::from_secs(5),
        query_wait_notify: Some(Duration::from_secs(2)),
        server_idle_timeout: Duration::from_secs(600),
        server_lifetime: Duration::from_secs(3600),
        server_connect_timeout: Duration::from_secs(5),
        max_prepared_statements: 200,
        max_db_connections: None,
        timeouts: Arc::new(SessionTimeouts {
            idle_transaction: Some(Duration::from_secs(3600)),
            ..SessionTimeouts::default()
        }),
    }
}

/// A connection cap: a count, `0` for none.
fn optional_count(text: &str) -> Result<Option<usize>, String> {
    ranged(0, 100_000)(text).map(|n| (n > 0).then_some(n))
}

impl PoolFile {
    fn validate(&self, prefix: &str, base: &PoolSettings) -> Result<PoolSettings, ConfigError> {
        let key = |name: &str| format!("{prefix}{name}");
        let settings = PoolSettings {
            mode: field(
                &key("pool_mode"),
                self.pool_mode.as_ref(),
                base.mode,
                str::parse,
            )?,
            size: field(
                &key("pool_size"),
                self.pool_size.as_ref(),
                base.size,
                ranged(1, 10_000),
            )?,
            min_idle: field(
                &key("min_idle"),
                self.min_idle.as_ref(),
                base.min_idle,
                ranged(0, 10_000),
            )?,
            acquire_timeout: field(
                &key("acquire_timeout"),
                self.acquire_timeout.as_ref(),
                base.acquire_timeout,
                parse_duration,
            )?,
            query_wait_notify: field(
                &key("query_wait_notify"),
                self.query_wait_notify.as_ref(),
                base.query_wait_notify,
                optional_duration,
            )?,
            server_idle_timeout: field(
                &key("server_idle_timeout"),
                self.server_idle_timeout.as_ref(),
                base.server_idle_timeout,
                parse_duration,
            )?,
            server_lifetime: field(
                &key("server_lifetime"),
                self.server_lifetime.as_ref(),
                base.server_lifetime,
                parse_duration,
            )?,
            server_connect_timeout: field(
                &key("server_connect_timeout"),
                self.server_connect_timeout.as_ref(),
                base.server_connect_timeout,
                parse_duration,
            )?,
            max_prepared_statements: field(
                &key("max_prepared_statements"),
                self.max_prepared_statements.as_ref(),
                base.max_prepared_statements,
                ranged(1, 100_000),
            )?,
            max_db_connections: field(
                &key("max_db_connections"),
                self.max_db_connections.as_ref(),
                base.max_db_connections,
                optional_count,
            )?,
            timeouts: Arc::new(self.timeouts(prefix, &base.timeouts)?),
        };
        if settings.min_idle > settings.size {
            return Err(invalid(
                key("min_idle"),
                format!(
                    "{} is larger than pool_size {}",
                    settings.min_idle, settings.size
                ),
            ));
        }
        if settings.acquire_timeout.is_zero() {
            return Err(invalid(key("acquire_timeout"), "must be greater than zero"));
        }
        Ok(settings)
    }

    /// The session timeouts of this table, over `base`.
    fn timeouts(
        &self,
        prefix: &str,
        base: &SessionTimeouts,
    ) -> Result<SessionTimeouts, ConfigError> {
        let key = |name: &str| format!("{prefix}{name}");
        Ok(SessionTimeouts {
            client_idle: field(
                &key("client_idle_timeout"),
                self.client_idle_timeout.as_ref(),
                base.client_idle,
                optional_duration,
            )?,
            idle_transaction: field(
                &key("idle_transaction_timeout"),
                self.idle_transaction_timeout.as_ref(),
                base.idle_transaction,
                optional_duration,
            )?,
            query: field(
                &key("query_timeout"),
                self.query_timeout.as_ref(),
                base.query,
                optional_duration,
            )?,
            transaction: field(
                &key("transaction_timeout"),
                self.transaction_timeout.as_ref(),
                base.transaction,
                optional_duration,
            )?,
        })
    }
}

/// The top-level key whose value alone does not deserialize. serde's `flatten` (the pool keys
/// sit at the top level) loses the position of a wrongly typed value, so the parser's message
/// would point at line 1.
fn wrong_key(text: &str) -> Option<String> {
    use serde::Deserialize as _;
    let table: toml::Table = toml::from_str(text).ok()?;
    table.into_iter().find_map(|(key, value)| {
        let mut alone = toml::Table::new();
        alone.insert(key.clone(), value);
        FileConfig::deserialize(toml::Value::Table(alone))
            .err()
            .map(|_| key)
    })
}

impl FileConfig {
    /// `max_client_conn` and `max_user_connections`.
    fn connection_limits(&self) -> Result<(usize, Option<usize>), ConfigError> {
        Ok((
            field(
                "max_client_conn",
                self.max_client_conn.as_ref(),
                10_000,
                ranged(1, 1_000_000),
            )?,
            field(
                "max_user_connections",
                self.max_user_connections.as_ref(),
                None,
                optional_count,
            )?,
        ))
    }

    fn max_message_size(&self) -> Result<usize, ConfigError> {
        field(
            "max_message_size",
            self.max_message_size.as_ref(),
            64 * 1024 * 1024,
            |s| {
                let n = parse_size(s)?;
                if (1024..=1024 * 1024 * 1024).contains(&n) {
                    Ok(n)
                } else {
                    Err(format!("must be between 1KiB and 1024MiB, got {n} bytes"))
                }
            },
        )
    }

    /// The upstream's hosts with the roles `[routing]` gives them, and the routing settings.
    fn upstream_and_routing(&self) -> Result<(Upstream, RoutingSettings), ConfigError> {
        let mut upstream = self.upstream()?;
        let routing = self.routing.validate(&mut upstream)?;
        if upstream.hosts.len() > 1 && routing.monitor_user.is_none() && upstream.user.is_none() {
            return Err(invalid(
                "routing.monitor_user",
                "several upstream hosts are watched for their role and lag: name the role that logs in to check them (or put a user in the upstream URL)",
            ));
        }
        Ok((upstream, routing))
    }

    fn upstream(&self) -> Result<Upstream, ConfigError> {
        match &self.upstream {
            Some(url) => Upstream::parse(&url.text()).map_err(|m| invalid("upstream", m)),
            None => Err(invalid(
                "upstream",
                "not set: give --upstream, PGSIDECAR_UPSTREAM, DATABASE_URL or `upstream` in the file",
            )),
        }
    }

    /// The fleet and the admin API: who may change traffic, and how far.
    fn control_plane(
        &self,
    ) -> Result<(Option<super::FleetConfig>, super::ControlSettings), ConfigError> {
        let fleet = FleetFile {
            url: self.fleet_url.as_ref(),
            id: self.fleet_id.as_ref(),
            heartbeat: self.fleet_heartbeat.as_ref(),
            health_interval: self.health_interval.as_ref(),
            control_role: self.fleet_control_role.as_ref(),
        }
        .validate()?;
        let control = ControlFile {
            admin_token_file: self.admin_token_file.as_ref(),
            admin_token: self.admin_token.as_deref(),
            max_pause_hold: self.max_pause_hold.as_ref(),
            max_pause_deadline: self.max_pause_deadline.as_ref(),
        }
        .validate()?;
        Ok((fleet, control))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut file = FileConfig::parse(text).map_err(|message| ConfigError::Parse {
            path: "test".into(),
            message,
        })?;
        overrides.apply(&mut file);
        file.validate()
    }

    const BASE: &str = "upstream = \"postgres://u:p@db:5433/app\"\nauth = \"trust\"\n";

    #[test]
    fn defaults_and_overrides() {
        let overrides = Overrides {
            pool_size: Some("7".into()),
            ..Overrides::default()
        };
        let config = load_str(
            &format!("{BASE}pool_size = 3\n[databases.big]\npool_size = 50\n"),
            &overrides,
        )
        .unwrap();
        assert_eq!(config.pool.size, 7);
        assert_eq!(config.pool_for("big").size, 50);
        assert_eq!(config.pool_for("other").size, 7);
        assert_eq!(config.upstream.hosts[0].port, 5433);
        assert_eq!(config.upstream.database.as_deref(), Some("app"));
        assert_eq!(config.listen, default_listen());
    }

    #[test]
    fn errors_name_the_key() {
        let err = load_str(
            &format!("{BASE}[databases.app]\npool_size = 0\n"),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("databases.app.pool_size"), "{err}");
        let err = load_str(
            &format!("{BASE}acquire_timeout = \"5 parsecs\"\n"),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("acquire_timeout"), "{err}");
        let err = load_str(&format!("{BASE}pool_sise = 3\n"), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("pool_sise"), "{err}");
        let err = load_str("auth = \"trust\"\n", &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("`upstream`"), "{err}");
    }

    #[test]
    fn one_thread_unless_asked_for_more() {
        let config = load_str(BASE, &Overrides::default()).unwrap();
        assert_eq!(config.threads, 1);
        let more = Overrides {
            threads: Some("4".into()),
            ..Overrides::default()
        };
        assert_eq!(load_str(BASE, &more).unwrap().threads, 4);
        let err = load_str(&format!("{BASE}threads = 0\n"), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("threads"), "{err}");
    }

    #[test]
    fn database_url_is_the_fallback_upstream() {
        let overrides = Overrides {
            database_url: Some("postgres://h/x".into()),
            ..Overrides::default()
        };
        let config = load_str("auth = \"trust\"\n", &overrides).unwrap();
        assert_eq!(config.upstream.hosts[0].host, "h");
        assert_eq!(config.upstream.user, None);
    }

    #[test]
    fn telemetry_follows_the_otel_names() {
        let overrides = Overrides {
            traces_sampler: Some("parentbased_traceidratio".into()),
            traces_sampler_arg: Some("0.25".into()),
            otlp_protocol: Some("http/protobuf".into()),
            admin_users: Some("ops, dba".into()),
            ..Overrides::default()
        };
        let config = load_str(
            &format!("{BASE}[telemetry]\notlp_endpoint = \"http://collector:4317\"\n"),
            &overrides,
        )
        .unwrap();
        let t = &config.telemetry;
        assert_eq!(t.otlp_endpoint.as_deref(), Some("http://collector:4317"));
        assert_eq!(t.otlp_protocol, crate::config::OtlpProtocol::HttpProtobuf);
        assert!(t.sampler.parent_based);
        assert_eq!(t.sampler.root, super::super::RootSampling::Ratio(0.25));
        assert_eq!(config.admin_users, ["ops", "dba"]);
        let err = load_str(
            &format!("{BASE}[telemetry]\nsampler = \"traceidratio\"\nsampler_arg = \"2\"\n"),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("telemetry.sampler"), "{err}");
    }

    #[test]
    fn shipped_example_configs_are_valid() {
        let config = load_str(
            include_str!("../../config/pgsidecar.toml"),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.admin_users, ["ops"]);
        // The dev profile gets its upstream from the command line.
        let upstream = Overrides {
            upstream: Some("postgres://127.0.0.1:5432".into()),
            ..Overrides::default()
        };
        load_str(include_str!("../../config/dev.toml"), &upstream).unwrap();
    }

    #[test]
    fn numbers_booleans_and_user_strings_take_the_same_path_as_env_values() {
        let config = load_str(
            &format!(
                "{BASE}admin_users = \"ops, dba\"\n[telemetry]\nsampler = \"traceidratio\"\nsampler_arg = 0.05\n"
            ),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.admin_users, ["ops", "dba"]);
        assert_eq!(
            config.telemetry.sampler.root,
            super::super::RootSampling::Ratio(0.05)
        );
        let err = load_str(&format!("{BASE}pool_size = [20]\n"), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("pool_size"), "{err}");
        assert!(err.contains("a string, a number or a boolean"), "{err}");
        let err = load_str(&format!("{BASE}pool_size = 2.5\n"), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("`pool_size`"), "{err}");
        let err = load_str(&format!("{BASE}admin_users = 3\n"), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin_users"), "{err}");
    }

    #[test]
    fn scram_needs_users() {
        let err = load_str("upstream = \"postgres://h/x\"\n", &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("`users`"), "{err}");
    }
}
