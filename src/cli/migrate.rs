//! `pgsidecar migrate`: versioned migrations of a live database.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use pgsidecar::migrate::expand::{self, CompleteOptions, Phase};
use pgsidecar::migrate::policy::{BackupPolicy, ensure_backup};
use pgsidecar::migrate::verify::{self, Verification};
use pgsidecar::migrate::{
    ApplyOptions, CopyScope, MaintenanceWindow, MigrateError, Migrator, ThrottleLimits, lint,
    source,
};

use super::{EXIT_FAILED, EXIT_USAGE};

#[derive(Args)]
pub struct MigrateArgs {
    #[command(subcommand)]
    action: MigrateAction,
    /// The migrations directory.
    #[arg(long, global = true, default_value = "migrations")]
    dir: PathBuf,
    /// The database to migrate (a direct URL, not through a pooler); DATABASE_URL when not given.
    #[arg(long, global = true, env = "DATABASE_URL")]
    database_url: Option<String>,
}

#[derive(Subcommand)]
pub enum MigrateAction {
    /// Create NNNN_NAME.sql and NNNN_NAME.down.sql with the next number.
    New {
        /// What the migration does, e.g. add_documents_index.
        name: String,
    },
    /// Which migrations are applied, pending, failed or edited.
    Status,
    /// What apply would run, in order, and which steps block and for what.
    Plan {
        /// Only up to this version.
        #[arg(long)]
        to: Option<i64>,
    },
    /// Flag DDL that blocks reads or writes; exits 1 when anything is found.
    Lint,
    /// Apply the pending migrations.
    Apply(Box<ApplyArgs>),
    /// Roll back the newest migration, or every one newer than --to, under the same policy as
    /// apply (lint, timeouts and retries, fleet pause and window for declared blocking steps,
    /// backup).
    Rollback(Box<ApplyArgs>),
    /// Accept the current text of applied migrations whose files were edited.
    Repair,
    /// Check the database after migrations: INVALID indexes, NOT VALID constraints, smoke queries.
    Verify,
    /// The whole policy in one go: plan, backup (verified), dry run, apply, verify, report.
    Deploy(Box<ApplyArgs>),
    /// Contract the open expand/contract migration: drop the old representation, once no live
    /// sidecar serves the old schema version.
    Complete {
        /// Wait up to this long for the old version's sidecars to go instead of refusing at
        /// once (e.g. 30m; `--wait` alone waits up to an hour).
        #[arg(long, value_parser = pgsidecar::config::parse_duration, num_args = 0..=1, default_missing_value = "1h")]
        wait: Option<std::time::Duration>,
        #[command(flatten)]
        locks: LockArgs,
    },
    /// Undo the open expand/contract migration, leaving the tables as before it; refused while
    /// a live sidecar serves its schema version.
    Abort {
        #[command(flatten)]
        locks: LockArgs,
    },
}

/// Lock handling of `complete` and `abort`.
#[derive(Args)]
pub struct LockArgs {
    /// lock_timeout of the transaction.
    #[arg(long, default_value = "2s", value_parser = pgsidecar::config::parse_duration)]
    lock_timeout: std::time::Duration,
    /// Retries after a lock timeout, with backoff.
    #[arg(long, default_value_t = 5)]
    lock_retries: u32,
    /// How long to wait for another runner.
    #[arg(long, default_value = "5m", value_parser = pgsidecar::config::parse_duration)]
    lock_wait: std::time::Duration,
    /// Heartbeats older than this mark a sidecar as gone.
    #[arg(long, default_value = "10s", value_parser = pgsidecar::config::parse_duration)]
    stale_after: std::time::Duration,
}

impl LockArgs {
    fn options(&self) -> ApplyOptions {
        ApplyOptions {
            lock_timeout: self.lock_timeout,
            lock_retries: self.lock_retries,
            lock_wait: self.lock_wait,
            stale_after: self.stale_after,
            ..ApplyOptions::default()
        }
    }
}

