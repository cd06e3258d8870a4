//! Where PostgreSQL's programs are (initdb, pg_ctl, pg_dump, pg_restore, psql), for the local
//! cluster and for the operations that drive them.

use std::path::PathBuf;
use std::process::Command;

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
