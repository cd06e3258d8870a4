//! The migration runner for a live database: versioned, checksummed migrations applied under an
//! advisory lock, with lock timeouts retried, resumable non-transactional steps, a linter that
//! refuses undeclared blocking DDL, blocking steps run behind a fleet pause, and rollback from
//! the down SQL kept in the history.

pub mod concurrent;
mod dry_run;
pub mod expand;
mod history;
pub mod lint;
pub mod policy;
mod run;
mod runner;
pub mod source;
mod throttle;
pub mod verify;
mod window;

use std::path::PathBuf;

pub use dry_run::{CopyScope, DryRunReport, dry_run};
pub use history::{AppliedMigration, HISTORY_DDL};
pub use runner::{ApplyOptions, ApplyReport, Migrator, PlannedStep, StepReport};
pub use throttle::ThrottleLimits;
pub use window::MaintenanceWindow;

/// Why a migration command failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A `.sql` file whose name is not `NNNN_slug.sql` / `NNNN_slug.down.sql`.
    #[error("{0}: migration files are named NNNN_slug.sql (and NNNN_slug.down.sql)")]
    FileName(PathBuf),
    /// Two files claim one version.
    #[error("version {version} is used twice: {first} and {second}")]
    DuplicateVersion {
        /// The version.
        version: i64,
        /// One file.
        first: PathBuf,
        /// The other.
        second: PathBuf,
    },
    /// A down file without its up file.
    #[error("{path}: down migration {version} has no up migration")]
    OrphanDown {
        /// The version.
        version: i64,
        /// The down file.
        path: PathBuf,
    },
    /// A directive comment that cannot be understood.
    #[error("{migration} line {line}: {message}")]
    Directive {
        /// The migration.
        migration: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// SQL PostgreSQL's parser rejects.
    #[error("{migration}: SQL does not parse: {message}")]
    Parse {
        /// The migration.
        migration: String,
        /// The parser's message.
        message: String,
    },
    /// An applied migration's file changed since.
    #[error(
        "migration {migration} was edited after it was applied (checksum {applied} in the history, {current} on disk); restore the file, or run `pgsidecar migrate repair` to accept the new text"
    )]
    ChecksumMismatch {
        /// The migration.
        migration: String,
        /// Checksum recorded.
        applied: String,
        /// Checksum of the file now.
        current: String,
    },
    /// Blocking statements the migration does not declare.
    #[error("{0}")]
    Refused(String),
    /// The database refused a statement.
    #[error("{context}: {message}")]
    Database {
        /// What was being done.
        context: String,
        /// The server's message with its SQLSTATE.
        message: String,
    },
    /// Another runner holds the lock and did not let go in time.
    #[error("another migration runner holds the lock (waited {0:?})")]
    Locked(std::time::Duration),
    /// Rollback has nothing to run.
    #[error("{0}")]
    Rollback(String),
    /// The backup policy is not met, or the backup did not verify.
    #[error("backup policy: {0}")]
    Backup(String),
}

impl MigrateError {
    fn db(context: impl Into<String>, e: &tokio_postgres::Error) -> Self {
        let message = match e.as_db_error() {
            Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
            None => e.to_string(),
        };
        Self::Database {
            context: context.into(),
            message,
        }
    }
}
