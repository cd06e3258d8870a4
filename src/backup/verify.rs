//! `backup verify`: the dump matches its manifest byte for byte, restores into a scratch
//! database, and the restored tables and sequences match what the source held.

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::manifest::sha256_file;
use super::{BACKUPS_DDL, BackupError, Manifest, connect, digest_tables};
use crate::pgbin;

/// What a verification proved.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    /// Entries in the dump's table of contents.
    pub toc_entries: usize,
    /// Time to restore: the recovery-time figure.
    pub restore_seconds: f64,
    /// Tables whose row count and content hash matched.
    pub tables_checked: usize,
    /// Sequences found at or above the columns they feed.
    pub sequences_checked: usize,
    /// The scratch database (dropped).
    pub scratch_database: String,
}

/// Verifies `dump` against its manifest by restoring it into a scratch database on the server
/// at `scratch_url`; with `record_url`, records the verification in that database's
/// `pgsidecar.backups`.
///
/// # Errors
/// [`BackupError::Mismatch`] naming what differs; other variants when something could not run.
pub async fn verify(
    dump: &Path,
    scratch_url: &str,
    record_url: Option<&str>,
) -> Result<VerifyReport, BackupError> {
    let manifest = Manifest::read(dump)?;
    let (sha256, size) = sha256_file(dump)?;
    if size != manifest.size_bytes || sha256 != manifest.sha256 {
        return Err(BackupError::Mismatch(format!(
            "{}: {size} bytes with SHA-256 {sha256}, the manifest says {} bytes with {}: the file is corrupted or truncated",
            dump.display(),
            manifest.size_bytes,
            manifest.sha256
        )));
    }
    let dump_path = dump.to_string_lossy().into_owned();
    let toc = pgbin::run("pg_restore", &["--list", &dump_path], None)
        .await
        .map_err(|message| BackupError::Tool {
            program: "pg_restore",
            message,
        })?;
    let toc_entries = toc
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .count();
    let config = tokio_postgres::Config::from_str(scratch_url)
        .map_err(|e| BackupError::db("parsing the scratch URL", &e))?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let scratch = format!("pgsidecar_verify_{stamp}_{}", std::process::id());
    let admin = connect(scratch_url, "scratch server").await?;
    drop_abandoned_scratch(&admin).await;
    // Held while this verify lives: another verify drops the scratch database only when it can
    // take this lock, that is once this process is gone.
    admin
        .execute(
            "SELECT pg_advisory_lock($1, hashtext($2))",
            &[&SCRATCH_LOCK_CLASS, &scratch],
        )
        .await
        .map_err(|e| BackupError::db("claiming the scratch database", &e))?;
    admin
        .batch_execute(&format!("CREATE DATABASE {scratch} TEMPLATE template0"))
        .await
        .map_err(|e| BackupError::db("creating the scratch database", &e))?;
    let result = restore_and_compare(&manifest, &dump_path, &config, &scratch).await;
    if let Err(e) = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {scratch} WITH (FORCE)"))
        .await
    {
        tracing::error!(error = %e, database = %scratch, "could not drop the scratch database");
    }
    let (restore_seconds, tables_checked, sequences_checked) = result?;
    if let Some(url) = record_url {
        let client = connect(url, "source database").await?;
        client
            .batch_execute(BACKUPS_DDL)
            .await
            .map_err(|e| BackupError::db("creating pgsidecar.backups", &e))?;
        client
            .execute(
                "INSERT INTO pgsidecar.backups (sha256, file, size_bytes, verified_at, restore_seconds)
                 VALUES ($1, $2, $3, now(), $4)
                 ON CONFLICT (sha256) DO UPDATE SET verified_at = now(), restore_seconds = $4",
                &[
                    &manifest.sha256,
                    &dump_path,
                    &i64::try_from(size).unwrap_or(i64::MAX),
                    &restore_seconds,
                ],
            )
            .await
            .map_err(|e| BackupError::db("recording the verification", &e))?;
    }
    Ok(VerifyReport {
        toc_entries,
        restore_seconds,
        tables_checked,
        sequences_checked,
        scratch_database: scratch,
    })
}

/// The first key of the advisory lock a verify holds on its scratch database's name.
const SCRATCH_LOCK_CLASS: i32 = 0x7067_7376;

/// Drops scratch databases whose verify was killed: those whose claim (an advisory lock on the
/// scratch server's database that verifies connect to) nobody holds. Best effort: a failure is
/// logged and the verify goes on.
async fn drop_abandoned_scratch(admin: &tokio_postgres::Client) {
    let rows = match admin
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'pgsidecar\\_verify\\_%'",
            &[],
        )
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "cannot look for abandoned scratch databases");
            return;
        }
    };
    for row in rows {
        let name: String = row.get(0);
        let claimed = admin
            .query_one(
                "SELECT pg_try_advisory_lock($1, hashtext($2))",
                &[&SCRATCH_LOCK_CLASS, &name],
            )
            .await
            .map(|r| !r.get::<_, bool>(0));
        if !matches!(claimed, Ok(false)) {
            continue;
        }
        tracing::warn!(database = %name, "dropping the scratch database of a verify that was killed");
        if let Err(e) = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await
        {
            tracing::warn!(error = %e, database = %name, "could not drop an abandoned scratch database");
        }
        let _ = admin
            .execute(
                "SELECT pg_advisory_unlock($1, hashtext($2))",
                &[&SCRATCH_LOCK_CLASS, &name],
            )
            .await;
    }
}

