//! Where PostgreSQL's programs are (initdb, pg_ctl, pg_dump, pg_restore, psql), for the local
//! cluster and for the operations that drive them, and how to run them.

use std::path::PathBuf;
use std::process::Command;

use tokio_postgres::Config;
use tokio_postgres::config::{Host, SslMode};

/// The directory holding PostgreSQL's programs: `PG_BINDIR`, else `pg_config --bindir`,
/// else Debian's PostgreSQL 15 location.
#[must_use]
pub fn pg_bindir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        return dir.into();
    }
    let debian = PathBuf::from("/usr/lib/postgresql/15/bin");
    if debian.join("initdb").exists() {
        return debian;
    }
    Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or(debian, |s| PathBuf::from(s.trim()))
}

/// A libpq key/value connection string for `config`, pointed at `database`, for connections
/// the proxy opens itself (it carries the password).
#[must_use]
pub fn conninfo(config: &Config, database: &str) -> String {
    let mut parts = connection_keys(config, database);
    if let Some(password) = config.get_password() {
        parts.push(format!(
            "password={}",
            quote(&String::from_utf8_lossy(password))
        ));
    }
    parts.join(" ")
}

fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Every key of the connection but the password.
fn connection_keys(config: &Config, database: &str) -> Vec<String> {
    let mut parts = Vec::new();
    if let Some(Host::Tcp(host)) = config.get_hosts().first() {
        parts.push(format!("host={}", quote(host)));
    }
    if let Some(port) = config.get_ports().first() {
        parts.push(format!("port={port}"));
    }
    if let Some(user) = config.get_user() {
        parts.push(format!("user={}", quote(user)));
    }
    parts.push(format!(
        "sslmode={}",
        match config.get_ssl_mode() {
            SslMode::Disable => "disable",
            SslMode::Require => "require",
            _ => "prefer",
        }
    ));
    parts.push(format!("dbname={}", quote(database)));
    parts
}

/// How one of PostgreSQL's client programs reaches a database without a secret on its command
/// line (argv is visible to every user in `ps`): the connection string carries host, port,
/// user, `sslmode` and database; the password goes to the child's environment (`PGPASSWORD`,
/// readable only by the same user). `PGSSLROOTCERT`, when set, is inherited, so libpq verifies
/// the server's certificate as the proxy's own control connections do.
#[derive(Clone)]
pub struct ToolConnection {
    /// The connection string for the program's argument.
    pub conninfo: String,
    password: Option<String>,
}

impl std::fmt::Debug for ToolConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolConnection")
            .field("conninfo", &self.conninfo)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl ToolConnection {
    /// The connection of `config`, pointed at `database`.
    #[must_use]
    pub fn new(config: &Config, database: &str) -> Self {
        Self {
            conninfo: connection_keys(config, database).join(" "),
            password: config
                .get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
        }
    }

    /// The connection a URL (or key/value string) names.
    ///
    /// # Errors
    /// The URL's parse error.
    pub fn parse(url: &str) -> Result<Self, String> {
        let config: Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| e.to_string())?;
        let database = config.get_dbname().map_or_else(
            || config.get_user().unwrap_or("postgres").to_owned(),
            str::to_owned,
        );
        Ok(Self::new(&config, &database))
    }
}

/// Runs one of PostgreSQL's programs, with `connection`'s password (if any) in its environment;
/// its standard output, or its standard error on failure.
///
/// # Errors
/// The program's standard error (or why it could not start).
pub async fn run(
    program: &str,
    args: &[&str],
    connection: Option<&ToolConnection>,
) -> Result<String, String> {
    let mut command = tokio::process::Command::new(pg_bindir().join(program));
    command.args(args);
    if let Some(password) = connection.and_then(|c| c.password.as_deref()) {
        command.env("PGPASSWORD", password);
    }
    let output = command
        .output()
        .await
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}
