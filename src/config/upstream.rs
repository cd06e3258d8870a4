//! Where server traffic goes: the upstream hosts with their roles (from a libpq-style multi-host
//! URL and the `[routing]` table), the read aliases, and how transactions are spread over
//! replicas and kept away from lagging ones.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::values::{Scalar, field};
use super::{ConfigError, invalid, parse_duration, parse_size};

/// What a host is for. `Auto` hosts are asked (`pg_is_in_recovery()`), which is what lets
/// pgsidecar follow a failover: a promoted replica becomes the primary without a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostRole {
    /// Takes writes (and reads when no replica is usable).
    Primary,
    /// Takes reads routed to replicas.
    Replica,
    /// Learned from the server itself, continuously.
    Auto,
}

impl FromStr for HostRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "primary" => Ok(Self::Primary),
            "replica" => Ok(Self::Replica),
            "auto" => Ok(Self::Auto),
            other => Err(format!(
                "expected `primary`, `replica` or `auto`, got `{other}`"
            )),
        }
    }
}

impl fmt::Display for HostRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Primary => "primary",
            Self::Replica => "replica",
            Self::Auto => "auto",
        })
    }
}

/// One PostgreSQL server of the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamHost {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Its role as configured.
    pub role: HostRole,
}

impl UpstreamHost {
    /// `host:port`, the name the host goes by in metrics, `SHOW` and spans.
    #[must_use]
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The PostgreSQL servers the proxy fronts. Missing user or database mean "the client's own".
#[derive(Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The hosts, in the order given; never empty.
    pub hosts: Vec<UpstreamHost>,
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
            .field("hosts", &self.hosts)
            .field("user", &self.user)
            .field("database", &self.database)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Upstream {
    /// Parses a `postgres://` URL or a libpq key/value string, with one host or several
    /// (`postgres://db-a:5432,db-b:5432/app`, or `host=db-a,db-b port=5432,5433`). Every host
    /// starts as `auto`; the `[routing]` table may fix roles.
    ///
    /// # Errors
    /// A message saying what is wrong; the caller adds the key.
    pub fn parse(url: &str) -> Result<Self, String> {
        let parsed = tokio_postgres::Config::from_str(url).map_err(|e| e.to_string())?;
        let names: Vec<String> = match parsed.get_hosts() {
            [] => vec!["127.0.0.1".to_owned()],
            hosts => hosts
                .iter()
                .map(|host| match host {
                    tokio_postgres::config::Host::Tcp(name) => Ok(name.clone()),
                    #[cfg(unix)]
                    tokio_postgres::config::Host::Unix(_) => {
                        Err("Unix-socket upstreams are not supported; use a TCP host".to_owned())
                    }
                })
                .collect::<Result<_, _>>()?,
        };
        let ports = parsed.get_ports();
        let count = names.len();
        let port_of = |i: usize| match ports {
            [] => Ok(5432),
            [port] => Ok(*port),
            ports if ports.len() == count => Ok(ports[i]),
            _ => Err(format!(
                "{} ports for {count} hosts: give one port for all, or one per host",
                ports.len(),
            )),
        };
        let mut hosts = Vec::with_capacity(names.len());
        for (i, host) in names.into_iter().enumerate() {
            let candidate = UpstreamHost {
                host,
                port: port_of(i)?,
                role: HostRole::Auto,
            };
            if hosts.contains(&candidate) {
                return Err(format!("host {} is listed twice", candidate.address()));
            }
            hosts.push(candidate);
        }
        Ok(Self {
            hosts,
            user: parsed.get_user().map(str::to_owned),
            database: parsed.get_dbname().map(str::to_owned),
            password: parsed
                .get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
        })
    }

    /// The hosts as `host:port`, comma-separated, for logs and `SHOW CONFIG`.
    #[must_use]
    pub fn addresses(&self) -> String {
        self.hosts
            .iter()
            .map(UpstreamHost::address)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// How read transactions pick among the usable replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// The replica with the fewest server connections in use for this pool; ties go round.
    LeastBusy,
    /// Each replica in turn.
    RoundRobin,
}

impl FromStr for Balance {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "least_busy" => Ok(Self::LeastBusy),
            "round_robin" => Ok(Self::RoundRobin),
            other => Err(format!(
                "expected `least_busy` or `round_robin`, got `{other}`"
            )),
        }
    }
}

