//! The dry run: a fresh copy of the production database (schema and data, by `pg_dump` and
//! `pg_restore`; or the schema and a random sample of each table's rows) in a scratch database
//! on a staging server, the pending migrations applied to it with their durations and the locks
//! they took, a check that no index was left INVALID, and the copy dropped again.

use std::path::Path;
use std::str::FromStr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio_postgres::Config;

use super::MigrateError;
use super::runner::{ApplyOptions, Migrator, StepReport};
use super::window::MaintenanceWindow;
use crate::pgbin::{self, conninfo};

/// What the dry run found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DryRunReport {
    /// The scratch database (dropped at the end).
    pub scratch_database: String,
    /// Dump and restore of the copy.
    pub copy_seconds: f64,
    /// Each migration as applied to the copy.
    pub steps: Vec<StepReport>,
    /// Indexes left INVALID on the copy (should be none).
    pub invalid_indexes: Vec<String>,
}

async fn run_tool(
    program: &'static str,
    args: &[&str],
    connection: &pgbin::ToolConnection,
) -> Result<(), MigrateError> {
    pgbin::run(program, args, Some(connection))
        .await
        .map(|_| ())
        .map_err(|message| MigrateError::Database {
            context: format!("{program} for the dry run's copy"),
            message,
        })
}

/// How much of the production data the copy holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CopyScope {
    /// Everything.
    Full,
    /// This percentage of each table's rows (`TABLESAMPLE BERNOULLI`); pgsidecar's own tables
    /// in full. Foreign keys are not checked while loading (a sample breaks them).
    Sample(f64),
}

/// Copies the database at `production_url` to a scratch database on `staging_url`'s server,
/// applies the pending migrations from `dir` there, and drops the copy.
///
/// # Errors
/// [`MigrateError`] from the copy or from a migration; the copy is dropped in every case.
pub async fn dry_run(
    production_url: &str,
    staging_url: &str,
    dir: &Path,
    options: &ApplyOptions,
    copy: CopyScope,
) -> Result<DryRunReport, MigrateError> {
    let bad_url = |e: tokio_postgres::Error| MigrateError::db("parsing a database URL", &e);
    let production = Config::from_str(production_url).map_err(bad_url)?;
    let staging = Config::from_str(staging_url).map_err(bad_url)?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let scratch = format!("pgsidecar_dryrun_{stamp}_{}", std::process::id());
    let (admin, connection) = staging
        .connect(crate::tls::control_connector())
        .await
        .map_err(|e| MigrateError::db("connecting to the staging server", &e))?;
    tokio::spawn(connection);
    admin
        .batch_execute(&format!("CREATE DATABASE {scratch} TEMPLATE template0"))
        .await
        .map_err(|e| MigrateError::db("creating the scratch database", &e))?;
    let result = copy_and_apply(&production, &staging, &scratch, dir, options, copy).await;
    if let Err(e) = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {scratch} WITH (FORCE)"))
        .await
    {
        tracing::error!(error = %e, database = %scratch, "could not drop the dry run's copy");
    }
    result
}

async fn copy_and_apply(
    production: &Config,
    staging: &Config,
    scratch: &str,
    dir: &Path,
    options: &ApplyOptions,
    copy: CopyScope,
) -> Result<DryRunReport, MigrateError> {
    let started = Instant::now();
    let schema_only = ["--schema-only"];
    let dump_scope: &[&str] = if matches!(copy, CopyScope::Sample(_)) {
        &schema_only
    } else {
        &[]
    };
    let dump = std::env::temp_dir().join(format!("{scratch}.dump"));
    let dump_path = dump.to_string_lossy().into_owned();
    let source_db = production.get_dbname().unwrap_or("postgres");
    let copied = async {
        let source = pgbin::ToolConnection::new(production, source_db);
        let target = pgbin::ToolConnection::new(staging, scratch);
        let mut args = vec![
            "--format=custom",
            "--no-owner",
            "--no-privileges",
            "--file",
            &dump_path,
        ];
        args.extend_from_slice(dump_scope);
        args.push(&source.conninfo);
        run_tool("pg_dump", &args, &source).await?;
        run_tool(
            "pg_restore",
            &[
                "--no-owner",
                "--no-privileges",
                "--exit-on-error",
                "--dbname",
                &target.conninfo,
                &dump_path,
            ],
            &target,
        )
        .await
    }
    .await;
    let _ = std::fs::remove_file(&dump);
    copied?;
    if let CopyScope::Sample(percent) = copy {
        sample_data(production, staging, scratch, percent).await?;
    }
    let copy_seconds = started.elapsed().as_secs_f64();
    let migrator = Migrator::open(&conninfo(staging, scratch), dir).await?;
    let options = ApplyOptions {
        fleet: false,
        report_locks: true,
        maintenance_window: Some(MaintenanceWindow::Now),
        ..options.clone()
    };
    let report = migrator.apply(&options).await?;
    let invalid_indexes = migrator.invalid_indexes().await?;
    Ok(DryRunReport {
        scratch_database: scratch.to_owned(),
        copy_seconds,
        steps: report.applied,
        invalid_indexes,
    })
}

async fn connect(config: &Config, database: &str) -> Result<tokio_postgres::Client, MigrateError> {
    let mut config = config.clone();
    config.dbname(database);
    let (client, connection) = config
        .connect(crate::tls::control_connector())
        .await
        .map_err(|e| MigrateError::db(format!("connecting to {database}"), &e))?;
    tokio::spawn(connection);
    Ok(client)
}

/// Copies `percent` of every user table's rows (pgsidecar's own tables whole) into the scratch
/// database, with foreign-key triggers off while loading.
async fn sample_data(
    production: &Config,
    staging: &Config,
    scratch: &str,
    percent: f64,
) -> Result<(), MigrateError> {
    use futures_util::{SinkExt as _, StreamExt as _};
    let source = connect(production, production.get_dbname().unwrap_or("postgres")).await?;
    let target = connect(staging, scratch).await?;
    let db = |e: tokio_postgres::Error| MigrateError::db("sampling data for the dry run", &e);
    target
        .batch_execute("SET session_replication_role = replica")
        .await
        .map_err(db)?;
    let tables = source
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname), n.nspname = 'pgsidecar',
                    (SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum)
                       FROM pg_attribute
                      WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped AND attgenerated = '')
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                AND n.nspname NOT LIKE 'pg\\_%'",
            &[],
        )
        .await
        .map_err(db)?;
    for row in tables {
        let (table, whole, columns): (String, bool, Option<String>) =
            (row.get(0), row.get(1), row.get(2));
        let Some(columns) = columns else { continue };
        let sample = if whole {
            String::new()
        } else {
            format!(" TABLESAMPLE BERNOULLI ({percent})")
        };
        let out = source
            .copy_out(&format!(
                "COPY (SELECT {columns} FROM {table}{sample}) TO STDOUT"
            ))
            .await
            .map_err(db)?;
        let sink = target
            .copy_in(&format!("COPY {table} ({columns}) FROM STDIN"))
            .await
            .map_err(db)?;
        let mut out = std::pin::pin!(out);
        let mut sink = std::pin::pin!(sink);
        while let Some(chunk) = out.next().await {
            sink.send(chunk.map_err(db)?).await.map_err(db)?;
        }
        sink.as_mut().finish().await.map_err(db)?;
    }
    Ok(())
}