async fn restore_and_compare(
    manifest: &Manifest,
    dump: &str,
    config: &tokio_postgres::Config,
    scratch: &str,
) -> Result<(f64, usize, usize), BackupError> {
    let started = Instant::now();
    let target = pgbin::ToolConnection::new(config, scratch);
    pgbin::run(
        "pg_restore",
        &[
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            "--dbname",
            &target.conninfo,
            dump,
        ],
        Some(&target),
    )
    .await
    .map_err(|message| BackupError::Tool {
        program: "pg_restore",
        message,
    })?;
    let restore_seconds = started.elapsed().as_secs_f64();
    let mut scratch_config = config.clone();
    scratch_config.dbname(scratch);
    let (client, connection) = scratch_config
        .connect(crate::tls::control_connector())
        .await
        .map_err(|e| BackupError::db("connecting to the scratch database", &e))?;
    tokio::spawn(connection);
    let db = |e: tokio_postgres::Error| BackupError::db("comparing the restore", &e);
    let extensions: Vec<(String, String)> = client
        .query(
            "SELECT extname, extversion FROM pg_extension ORDER BY 1",
            &[],
        )
        .await
        .map_err(db)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for wanted in &manifest.extensions {
        if !extensions.contains(wanted) {
            return Err(BackupError::Mismatch(format!(
                "extension {} {} is missing after the restore",
                wanted.0, wanted.1
            )));
        }
    }
    let restored = digest_tables(&client).await?;
    for expected in &manifest.tables {
        match restored.iter().find(|t| t.table == expected.table) {
            None => {
                return Err(BackupError::Mismatch(format!(
                    "table {} is missing after the restore",
                    expected.table
                )));
            }
            Some(t) if t.rows != expected.rows => {
                return Err(BackupError::Mismatch(format!(
                    "table {}: {} rows restored, {} in the source",
                    expected.table, t.rows, expected.rows
                )));
            }
            Some(t) if t.hash != expected.hash => {
                return Err(BackupError::Mismatch(format!(
                    "table {}: the restored rows differ from the source's (content hash)",
                    expected.table
                )));
            }
            Some(_) => {}
        }
    }
    let sequences = check_sequences(&client).await?;
    Ok((restore_seconds, manifest.tables.len(), sequences))
}

/// Every sequence owned by a column is at or above that column's maximum.
async fn check_sequences(client: &tokio_postgres::Client) -> Result<usize, BackupError> {
    let db = |e: tokio_postgres::Error| BackupError::db("checking sequences", &e);
    let owned = client
        .query(
            "SELECT format('%I.%I', sn.nspname, s.relname), format('%I.%I', tn.nspname, t.relname),
                    quote_ident(a.attname)
               FROM pg_class s
               JOIN pg_namespace sn ON sn.oid = s.relnamespace
               JOIN pg_depend d ON d.objid = s.oid AND d.classid = 'pg_class'::regclass
                                AND d.deptype IN ('a', 'i')
               JOIN pg_class t ON t.oid = d.refobjid
               JOIN pg_namespace tn ON tn.oid = t.relnamespace
               JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
              WHERE s.relkind = 'S'",
            &[],
        )
        .await
        .map_err(db)?;
    for row in &owned {
        let (sequence, table, column): (String, String, String) =
            (row.get(0), row.get(1), row.get(2));
        let ok: bool = client
            .query_one(
                &format!(
                    "SELECT (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM {sequence})
                            >= coalesce((SELECT max({column})::bigint FROM {table}), 0)"
                ),
                &[],
            )
            .await
            .map_err(db)?
            .get(0);
        if !ok {
            return Err(BackupError::Mismatch(format!(
                "sequence {sequence} is behind max({table}.{column}): new rows would collide"
            )));
        }
    }
    Ok(owned.len())
}

/// The newest backup of the database at `url` verified within `max_age`, if any: its SHA-256.
///
/// # Errors
/// [`BackupError::Database`].
pub async fn latest_verified(url: &str, max_age: Duration) -> Result<Option<String>, BackupError> {
    let client = connect(url, "database").await?;
    client
        .batch_execute(BACKUPS_DDL)
        .await
        .map_err(|e| BackupError::db("creating pgsidecar.backups", &e))?;
    let rows = client
        .query(
            "SELECT sha256, file, size_bytes FROM pgsidecar.backups
              WHERE verified_at IS NOT NULL
                AND created_at > now() - make_interval(secs => $1)
              ORDER BY created_at DESC",
            &[&max_age.as_secs_f64()],
        )
        .await
        .map_err(|e| BackupError::db("looking for a verified backup", &e))?;
    // A verified backup whose file, here, has since been replaced by something else (another
    // backup written over it) proves nothing any more. A file this machine cannot see (kept
    // elsewhere) is taken on the record's word.
    Ok(rows.iter().find_map(|r| {
        let (sha256, file, size): (String, String, i64) = (r.get(0), r.get(1), r.get(2));
        let replaced = std::fs::metadata(&file)
            .is_ok_and(|m| i64::try_from(m.len()).unwrap_or(i64::MAX) != size);
        if replaced {
            tracing::warn!(%file, "a verified backup's file has changed since; not counted");
        }
        (!replaced).then_some(sha256)
    }))
}
