//! Backups that are proven restorable: a custom-format dump taken in an exported snapshot with a
//! manifest of what the database held in that same snapshot (row counts and content hashes per
//! table), and a verification that restores the dump into a scratch database and compares.

mod create;
mod manifest;
mod verify;

use std::path::PathBuf;

pub use create::create;
pub use manifest::{Manifest, TableDigest, manifest_path, partial_path};
pub use verify::{VerifyReport, latest_verified, verify};

/// Why a backup or its verification failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The database refused a statement.
    #[error("{context}: {message}")]
    Database {
        /// What was being done.
        context: String,
        /// The server's message.
        message: String,
    },
    /// pg_dump / pg_restore failed.
    #[error("{program} failed: {message}")]
    Tool {
        /// The program.
        program: &'static str,
        /// Its standard error.
        message: String,
    },
    /// The dump does not match its manifest, or the restore does not match the source.
    #[error("backup verification failed: {0}")]
    Mismatch(String),
    /// The manifest is missing or unreadable.
    #[error("manifest {path}: {message}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl BackupError {
    fn db(context: impl Into<String>, e: &tokio_postgres::Error) -> Self {
        Self::Database {
            context: context.into(),
            message: e.as_db_error().map_or_else(
                || e.to_string(),
                |d| format!("{} (SQLSTATE {})", d.message(), d.code().code()),
            ),
        }
    }
}

/// Records backups and their verification in the database they were taken from, so that the
/// migration runner can require a recent verified one.
pub const BACKUPS_DDL: &str = "CREATE SCHEMA IF NOT EXISTS pgsidecar;
CREATE TABLE IF NOT EXISTS pgsidecar.backups (
    sha256 text PRIMARY KEY,
    file text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    size_bytes bigint NOT NULL,
    verified_at timestamptz,
    restore_seconds float8
)";

/// Connects with tokio-postgres and drives the connection in the background.
async fn connect(url: &str, what: &str) -> Result<tokio_postgres::Client, BackupError> {
    let (client, connection) = tokio_postgres::connect(url, crate::tls::control_connector())
        .await
        .map_err(|e| BackupError::db(format!("connecting to the {what}"), &e))?;
    tokio::spawn(connection);
    Ok(client)
}

/// Exact row count and order-independent content hash of every table, in the caller's snapshot.
async fn digest_tables(client: &tokio_postgres::Client) -> Result<Vec<TableDigest>, BackupError> {
    let db = |e: tokio_postgres::Error| BackupError::db("reading table contents", &e);
    let tables = client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'r' AND c.relpersistence <> 't'
                AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                AND n.nspname NOT LIKE 'pg\\_%'
                AND format('%I.%I', n.nspname, c.relname) <> 'pgsidecar.backups'
              ORDER BY 1",
            &[],
        )
        .await
        .map_err(db)?;
    let mut digests = Vec::with_capacity(tables.len());
    for row in tables {
        let table: String = row.get(0);
        let digest = client
            .query_one(
                &format!(
                    "SELECT count(*)::bigint,
                            coalesce(md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))), '')
                       FROM ONLY {table} t"
                ),
                &[],
            )
            .await
            .map_err(db)?;
        digests.push(TableDigest {
            table,
            rows: digest.get(0),
            hash: digest.get(1),
        });
    }
    Ok(digests)
}
