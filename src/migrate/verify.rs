//! Post-migration verification: no INVALID index, no constraint left NOT VALID unless a
//! migration says so, the row counts of tables the migrations did not touch unchanged, and the
//! smoke queries under `migrations/smoke/` within their latency budgets, with their plans.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tokio_postgres::Client;

use super::MigrateError;
use super::source::Migration;
use crate::config::parse_duration;

/// Exact row counts by table.
pub type RowCounts = BTreeMap<String, i64>;

/// One smoke query's run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SmokeResult {
    /// The file.
    pub name: String,
    /// Its budget.
    pub budget_ms: f64,
    /// `EXPLAIN ANALYZE`'s execution time.
    pub took_ms: f64,
    /// The plan, as PostgreSQL printed it.
    pub plan: String,
}

/// What verification found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Verification {
    /// Each problem with a roll-forward suggestion; empty when verification passed.
    pub problems: Vec<String>,
    /// The smoke queries.
    pub smoke: Vec<SmokeResult>,
}

/// Exact row counts of every user table.
///
/// # Errors
/// [`MigrateError::Database`].
pub async fn row_counts(client: &Client) -> Result<RowCounts, MigrateError> {
    let db = |e: tokio_postgres::Error| MigrateError::db("counting rows", &e);
    let tables = client
        .query(
            "SELECT format('%I.%I', schemaname, relname) FROM pg_stat_user_tables
              WHERE schemaname <> 'pgsidecar' ORDER BY 1",
            &[],
        )
        .await
        .map_err(db)?;
    let mut counts = RowCounts::new();
    for row in tables {
        let table: String = row.get(0);
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM ONLY {table}"), &[])
            .await
            .map_err(db)?
            .get(0);
        counts.insert(table, n);
    }
    Ok(counts)
}

/// Tables the statements of `migrations` name (as `schema.table`, `public` when unqualified).
#[must_use]
pub fn touched_tables(migrations: &[&Migration]) -> Vec<String> {
    let mut tables = Vec::new();
    for m in migrations {
        for sql in &m.statements {
            if let Ok(parsed) = pg_query::parse(sql, pg_query::ParserOptions::default()) {
                for table in parsed.tables() {
                    let qualified = if table.contains('.') {
                        table
                    } else {
                        format!("public.{table}")
                    };
                    if !tables.contains(&qualified) {
                        tables.push(qualified);
                    }
                }
            }
        }
    }
    tables
}

/// A smoke query file: `-- budget: 200ms` and one query.
fn smoke_budget(text: &str) -> Option<Duration> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("--"))
        .find_map(|c| c.trim().strip_prefix("budget:"))
        .and_then(|b| parse_duration(b.trim()).ok())
}

async fn run_smoke(client: &Client, dir: &Path) -> Result<Vec<SmokeResult>, MigrateError> {
    let smoke_dir = dir.join("smoke");
    let Ok(entries) = std::fs::read_dir(&smoke_dir) else {
        return Ok(Vec::new());
    };
    let mut files: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    let mut results = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|source| MigrateError::Io {
            path: path.clone(),
            source,
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let budget = smoke_budget(&text).ok_or_else(|| MigrateError::Directive {
            migration: format!("smoke/{name}"),
            line: 1,
            message: "a smoke query needs `-- budget: 200ms`".into(),
        })?;
        let query = text.trim().trim_end_matches(';');
        // Inside a transaction that is rolled back: a smoke query never changes data.
        client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| MigrateError::db("starting a smoke query", &e))?;
        let plan = client
            .query(&format!("EXPLAIN (ANALYZE, BUFFERS) {query}"), &[])
            .await;
        let _ = client.batch_execute("ROLLBACK").await;
        let plan: Vec<String> = plan
            .map_err(|e| MigrateError::db(format!("smoke query {name}"), &e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let took_ms = plan
            .iter()
            .find_map(|l| l.trim().strip_prefix("Execution Time:"))
            .and_then(|t| t.trim().trim_end_matches("ms").trim().parse().ok())
            .unwrap_or(f64::MAX);
        results.push(SmokeResult {
            name,
            budget_ms: budget.as_secs_f64() * 1000.0,
            took_ms,
            plan: plan.join("\n"),
        });
    }
    Ok(results)
}

/// Verifies the database after migrations. `before` are row counts taken just before applying
/// `applied`; tables those migrations name are expected to change, the others not.
///
/// # Errors
/// [`MigrateError`] when a check could not run (a failed check is a problem, not an error).
pub async fn verify(
    client: &Client,
    dir: &Path,
    migrations: &[Migration],
    before: Option<(&RowCounts, &[&Migration])>,
) -> Result<Verification, MigrateError> {
    let db = |e: tokio_postgres::Error| MigrateError::db("verifying", &e);
    let mut outcome = Verification::default();
    for row in client
        .query(
            "SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid ORDER BY 1",
            &[],
        )
        .await
        .map_err(db)?
    {
        let index: String = row.get(0);
        outcome.problems.push(format!(
            "index {index} is INVALID (a failed concurrent build): roll forward with DROP INDEX CONCURRENTLY {index}; then create it again CONCURRENTLY"
        ));
    }
    let declared: Vec<&String> = migrations
        .iter()
        .flat_map(|m| &m.directives.leaves_not_valid)
        .collect();
    for row in client
        .query(
            "SELECT conname, conrelid::regclass::text FROM pg_constraint
              WHERE NOT convalidated AND conrelid <> 0 ORDER BY 1",
            &[],
        )
        .await
        .map_err(db)?
    {
        let (name, table): (String, String) = (row.get(0), row.get(1));
        if !declared.contains(&&name) {
            outcome.problems.push(format!(
                "constraint {name} on {table} is NOT VALID and no migration declares `-- pgsidecar:leaves-not-valid {name}`: roll forward with ALTER TABLE {table} VALIDATE CONSTRAINT {name}"
            ));
        }
    }
    if let Some((counts, applied)) = before {
        let touched = touched_tables(applied);
        let after = row_counts(client).await?;
        for (table, n) in counts {
            if touched.contains(table) {
                continue;
            }
            if let Some(now) = after.get(table).filter(|now| *now != n) {
                outcome.problems.push(format!(
                    "table {table} had {n} rows before the migration and {now} after, though no migration names it: find the writer before going on"
                ));
            }
        }
    }
    outcome.smoke = run_smoke(client, dir).await?;
    for s in &outcome.smoke {
        if s.took_ms > s.budget_ms {
            outcome.problems.push(format!(
                "smoke query {} took {:.1} ms, over its {:.0} ms budget: roll forward (an index, ANALYZE, a rewrite); its plan is in the report",
                s.name, s.took_ms, s.budget_ms
            ));
        }
    }
    Ok(outcome)
}