#[derive(Args)]
pub struct ApplyArgs {
    /// Apply and deploy: only up to this version. Rollback: keep this version and older
    /// (default: undo the newest).
    #[arg(long)]
    to: Option<i64>,
    /// lock_timeout of every statement (a migration's directive wins).
    #[arg(long, default_value = "2s", value_parser = pgsidecar::config::parse_duration)]
    lock_timeout: std::time::Duration,
    /// statement_timeout of every statement (a migration's directive wins).
    #[arg(long, default_value = "30m", value_parser = pgsidecar::config::parse_duration)]
    statement_timeout: std::time::Duration,
    /// Retries of a statement that hit its lock timeout, with backoff.
    #[arg(long, default_value_t = 5)]
    lock_retries: u32,
    /// How long to wait for another runner.
    #[arg(long, default_value = "5m", value_parser = pgsidecar::config::parse_duration)]
    lock_wait: std::time::Duration,
    /// When migrations declared blocking may run: a daily UTC range like 02:00-04:30, or now.
    #[arg(long, env = "PGSIDECAR_MAINTENANCE_WINDOW", value_parser = MaintenanceWindow::parse)]
    maintenance_window: Option<MaintenanceWindow>,
    /// Each sidecar's wait for in-flight transactions when paused for a blocking step.
    #[arg(long, default_value = "10s", value_parser = pgsidecar::config::parse_duration)]
    pause_deadline: std::time::Duration,
    /// lock_timeout of a CREATE INDEX / REINDEX CONCURRENTLY: its waits for older transactions
    /// are lock waits and get this budget instead of --lock-timeout.
    #[arg(long, default_value = "30m", value_parser = pgsidecar::config::parse_duration)]
    concurrent_wait: std::time::Duration,
    /// A pause for a blocking step lifts by itself after this.
    #[arg(long, default_value = "60s", value_parser = pgsidecar::config::parse_duration)]
    pause_max_hold: std::time::Duration,
    /// Apply to a fresh copy of the database on the staging server instead, report, drop it;
    /// production is not touched (deploy: plan and rehearse only).
    #[arg(
        long,
        requires = "staging_url",
        conflicts_with_all = ["backup", "no_backup", "backup_output", "scratch_url", "reason"]
    )]
    dry_run: bool,
    /// The staging server for --dry-run (a URL whose user may create databases).
    #[arg(long)]
    staging_url: Option<String>,
    /// With --dry-run (or deploy's dry run): copy the schema and this percentage of each table's rows.
    #[arg(long, value_parser = sample_percent)]
    sample_percent: Option<f64>,
    /// Take a backup to --backup-output and prove it on --scratch-url before applying.
    #[arg(long, requires_all = ["backup_output", "scratch_url"])]
    backup: bool,
    /// Where --backup writes the dump (and its manifest beside it).
    #[arg(long)]
    backup_output: Option<PathBuf>,
    /// A server where the backup's verification restores into a scratch database (in the
    /// environment, it stays out of the process list).
    #[arg(long, env = "PGSIDECAR_SCRATCH_URL")]
    scratch_url: Option<String>,
    /// Go ahead without a verified backup; --reason is required and recorded in the history.
    #[arg(long, requires = "reason", conflicts_with = "backup")]
    no_backup: bool,
    /// Why there is no backup.
    #[arg(long)]
    reason: Option<String>,
    /// How recent a verified backup of this database must be.
    #[arg(long, default_value = "24h", value_parser = pgsidecar::config::parse_duration)]
    backup_max_age: std::time::Duration,
    #[command(flatten)]
    throttle: ThrottleArgs,
}

/// When backfills wait for the database.
#[derive(Args)]
pub struct ThrottleArgs {
    /// Backfills wait while a streaming replica has more WAL than this to replay (0: never).
    #[arg(long, default_value = "64MiB", value_parser = pgsidecar::config::parse_size)]
    max_replica_lag: usize,
    /// Backfills wait while a streaming replica replays further behind than this (0: never).
    #[arg(long, default_value = "30s", value_parser = pgsidecar::config::parse_duration)]
    max_replica_lag_time: std::time::Duration,
    /// Backfills do not wait for critical load-related health checks.
    #[arg(long)]
    ignore_health: bool,
}

