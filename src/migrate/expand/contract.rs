//! `migrate complete` and `migrate abort`: the end of an expansion, each in one transaction.
//! Complete drops the old representation only once no live sidecar of the fleet serves an older
//! version (the fleet registry knows what each one serves); abort removes what the expansion
//! added only while no live sidecar serves the new version.

use std::time::{Duration, Instant};

use super::{Expansion, Phase, Transactions, open_expansion};
use crate::gate::fleet::{self, SidecarRow};
use crate::migrate::MigrateError;
use crate::migrate::runner::{ApplyOptions, Migrator};

/// How `complete` waits for the old version's sidecars.
#[derive(Debug, Clone, Default)]
pub struct CompleteOptions {
    /// Wait this long for them to go, instead of refusing at once.
    pub wait: Option<Duration>,
}

/// A live sidecar that stops a contract (or an abort): where it runs and what it serves.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OldSidecar {
    /// Its id in the registry.
    pub id: String,
    /// Its host.
    pub host: String,
    /// The schema version it serves; `None` when it serves none (it reads the tables directly).
    pub schema_version: Option<i64>,
}

impl std::fmt::Display for OldSidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.schema_version {
            Some(v) => write!(f, "{} on {} (schema version {v})", self.id, self.host),
            None => write!(f, "{} on {} (no schema version)", self.id, self.host),
        }
    }
}

fn old_sidecar(s: SidecarRow) -> OldSidecar {
    OldSidecar {
        id: s.id,
        host: s.host,
        schema_version: s.schema_version,
    }
}

impl Migrator {
    async fn open_expansion_in(
        &self,
        phases: &[Phase],
        verb: &str,
    ) -> Result<Expansion, MigrateError> {
        let expansion = open_expansion(&self.client).await?.ok_or_else(|| {
            MigrateError::Rollback(format!("nothing to {verb}: no expansion is open"))
        })?;
        if !phases.contains(&expansion.phase) {
            return Err(MigrateError::Refused(format!(
                "{} is not expanded yet ({:?}): run `migrate apply` to finish its expansion first",
                expansion.label(),
                expansion.phase
            )));
        }
        Ok(expansion)
    }

    /// Live sidecars for which `blocks` holds.
    async fn sidecars_that(
        &self,
        stale_after: Duration,
        blocks: impl Fn(Option<i64>) -> bool,
    ) -> Result<Vec<OldSidecar>, MigrateError> {
        let rows =
            fleet::sidecars(&self.url, stale_after)
                .await
                .map_err(|e| MigrateError::Database {
                    context: "reading the fleet registry".into(),
                    message: e.to_string(),
                })?;
        Ok(rows
            .into_iter()
            .filter(|s| s.live && blocks(s.schema_version))
            .map(old_sidecar)
            .collect())
    }

    /// Contracts the open expansion: drops the old version's schema, the triggers and the old
    /// columns, and gives the new columns their final names and NOT NULL. Refused while a live
    /// sidecar serves an older version (or none); with `wait`, waits for them to go.
    ///
    /// # Errors
    /// [`MigrateError::Refused`] naming the sidecars still on the old version;
    /// [`MigrateError::Rollback`] when nothing is expanded.
    pub async fn complete(
        &self,
        options: &ApplyOptions,
        complete: &CompleteOptions,
    ) -> Result<String, MigrateError> {
        self.lock(options.lock_wait).await?;
        let result = self.complete_locked(options, complete).await;
        self.unlock().await;
        result
    }

