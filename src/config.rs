//! Typed configuration: a TOML file, overridden key by key by `PGSIDECAR_*` environment variables
//! and command-line flags (the binary feeds both in as [`Overrides`]). Every validation error
//! names the key at fault so that a bad deploy is fixed in one look.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::auth::ScramVerifier;

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

/// How clients prove who they are to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// Anyone is let in under the name they give: for the local dev profile only.
    Trust,
    /// SCRAM-SHA-256 against the configured users.
    ScramSha256,
}

impl FromStr for AuthMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "trust" => Ok(Self::Trust),
            "scram-sha-256" => Ok(Self::ScramSha256),
            other => Err(format!(
                "expected `trust` or `scram-sha-256`, got `{other}`"
            )),
        }
    }
}

/// The PostgreSQL server the proxy fronts. Missing user or database mean "the client's own".
#[derive(Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Fixed server-side user, if any.
    pub user: Option<String>,
    /// Fixed server-side database, if any.
    pub database: Option<String>,
    /// Password for the server-side login, if the URL carries one.
    pub password: Option<String>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("database", &self.database)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Upstream {
    /// Parses a `postgres://` URL or a libpq key/value string.
    ///
    /// # Errors
    /// A message saying what is wrong; the caller adds the key.
    pub fn parse(url: &str) -> Result<Self, String> {
        let parsed = tokio_postgres::Config::from_str(url).map_err(|e| e.to_string())?;
        let host = match parsed.get_hosts() {
            [] => "127.0.0.1".to_owned(),
            [tokio_postgres::config::Host::Tcp(host)] => host.clone(),
            [_] => return Err("Unix-socket upstreams are not supported; use a TCP host".to_owned()),
            _ => return Err("exactly one upstream host is supported".to_owned()),
        };
        let port = match parsed.get_ports() {
            [] => 5432,
            [port] => *port,
            _ => return Err("exactly one upstream port is supported".to_owned()),
        };
        Ok(Self {
            host,
            port,
            user: parsed.get_user().map(str::to_owned),
            database: parsed.get_dbname().map(str::to_owned),
            password: parsed
                .get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
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
    /// Idle server connections older than this are closed.
    pub server_idle_timeout: Duration,
    /// Server connections are replaced after this age.
    pub server_lifetime: Duration,
    /// Limit on opening and logging in one server connection.
    pub server_connect_timeout: Duration,
    /// Statements each server connection keeps prepared for transaction-mode clients (LRU).
    pub max_prepared_statements: usize,
}

/// A user clients may log in as, and the secret the proxy uses toward the server for them.
#[derive(Clone, Default)]
pub struct UserSecret {
    /// Verifier clients' SCRAM proofs are checked against.
    pub verifier: Option<ScramVerifier>,
    /// Password for the server-side login.
    pub server_password: Option<String>,
}

impl fmt::Debug for UserSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserSecret")
            .field("verifier", &self.verifier.is_some())
            .field("server_password", &self.server_password.is_some())
            .finish()
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Client listener address.
    pub listen: SocketAddr,
    /// Admin HTTP listener, if enabled.
    pub admin_listen: Option<SocketAddr>,
    /// The server fronted.
    pub upstream: Upstream,
    /// Client authentication.
    pub auth: AuthMethod,
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
    /// Largest client message accepted, in bytes.
    pub max_message_size: usize,
}

impl Config {
    /// The pool settings that apply to `database`.
    #[must_use]
    pub fn pool_for(&self, database: &str) -> &PoolSettings {
        self.databases.get(database).unwrap_or(&self.pool)
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

/// A TOML scalar, so that `pool_size = 20` and `PGSIDECAR_POOL_SIZE=20` take one validation path.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Int(i64),
    Str(String),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Self::Int(i) => i.to_string(),
            Self::Str(s) => s.clone(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolFile {
    pool_mode: Option<Scalar>,
    pool_size: Option<Scalar>,
    min_idle: Option<Scalar>,
    acquire_timeout: Option<Scalar>,
    server_idle_timeout: Option<Scalar>,
    server_lifetime: Option<Scalar>,
    server_connect_timeout: Option<Scalar>,
    max_prepared_statements: Option<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserFile {
    password: Option<String>,
    scram_verifier: Option<String>,
    server_password: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<Scalar>,
    admin_listen: Option<Scalar>,
    upstream: Option<Scalar>,
    auth: Option<Scalar>,
    client_login_timeout: Option<Scalar>,
    max_client_conn: Option<Scalar>,
    max_message_size: Option<Scalar>,
    #[serde(flatten)]
    pool: PoolFile,
    #[serde(default)]
    databases: BTreeMap<String, PoolFile>,
    #[serde(default)]
    users: BTreeMap<String, UserFile>,
}

/// Values from flags and environment variables; each one that is set replaces the file's.
#[derive(Debug, Default, Clone)]
#[allow(missing_docs)]
pub struct Overrides {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub upstream: Option<String>,
    pub auth: Option<String>,
    pub pool_mode: Option<String>,
    pub pool_size: Option<String>,
    pub min_idle: Option<String>,
    pub acquire_timeout: Option<String>,
    pub server_idle_timeout: Option<String>,
    pub server_lifetime: Option<String>,
    pub server_connect_timeout: Option<String>,
    pub max_prepared_statements: Option<String>,
    pub client_login_timeout: Option<String>,
    pub max_client_conn: Option<String>,
    pub max_message_size: Option<String>,
    /// `DATABASE_URL`, used only when no upstream is set anywhere else.
    pub database_url: Option<String>,
}

impl Overrides {
    fn apply(&self, file: &mut FileConfig) {
        fn set(slot: &mut Option<Scalar>, value: Option<&String>) {
            if let Some(value) = value {
                *slot = Some(Scalar::Str(value.clone()));
            }
        }
        set(&mut file.listen, self.listen.as_ref());
        set(&mut file.admin_listen, self.admin_listen.as_ref());
        set(&mut file.upstream, self.upstream.as_ref());
        set(&mut file.auth, self.auth.as_ref());
        set(&mut file.pool.pool_mode, self.pool_mode.as_ref());
        set(&mut file.pool.pool_size, self.pool_size.as_ref());
        set(&mut file.pool.min_idle, self.min_idle.as_ref());
        set(
            &mut file.pool.acquire_timeout,
            self.acquire_timeout.as_ref(),
        );
        set(
            &mut file.pool.server_idle_timeout,
            self.server_idle_timeout.as_ref(),
        );
        set(
            &mut file.pool.server_lifetime,
            self.server_lifetime.as_ref(),
        );
        set(
            &mut file.pool.server_connect_timeout,
            self.server_connect_timeout.as_ref(),
        );
        set(
            &mut file.pool.max_prepared_statements,
            self.max_prepared_statements.as_ref(),
        );
        set(
            &mut file.client_login_timeout,
            self.client_login_timeout.as_ref(),
        );
        set(&mut file.max_client_conn, self.max_client_conn.as_ref());
        set(&mut file.max_message_size, self.max_message_size.as_ref());
        if file.upstream.is_none() {
            set(&mut file.upstream, self.database_url.as_ref());
        }
    }
}

fn field<T>(
    key: &str,
    value: Option<&Scalar>,
    default: T,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<T, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => parse(&v.text()).map_err(|m| invalid(key, m)),
    }
}

fn ranged(min: usize, max: usize) -> impl Fn(&str) -> Result<usize, String> {
    move |s| {
        let n: usize = s
            .trim()
            .parse()
            .map_err(|_| format!("expected a whole number, got `{s}`"))?;
        if (min..=max).contains(&n) {
            Ok(n)
        } else {
            Err(format!("must be between {min} and {max}, got {n}"))
        }
    }
}

fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("expected an address like 127.0.0.1:6432, got `{s}`"))
}

/// Parses `250ms`, `5s`, `10m`, `1h` or a bare number of seconds.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("expected a duration like 500ms, 5s, 10m or 1h, got `{s}`"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{s}` (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{s}`: {e}"))
}

/// Parses a byte size: a number with an optional `B`, `kB`/`KiB`, `MB`/`MiB` suffix.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: usize = number
        .parse()
        .map_err(|_| format!("expected a size like 1048576 or 64MiB, got `{s}`"))?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KiB" | "KB" => 1024,
        "MB" | "MiB" => 1024 * 1024,
        other => return Err(format!("unknown size unit `{other}` (use B, KiB or MiB)")),
    };
    value
        .checked_mul(factor)
        .ok_or_else(|| format!("`{s}` is too large"))
}