/// What a read does when no replica is usable (none configured, all down or lagging).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFallback {
    /// Run it on the primary.
    Primary,
    /// Wait (up to `acquire_timeout`) for a replica to become usable.
    Wait,
}

impl FromStr for ReadFallback {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "primary" => Ok(Self::Primary),
            "wait" => Ok(Self::Wait),
            other => Err(format!("expected `primary` or `wait`, got `{other}`")),
        }
    }
}

/// How transactions are routed over the upstream's hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingSettings {
    /// Client-facing database names whose transactions all go to replicas, and the database
    /// each stands for (`app_ro = "app"`).
    pub read_aliases: BTreeMap<String, String>,
    /// Send transactions declared read-only (`BEGIN READ ONLY`, `SET TRANSACTION READ ONLY`
    /// at their start, `default_transaction_read_only`) to replicas, in transaction mode.
    pub read_only_transactions: bool,
    /// How a replica is chosen.
    pub balance: Balance,
    /// Where reads go when no replica is usable.
    pub fallback: ReadFallback,
    /// A replica further behind the primary than this (WAL bytes) gets no new transactions.
    pub max_lag_bytes: u64,
    /// A replica whose last replayed transaction is older than this, while it has WAL left to
    /// replay, gets no new transactions.
    pub max_lag: Duration,
    /// How often each host is asked for its role and lag.
    pub check_interval: Duration,
    /// The role the host checks log in as (default: the upstream URL's user).
    pub monitor_user: Option<String>,
}

impl Default for RoutingSettings {
    fn default() -> Self {
        Self {
            read_aliases: BTreeMap::new(),
            read_only_transactions: false,
            balance: Balance::LeastBusy,
            fallback: ReadFallback::Primary,
            max_lag_bytes: 16 * 1024 * 1024,
            max_lag: Duration::from_secs(10),
            check_interval: Duration::from_secs(1),
            monitor_user: None,
        }
    }
}

impl RoutingSettings {
    /// The database a client-facing name stands for, and whether it is a read alias.
    #[must_use]
    pub fn resolve<'a>(&'a self, database: &'a str) -> (&'a str, bool) {
        self.read_aliases
            .get(database)
            .map_or((database, false), |target| (target.as_str(), true))
    }
}

/// The `[routing]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RoutingFile {
    #[serde(default)]
    roles: BTreeMap<String, Scalar>,
    #[serde(default)]
    read_aliases: BTreeMap<String, String>,
    read_only_transactions: Option<Scalar>,
    balance: Option<Scalar>,
    fallback: Option<Scalar>,
    max_lag_bytes: Option<Scalar>,
    max_lag: Option<Scalar>,
    check_interval: Option<Scalar>,
    monitor_user: Option<Scalar>,
}

