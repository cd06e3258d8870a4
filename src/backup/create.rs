//! `backup create`: a custom-format dump taken in an exported snapshot, and the manifest of what
//! the database held in that same snapshot.

use std::path::Path;
use std::time::Instant;

use super::manifest::{finish_partial, partial_path, sha256_file};
use super::{BACKUPS_DDL, BackupError, Manifest, connect, digest_tables};
use crate::pgbin;

/// Dumps the database at `url` to `output` and writes `output.manifest.json`; the backup is
/// recorded in `pgsidecar.backups` of that database. The dump is written to
/// `output.partial` and renamed once complete and hashed, so a process killed meanwhile never
/// leaves a truncated file under the final name (nor replaces an earlier backup there).
///
/// # Errors
/// [`BackupError`].
pub async fn create(url: &str, output: &Path) -> Result<Manifest, BackupError> {
    let started = Instant::now();
    let client = connect(url, "database").await?;
    let db = |what: &'static str| move |e: tokio_postgres::Error| BackupError::db(what, &e);
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(db("opening the snapshot"))?;
    let facts = client
        .query_one(
            "SELECT pg_export_snapshot(), current_setting('server_version'), current_database(),
                    to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
            &[],
        )
        .await
        .map_err(db("exporting the snapshot"))?;
    let snapshot: String = facts.get(0);
    let extensions = client
        .query(
            "SELECT extname, extversion FROM pg_extension ORDER BY 1",
            &[],
        )
        .await
        .map_err(db("listing extensions"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let tables = digest_tables(&client).await?;
    let output_path = output.to_string_lossy().into_owned();
    let partial = partial_path(output);
    let partial_name = partial.to_string_lossy().into_owned();
    let source = pgbin::ToolConnection::parse(url).map_err(|message| BackupError::Tool {
        program: "pg_dump",
        message,
    })?;
    pgbin::run(
        "pg_dump",
        &[
            "--format=custom",
            "--snapshot",
            &snapshot,
            "--file",
            &partial_name,
            &source.conninfo,
        ],
        Some(&source),
    )
    .await
    .map_err(|message| BackupError::Tool {
        program: "pg_dump",
        message,
    })?;
    client
        .batch_execute("COMMIT")
        .await
        .map_err(db("closing the snapshot"))?;
    let (sha256, size_bytes) = sha256_file(&partial)?;
    let manifest = Manifest {
        file: output
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        database: facts.get(2),
        server_version: facts.get(1),
        extensions,
        tables,
        snapshot,
        size_bytes,
        sha256,
        started_at: facts.get(3),
        duration_seconds: started.elapsed().as_secs_f64(),
    };
    manifest.write(output)?;
    finish_partial(output)?;
    client
        .batch_execute(BACKUPS_DDL)
        .await
        .map_err(db("creating pgsidecar.backups"))?;
    client
        .execute(
            "INSERT INTO pgsidecar.backups (sha256, file, size_bytes) VALUES ($1, $2, $3)
             ON CONFLICT (sha256) DO NOTHING",
            &[
                &manifest.sha256,
                &output_path,
                &i64::try_from(size_bytes).unwrap_or(i64::MAX),
            ],
        )
        .await
        .map_err(db("recording the backup"))?;
    Ok(manifest)
}