impl ThrottleArgs {
    fn limits(&self) -> ThrottleLimits {
        ThrottleLimits {
            max_replica_lag_bytes: u64::try_from(self.max_replica_lag).ok().filter(|b| *b > 0),
            max_replica_lag: Some(self.max_replica_lag_time).filter(|d| !d.is_zero()),
            health: !self.ignore_health,
        }
    }
}

fn sample_percent(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|p| *p > 0.0 && *p <= 100.0)
        .ok_or_else(|| format!("expected a percentage between 0 and 100, got `{text}`"))
}

impl ApplyArgs {
    /// A flag given where this subcommand would ignore it: refused rather than silently
    /// dropped, because an ignored `--dry-run` or `--staging-url` changes what reaches production.
    fn unhonoured(&self, deploy: bool) -> Option<&'static str> {
        if !deploy && !self.dry_run && self.staging_url.is_some() {
            return Some(
                "--staging-url is used only with --dry-run (or by deploy's rehearsal); add --dry-run or drop it",
            );
        }
        if self.sample_percent.is_some() && self.staging_url.is_none() {
            return Some("--sample-percent needs a dry run on --staging-url");
        }
        None
    }

    fn policy(&self) -> BackupPolicy {
        if self.no_backup {
            BackupPolicy::Without(self.reason.clone().unwrap_or_default())
        } else if self.backup {
            BackupPolicy::TakeNow {
                output: self.backup_output.clone().unwrap_or_default(),
                scratch_url: self.scratch_url.clone().unwrap_or_default(),
            }
        } else {
            BackupPolicy::RequireVerified(self.backup_max_age)
        }
    }

    fn options(&self) -> ApplyOptions {
        ApplyOptions {
            lock_timeout: self.lock_timeout,
            statement_timeout: self.statement_timeout,
            lock_retries: self.lock_retries,
            lock_wait: self.lock_wait,
            maintenance_window: self.maintenance_window,
            pause_deadline: self.pause_deadline,
            pause_max_hold: self.pause_max_hold,
            concurrent_wait: self.concurrent_wait,
            target: self.to,
            no_backup_reason: self
                .no_backup
                .then(|| self.reason.clone().unwrap_or_default()),
            throttle: self.throttle.limits(),
            ..ApplyOptions::default()
        }
    }
}