impl RoutingFile {
    /// The table as settings; `roles` are applied to `upstream`'s hosts, each naming one of them.
    pub(super) fn validate(&self, upstream: &mut Upstream) -> Result<RoutingSettings, ConfigError> {
        let listed = upstream.addresses();
        for (address, role) in &self.roles {
            let key = format!("routing.roles.\"{address}\"");
            let role: HostRole = role.text().parse().map_err(|m| invalid(&key, m))?;
            let host = upstream
                .hosts
                .iter_mut()
                .find(|h| h.address() == *address)
                .ok_or_else(|| {
                    invalid(
                        &key,
                        format!("no such upstream host; the upstream lists {listed}"),
                    )
                })?;
            host.role = role;
        }
        if upstream
            .hosts
            .iter()
            .filter(|h| h.role == HostRole::Primary)
            .count()
            > 1
        {
            return Err(invalid(
                "routing.roles",
                "at most one host can be `primary`; use `auto` to follow failovers",
            ));
        }
        for (alias, target) in &self.read_aliases {
            if alias == target || self.read_aliases.contains_key(target) {
                return Err(invalid(
                    format!("routing.read_aliases.{alias}"),
                    format!("`{target}` must be a database, not an alias"),
                ));
            }
        }
        let defaults = RoutingSettings::default();
        let flag = |v: &Scalar| match v.text().as_str() {
            "true" | "on" => Ok(true),
            "false" | "off" => Ok(false),
            other => Err(format!("expected true or false, got `{other}`")),
        };
        Ok(RoutingSettings {
            read_aliases: self.read_aliases.clone(),
            read_only_transactions: match &self.read_only_transactions {
                Some(v) => flag(v).map_err(|m| invalid("routing.read_only_transactions", m))?,
                None => false,
            },
            balance: field(
                "routing.balance",
                self.balance.as_ref(),
                defaults.balance,
                str::parse,
            )?,
            fallback: field(
                "routing.fallback",
                self.fallback.as_ref(),
                defaults.fallback,
                str::parse,
            )?,
            max_lag_bytes: field(
                "routing.max_lag_bytes",
                self.max_lag_bytes.as_ref(),
                defaults.max_lag_bytes,
                |s| parse_size(s).map(|n| n as u64),
            )?,
            max_lag: field(
                "routing.max_lag",
                self.max_lag.as_ref(),
                defaults.max_lag,
                parse_duration,
            )?,
            check_interval: field(
                "routing.check_interval",
                self.check_interval.as_ref(),
                defaults.check_interval,
                |s| {
                    let d = parse_duration(s)?;
                    if d >= Duration::from_millis(100) {
                        Ok(d)
                    } else {
                        Err(format!("must be at least 100ms, got {d:?}"))
                    }
                },
            )?,
            monitor_user: self
                .monitor_user
                .as_ref()
                .map(Scalar::text)
                .filter(|s| !s.is_empty()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_host_url_lists_every_host_with_its_port() {
        let upstream = Upstream::parse("postgres://u:p@db-a:5432,db-b:5433/app").unwrap();
        let addresses: Vec<String> = upstream.hosts.iter().map(UpstreamHost::address).collect();
        assert_eq!(addresses, ["db-a:5432", "db-b:5433"]);
        assert!(upstream.hosts.iter().all(|h| h.role == HostRole::Auto));
        assert_eq!(upstream.database.as_deref(), Some("app"));
    }

    #[test]
    fn one_port_serves_every_host_and_a_mismatched_count_is_refused() {
        let upstream = Upstream::parse("host=a,b port=6000 dbname=app").unwrap();
        assert!(upstream.hosts.iter().all(|h| h.port == 6000));
        let err = Upstream::parse("host=a,b,c port=1,2").unwrap_err();
        assert!(err.contains("2 ports for 3 hosts"), "{err}");
    }

    #[test]
    fn a_host_listed_twice_is_refused() {
        let err = Upstream::parse("postgres://a:1,a:1/app").unwrap_err();
        assert!(err.contains("a:1 is listed twice"), "{err}");
    }

    #[test]
    fn roles_name_hosts_of_the_upstream() {
        let mut upstream = Upstream::parse("postgres://a:1,b:2/app").unwrap();
        let file: RoutingFile = toml::from_str("roles = { \"b:2\" = \"replica\" }").unwrap();
        file.validate(&mut upstream).unwrap();
        assert_eq!(upstream.hosts[1].role, HostRole::Replica);
        let file: RoutingFile = toml::from_str("roles = { \"c:3\" = \"replica\" }").unwrap();
        let err = file.validate(&mut upstream).unwrap_err().to_string();
        assert!(
            err.contains("routing.roles.\"c:3\"") && err.contains("a:1,b:2"),
            "{err}"
        );
    }

    #[test]
    fn two_fixed_primaries_are_refused() {
        let mut upstream = Upstream::parse("postgres://a:1,b:2/app").unwrap();
        let file: RoutingFile =
            toml::from_str("roles = { \"a:1\" = \"primary\", \"b:2\" = \"primary\" }").unwrap();
        assert!(file.validate(&mut upstream).is_err());
    }

    #[test]
    fn a_read_alias_resolves_to_its_database() {
        let mut upstream = Upstream::parse("postgres://a/app").unwrap();
        let file: RoutingFile = toml::from_str("read_aliases = { app_ro = \"app\" }").unwrap();
        let routing = file.validate(&mut upstream).unwrap();
        assert_eq!(routing.resolve("app_ro"), ("app", true));
        assert_eq!(routing.resolve("app"), ("app", false));
        let file: RoutingFile = toml::from_str("read_aliases = { a = \"b\", b = \"c\" }").unwrap();
        assert!(file.validate(&mut upstream).is_err());
    }
}
