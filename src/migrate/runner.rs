//! Applying, planning and rolling back migrations against one database, on a direct connection
//! under a session advisory lock taken with `pg_try_advisory_lock` in a polling loop (a blocking
//! wait could deadlock with a concurrent index build).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::MigrateError;
use super::expand::{self, ExpandReport, ExpandRun};
use super::history::{self, AppliedMigration};
use super::lint::{Finding, lint, lint_all};
use super::run::Run;
use super::source::{self, Migration};
use super::throttle::ThrottleLimits;
use super::window::MaintenanceWindow;
use crate::gate::fleet;

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
    /// When backfills wait for the replicas and the database's health.
    pub throttle: ThrottleLimits,
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
            throttle: ThrottleLimits::default(),
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
    /// An earlier run started it and did not finish (killed, or failed).
    pub interrupted: bool,
    /// Statements in all.
    pub statements: usize,
    /// The declared reason, when it is declared blocking.
    pub blocking: Option<String>,
    /// What the linter found.
    pub findings: Vec<Finding>,
    /// An expand/contract migration's operations, one line each.
    pub operations: Vec<String>,
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
    /// An expansion's phases and what it waited for.
    pub expand: Option<ExpandReport>,
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
    pub(super) client: Client,
    pub(super) url: String,
    migrations: Vec<Migration>,
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
        // A runner killed mid-statement leaves a backend working for nobody, holding the
        // statement's locks and the runner's advisory lock: with this, the server notices the
        // vanished client within a second and rolls back (PostgreSQL 14+; older servers refuse
        // the setting, and their backend ends when it next writes to the socket).
        if let Err(e) = client
            .batch_execute("SET client_connection_check_interval = '1s'")
            .await
        {
            tracing::debug!(error = %e, "client_connection_check_interval is not available");
        }
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

    pub(super) async fn lock(&self, wait: Duration) -> Result<(), MigrateError> {
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

    /// The backend pid of the runner holding the migration lock on this database right now, if
    /// any (this one included).
    ///
    /// # Errors
    /// [`MigrateError::Database`].
    pub async fn runner_pid(&self) -> Result<Option<i32>, MigrateError> {
        // A bigint advisory key is shown as its high half in classid and its low half in objid.
        let high = LOCK_KEY >> 32;
        let low = LOCK_KEY & 0xffff_ffff;
        let row = self
            .client
            .query_opt(
                "SELECT pid FROM pg_locks
                  WHERE locktype = 'advisory' AND granted AND objsubid = 1
                    AND classid::bigint = $1 AND objid::bigint = $2
                    AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[&high, &low],
            )
            .await
            .map_err(|e| MigrateError::db("looking for a running migration runner", &e))?;
        Ok(row.map(|r| r.get(0)))
    }

    pub(super) async fn unlock(&self) {
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
                    transactional: !m.directives.no_transaction && m.expand.is_none(),
                    resume_from,
                    backfill_from: row.and_then(|r| r.backfill_position),
                    interrupted: row.is_some(),
                    statements: m.statements.len(),
                    blocking: m.directives.blocking.clone(),
                    findings,
                    operations: m
                        .expand
                        .as_ref()
                        .map(|spec| spec.operations.iter().map(ToString::to_string).collect())
                        .unwrap_or_default(),
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
        if let Some(open) = expand::open_expansion(&self.client).await?
            && plan
                .first()
                .is_some_and(|step| step.migration != open.label())
        {
            return Err(MigrateError::Refused(format!(
                "apply refused: {} is expanded and not completed; run `migrate complete` (once no sidecar serves the old version) or `migrate abort` before applying {}",
                open.label(),
                plan[0].migration
            )));
        }
        let mut report = ApplyReport::default();
        for step in &plan {
            let migration = self
                .migrations
                .iter()
                .find(|m| m.label() == step.migration)
                .ok_or_else(|| MigrateError::Rollback(format!("{} vanished", step.migration)))?;
            let blocking: BTreeSet<usize> = step.findings.iter().map(|f| f.statement).collect();
            let started = Instant::now();
            let mut run = Run::new(self, migration, options, blocking, false);
            let mut expanded = None;
            if let Some(spec) = &migration.expand {
                expanded = Some(ExpandRun::new(self, migration, spec, options).run().await?);
            } else if let Some(spec) = &migration.directives.backfill {
                run.backfill(spec, step.backfill_from).await?;
            } else if step.transactional {
                run.transactional().await?;
            } else {
                run.one_by_one(step.resume_from, step.interrupted).await?;
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
                expand: expanded,
            });
            if migration.expand.is_some() {
                // The next migration waits for this one's complete (or abort).
                break;
            }
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
        let expanded: Vec<i64> = expand::expansions(&self.client)
            .await?
            .iter()
            .map(|e| e.version)
            .collect();
        for row in applied.iter().rev().filter(|r| r.version > floor) {
            let label = format!("{:04}_{}", row.version, row.name);
            if expanded.contains(&row.version) {
                return Err(MigrateError::Rollback(format!(
                    "{label} is an expand/contract migration: `migrate abort` undoes it while it is expanded; once completed, write a new migration"
                )));
            }
            let down = row.down_sql.as_deref().ok_or_else(|| {
                MigrateError::Rollback(format!("{label} was applied without a down migration"))
            })?;
            let done = usize::try_from(row.rollback_completed.unwrap_or(0)).unwrap_or(0);
            downs.push((
                label,
                source::down_migration(row.version, &row.name, down)?,
                done,
            ));
        }
        // Every down SQL is vetted before the first one runs.
        let plan: Vec<PlannedStep> = downs
            .iter()
            .map(|(_, m, done)| PlannedStep {
                migration: m.label(),
                transactional: !m.directives.no_transaction,
                resume_from: *done,
                backfill_from: None,
                interrupted: *done > 0,
                statements: m.statements.len(),
                blocking: m.directives.blocking.clone(),
                findings: lint(m),
                operations: Vec::new(),
            })
            .collect();
        Self::vet(&plan, options, "rollback")?;
        let mut undone = Vec::new();
        for ((label, migration, _), step) in downs.iter().zip(&plan) {
            let blocking = step.findings.iter().map(|f| f.statement).collect();
            let mut run = Run::new(self, migration, options, blocking, true);
            if step.transactional {
                run.transactional().await?;
            } else {
                run.one_by_one(step.resume_from, step.interrupted).await?;
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
