//! Applying, planning and rolling back migrations against one database, on a direct connection
//! under a session advisory lock taken with `pg_try_advisory_lock` in a polling loop (a blocking
//! wait could deadlock with a concurrent index build).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_postgres::types::Type;

use super::MigrateError;
use super::concurrent;
use super::history::{self, AppliedMigration, Record};
use super::lint::{Finding, lint, lint_all};
use super::source::{self, Backfill, Migration};
use super::window::MaintenanceWindow;
use crate::gate::fleet::{self, FleetError, FleetPause};

/// The advisory lock every pgsidecar runner takes ("pgsidecar" in ASCII).
const LOCK_KEY: i64 = 0x7067_7369_6465_6361;

/// How a run behaves.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// `lock_timeout` of every statement unless the migration says otherwise.
    pub lock_timeout: Duration,
    /// `statement_timeout` of every statement unless the migration says otherwise.
    pub statement_timeout: Duration,
    /// How many times a statement that hit its lock timeout is tried again.
    pub lock_retries: u32,
    /// How long to wait for another runner's lock.
    pub lock_wait: Duration,
    /// When declared blocking steps may run; never without one.
    pub maintenance_window: Option<MaintenanceWindow>,
    /// Each sidecar's wait for in-flight transactions when the fleet is paused for a blocking step.
    pub pause_deadline: Duration,
    /// The pause lifts by itself after this.
    pub pause_max_hold: Duration,
    /// Heartbeats older than this mark a sidecar dead.
    pub stale_after: Duration,
    /// Apply up to and including this version only.
    pub target: Option<i64>,
    /// Pause the sidecars registered in the database around blocking steps, and tell them when
    /// the schema changed. Off for a dry run on a copy.
    pub fleet: bool,
    /// List the locks each transactional migration holds just before it commits.
    pub report_locks: bool,
    /// Why this run goes ahead without a verified backup; recorded in the history.
    pub no_backup_reason: Option<String>,
    /// `lock_timeout` of a concurrent index build: its waits for older transactions are lock
    /// waits, and the short `lock_timeout` of other statements would fail it on a busy database.
    pub concurrent_wait: Duration,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            lock_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(30 * 60),
            lock_retries: 5,
            lock_wait: Duration::from_secs(300),
            maintenance_window: None,
            pause_deadline: Duration::from_secs(10),
            pause_max_hold: Duration::from_secs(60),
            stale_after: Duration::from_secs(10),
            target: None,
            fleet: true,
            report_locks: false,
            no_backup_reason: None,
            concurrent_wait: Duration::from_secs(30 * 60),
        }
    }
}

/// One migration in a plan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlannedStep {
    /// `0003_add_index`.
    pub migration: String,
    /// Runs in one transaction.
    pub transactional: bool,
    /// Statement to start from (a failed non-transactional migration resumes).
    pub resume_from: usize,
    /// Key a backfill resumes at.
    pub backfill_from: Option<i64>,
    /// Statements in all.
    pub statements: usize,
    /// The declared reason, when it is declared blocking.
    pub blocking: Option<String>,
    /// What the linter found.
    pub findings: Vec<Finding>,
}

/// What one applied migration did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepReport {
    /// `0003_add_index`.
    pub migration: String,
    /// Wall time.
    pub seconds: f64,
    /// Lock timeouts retried.
    pub lock_retries: u32,
    /// Time the fleet was paused for its blocking statements.
    pub paused_seconds: f64,
    /// Rows a backfill changed in this run.
    pub backfill_rows: u64,
    /// Relation locks held at commit (with `report_locks`), e.g. `AccessExclusiveLock on notes`.
    pub locks: Vec<String>,
    /// Sessions a concurrent index build waited for.
    pub waited_for: Vec<String>,
}

/// What a run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ApplyReport {
    /// Migrations applied, in order.
    pub applied: Vec<StepReport>,
    /// Sidecars that acknowledged the schema change (their prepared statements are renewed).
    pub sidecars_told: usize,
}

/// A connection to the target database and the migrations on disk.
pub struct Migrator {
    client: Client,
    url: String,
    migrations: Vec<Migration>,
}

fn millis(d: Duration) -> u128 {
    d.as_millis()
}

fn is_lock_timeout(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE)
}