    async fn complete_locked(
        &self,
        options: &ApplyOptions,
        complete: &CompleteOptions,
    ) -> Result<String, MigrateError> {
        let expansion = self
            .open_expansion_in(&[Phase::Expanded], "complete")
            .await?;
        let version = expansion.version;
        let started = Instant::now();
        let mut told = None;
        loop {
            let old = self
                .sidecars_that(options.stale_after, |v| v.is_none_or(|v| v < version))
                .await?;
            if old.is_empty() {
                break;
            }
            let names: Vec<String> = old.iter().map(ToString::to_string).collect();
            let waited_enough = complete.wait.is_none_or(|w| started.elapsed() >= w);
            if waited_enough {
                return Err(MigrateError::Refused(format!(
                    "complete of {} refused: {} live sidecar(s) still serve an older schema version than {version}: {}. Roll them to the new version (or drain them), then run complete again{}",
                    expansion.label(),
                    old.len(),
                    names.join(", "),
                    if complete.wait.is_some() {
                        ""
                    } else {
                        ", or add --wait"
                    }
                )));
            }
            if told.as_ref() != Some(&names) {
                tracing::info!(sidecars = %names.join(", "), "waiting for the old version's sidecars to go");
                told = Some(names);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let waited = started.elapsed();
        let mut tx = Transactions::new(&self.client, options, expansion.label());
        let client = &self.client;
        let begin = tx.begin();
        let contract = &expansion.plan.contract;
        tx.run("contract", || {
            let begin = begin.clone();
            async move {
                client.batch_execute(&begin).await?;
                for statement in contract {
                    client.batch_execute(statement).await?;
                }
                client
                    .execute(
                        "UPDATE pgsidecar.expansions SET phase = 'completed', completed_at = now() WHERE version = $1",
                        &[&version],
                    )
                    .await?;
                client.batch_execute("COMMIT").await
            }
        })
        .await?;
        let telling = Instant::now();
        self.tell_fleet(options).await;
        Ok(format!(
            "completed {} in {:.3} s (checking the fleet {:.3} s, contract transaction {} ms, lock retries {}; the fleet acknowledged the schema change in {:.3} s)",
            expansion.label(),
            started.elapsed().as_secs_f64(),
            waited.as_secs_f64(),
            tx.held.get("contract").map_or(0, Duration::as_millis),
            tx.lock_retries,
            telling.elapsed().as_secs_f64()
        ))
    }

    /// Undoes the open expansion (finished or not): drops the version schemas it created, its
    /// triggers and shadow columns, and forgets the migration, leaving the tables as they were
    /// before it. Refused while a live sidecar serves its version.
    ///
    /// # Errors
    /// [`MigrateError::Refused`] naming the sidecars on the new version;
    /// [`MigrateError::Rollback`] when nothing is expanded.
    pub async fn abort(&self, options: &ApplyOptions) -> Result<String, MigrateError> {
        self.lock(options.lock_wait).await?;
        let result = self.abort_locked(options).await;
        self.unlock().await;
        result
    }

    async fn abort_locked(&self, options: &ApplyOptions) -> Result<String, MigrateError> {
        let expansion = self
            .open_expansion_in(
                &[Phase::Backfilling, Phase::Finishing, Phase::Expanded],
                "abort",
            )
            .await?;
        let version = expansion.version;
        let new = self
            .sidecars_that(options.stale_after, |v| v.is_some_and(|v| v >= version))
            .await?;
        if !new.is_empty() {
            let names: Vec<String> = new.iter().map(ToString::to_string).collect();
            return Err(MigrateError::Refused(format!(
                "abort of {} refused: {} live sidecar(s) serve its schema version or a newer one, whose application would lose its schema: {}. Roll them back first",
                expansion.label(),
                new.len(),
                names.join(", ")
            )));
        }
        let mut tx = Transactions::new(&self.client, options, expansion.label());
        let client = &self.client;
        let begin = tx.begin();
        let abort = &expansion.plan.abort;
        tx.run("abort", || {
            let begin = begin.clone();
            async move {
                client.batch_execute(&begin).await?;
                for statement in abort {
                    client.batch_execute(statement).await?;
                }
                client
                    .execute(
                        "DELETE FROM pgsidecar.expansions WHERE version = $1",
                        &[&version],
                    )
                    .await?;
                client
                    .execute(
                        "DELETE FROM pgsidecar.schema_migrations WHERE version = $1",
                        &[&version],
                    )
                    .await?;
                client.batch_execute("COMMIT").await
            }
        })
        .await?;
        self.tell_fleet(options).await;
        Ok(format!("aborted {}", expansion.label()))
    }

    /// Every sidecar prepares its cached statements afresh: the tables changed under them.
    async fn tell_fleet(&self, options: &ApplyOptions) {
        if options.fleet
            && let Err(e) = fleet::fleet_invalidate(&self.url, options.stale_after).await
        {
            tracing::warn!(error = %e, "could not tell the fleet the schema changed");
        }
    }
}
