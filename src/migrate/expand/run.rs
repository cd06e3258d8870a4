//! `migrate apply` of an expand/contract migration: plan it against the catalog, add the
//! shadow columns and triggers, backfill in batches that yield to the replicas and the
//! database's health, add and validate constraints, then create the version schemas. Each
//! step commits together with the record of its progress, so a killed runner resumes where it
//! stopped and never runs a step twice.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tokio_postgres::types::Type;

use super::catalog::table_facts;
use super::plan::{BackfillStep, ExpandPlan, PlanInput, version_schema};
use super::spec::ExpandSpec;
use super::{EXPANSIONS_DDL, Expansion, Phase, Transactions, expansions};
use crate::migrate::MigrateError;
use crate::migrate::history::{self, Record};
use crate::migrate::runner::{ApplyOptions, Migrator};
use crate::migrate::source::Migration;
use crate::migrate::throttle::{Throttle, key_fraction, progress};

/// What an expand did, phase by phase.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExpandReport {
    /// Seconds of each phase run now: `setup`, `backfill`, `finish`.
    pub phase_seconds: BTreeMap<String, f64>,
    /// Rows backfilled in this run.
    pub backfill_rows: u64,
    /// Time the backfill waited for replicas or the database's health.
    pub throttled_seconds: f64,
    /// Why it waited.
    pub throttle_reasons: Vec<String>,
    /// Lock timeouts retried.
    pub lock_retries: u32,
    /// The longest transaction of each step, in milliseconds: how long its locks were held.
    /// `setup`, `add constraint NOT VALID` and `version schemas` take brief ACCESS EXCLUSIVE
    /// locks; a `backfill batch` holds row locks only; `validate constraint` holds SHARE
    /// UPDATE EXCLUSIVE, which blocks no reads or writes.
    pub held_ms: BTreeMap<String, u128>,
}

/// An expansion being applied.
pub(crate) struct ExpandRun<'a> {
    migrator: &'a Migrator,
    migration: &'a Migration,
    spec: &'a ExpandSpec,
    options: &'a ApplyOptions,
    tx: Transactions<'a>,
    report: ExpandReport,
}

impl<'a> ExpandRun<'a> {
    pub(crate) fn new(
        migrator: &'a Migrator,
        migration: &'a Migration,
        spec: &'a ExpandSpec,
        options: &'a ApplyOptions,
    ) -> Self {
        Self {
            migrator,
            migration,
            spec,
            options,
            tx: Transactions::new(&migrator.client, options, migration.label()),
            report: ExpandReport::default(),
        }
    }

    fn db(&self, e: &tokio_postgres::Error) -> MigrateError {
        MigrateError::db(self.migration.label(), e)
    }

    /// Runs the expansion to its end (or from where an interrupted run left it).
    ///
    /// # Errors
    /// [`MigrateError`]; whatever committed stays, and the next apply resumes.
    pub(crate) async fn run(mut self) -> Result<ExpandReport, MigrateError> {
        let started = Instant::now();
        let client = &self.migrator.client;
        client
            .batch_execute(EXPANSIONS_DDL)
            .await
            .map_err(|e| self.db(&e))?;
        let found = expansions(client)
            .await?
            .into_iter()
            .find(|e| e.version == self.migration.version);
        let mut expansion = match found {
            Some(e) => e,
            None => self.setup().await?,
        };
        if expansion.phase == Phase::Backfilling {
            let clock = Instant::now();
            self.backfill(&expansion).await?;
            self.report
                .phase_seconds
                .insert("backfill".into(), clock.elapsed().as_secs_f64());
            expansion.phase = Phase::Finishing;
        }
        if expansion.phase == Phase::Finishing {
            let clock = Instant::now();
            self.build_indexes(&expansion).await?;
            self.report
                .phase_seconds
                .insert("indexes".into(), clock.elapsed().as_secs_f64());
            let clock = Instant::now();
            self.finish(&expansion, started).await?;
            self.report
                .phase_seconds
                .insert("finish".into(), clock.elapsed().as_secs_f64());
        }
        self.report.lock_retries = self.tx.lock_retries;
        self.report.held_ms = self
            .tx
            .held
            .iter()
            .map(|(step, held)| (step.clone(), held.as_millis()))
            .collect();
        Ok(self.report)
    }