impl Migrator {
    /// Reads `dir` and connects to `url` (directly: not through a transaction pooler).
    ///
    /// # Errors
    /// [`MigrateError`] for bad files or an unreachable database.
    pub async fn open(url: &str, dir: &Path) -> Result<Self, MigrateError> {
        let migrations = source::load(dir)?;
        let (client, connection) = tokio_postgres::connect(url, crate::tls::control_connector())
            .await
            .map_err(|e| MigrateError::db("connecting to the database", &e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "migration connection closed");
            }
        });
        Ok(Self {
            client,
            url: url.to_owned(),
            migrations,
        })
    }

    /// The migrations on disk.
    #[must_use]
    pub fn migrations(&self) -> &[Migration] {
        &self.migrations
    }

    async fn lock(&self, wait: Duration) -> Result<(), MigrateError> {
        let started = Instant::now();
        let mut told = false;
        loop {
            let row = self
                .client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY])
                .await
                .map_err(|e| MigrateError::db("taking the migration lock", &e))?;
            if row.get::<_, bool>(0) {
                return Ok(());
            }
            if started.elapsed() >= wait {
                return Err(MigrateError::Locked(wait));
            }
            if !told {
                tracing::info!("another migration runner holds the lock; waiting");
                told = true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn unlock(&self) {
        let _ = self
            .client
            .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
            .await;
    }

    /// The history, checked against the files: an applied migration whose file changed is an
    /// error.
    ///
    /// # Errors
    /// [`MigrateError::ChecksumMismatch`], [`MigrateError::Database`].
    pub async fn history(&self) -> Result<Vec<AppliedMigration>, MigrateError> {
        let history = history::load(&self.client).await?;
        for row in history.iter().filter(|r| r.is_applied()) {
            if let Some(m) = self.migrations.iter().find(|m| m.version == row.version)
                && (m.checksum != row.checksum || m.down_sql != row.down_sql)
            {
                return Err(MigrateError::ChecksumMismatch {
                    migration: m.label(),
                    applied: row.checksum.clone(),
                    current: m.checksum.clone(),
                });
            }
        }
        Ok(history)
    }

    /// What `apply` would run, in order, with the linter's findings.
    ///
    /// # Errors
    /// As [`Migrator::history`].
    pub async fn plan(&self, target: Option<i64>) -> Result<Vec<PlannedStep>, MigrateError> {
        let history = self.history().await?;
        let findings = lint_all(&self.migrations);
        Ok(self
            .migrations
            .iter()
            .zip(findings)
            .filter(|(m, _)| target.is_none_or(|t| m.version <= t))
            .filter_map(|(m, findings)| {
                let row = history.iter().find(|r| r.version == m.version);
                if row.is_some_and(AppliedMigration::is_applied) {
                    return None;
                }
                let resume_from = match row {
                    Some(r) if m.directives.no_transaction => {
                        usize::try_from(r.completed_statements).unwrap_or(0)
                    }
                    _ => 0,
                };
                Some(PlannedStep {
                    migration: m.label(),
                    transactional: !m.directives.no_transaction,
                    resume_from,
                    backfill_from: row.and_then(|r| r.backfill_position),
                    statements: m.statements.len(),
                    blocking: m.directives.blocking.clone(),
                    findings,
                })
            })
            .collect())
    }

    /// Refuses a plan with errors, undeclared blocking statements, or declared ones outside a
    /// maintenance window.
    fn vet(plan: &[PlannedStep], options: &ApplyOptions, verb: &str) -> Result<(), MigrateError> {
        let mut problems = Vec::new();
        for step in plan {
            for f in &step.findings {
                if f.error {
                    problems.push(format!(
                        "{} statement {}: {} — {}",
                        f.migration,
                        f.statement + 1,
                        f.problem,
                        f.advice
                    ));
                } else if step.blocking.is_none() {
                    problems.push(format!(
                        "{} statement {} `{}`: {}; takes {}. Instead: {}. (If the lock is acceptable, declare `-- pgsidecar:blocking reason=\"...\"`.)",
                        f.migration,
                        f.statement + 1,
                        f.sql,
                        f.problem,
                        f.lock,
                        f.advice
                    ));
                }
            }
            let reason = step.blocking.as_deref().unwrap_or_default();
            match options.maintenance_window {
                _ if step.blocking.is_none() => {}
                None => problems.push(format!(
                    "{} is declared blocking ({reason}); it runs only in a maintenance window (--maintenance-window HH:MM-HH:MM, or now)",
                    step.migration
                )),
                Some(window) if !window.is_open() => problems.push(format!(
                    "{} is declared blocking ({reason}); the maintenance window {window} is closed now",
                    step.migration
                )),
                Some(_) => {}
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(MigrateError::Refused(format!(
                "{verb} refused:\n  {}",
                problems.join("\n  ")
            )))
        }
    }

    /// Applies every pending migration (up to `options.target`).
    ///
    /// # Errors
    /// [`MigrateError`]; a failed migration is recorded in the history first.
    pub async fn apply(&self, options: &ApplyOptions) -> Result<ApplyReport, MigrateError> {
        self.lock(options.lock_wait).await?;
        let result = self.apply_locked(options).await;
        self.unlock().await;
        result
    }

    async fn apply_locked(&self, options: &ApplyOptions) -> Result<ApplyReport, MigrateError> {
        let plan = self.plan(options.target).await?;
        Self::vet(&plan, options, "apply")?;
        let mut report = ApplyReport::default();
        for step in &plan {
            let migration = self
                .migrations
                .iter()
                .find(|m| m.label() == step.migration)
                .ok_or_else(|| MigrateError::Rollback(format!("{} vanished", step.migration)))?;
            let blocking: BTreeSet<usize> = step.findings.iter().map(|f| f.statement).collect();
            let started = Instant::now();
            let mut run = Run {
                migrator: self,
                migration,
                options,
                blocking,
                lock_retries: 0,
                paused: Duration::ZERO,
                backfill_rows: 0,
                locks: Vec::new(),
                waited_for: Vec::new(),
                down: false,
            };
            if let Some(spec) = &migration.directives.backfill {
                run.backfill(spec, step.backfill_from).await?;
            } else if step.transactional {
                run.transactional().await?;
            } else {
                run.one_by_one(step.resume_from).await?;
            }
            tracing::info!(migration = %step.migration, seconds = started.elapsed().as_secs_f64(), "applied");
            report.applied.push(StepReport {
                migration: step.migration.clone(),
                seconds: started.elapsed().as_secs_f64(),
                lock_retries: run.lock_retries,
                paused_seconds: run.paused.as_secs_f64(),
                backfill_rows: run.backfill_rows,
                locks: std::mem::take(&mut run.locks),
                waited_for: std::mem::take(&mut run.waited_for),
            });
        }
        if options.fleet && !report.applied.is_empty() {
            // Plans cached before the change could fail or be wrong: every sidecar prepares
            // afresh. Best effort: without a fleet there is nobody to tell.
            match fleet::fleet_invalidate(&self.url, options.stale_after).await {
                Ok(told) => report.sidecars_told = told.acks.len(),
                Err(e) => tracing::warn!(error = %e, "could not tell the fleet the schema changed"),
            }
        }
        Ok(report)
    }

    /// Rolls back applied migrations newer than `to` (default: the newest one), newest first,
    /// with the down SQL recorded when they were applied — under the same policy as an apply:
    /// the down SQL is linted (a blocking statement must be declared in its leading comments
    /// and runs only in the maintenance window, behind a fleet pause), and every statement runs
    /// with `lock_timeout` / `statement_timeout` and lock-timeout retries.
    ///
    /// # Errors
    /// [`MigrateError::Rollback`] when there is nothing to roll back or no down SQL;
    /// [`MigrateError::Refused`] when the policy refuses a down SQL; a failed statement leaves
    /// the migration recorded as applied.
    pub async fn rollback(
        &self,
        to: Option<i64>,
        options: &ApplyOptions,
    ) -> Result<Vec<String>, MigrateError> {
        self.lock(options.lock_wait).await?;
        let result = self.rollback_locked(to, options).await;
        self.unlock().await;
        result
    }

    async fn rollback_locked(
        &self,
        to: Option<i64>,
        options: &ApplyOptions,
    ) -> Result<Vec<String>, MigrateError> {
        let history = history::load(&self.client).await?;
        let applied: Vec<&AppliedMigration> = history.iter().filter(|r| r.is_applied()).collect();
        let floor = match to {
            Some(v) => v,
            None => match applied.last() {
                Some(last) => last.version - 1,
                None => return Err(MigrateError::Rollback("nothing is applied".into())),
            },
        };
        let mut downs = Vec::new();
        for row in applied.iter().rev().filter(|r| r.version > floor) {
            let label = format!("{:04}_{}", row.version, row.name);
            let down = row.down_sql.as_deref().ok_or_else(|| {
                MigrateError::Rollback(format!("{label} was applied without a down migration"))
            })?;
            downs.push((label, source::down_migration(row.version, &row.name, down)?));
        }
        // Every down SQL is vetted before the first one runs.
        let plan: Vec<PlannedStep> = downs
            .iter()
            .map(|(_, m)| PlannedStep {
                migration: m.label(),
                transactional: !m.directives.no_transaction,
                resume_from: 0,
                backfill_from: None,
                statements: m.statements.len(),
                blocking: m.directives.blocking.clone(),
                findings: lint(m),
            })
            .collect();
        Self::vet(&plan, options, "rollback")?;
        let mut undone = Vec::new();
        for ((label, migration), step) in downs.iter().zip(&plan) {
            let mut run = Run {
                migrator: self,
                migration,
                options,
                blocking: step.findings.iter().map(|f| f.statement).collect(),
                lock_retries: 0,
                paused: Duration::ZERO,
                backfill_rows: 0,
                locks: Vec::new(),
                waited_for: Vec::new(),
                down: true,
            };
            if step.transactional {
                run.transactional().await?;
            } else {
                run.one_by_one(0).await?;
            }
            tracing::info!(migration = %label, lock_retries = run.lock_retries, "rolled back");
            undone.push(label.clone());
        }
        Ok(undone)
    }

    /// The connection, for checks around a run.
    #[must_use]
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Indexes left INVALID (a failed concurrent build), by name.
    ///
    /// # Errors
    /// [`MigrateError::Database`].
    pub async fn invalid_indexes(&self) -> Result<Vec<String>, MigrateError> {
        let rows = self
            .client
            .query(
                "SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid ORDER BY 1",
                &[],
            )
            .await
            .map_err(|e| MigrateError::db("looking for INVALID indexes", &e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Accepts the current text of applied migrations whose files changed: their checksums
    /// (and down SQL) are updated. Returns the migrations repaired.
    ///
    /// # Errors
    /// [`MigrateError::Database`].
    pub async fn repair(&self) -> Result<Vec<String>, MigrateError> {
        let history = history::load(&self.client).await?;
        let mut repaired = Vec::new();
        for row in history.iter().filter(|r| r.is_applied()) {
            if let Some(m) = self.migrations.iter().find(|m| m.version == row.version)
                && (m.checksum != row.checksum || m.down_sql != row.down_sql)
            {
                self.client
                    .execute(
                        "UPDATE pgsidecar.schema_migrations SET checksum = $2, down_sql = $3 WHERE version = $1",
                        &[&m.version, &m.checksum, &m.down_sql],
                    )
                    .await
                    .map_err(|e| MigrateError::db("repairing checksums", &e))?;
                repaired.push(m.label());
            }
        }
        Ok(repaired)
    }
}

/// One migration being applied.
struct Run<'a> {
    migrator: &'a Migrator,
    migration: &'a Migration,
    options: &'a ApplyOptions,
    /// Statements the linter flagged (declared blocking): run behind a fleet pause.
    blocking: BTreeSet<usize>,
    lock_retries: u32,
    paused: Duration,
    backfill_rows: u64,
    locks: Vec<String>,
    /// Sessions the concurrent index builds of this migration waited for.
    waited_for: Vec<String>,
    /// Running a recorded down SQL: success deletes the history row, a failure leaves it.
    down: bool,
}

impl Run<'_> {
    /// A successful rollback: the migration is no longer applied.
    async fn forget(&self) -> Result<(), MigrateError> {
        self.client()
            .execute(
                "DELETE FROM pgsidecar.schema_migrations WHERE version = $1",
                &[&self.migration.version],
            )
            .await
            .map(|_| ())
            .map_err(|e| MigrateError::db(self.migration.label(), &e))
    }

    fn client(&self) -> &Client {
        &self.migrator.client
    }

    /// The history row of this migration with the given outcome.
    fn entry<'e>(
        &'e self,
        applied: bool,
        completed_statements: i32,
        failed_statement: Option<i32>,
        error: Option<&'e str>,
        duration_ms: i64,
    ) -> Record<'e> {
        let m = self.migration;
        Record {
            version: m.version,
            name: &m.name,
            checksum: &m.checksum,
            applied,
            completed_statements,
            failed_statement,
            error,
            down_sql: m.down_sql.as_deref(),
            duration_ms,
            no_backup_reason: self.options.no_backup_reason.as_deref(),
        }
    }

    /// Puts the session's timeouts back after statements that ran outside a transaction.
    async fn reset_timeouts(&self) -> Result<(), tokio_postgres::Error> {
        self.client()
            .batch_execute("RESET lock_timeout; RESET statement_timeout")
            .await
    }

    fn timeouts(&self, local: bool) -> String {
        let d = &self.migration.directives;
        let scope = if local { "LOCAL " } else { "" };
        format!(
            "SET {scope}lock_timeout = '{}ms'; SET {scope}statement_timeout = '{}ms'",
            millis(d.lock_timeout.unwrap_or(self.options.lock_timeout)),
            millis(
                d.statement_timeout
                    .unwrap_or(self.options.statement_timeout)
            ),
        )
    }

    async fn backoff(&mut self) -> bool {
        if self.lock_retries >= self.options.lock_retries {
            return false;
        }
        self.lock_retries += 1;
        let wait = Duration::from_millis(200 * 2u64.pow(self.lock_retries.min(5)));
        tracing::warn!(migration = %self.migration.label(), retry = self.lock_retries, ?wait, "lock timeout; retrying");
        tokio::time::sleep(wait).await;
        true
    }

    /// Pauses the fleet registered in the target database, if any sidecar is registered.
    async fn pause_fleet(&self) -> Result<Option<Instant>, MigrateError> {
        if !self.options.fleet {
            return Ok(None);
        }
        let pause = FleetPause {
            database: None,
            deadline: self.options.pause_deadline,
            max_hold: self.options.pause_max_hold,
            cancel_stragglers: false,
            stale_after: self.options.stale_after,
        };
        match fleet::fleet_pause(&self.migrator.url, &pause).await {
            Ok(report) => {
                tracing::info!(
                    took = report.took_seconds,
                    sidecars = report.acks.len(),
                    "fleet paused for a blocking statement"
                );
                Ok(Some(Instant::now()))
            }
            Err(FleetError::NoSidecars) => Ok(None),
            Err(e) => Err(MigrateError::Refused(format!(
                "{}: the fleet could not be paused for its blocking step: {e}",
                self.migration.label()
            ))),
        }
    }

    async fn resume_fleet(&mut self, paused: Option<Instant>) {
        if let Some(since) = paused {
            if let Err(e) =
                fleet::fleet_resume(&self.migrator.url, None, self.options.stale_after).await
            {
                tracing::error!(error = %e, "resuming the fleet failed; it resumes by itself at its maximum hold");
            }
            self.paused += since.elapsed();
        }
    }

    async fn record_failure(
        &self,
        index: usize,
        completed: usize,
        error: &tokio_postgres::Error,
        elapsed: Duration,
    ) -> MigrateError {
        let failure = MigrateError::db(
            format!("{} statement {}", self.migration.label(), index + 1),
            error,
        );
        if self.down {
            // The migration stays recorded as applied: its down SQL did not complete.
            return failure;
        }
        let message = failure.to_string();
        let _ = history::record(
            self.client(),
            &self.entry(
                false,
                i32::try_from(completed).unwrap_or(i32::MAX),
                Some(i32::try_from(index).unwrap_or(i32::MAX)),
                Some(&message),
                i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX),
            ),
        )
        .await;
        failure
    }

    /// All statements and the history row in one transaction; a lock timeout rolls everything
    /// back and starts over.
    async fn transactional(&mut self) -> Result<(), MigrateError> {
        let m = self.migration;
        let started = Instant::now();
        let label = m.label();
        let db = |e: tokio_postgres::Error| MigrateError::db(label.clone(), &e);
        'attempt: loop {
            self.client().batch_execute("BEGIN").await.map_err(db)?;
            self.client()
                .batch_execute(&self.timeouts(true))
                .await
                .map_err(db)?;
            let mut paused = None;
            for (index, sql) in m.statements.iter().enumerate() {
                if self.blocking.contains(&index) && paused.is_none() {
                    match self.pause_fleet().await {
                        Ok(p) => paused = p,
                        Err(e) => {
                            let _ = self.client().batch_execute("ROLLBACK").await;
                            return Err(e);
                        }
                    }
                }
                if let Err(e) = self.client().batch_execute(sql).await {
                    let _ = self.client().batch_execute("ROLLBACK").await;
                    self.resume_fleet(paused).await;
                    if is_lock_timeout(&e) && self.backoff().await {
                        continue 'attempt;
                    }
                    return Err(self.record_failure(index, 0, &e, started.elapsed()).await);
                }
            }
            if self.options.report_locks {
                self.locks = self.held_locks().await;
            }
            let recorded = if self.down {
                self.forget().await
            } else {
                history::record(
                    self.client(),
                    &self.entry(
                        true,
                        i32::try_from(m.statements.len()).unwrap_or(i32::MAX),
                        None,
                        None,
                        i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
                    ),
                )
                .await
            };
            let committed = match recorded {
                Ok(()) => self.client().batch_execute("COMMIT").await.map_err(db),
                Err(e) => {
                    let _ = self.client().batch_execute("ROLLBACK").await;
                    Err(e)
                }
            };
            self.resume_fleet(paused).await;
            return committed;
        }
    }

    /// Statements one by one outside a transaction, progress recorded after each, so a failure
    /// resumes at the failing statement.
    async fn one_by_one(&mut self, from: usize) -> Result<(), MigrateError> {
        let m = self.migration;
        let started = Instant::now();
        let label = m.label();
        let db = |e: tokio_postgres::Error| MigrateError::db(label.clone(), &e);
        self.client()
            .batch_execute(&self.timeouts(false))
            .await
            .map_err(db)?;
        for (index, sql) in m.statements.iter().enumerate().skip(from) {
            loop {
                let paused = if self.blocking.contains(&index) {
                    self.pause_fleet().await?
                } else {
                    None
                };
                let result = if concurrent::is_concurrent_build(sql) {
                    self.build_concurrently(sql).await
                } else {
                    self.client().batch_execute(sql).await
                };
                self.resume_fleet(paused).await;
                match result {
                    Ok(()) => break,
                    Err(e) => {
                        self.drop_invalid_index(sql).await;
                        if is_lock_timeout(&e) && self.backoff().await {
                            continue;
                        }
                        let _ = self.reset_timeouts().await;
                        return Err(self
                            .record_failure(index, index, &e, started.elapsed())
                            .await);
                    }
                }
            }
            let done = index + 1;
            if self.down {
                continue;
            }
            history::record(
                self.client(),
                &self.entry(
                    done == m.statements.len(),
                    i32::try_from(done).unwrap_or(i32::MAX),
                    None,
                    None,
                    i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
                ),
            )
            .await?;
        }
        if self.down {
            self.forget().await?;
        } else if m.statements.is_empty() || from >= m.statements.len() {
            history::record(
                self.client(),
                &self.entry(
                    true,
                    i32::try_from(m.statements.len()).unwrap_or(i32::MAX),
                    None,
                    None,
                    0,
                ),
            )
            .await?;
        }
        self.reset_timeouts().await.map_err(db)?;
        Ok(())
    }

    /// Runs a concurrent index build with its own wait budget (`concurrent_wait` as its
    /// `lock_timeout`), watched: its phase, progress and the sessions it waits for are logged and
    /// kept for the report.
    async fn build_concurrently(&mut self, sql: &str) -> Result<(), tokio_postgres::Error> {
        let pid: i32 = self
            .client()
            .query_one("SELECT pg_backend_pid()", &[])
            .await?
            .get(0);
        self.client()
            .batch_execute(&format!(
                "SET lock_timeout = '{}ms'",
                millis(self.options.concurrent_wait)
            ))
            .await?;
        let watch =
            concurrent::BuildWatch::start(self.migrator.url.clone(), pid, self.migration.label());
        let result = self.client().batch_execute(sql).await;
        for seen in watch.finish().await {
            if !self.waited_for.contains(&seen) {
                self.waited_for.push(seen);
            }
        }
        self.client().batch_execute(&self.timeouts(false)).await?;
        result
    }

    /// Runs the backfill statement over key ranges of `spec.batch`, each batch committed on its
    /// own and recorded, resting `spec.pause` between batches; resumes at `from`.
    async fn backfill(&mut self, spec: &Backfill, from: Option<i64>) -> Result<(), MigrateError> {
        let m = self.migration;
        let started = Instant::now();
        let label = m.label();
        let db = |e: tokio_postgres::Error| MigrateError::db(label.clone(), &e);
        self.client()
            .batch_execute(&self.timeouts(false))
            .await
            .map_err(db)?;
        let range = self
            .client()
            .query_one(
                &format!(
                    "SELECT min({key})::bigint, max({key})::bigint FROM {table}",
                    key = spec.key,
                    table = spec.table
                ),
                &[],
            )
            .await
            .map_err(db)?;
        let (first, last): (Option<i64>, Option<i64>) = (range.get(0), range.get(1));
        let statement = self
            .client()
            .prepare_typed(&m.statements[0], &[Type::INT8, Type::INT8])
            .await
            .map_err(db)?;
        let mut position = from.or(first).unwrap_or(0);
        while let Some(last) = last.filter(|last| position <= *last) {
            let end = position
                .saturating_add(spec.batch)
                .min(last.saturating_add(1));
            loop {
                match self.client().execute(&statement, &[&position, &end]).await {
                    Ok(rows) => {
                        self.backfill_rows += rows;
                        break;
                    }
                    Err(e) if is_lock_timeout(&e) && self.backoff().await => {}
                    Err(e) => {
                        let _ = self.reset_timeouts().await;
                        return Err(self.record_failure(0, 0, &e, started.elapsed()).await);
                    }
                }
            }
            position = end;
            history::record_backfill(self.client(), m.version, &m.name, &m.checksum, position)
                .await?;
            tokio::time::sleep(spec.pause).await;
        }
        self.reset_timeouts().await.map_err(db)?;
        history::record(
            self.client(),
            &self.entry(
                true,
                1,
                None,
                None,
                i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
            ),
        )
        .await
    }

    /// The relation locks this session holds now, outside the catalogs.
    async fn held_locks(&self) -> Vec<String> {
        self.client()
            .query(
                "SELECT DISTINCT mode || ' on ' || relation::regclass::text
                   FROM pg_locks
                  WHERE pid = pg_backend_pid() AND locktype = 'relation' AND granted
                    AND relation::regclass::text NOT LIKE 'pg\\_%'
                    AND relation::regclass::text NOT LIKE 'pgsidecar.%'
                  ORDER BY 1",
                &[],
            )
            .await
            .map(|rows| rows.iter().map(|r| r.get(0)).collect())
            .unwrap_or_default()
    }

    /// A failed `CREATE INDEX CONCURRENTLY` leaves an INVALID index behind; drop it so the
    /// statement can run again.
    async fn drop_invalid_index(&self, sql: &str) {
        let Ok(parsed) = pg_query::parse(sql, pg_query::ParserOptions::default()) else {
            return;
        };
        let Some(pg_query::NodeEnum::IndexStmt(index)) = parsed
            .protobuf
            .stmts
            .first()
            .and_then(|s| s.stmt.as_ref())
            .and_then(|s| s.node.as_ref())
        else {
            return;
        };
        if !index.concurrent || index.idxname.is_empty() {
            return;
        }
        let schema = index
            .relation
            .as_ref()
            .map(|r| r.schemaname.clone())
            .filter(|s| !s.is_empty());
        let qualified = match &schema {
            Some(s) => format!("{}.{}", quote(s), quote(&index.idxname)),
            None => quote(&index.idxname),
        };
        let invalid = self
            .client()
            .query_opt(
                "SELECT 1 FROM pg_index WHERE indexrelid = to_regclass($1) AND NOT indisvalid",
                &[&qualified],
            )
            .await;
        if matches!(invalid, Ok(Some(_))) {
            tracing::warn!(index = %qualified, "dropping the INVALID index a failed CREATE INDEX CONCURRENTLY left");
            let _ = self
                .client()
                .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {qualified}"))
                .await;
        }
    }
}

fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}
