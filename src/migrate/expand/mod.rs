//! Expand/contract migrations: a column change that the application's old and new versions
//! both survive during a rolling deploy. `migrate apply` expands (shadow columns, sync
//! triggers, a batched backfill, a schema of views per version); `migrate complete` contracts
//! once no live sidecar serves the old version any more; `migrate abort` undoes an expansion.

pub mod catalog;
mod change;
mod contract;
pub mod plan;
mod rewrite;
mod run;
pub mod spec;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

pub use contract::{CompleteOptions, OldSidecar};
pub use plan::{ExpandPlan, version_schema};
pub use run::ExpandReport;
pub(crate) use run::ExpandRun;
pub use spec::ExpandSpec;

use super::MigrateError;
use super::run::{is_lock_timeout, lock_retry_wait};
use super::runner::ApplyOptions;

/// Creates the expansions table if it is missing.
pub const EXPANSIONS_DDL: &str = "CREATE SCHEMA IF NOT EXISTS pgsidecar;
CREATE TABLE IF NOT EXISTS pgsidecar.expansions (
    version bigint PRIMARY KEY,
    name text NOT NULL,
    phase text NOT NULL CHECK (phase IN ('backfilling', 'finishing', 'expanded', 'completed')),
    plan text NOT NULL,
    backfill_step integer NOT NULL DEFAULT 0,
    backfill_position bigint,
    backfill_rows bigint NOT NULL DEFAULT 0,
    finish_done integer NOT NULL DEFAULT 0,
    indexes_done integer NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT now(),
    expanded_at timestamptz,
    completed_at timestamptz
)";

/// Where an expansion is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Phase {
    /// Shadow columns and triggers are in place; batches are being backfilled.
    Backfilling,
    /// Constraints and the version schemas are being added.
    Finishing,
    /// Both versions work; `complete` or `abort` next.
    Expanded,
    /// The old representation is gone.
    Completed,
}

impl Phase {
    fn parse(text: &str) -> Self {
        match text {
            "backfilling" => Self::Backfilling,
            "finishing" => Self::Finishing,
            "expanded" => Self::Expanded,
            _ => Self::Completed,
        }
    }
}

/// One row of `pgsidecar.expansions`.
#[derive(Debug, Clone)]
pub struct Expansion {
    /// The migration's version.
    pub version: i64,
    /// Its slug.
    pub name: String,
    /// Where it is.
    pub phase: Phase,
    /// The SQL planned when it started.
    pub plan: ExpandPlan,
    /// The backfill being run (index into the plan's backfills).
    pub backfill_step: i32,
    /// The key its next batch starts at.
    pub backfill_position: Option<i64>,
    /// Rows backfilled so far.
    pub backfill_rows: i64,
    /// Finishing statements done.
    pub finish_done: i32,
    /// Indexes built again on the shadow columns.
    pub indexes_done: i32,
}

impl Expansion {
    /// `0002_amount_in_cents`.
    #[must_use]
    pub fn label(&self) -> String {
        format!("{:04}_{}", self.version, self.name)
    }
}

/// Every expansion recorded, oldest first (none when the table does not exist yet).
///
/// # Errors
/// [`MigrateError::Database`]; a plan that no longer reads.
pub async fn expansions(client: &Client) -> Result<Vec<Expansion>, MigrateError> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('pgsidecar.expansions') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| MigrateError::db("reading pgsidecar.expansions", &e))?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT version, name, phase, plan, backfill_step, backfill_position, backfill_rows,
                    finish_done, indexes_done
               FROM pgsidecar.expansions ORDER BY version",
            &[],
        )
        .await
        .map_err(|e| MigrateError::db("reading pgsidecar.expansions", &e))?;
    rows.iter()
        .map(|row| {
            let version: i64 = row.get(0);
            let plan = serde_json::from_str(row.get(3)).map_err(|e| {
                MigrateError::Rollback(format!(
                    "the recorded plan of expansion {version} does not read: {e}"
                ))
            })?;
            Ok(Expansion {
                version,
                name: row.get(1),
                phase: Phase::parse(row.get(2)),
                plan,
                backfill_step: row.get(4),
                backfill_position: row.get(5),
                backfill_rows: row.get(6),
                finish_done: row.get(7),
                indexes_done: row.get(8),
            })
        })
        .collect()
}

/// The expansion that is not completed yet, if any: there is at most one.
///
/// # Errors
/// As [`expansions`].
pub async fn open_expansion(client: &Client) -> Result<Option<Expansion>, MigrateError> {
    Ok(expansions(client)
        .await?
        .into_iter()
        .find(|e| e.phase != Phase::Completed))
}

/// Runs transactions of an expansion with the runner's timeouts, retrying lock timeouts with
/// backoff like every other migration step, and keeps how long each kind of step held its
/// locks (a transaction holds its locks until it commits).
pub(crate) struct Transactions<'a> {
    client: &'a Client,
    options: &'a ApplyOptions,
    label: String,
    /// Lock timeouts retried.
    pub(crate) lock_retries: u32,
    /// The longest committed transaction of each step.
    pub(crate) held: BTreeMap<String, Duration>,
}

impl<'a> Transactions<'a> {
    pub(crate) fn new(client: &'a Client, options: &'a ApplyOptions, label: String) -> Self {
        Self {
            client,
            options,
            label,
            lock_retries: 0,
            held: BTreeMap::new(),
        }
    }

    /// `BEGIN` with the runner's `lock_timeout` and `statement_timeout`.
    pub(crate) fn begin(&self) -> String {
        format!(
            "BEGIN; SET LOCAL lock_timeout = '{}ms'; SET LOCAL statement_timeout = '{}ms'",
            self.options.lock_timeout.as_millis(),
            self.options.statement_timeout.as_millis()
        )
    }

    /// Runs `attempt` (which begins with [`Transactions::begin`] and ends with `COMMIT`) until
    /// it commits, rolling back after each failure; a lock timeout is tried again up to the
    /// runner's retries.
    pub(crate) async fn run<F, Fut>(
        &mut self,
        what: &str,
        mut attempt: F,
    ) -> Result<(), MigrateError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), tokio_postgres::Error>>,
    {
        loop {
            let started = Instant::now();
            match attempt().await {
                Ok(()) => {
                    let held = started.elapsed();
                    tracing::info!(migration = %self.label, step = what, held_ms = held.as_millis(), "committed");
                    let longest = self.held.entry(what.to_owned()).or_default();
                    *longest = (*longest).max(held);
                    return Ok(());
                }
                Err(e) => {
                    let _ = self.client.batch_execute("ROLLBACK").await;
                    if is_lock_timeout(&e) && self.lock_retries < self.options.lock_retries {
                        self.lock_retries += 1;
                        let wait = lock_retry_wait(self.lock_retries);
                        tracing::warn!(migration = %self.label, step = what, retry = self.lock_retries, ?wait, "lock timeout; retrying");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    return Err(MigrateError::db(format!("{} ({what})", self.label), &e));
                }
            }
        }
    }
}