    /// Plans against the catalog and adds the shadow columns and triggers, recording the plan
    /// in the same transaction.
    async fn setup(&mut self) -> Result<Expansion, MigrateError> {
        let clock = Instant::now();
        let plan = self.plan().await?;
        let text = serde_json::to_string(&plan)
            .map_err(|e| MigrateError::Rollback(format!("cannot record the plan: {e}")))?;
        let client = &self.migrator.client;
        let begin = self.tx.begin();
        let (version, name) = (self.migration.version, self.migration.name.as_str());
        let phase = if plan.backfills.is_empty() {
            "finishing"
        } else {
            "backfilling"
        };
        let setup = &plan.setup;
        let text = &text;
        let begin = &begin;
        self.tx
            .run("setup", || async move {
                client.batch_execute(begin).await?;
                for statement in setup {
                    client.batch_execute(statement).await?;
                }
                client
                    .execute(
                        "INSERT INTO pgsidecar.expansions (version, name, phase, plan) VALUES ($1, $2, $3, $4)",
                        &[&version, &name, &phase, text],
                    )
                    .await?;
                client.batch_execute("COMMIT").await
            })
            .await?;
        self.report
            .phase_seconds
            .insert("setup".into(), clock.elapsed().as_secs_f64());
        Ok(Expansion {
            version,
            name: name.to_owned(),
            phase: Phase::parse(phase),
            plan,
            backfill_step: 0,
            backfill_position: None,
            backfill_rows: 0,
            finish_done: 0,
            indexes_done: 0,
        })
    }

    /// The plan for the catalog as it is now.
    async fn plan(&self) -> Result<ExpandPlan, MigrateError> {
        let client = &self.migrator.client;
        let label = self.migration.label();
        let refuse = |message: String| MigrateError::Refused(format!("{label}: {message}"));
        let mut facts = BTreeMap::new();
        for op in &self.spec.operations {
            if facts.contains_key(op.table()) {
                continue;
            }
            let found = table_facts(client, &self.spec.schema, op.table())
                .await
                .map_err(|e| self.db(&e))?
                .ok_or_else(|| {
                    refuse(format!(
                        "there is no table {}.{}",
                        self.spec.schema,
                        op.table()
                    ))
                })?;
            facts.insert(op.table().to_owned(), found);
        }
        let old_version = history::load(client)
            .await?
            .iter()
            .filter(|r| r.is_applied() && r.version < self.migration.version)
            .map(|r| r.version)
            .max()
            .unwrap_or(0);
        let old_schema = version_schema(old_version);
        let new_schema = version_schema(self.migration.version);
        let schema_exists = |name: String| async move {
            client
                .query_one(
                    "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)",
                    &[&name],
                )
                .await
                .map(|row| row.get::<_, bool>(0))
        };
        if schema_exists(new_schema.clone())
            .await
            .map_err(|e| self.db(&e))?
        {
            return Err(refuse(format!(
                "schema {new_schema} exists already; it belongs to this migration's version and must not exist before its expansion"
            )));
        }
        let old_schema_exists = schema_exists(old_schema.clone())
            .await
            .map_err(|e| self.db(&e))?;
        let old_views: BTreeSet<String> = client
            .query(
                "SELECT table_name::text FROM information_schema.views WHERE table_schema = $1",
                &[&old_schema],
            )
            .await
            .map_err(|e| self.db(&e))?
            .iter()
            .map(|row| row.get(0))
            .collect();
        ExpandPlan::build(&PlanInput {
            version: self.migration.version,
            old_version,
            spec: self.spec,
            facts: &facts,
            old_views: &old_views,
            old_schema_exists,
        })
        .map_err(refuse)
    }

