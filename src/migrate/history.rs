//! `pgsidecar.schema_migrations`: what was applied, when, by whom, how long it took, whether it
//! failed and where, and the down SQL, so that a rollback works after the files changed.

use tokio_postgres::Client;

use super::MigrateError;

/// Creates the history table if it is missing.
pub const HISTORY_DDL: &str = "CREATE SCHEMA IF NOT EXISTS pgsidecar;
CREATE TABLE IF NOT EXISTS pgsidecar.schema_migrations (
    version bigint PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    status text NOT NULL CHECK (status IN ('applied', 'failed')),
    applied_at timestamptz NOT NULL DEFAULT now(),
    duration_ms bigint NOT NULL DEFAULT 0,
    applied_by text NOT NULL DEFAULT current_user,
    completed_statements integer NOT NULL DEFAULT 0,
    failed_statement integer,
    error text,
    down_sql text,
    backfill_position bigint,
    no_backup_reason text,
    rollback_completed integer
);
ALTER TABLE pgsidecar.schema_migrations
    ADD COLUMN IF NOT EXISTS backfill_position bigint,
    ADD COLUMN IF NOT EXISTS no_backup_reason text,
    ADD COLUMN IF NOT EXISTS rollback_completed integer";

/// One row of the history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AppliedMigration {
    /// Version.
    pub version: i64,
    /// Slug.
    pub name: String,
    /// SHA-256 of the up file when it ran.
    pub checksum: String,
    /// `applied` or `failed`.
    pub status: String,
    /// Statements done (for a failed non-transactional migration: where to resume).
    pub completed_statements: i32,
    /// Index of the statement that failed.
    pub failed_statement: Option<i32>,
    /// Its error.
    pub error: Option<String>,
    /// The down SQL kept for rollback.
    pub down_sql: Option<String>,
    /// When it ran.
    pub applied_at: String,
    /// Who ran it.
    pub applied_by: String,
    /// How long it took.
    pub duration_ms: i64,
    /// A backfill's next key.
    pub backfill_position: Option<i64>,
    /// Down statements done by a statement-by-statement rollback that has not finished.
    pub rollback_completed: Option<i32>,
}

impl AppliedMigration {
    /// Applied completely.
    #[must_use]
    pub fn is_applied(&self) -> bool {
        self.status == "applied"
    }
}

/// Every history row, by version.
///
/// # Errors
/// [`MigrateError::Database`].
pub async fn load(client: &Client) -> Result<Vec<AppliedMigration>, MigrateError> {
    client
        .batch_execute(HISTORY_DDL)
        .await
        .map_err(|e| MigrateError::db("creating pgsidecar.schema_migrations", &e))?;
    let rows = client
        .query(
            "SELECT version, name, checksum, status, completed_statements, failed_statement,
                    error, down_sql, applied_at::text, applied_by, duration_ms, backfill_position,
                    rollback_completed
               FROM pgsidecar.schema_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(|e| MigrateError::db("reading pgsidecar.schema_migrations", &e))?;
    Ok(rows
        .iter()
        .map(|r| AppliedMigration {
            version: r.get(0),
            name: r.get(1),
            checksum: r.get(2),
            status: r.get(3),
            completed_statements: r.get(4),
            failed_statement: r.get(5),
            error: r.get(6),
            down_sql: r.get(7),
            applied_at: r.get(8),
            applied_by: r.get(9),
            duration_ms: r.get(10),
            backfill_position: r.get(11),
            rollback_completed: r.get(12),
        })
        .collect())
}

/// What to record about one migration run.
pub struct Record<'a> {
    pub version: i64,
    pub name: &'a str,
    pub checksum: &'a str,
    pub applied: bool,
    pub completed_statements: i32,
    pub failed_statement: Option<i32>,
    pub error: Option<&'a str>,
    pub down_sql: Option<&'a str>,
    pub duration_ms: i64,
    pub no_backup_reason: Option<&'a str>,
}

/// Inserts or replaces the history row of a migration.
///
/// # Errors
/// [`MigrateError::Database`].
pub async fn record(client: &Client, r: &Record<'_>) -> Result<(), MigrateError> {
    record_raw(client, r)
        .await
        .map_err(|e| MigrateError::db(format!("recording migration {}", r.version), &e))
}

/// [`record`] with the database's error as it is, for callers that record inside their own
/// transaction and decide on retries.
///
/// # Errors
/// The server's error.
pub async fn record_raw(client: &Client, r: &Record<'_>) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO pgsidecar.schema_migrations
                 (version, name, checksum, status, completed_statements, failed_statement, error,
                  down_sql, duration_ms, no_backup_reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (version) DO UPDATE SET
                 name = $2, checksum = $3, status = $4, completed_statements = $5,
                 failed_statement = $6, error = $7, down_sql = $8, duration_ms = $9,
                 no_backup_reason = $10, applied_at = now(), applied_by = current_user,
                 rollback_completed = NULL",
            &[
                &r.version,
                &r.name,
                &r.checksum,
                &if r.applied { "applied" } else { "failed" },
                &r.completed_statements,
                &r.failed_statement,
                &r.error,
                &r.down_sql,
                &r.duration_ms,
                &r.no_backup_reason,
            ],
        )
        .await?;
    Ok(())
}

/// Records how far a backfill got; called inside the batch's own transaction.
///
/// # Errors
/// The server's error.
pub async fn record_backfill(
    client: &Client,
    version: i64,
    name: &str,
    checksum: &str,
    position: i64,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO pgsidecar.schema_migrations (version, name, checksum, status, backfill_position)
             VALUES ($1, $2, $3, 'failed', $4)
             ON CONFLICT (version) DO UPDATE SET backfill_position = $4, error = NULL,
                 failed_statement = NULL",
            &[&version, &name, &checksum, &position],
        )
        .await?;
    Ok(())
}

/// Records how many down statements a statement-by-statement rollback has run; called inside
/// each statement's own transaction.
///
/// # Errors
/// The server's error.
pub async fn record_rollback(
    client: &Client,
    version: i64,
    completed: i32,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE pgsidecar.schema_migrations SET rollback_completed = $2 WHERE version = $1",
            &[&version, &completed],
        )
        .await?;
    Ok(())
}
