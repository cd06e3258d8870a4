//! One migration being applied or rolled back: its statements in one transaction or one by
//! one, concurrent index builds, batched backfills, lock-timeout retries and the fleet pause
//! around blocking statements, with progress recorded so that a killed runner resumes cleanly.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_postgres::types::Type;

use super::MigrateError;
use super::concurrent;
use super::history::{self, Record};
use super::runner::{ApplyOptions, Migrator};
use super::source::{Backfill, Migration};
use super::throttle::{Throttle, key_fraction, progress};
use crate::gate::fleet::{self, FleetError, FleetPause};

fn millis(d: Duration) -> u128 {
    d.as_millis()
}

/// Milliseconds since `started`, as the history records durations.
fn millis_since(started: Instant) -> i64 {
    i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX)
}

/// A statement that gave up waiting for a lock (55P03): tried again after [`lock_retry_wait`].
pub(super) fn is_lock_timeout(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE)
}

/// The backoff before lock-timeout retry number `retry` (1-based): 400 ms doubling, at most
/// 6.4 s.
pub(super) fn lock_retry_wait(retry: u32) -> Duration {
    Duration::from_millis(200 * 2u64.pow(retry.min(5)))
}

/// One migration being applied.
pub(super) struct Run<'a> {
    migrator: &'a Migrator,
    migration: &'a Migration,
    options: &'a ApplyOptions,
    /// Statements the linter flagged (declared blocking): run behind a fleet pause.
    blocking: BTreeSet<usize>,
    pub(super) lock_retries: u32,
    pub(super) paused: Duration,
    pub(super) backfill_rows: u64,
    pub(super) locks: Vec<String>,
    /// Sessions the concurrent index builds of this migration waited for.
    pub(super) waited_for: Vec<String>,
    /// Running a recorded down SQL: success deletes the history row, a failure leaves it.
    down: bool,
}