    /// Every backfill of the plan from where the record says, batch by batch.
    async fn backfill(&mut self, expansion: &Expansion) -> Result<(), MigrateError> {
        let mut throttle = Throttle::new(&self.options.throttle);
        let first_step = usize::try_from(expansion.backfill_step).unwrap_or(0);
        for (index, step) in expansion.plan.backfills.iter().enumerate().skip(first_step) {
            let from = if index == first_step {
                expansion.backfill_position
            } else {
                None
            };
            self.backfill_one(index, step, from, &mut throttle).await?;
        }
        let client = &self.migrator.client;
        client
            .execute(
                "UPDATE pgsidecar.expansions SET phase = 'finishing', backfill_position = NULL WHERE version = $1",
                &[&self.migration.version],
            )
            .await
            .map_err(|e| self.db(&e))?;
        self.report.throttled_seconds = throttle.waited.as_secs_f64();
        self.report.throttle_reasons = throttle.reasons;
        Ok(())
    }

    async fn backfill_one(
        &mut self,
        index: usize,
        step: &BackfillStep,
        from: Option<i64>,
        throttle: &mut Throttle<'_>,
    ) -> Result<(), MigrateError> {
        let client = &self.migrator.client;
        let range = client
            .query_one(
                &format!(
                    "SELECT min({key})::bigint, max({key})::bigint FROM {table}",
                    key = step.key,
                    table = step.table
                ),
                &[],
            )
            .await
            .map_err(|e| self.db(&e))?;
        let (first, last): (Option<i64>, Option<i64>) = (range.get(0), range.get(1));
        let statement = client
            .prepare_typed(&step.statement, &[Type::INT8, Type::INT8])
            .await
            .map_err(|e| self.db(&e))?;
        let version = self.migration.version;
        let step_index = i32::try_from(index).unwrap_or(i32::MAX);
        let start = from.or(first).unwrap_or(0);
        let mut position = start;
        let clock = Instant::now();
        let mut told = Instant::now();
        let mut rows_here = 0u64;
        while let Some(last) = last.filter(|last| position <= *last) {
            throttle.wait(client).await.map_err(|e| self.db(&e))?;
            let end = position
                .saturating_add(self.spec.batch)
                .min(last.saturating_add(1));
            let begin = self.tx.begin();
            let statement = &statement;
            let rows = std::sync::atomic::AtomicU64::new(0);
            let rows_ref = &rows;
            self.tx
                .run("backfill batch", || {
                    let begin = begin.clone();
                    async move {
                        client.batch_execute(&begin).await?;
                        let changed = client.execute(statement, &[&position, &end]).await?;
                        client
                            .execute(
                                "UPDATE pgsidecar.expansions
                                    SET backfill_step = $2, backfill_position = $3,
                                        backfill_rows = backfill_rows + $4
                                  WHERE version = $1",
                                &[
                                    &version,
                                    &step_index,
                                    &end,
                                    &i64::try_from(changed).unwrap_or(i64::MAX),
                                ],
                            )
                            .await?;
                        client.batch_execute("COMMIT").await?;
                        rows_ref.store(changed, std::sync::atomic::Ordering::Relaxed);
                        Ok(())
                    }
                })
                .await?;
            let changed = rows.into_inner();
            rows_here += changed;
            self.report.backfill_rows += changed;
            position = end;
            if told.elapsed() >= Duration::from_secs(2) {
                told = Instant::now();
                let fraction = key_fraction(start, position, last);
                tracing::info!(migration = %self.migration.label(), table = %step.table, "backfill: {}", progress(rows_here, clock.elapsed(), fraction));
            }
            tokio::time::sleep(self.spec.pause).await;
        }
        tracing::info!(migration = %self.migration.label(), table = %step.table, "backfill done: {}", progress(rows_here, clock.elapsed(), 1.0));
        client
            .execute(
                "UPDATE pgsidecar.expansions SET backfill_step = $2, backfill_position = NULL WHERE version = $1",
                &[&version, &(step_index + 1)],
            )
            .await
            .map_err(|e| self.db(&e))?;
        Ok(())
    }

