//! Backups proven restorable: a real dump of 10k rows verified by restoring it; corrupted,
//! truncated and tampered backups caught.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use pgsidecar::backup::{self, BackupError, Manifest};

use crate::support::{cluster, direct, fresh_database, wait_until};

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn dump_path() -> PathBuf {
    std::env::temp_dir().join(format!(
        "pgsidecar-it-backup-{}-{}.dump",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Removes a dump and its manifest when dropped.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_file(backup::manifest_path(&self.0));
    }
}

async fn documents_database() -> String {
    let db = fresh_database().await;
    direct(&db)
        .await
        .batch_execute(
            "CREATE TABLE documents (
                 id bigserial PRIMARY KEY,
                 tenant text NOT NULL,
                 metadata jsonb NOT NULL DEFAULT '{}',
                 created_at timestamptz NOT NULL DEFAULT now()
             );
             CREATE TABLE chunks (
                 id bigserial PRIMARY KEY,
                 document_id bigint NOT NULL REFERENCES documents (id),
                 content text NOT NULL
             );
             INSERT INTO documents (tenant, metadata)
                  SELECT 'tenant-' || (g % 7), jsonb_build_object('n', g) FROM generate_series(1, 10000) g;
             INSERT INTO chunks (document_id, content)
                  SELECT id, 'chunk of ' || id FROM documents WHERE id % 3 = 0;",
        )
        .await
        .unwrap();
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_and_matches_its_manifest() {
    let db = documents_database().await;
    let path = dump_path();
    let _cleanup = Cleanup(path.clone());
    let manifest = backup::create(&cluster().url(&db), &path).await.unwrap();
    let documents = manifest
        .tables
        .iter()
        .find(|t| t.table == "public.documents")
        .unwrap();
    assert_eq!(documents.rows, 10_000);
    assert_eq!(Manifest::read(&path).unwrap(), manifest);
    let report = backup::verify(&path, &cluster().url("postgres"), Some(&cluster().url(&db)))
        .await
        .unwrap();
    assert_eq!(report.tables_checked, manifest.tables.len());
    assert!(report.sequences_checked >= 2, "{report:?}");
    assert!(report.toc_entries > 5);
    let recent = backup::latest_verified(&cluster().url(&db), std::time::Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(recent.as_deref(), Some(manifest.sha256.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_truncated_and_tampered_backups_are_caught() {
    let db = documents_database().await;
    let path = dump_path();
    let _cleanup = Cleanup(path.clone());
    backup::create(&cluster().url(&db), &path).await.unwrap();
    let original = std::fs::read(&path).unwrap();
    let scratch = cluster().url("postgres");

    let mut corrupted = original.clone();
    let middle = corrupted.len() / 2;
    corrupted[middle] ^= 0xff;
    std::fs::write(&path, &corrupted).unwrap();
    let err = backup::verify(&path, &scratch, None).await.unwrap_err();
    assert!(
        matches!(err, BackupError::Mismatch(ref m) if m.contains("corrupted or truncated")),
        "{err}"
    );

    std::fs::write(&path, &original[..original.len() / 3]).unwrap();
    let err = backup::verify(&path, &scratch, None).await.unwrap_err();
    assert!(
        matches!(err, BackupError::Mismatch(ref m) if m.contains("corrupted or truncated")),
        "{err}"
    );

    // A dump that matches its manifest's checksum but not the data the manifest describes: a
    // row went missing between the source and the restore.
    direct(&db)
        .await
        .batch_execute("DELETE FROM chunks WHERE id = (SELECT min(id) FROM chunks)")
        .await
        .unwrap();
    let fresh = dump_path();
    let _fresh_cleanup = Cleanup(fresh.clone());
    let other = backup::create(&cluster().url(&db), &fresh).await.unwrap();
    std::fs::copy(&fresh, &path).unwrap();
    // The original manifest, re-sealed with the new file's checksum.
    let mut manifest = Manifest::read(&path).unwrap();
    manifest.sha256 = other.sha256;
    manifest.size_bytes = other.size_bytes;
    manifest.write(&path).unwrap();
    let err = backup::verify(&path, &scratch, None).await.unwrap_err();
    assert!(
        matches!(err, BackupError::Mismatch(ref m) if m.contains("public.chunks")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_dump_gets_the_password_from_its_environment_and_keeps_sslmode() {
    use std::os::unix::fs::PermissionsExt;
    let db = fresh_database().await;
    direct(&db)
        .await
        .batch_execute("CREATE TABLE t AS SELECT generate_series(1, 100) AS id")
        .await
        .unwrap();
    // A pg_dump that records what it was given, then runs the real one.
    let wrappers = dump_path().with_extension("bin");
    std::fs::create_dir_all(&wrappers).unwrap();
    let real = pgsidecar::pgbin::pg_bindir().join("pg_dump");
    let script = format!(
        "#!/bin/sh\nprintf '%s\\n' \"$@\" > {dir}/args\n\
         if [ -n \"$PGPASSWORD\" ]; then echo set > {dir}/password; fi\n\
         exec {real} \"$@\"\n",
        dir = wrappers.display(),
        real = real.display()
    );
    let wrapper = wrappers.join("pg_dump");
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = dump_path();
    let _cleanup = Cleanup(output.clone());
    let url = format!(
        "postgres://postgres:postgres@127.0.0.1:{}/{db}?sslmode=require",
        cluster().port()
    );
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
        .args(["backup", "create", "--output", output.to_str().unwrap()])
        .env("DATABASE_URL", &url)
        .env("PG_BINDIR", &wrappers)
        .output()
        .await
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let args = std::fs::read_to_string(wrappers.join("args")).unwrap();
    assert!(!args.contains("postgres:postgres"), "{args}");
    assert!(!args.contains("password"), "{args}");
    assert!(args.contains("sslmode=require"), "{args}");
    assert!(wrappers.join("password").exists());
    assert!(output.exists());
    let _ = std::fs::remove_dir_all(&wrappers);
}

/// A directory for `PG_BINDIR` holding shell scripts in place of PostgreSQL's tools.
fn tool_wrappers(tools: &[(&str, String)]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = dump_path().with_extension("tools");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, script) in tools {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backup_never_replaces_or_imitates_a_verified_one() {
    let db = documents_database().await;
    let output = dump_path();
    let _cleanup = Cleanup(output.clone());
    let source = cluster().url(&db);
    backup::create(&source, &output).await.unwrap();
    backup::verify(&output, &cluster().url("postgres"), Some(&source))
        .await
        .unwrap();
    let verified = Manifest::read(&output).unwrap().sha256;
    // A second backup to the same file, killed while its pg_dump is half-way through writing.
    let tools = tool_wrappers(&[(
        "pg_dump",
        "while [ $# -gt 0 ]; do if [ \"$1\" = --file ]; then shift; printf 'PGDMP half' > \"$1\"; fi; shift; done\nexec sleep 20"
            .to_owned(),
    )]);
    let mut run = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
        .args(["backup", "create", "--output", output.to_str().unwrap()])
        .env("DATABASE_URL", &source)
        .env("PG_BINDIR", &tools)
        .spawn()
        .unwrap();
    let partial = backup::partial_path(&output);
    wait_until("pg_dump writes", async || partial.exists()).await;
    run.kill().await.unwrap();
    let _ = std::fs::remove_file(&partial);
    let _ = std::fs::remove_dir_all(&tools);
    assert_eq!(Manifest::read(&output).unwrap().sha256, verified);
    backup::verify(&output, &cluster().url("postgres"), None)
        .await
        .expect("the earlier backup is intact");
    let latest = backup::latest_verified(&source, std::time::Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(latest, Some(verified));
    // A verified backup's file replaced by something else no longer counts.
    std::fs::write(&output, b"not the verified dump").unwrap();
    let latest = backup::latest_verified(&source, std::time::Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(latest, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_verify_drops_the_scratch_database_of_a_killed_one() {
    let db = documents_database().await;
    let output = dump_path();
    let _cleanup = Cleanup(output.clone());
    backup::create(&cluster().url(&db), &output).await.unwrap();
    let real = pgsidecar::pgbin::pg_bindir().join("pg_restore");
    let tools = tool_wrappers(&[(
        "pg_restore",
        format!(
            "if [ \"$1\" = --list ]; then exec {} \"$@\"; fi\nexec sleep 20",
            real.display()
        ),
    )]);
    let mut run = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
        .args(["backup", "verify", output.to_str().unwrap()])
        .args(["--scratch-url", &cluster().url("postgres")])
        .env_remove("DATABASE_URL")
        .env("PG_BINDIR", &tools)
        .spawn()
        .unwrap();
    let scratch = format!("pgsidecar\\_verify\\_%\\_{}", run.id().unwrap());
    let admin = direct("postgres").await;
    let count = async || -> i64 {
        admin
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname LIKE $1",
                &[&scratch],
            )
            .await
            .unwrap()
            .get(0)
    };
    wait_until("the scratch database exists", async || count().await == 1).await;
    run.kill().await.unwrap();
    let _ = std::fs::remove_dir_all(&tools);
    assert_eq!(count().await, 1, "the killed verify could not clean up");
    backup::verify(&output, &cluster().url("postgres"), None)
        .await
        .unwrap();
    assert_eq!(count().await, 0, "the next verify dropped it");
}