impl<'a> Run<'a> {
    /// A run of `migration` (its down SQL when `down`), with `blocking` statements behind a
    /// fleet pause.
    pub(super) fn new(
        migrator: &'a Migrator,
        migration: &'a Migration,
        options: &'a ApplyOptions,
        blocking: BTreeSet<usize>,
        down: bool,
    ) -> Self {
        Self {
            migrator,
            migration,
            options,
            blocking,
            lock_retries: 0,
            paused: Duration::ZERO,
            backfill_rows: 0,
            locks: Vec::new(),
            waited_for: Vec::new(),
            down,
        }
    }

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
        let wait = lock_retry_wait(self.lock_retries);
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
    pub(super) async fn transactional(&mut self) -> Result<(), MigrateError> {
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
                        millis_since(started),
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

    /// Statements one by one, each committed on its own together with the record of the
    /// progress it makes, so that a runner killed at any moment resumes at the first statement
    /// not done (never running one twice). A statement PostgreSQL refuses inside a transaction
    /// block (25001: `VACUUM`, `DROP INDEX CONCURRENTLY`, ...) runs alone and is recorded right
    /// after; a concurrent index build is checked instead (when the run resumes an interrupted
    /// one, a valid index of its name counts as built; an INVALID one is dropped and built
    /// again).
    pub(super) async fn one_by_one(
        &mut self,
        from: usize,
        interrupted: bool,
    ) -> Result<(), MigrateError> {
        let m = self.migration;
        let started = Instant::now();
        let label = m.label();
        let db = |e: tokio_postgres::Error| MigrateError::db(label.clone(), &e);
        self.client()
            .batch_execute(&self.timeouts(false))
            .await
            .map_err(db)?;
        for (index, sql) in m.statements.iter().enumerate().skip(from) {
            let recorded = loop {
                let paused = if self.blocking.contains(&index) {
                    self.pause_fleet().await?
                } else {
                    None
                };
                let result = if concurrent::is_concurrent_build(sql) {
                    // The history says which statement runs next before it starts, so a
                    // resumed run knows a valid index of that name is this statement's work.
                    match self.record_progress(index, started).await {
                        Ok(()) => {
                            self.build_concurrently(sql, interrupted && index == from)
                                .await
                        }
                        Err(e) => Err(e),
                    }
                    .map(|()| false)
                } else {
                    self.statement_with_progress(index, sql, started).await
                };
                self.resume_fleet(paused).await;
                match result {
                    Ok(recorded) => break recorded,
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
            };
            if !recorded {
                self.record_progress(index + 1, started).await.map_err(db)?;
            }
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

    /// Runs statement `index` and records the progress in one transaction; true when it did.
    /// A statement that cannot run in a transaction block runs alone (false: not recorded).
    async fn statement_with_progress(
        &self,
        index: usize,
        sql: &str,
        started: Instant,
    ) -> Result<bool, tokio_postgres::Error> {
        let client = self.client();
        client.batch_execute("BEGIN").await?;
        let result = async {
            client.batch_execute(sql).await?;
            self.record_progress(index + 1, started).await?;
            client.batch_execute("COMMIT").await
        }
        .await;
        match result {
            Ok(()) => Ok(true),
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                if e.code() == Some(&tokio_postgres::error::SqlState::ACTIVE_SQL_TRANSACTION) {
                    client.batch_execute(sql).await.map(|()| false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Records that the first `done` statements have run: the history row of a migration
    /// being applied, or the rollback's progress on the row of one being undone.
    async fn record_progress(
        &self,
        done: usize,
        started: Instant,
    ) -> Result<(), tokio_postgres::Error> {
        let done_count = i32::try_from(done).unwrap_or(i32::MAX);
        if self.down {
            return history::record_rollback(self.client(), self.migration.version, done_count)
                .await;
        }
        history::record_raw(
            self.client(),
            &self.entry(
                done == self.migration.statements.len(),
                done_count,
                None,
                None,
                millis_since(started),
            ),
        )
        .await
    }

    /// Runs a concurrent index build with its own wait budget (`concurrent_wait` as its
    /// `lock_timeout`), watched: its phase, progress and the sessions it waits for are logged and
    /// kept for the report.
    async fn build_concurrently(
        &mut self,
        sql: &str,
        resuming: bool,
    ) -> Result<(), tokio_postgres::Error> {
        match self.concurrent_index_state(sql).await {
            // Built by the interrupted run, which was killed before it could record it.
            Some((index, true)) if resuming => {
                tracing::info!(%index, "the index an interrupted run built is valid; counted as done");
                return Ok(());
            }
            Some((_, false)) => self.drop_invalid_index(sql).await,
            _ => {}
        }
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

    /// Runs the backfill statement over key ranges of `spec.batch`, resting `spec.pause`
    /// between batches; resumes at `from`. Each batch and the record of its end commit in one
    /// transaction, so a killed runner has either done a batch and recorded it, or neither:
    /// no batch runs twice.
    pub(super) async fn backfill(
        &mut self,
        spec: &Backfill,
        from: Option<i64>,
    ) -> Result<(), MigrateError> {
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
        let start = position;
        let mut throttle = Throttle::new(&self.options.throttle);
        let mut told = Instant::now();
        while let Some(last) = last.filter(|last| position <= *last) {
            throttle.wait(self.client()).await.map_err(db)?;
            if told.elapsed() >= Duration::from_secs(2) {
                told = Instant::now();
                let fraction = key_fraction(start, position, last);
                tracing::info!(migration = %label, "backfill: {}", progress(self.backfill_rows, started.elapsed(), fraction));
            }
            let end = position
                .saturating_add(spec.batch)
                .min(last.saturating_add(1));
            loop {
                match self.backfill_batch(&statement, position, end).await {
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
            tokio::time::sleep(spec.pause).await;
        }
        self.reset_timeouts().await.map_err(db)?;
        history::record(
            self.client(),
            &self.entry(true, 1, None, None, millis_since(started)),
        )
        .await
    }

    /// One batch `[from, to)` and the record that the backfill goes on at `to`, in one
    /// transaction; the rows it changed.
    async fn backfill_batch(
        &self,
        statement: &tokio_postgres::Statement,
        from: i64,
        to: i64,
    ) -> Result<u64, tokio_postgres::Error> {
        let m = self.migration;
        let client = self.client();
        client.batch_execute("BEGIN").await?;
        let result = async {
            let rows = client.execute(statement, &[&from, &to]).await?;
            history::record_backfill(client, m.version, &m.name, &m.checksum, to).await?;
            client.batch_execute("COMMIT").await?;
            Ok(rows)
        }
        .await;
        if result.is_err() {
            let _ = client.batch_execute("ROLLBACK").await;
        }
        result
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

    /// Whether the index a `CREATE INDEX CONCURRENTLY` names exists and is valid: `None` when
    /// it does not exist (or the statement names none).
    async fn concurrent_index_state(&self, sql: &str) -> Option<(String, bool)> {
        let qualified = concurrent_index_name(sql)?;
        let row = self
            .client()
            .query_opt(
                "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)",
                &[&qualified],
            )
            .await
            .ok()??;
        Some((qualified, row.get(0)))
    }

    /// A failed or interrupted `CREATE INDEX CONCURRENTLY` leaves an INVALID index behind; drop
    /// it so the statement can run again.
    async fn drop_invalid_index(&self, sql: &str) {
        if let Some((qualified, false)) = self.concurrent_index_state(sql).await {
            tracing::warn!(index = %qualified, "dropping the INVALID index a failed or interrupted CREATE INDEX CONCURRENTLY left");
            let _ = self
                .client()
                .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {qualified}"))
                .await;
        }
    }
}

/// The schema-qualified (when given) and quoted name of the index a `CREATE INDEX
/// CONCURRENTLY` statement builds.
fn concurrent_index_name(sql: &str) -> Option<String> {
    let parsed = pg_query::parse(sql, pg_query::ParserOptions::default()).ok()?;
    let Some(pg_query::NodeEnum::IndexStmt(index)) = parsed
        .protobuf
        .stmts
        .first()
        .and_then(|s| s.stmt.as_ref())
        .and_then(|s| s.node.as_ref())
    else {
        return None;
    };
    if !index.concurrent || index.idxname.is_empty() {
        return None;
    }
    let schema = index
        .relation
        .as_ref()
        .map(|r| r.schemaname.clone())
        .filter(|s| !s.is_empty());
    Some(match &schema {
        Some(s) => format!("{}.{}", quote(s), quote(&index.idxname)),
        None => quote(&index.idxname),
    })
}

fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}