    /// Each index of a changed column built again on its shadow, concurrently and outside a
    /// transaction, with the concurrent-build wait budget; a build not recorded as done is
    /// dropped first, since a killed one leaves an INVALID index behind.
    async fn build_indexes(&mut self, expansion: &Expansion) -> Result<(), MigrateError> {
        let client = &self.migrator.client;
        let version = self.migration.version;
        let done = usize::try_from(expansion.indexes_done).unwrap_or(0);
        for (index, step) in expansion.plan.indexes.iter().enumerate().skip(done) {
            let clock = Instant::now();
            let next = i32::try_from(index + 1).unwrap_or(i32::MAX);
            let result = async {
                client
                    .batch_execute(&format!(
                        "SET lock_timeout = '{}ms'; SET statement_timeout = '{}ms'",
                        self.options.concurrent_wait.as_millis(),
                        self.options.statement_timeout.as_millis()
                    ))
                    .await?;
                client
                    .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {}", step.name))
                    .await?;
                client.batch_execute(&step.create).await?;
                client
                    .execute(
                        "UPDATE pgsidecar.expansions SET indexes_done = $2 WHERE version = $1",
                        &[&version, &next],
                    )
                    .await?;
                client
                    .batch_execute("RESET lock_timeout; RESET statement_timeout")
                    .await
            }
            .await;
            if let Err(e) = result {
                let _ = client
                    .batch_execute(&format!(
                        "RESET lock_timeout; RESET statement_timeout; DROP INDEX CONCURRENTLY IF EXISTS {}",
                        step.name
                    ))
                    .await;
                return Err(self.db(&e));
            }
            tracing::info!(migration = %self.migration.label(), index = %step.name, seconds = clock.elapsed().as_secs_f64(), "index built on the new column");
        }
        Ok(())
    }

    /// Constraints and version schemas, each statement committed with its progress; the last
    /// transaction also records the migration as applied.
    async fn finish(
        &mut self,
        expansion: &Expansion,
        started: Instant,
    ) -> Result<(), MigrateError> {
        let client = &self.migrator.client;
        let version = self.migration.version;
        let done = usize::try_from(expansion.finish_done).unwrap_or(0);
        for (index, statement) in expansion.plan.finish.iter().enumerate().skip(done) {
            let begin = self.tx.begin();
            let next = i32::try_from(index + 1).unwrap_or(i32::MAX);
            let what = if statement.contains("VALIDATE CONSTRAINT") {
                "validate constraint"
            } else if statement.contains("ADD CONSTRAINT") {
                "add constraint NOT VALID"
            } else {
                "version schemas"
            };
            self.tx
                .run(what, || {
                    let begin = begin.clone();
                    async move {
                        client.batch_execute(&begin).await?;
                        client.batch_execute(statement).await?;
                        client
                            .execute(
                                "UPDATE pgsidecar.expansions SET finish_done = $2 WHERE version = $1",
                                &[&version, &next],
                            )
                            .await?;
                        client.batch_execute("COMMIT").await
                    }
                })
                .await?;
        }
        let m = self.migration;
        let record = Record {
            version: m.version,
            name: &m.name,
            checksum: &m.checksum,
            applied: true,
            completed_statements: 0,
            failed_statement: None,
            error: None,
            down_sql: None,
            duration_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
            no_backup_reason: self.options.no_backup_reason.as_deref(),
        };
        let record = &record;
        self.tx
            .run("record expanded", || async move {
                client.batch_execute("BEGIN").await?;
                client
                    .execute(
                        "UPDATE pgsidecar.expansions SET phase = 'expanded', expanded_at = now() WHERE version = $1",
                        &[&version],
                    )
                    .await?;
                history::record_raw(client, record).await?;
                client.batch_execute("COMMIT").await
            })
            .await
    }
}