/// `apply --dry-run`: the pending migrations on a copy, with durations and locks.
async fn dry_run(url: &str, args: &MigrateArgs, apply: &ApplyArgs) -> ExitCode {
    let staging = apply.staging_url.as_deref().unwrap_or_default();
    let copy = apply
        .sample_percent
        .map_or(CopyScope::Full, CopyScope::Sample);
    match pgsidecar::migrate::dry_run(url, staging, &args.dir, &apply.options(), copy).await {
        Ok(report) => {
            println!(
                "copied the database to {} in {:.1} s",
                report.scratch_database, report.copy_seconds
            );
            for step in &report.steps {
                println!("{}: {:.3} s", step.migration, step.seconds);
                for lock in &step.locks {
                    println!("    held {lock}");
                }
            }
            if report.steps.is_empty() {
                println!("nothing to apply");
            }
            if report.invalid_indexes.is_empty() {
                println!("no INVALID index; the copy was dropped");
                ExitCode::SUCCESS
            } else {
                println!("INVALID indexes left: {:?}", report.invalid_indexes);
                ExitCode::from(EXIT_FAILED)
            }
        }
        Err(e) => {
            eprintln!("pgsidecar migrate: dry run: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn print_verification(outcome: &Verification) {
    for smoke in &outcome.smoke {
        println!(
            "smoke {}: {:.1} ms (budget {:.0} ms)\n{}",
            smoke.name,
            smoke.took_ms,
            smoke.budget_ms,
            smoke
                .plan
                .lines()
                .map(|l| format!("    {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    for problem in &outcome.problems {
        println!("VERIFY FAILED: {problem}");
    }
    if outcome.problems.is_empty() {
        println!("verification passed");
    }
}

async fn verify_now(migrator: &Migrator, dir: &std::path::Path) -> Result<(), MigrateError> {
    let outcome = verify::verify(migrator.client(), dir, migrator.migrations(), None).await?;
    print_verification(&outcome);
    if outcome.problems.is_empty() {
        Ok(())
    } else {
        Err(MigrateError::Refused(format!(
            "{} verification problem(s); rollback stays an explicit command",
            outcome.problems.len()
        )))
    }
}

/// `migrate deploy`: plan, backup policy, dry run (with --staging-url), apply, verify.
async fn deploy(migrator: &Migrator, url: &str, args: &MigrateArgs, apply: &ApplyArgs) -> ExitCode {
    let steps = async {
        println!("== plan");
        plan(migrator, apply.to).await?;
        let pending = migrator.plan(apply.to).await?;
        if pending.is_empty() {
            println!("nothing to deploy");
            return Ok(None);
        }
        if !apply.dry_run {
            println!("== backup");
            let evidence = ensure_backup(url, &apply.policy()).await?;
            println!("{evidence:?}");
        }
        if let Some(staging) = &apply.staging_url {
            println!("== dry run on {staging}");
            let copy = apply
                .sample_percent
                .map_or(CopyScope::Full, CopyScope::Sample);
            let rehearsal =
                pgsidecar::migrate::dry_run(url, staging, &args.dir, &apply.options(), copy)
                    .await?;
            for step in &rehearsal.steps {
                println!(
                    "{}: {:.3} s on the copy, locks {:?}",
                    step.migration, step.seconds, step.locks
                );
            }
            if !rehearsal.invalid_indexes.is_empty() {
                return Err(MigrateError::Refused(format!(
                    "the rehearsal left INVALID indexes: {:?}",
                    rehearsal.invalid_indexes
                )));
            }
        }
        if apply.dry_run {
            println!("== dry run only: production was not changed");
            return Ok(None);
        }
        println!("== apply");
        let before = verify::row_counts(migrator.client()).await?;
        let report = migrator.apply(&apply.options()).await?;
        for step in &report.applied {
            println!(
                "applied {} in {:.3} s (lock retries {}, fleet paused {:.3} s)",
                step.migration, step.seconds, step.lock_retries, step.paused_seconds
            );
        }
        println!("== verify");
        let applied: Vec<&pgsidecar::migrate::source::Migration> = migrator
            .migrations()
            .iter()
            .filter(|m| report.applied.iter().any(|a| a.migration == m.label()))
            .collect();
        let outcome = verify::verify(
            migrator.client(),
            &args.dir,
            migrator.migrations(),
            Some((&before, &applied)),
        )
        .await?;
        print_verification(&outcome);
        Ok::<_, MigrateError>(Some((report, outcome)))
    };
    match steps.await {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some((report, outcome))) => {
            println!(
                "== report: {} migration(s) applied, verification {}",
                report.applied.len(),
                if outcome.problems.is_empty() {
                    "passed"
                } else {
                    "FAILED (roll forward; rollback stays explicit)"
                }
            );
            if outcome.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILED)
            }
        }
        Err(e) => {
            eprintln!("pgsidecar migrate deploy: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Reports bad arguments or an unreachable database (exit 2).
fn usage(message: &str) -> ExitCode {
    eprintln!("pgsidecar migrate: {message}");
    ExitCode::from(EXIT_USAGE)
}

/// Lints the files; exit 1 when anything is found.
fn lint_files(dir: &std::path::Path) -> ExitCode {
    let migrations = match source::load(dir) {
        Ok(m) => m,
        Err(e) => return usage(&e.to_string()),
    };
    let findings: Vec<_> = lint::lint_all(&migrations).into_iter().flatten().collect();
    for f in &findings {
        println!(
            "{} statement {}: {}\n    {}\n    lock: {}\n    instead: {}",
            f.migration,
            f.statement + 1,
            f.problem,
            f.sql,
            f.lock,
            f.advice
        );
    }
    println!(
        "{} migration(s), {} finding(s)",
        migrations.len(),
        findings.len()
    );
    if findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

/// How many statements the recorded down SQL of `row` has.
fn down_statements(row: &pgsidecar::migrate::AppliedMigration) -> usize {
    row.down_sql
        .as_deref()
        .and_then(|sql| {
            pgsidecar::migrate::source::down_migration(row.version, &row.name, sql).ok()
        })
        .map_or(0, |down| down.statements.len())
}

async fn status(migrator: &Migrator) -> Result<(), MigrateError> {
    let history = migrator.history().await?;
    let runner = migrator.runner_pid().await?;
    if let Some(pid) = runner {
        println!("a migration runner is at work (server backend pid {pid})");
    }
    // Without a runner at work, unfinished work was interrupted (the runner was killed).
    let unfinished = if runner.is_some() {
        "in progress"
    } else {
        "INTERRUPTED (run it again to resume)"
    };
    for m in migrator.migrations() {
        let state = match history.iter().find(|r| r.version == m.version) {
            Some(r) if r.is_applied() => match r.rollback_completed {
                Some(done) => format!(
                    "applied; rollback {unfinished}: {done} of {} down statement(s) done",
                    down_statements(r)
                ),
                None => format!(
                    "applied {} by {} in {} ms",
                    r.applied_at, r.applied_by, r.duration_ms
                ),
            },
            Some(r) => match (&r.error, r.failed_statement, r.backfill_position) {
                (Some(e), Some(i), _) => format!("FAILED at statement {}: {e}", i + 1),
                (_, _, Some(key)) => {
                    format!("backfill {unfinished}: next batch starts at key {key}")
                }
                _ => format!(
                    "{unfinished}: {} of {} statement(s) done",
                    r.completed_statements,
                    m.statements.len()
                ),
            },
            None => "pending".to_owned(),
        };
        println!("{:<40} {state}", m.label());
    }
    for e in expand::expansions(migrator.client()).await? {
        let state = match e.phase {
            Phase::Backfilling => format!(
                "expansion {unfinished}: backfilling, {} row(s) done{}",
                e.backfill_rows,
                e.backfill_position
                    .map(|k| format!(", next batch at key {k}"))
                    .unwrap_or_default()
            ),
            Phase::Finishing => format!("expansion {unfinished}: adding constraints and schemas"),
            Phase::Expanded => format!(
                "EXPANDED: {} and {} both work; `migrate complete` once no sidecar serves the old version, or `migrate abort`",
                e.plan.old_schema, e.plan.new_schema
            ),
            Phase::Completed => continue,
        };
        println!("{:<40} {state}", e.label());
    }
    for r in &history {
        if !migrator.migrations().iter().any(|m| m.version == r.version) {
            println!(
                "{:04}_{:<35} {} (no file on disk)",
                r.version, r.name, r.status
            );
        }
    }
    Ok(())
}

async fn plan(migrator: &Migrator, to: Option<i64>) -> Result<(), MigrateError> {
    let plan = migrator.plan(to).await?;
    if plan.is_empty() {
        println!("nothing to apply");
    }
    for step in &plan {
        let kind = if step.transactional {
            "in one transaction"
        } else {
            "statement by statement"
        };
        let resume = if step.resume_from > 0 {
            format!(", resuming at statement {}", step.resume_from + 1)
        } else {
            String::new()
        };
        if step.operations.is_empty() {
            println!(
                "{}: {} statement(s), {kind}{resume}",
                step.migration, step.statements
            );
        } else {
            println!(
                "{}: expand/contract, {} operation(s); apply expands, `migrate complete` contracts",
                step.migration,
                step.operations.len()
            );
            for op in &step.operations {
                println!("    {op}");
            }
        }
        if let Some(reason) = &step.blocking {
            println!("    declared blocking: {reason}");
        }
        for f in &step.findings {
            println!(
                "    statement {} blocks: {} ({})",
                f.statement + 1,
                f.problem,
                f.lock
            );
        }
    }
    Ok(())
}

/// Rolls back once the backup policy is met, under the apply policy.
async fn rollback(migrator: &Migrator, url: &str, args: &ApplyArgs) -> Result<(), MigrateError> {
    let evidence = ensure_backup(url, &args.policy()).await?;
    println!("backup: {evidence:?}");
    for m in migrator.rollback(args.to, &args.options()).await? {
        println!("rolled back {m}");
    }
    Ok(())
}

/// Applies the pending migrations once the backup policy is met.
async fn apply(migrator: &Migrator, url: &str, args: &ApplyArgs) -> Result<(), MigrateError> {
    if !migrator.plan(args.to).await?.is_empty() {
        let evidence = ensure_backup(url, &args.policy()).await?;
        println!("backup: {evidence:?}");
    }
    let report = migrator.apply(&args.options()).await?;
    if report.applied.is_empty() {
        println!("nothing to apply");
    }
    for step in &report.applied {
        println!(
            "applied {} in {:.3} s (lock retries {}, fleet paused {:.3} s)",
            step.migration, step.seconds, step.lock_retries, step.paused_seconds
        );
        for session in &step.waited_for {
            println!("    a concurrent index build waited for {session}");
        }
        if let Some(e) = &step.expand {
            let phases: Vec<String> = e
                .phase_seconds
                .iter()
                .map(|(phase, s)| format!("{phase} {s:.3} s"))
                .collect();
            let held: Vec<String> = e
                .held_ms
                .iter()
                .map(|(step, ms)| format!("{step} {ms} ms"))
                .collect();
            println!(
                "    expanded: {}; {} row(s) backfilled; locks held at most: {}",
                phases.join(", "),
                e.backfill_rows,
                held.join(", ")
            );
            if e.throttled_seconds > 0.0 {
                println!(
                    "    the backfill waited {:.1} s: {}",
                    e.throttled_seconds,
                    e.throttle_reasons.join("; ")
                );
            }
            println!(
                "    both versions work now; deploy the new version, then `pgsidecar migrate complete` once no sidecar serves the old one"
            );
        }
    }
    Ok(())
}

/// `pgsidecar migrate ...`: exits 0 on success, 1 when linting finds something or a migration
/// fails or is refused, 2 on bad arguments or an unreachable database.
pub async fn run(args: MigrateArgs) -> ExitCode {
    match &args.action {
        MigrateAction::New { name } => {
            return match source::create(&args.dir, name) {
                Ok(path) => {
                    println!("created {}", path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => usage(&e.to_string()),
            };
        }
        MigrateAction::Lint => return lint_files(&args.dir),
        _ => {}
    }
    let Some(url) = &args.database_url else {
        return usage("give --database-url (or DATABASE_URL)");
    };
    let unhonoured = match &args.action {
        MigrateAction::Apply(a) => a.unhonoured(false),
        MigrateAction::Rollback(a) if a.dry_run || a.staging_url.is_some() => {
            Some("rollback has no dry run: --dry-run and --staging-url are not accepted")
        }
        MigrateAction::Deploy(a) | MigrateAction::Rollback(a) => a.unhonoured(true),
        _ => None,
    };
    if let Some(message) = unhonoured {
        return usage(message);
    }
    if let MigrateAction::Apply(apply) = &args.action
        && apply.dry_run
    {
        return dry_run(url, &args, apply).await;
    }
    let migrator = match Migrator::open(url, &args.dir).await {
        Ok(m) => m,
        Err(e) => return usage(&e.to_string()),
    };
    let result = match &args.action {
        MigrateAction::New { .. } | MigrateAction::Lint => Ok(()),
        MigrateAction::Status => status(&migrator).await,
        MigrateAction::Plan { to } => plan(&migrator, *to).await,
        MigrateAction::Apply(a) => apply(&migrator, url, a).await,
        MigrateAction::Verify => verify_now(&migrator, &args.dir).await,
        MigrateAction::Deploy(a) => return deploy(&migrator, url, &args, a).await,
        MigrateAction::Rollback(a) => rollback(&migrator, url, a).await,
        MigrateAction::Complete { wait, locks } => migrator
            .complete(&locks.options(), &CompleteOptions { wait: *wait })
            .await
            .map(|done| println!("{done}")),
        MigrateAction::Abort { locks } => migrator
            .abort(&locks.options())
            .await
            .map(|done| println!("{done}")),
        MigrateAction::Repair => migrator.repair().await.map(|repaired| {
            if repaired.is_empty() {
                println!("every applied migration matches its file");
            }
            for m in repaired {
                println!("accepted the new checksum of {m}");
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgsidecar migrate: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}
