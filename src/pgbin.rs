//! Where PostgreSQL's programs are (initdb, pg_ctl, pg_dump, pg_restore, psql), for the local
//! cluster and for the operations that drive them, and how to run them.

use std::path::PathBuf;
use std::process::Command;

use tokio_postgres::Config;
use tokio_postgres::config::Host;

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

/// A libpq key/value connection string for `config`, pointed at `database`, for the client
/// programs.
#[must_use]
pub fn conninfo(config: &Config, database: &str) -> String {
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
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
    if let Some(password) = config.get_password() {
        parts.push(format!(
            "password={}",
            quote(&String::from_utf8_lossy(password))
        ));
    }
    parts.push(format!("dbname={}", quote(database)));
    parts.join(" ")
}

/// Runs one of PostgreSQL's programs; its standard output, or its standard error on failure.
///
/// # Errors
/// The program's standard error (or why it could not start).
pub async fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = tokio::process::Command::new(pg_bindir().join(program))
        .args(args)
        .output()
        .await
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}