impl FileConfig {
    fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string().trim_end().to_owned(),
        })
    }

    fn validate(self) -> Result<Config, ConfigError> {
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
        let upstream = match &self.upstream {
            Some(url) => Upstream::parse(&url.text()).map_err(|m| invalid("upstream", m))?,
            None => {
                return Err(invalid(
                    "upstream",
                    "not set: give --upstream, PGSIDECAR_UPSTREAM, DATABASE_URL or `upstream` in the file",
                ));
            }
        };
        let auth = field(
            "auth",
            self.auth.as_ref(),
            AuthMethod::ScramSha256,
            str::parse,
        )?;
        if auth == AuthMethod::ScramSha256 && users.values().all(|u| u.verifier.is_none()) {
            return Err(invalid(
                "users",
                "auth is scram-sha-256 but no user has a password or scram_verifier",
            ));
        }
        let admin_listen = match &self.admin_listen {
            None => None,
            Some(v) if v.text().is_empty() => None,
            Some(v) => Some(socket_addr(&v.text()).map_err(|m| invalid("admin_listen", m))?),
        };
        Ok(Config {
            listen: field(
                "listen",
                self.listen.as_ref(),
                default_listen(),
                socket_addr,
            )?,
            admin_listen,
            upstream,
            auth,
            pool,
            databases,
            users,
            client_login_timeout: field(
                "client_login_timeout",
                self.client_login_timeout.as_ref(),
                Duration::from_secs(15),
                parse_duration,
            )?,
            max_client_conn: field(
                "max_client_conn",
                self.max_client_conn.as_ref(),
                10_000,
                ranged(1, 1_000_000),
            )?,
            max_message_size: field(
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
            )?,
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
        server_idle_timeout: Duration::from_secs(600),
        server_lifetime: Duration::from_secs(3600),
        server_connect_timeout: Duration::from_secs(5),
        max_prepared_statements: 200,
    }
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
}

impl UserFile {
    fn validate(self, prefix: &str) -> Result<UserSecret, ConfigError> {
        let verifier = match (&self.password, &self.scram_verifier) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    format!("{prefix}scram_verifier"),
                    "give either password or scram_verifier, not both",
                ));
            }
            (Some(password), None) => Some(ScramVerifier::from_password(password)),
            (None, Some(text)) => Some(
                ScramVerifier::parse(text)
                    .map_err(|m| invalid(format!("{prefix}scram_verifier"), m))?,
            ),
            (None, None) => None,
        };
        Ok(UserSecret {
            verifier,
            server_password: self.server_password.or(self.password),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "test".into(),
            message: e.to_string(),
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
        assert_eq!(config.upstream.port, 5433);
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
    fn database_url_is_the_fallback_upstream() {
        let overrides = Overrides {
            database_url: Some("postgres://h/x".into()),
            ..Overrides::default()
        };
        let config = load_str("auth = \"trust\"\n", &overrides).unwrap();
        assert_eq!(config.upstream.host, "h");
        assert_eq!(config.upstream.user, None);
    }

    #[test]
    fn scram_needs_users() {
        let err = load_str("upstream = \"postgres://h/x\"\n", &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("`users`"), "{err}");
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert!(parse_size("12XB").is_err());
    }
}
