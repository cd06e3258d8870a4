//! The migration runner against a real PostgreSQL: concurrent runners, checksums, resumable
//! non-transactional steps, lock-timeout retries, blocking steps behind a fleet pause under live
//! traffic, rollback and lint.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use pgsidecar::migrate::{
    ApplyOptions, CopyScope, MaintenanceWindow, MigrateError, Migrator, lint, source,
};

use crate::gate::{ledger, stop_writers, writers};
use crate::support::{
    ProxyProcess, cluster, direct, fresh_database, leave_invalid_index, wait_until,
};

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A migrations directory for one test, removed when dropped.
pub(crate) struct Dir(pub(crate) PathBuf);

impl Dir {
    pub(crate) fn new(files: &[(&str, &str)]) -> Self {
        let path = std::env::temp_dir().join(format!(
            "pgsidecar-it-migrations-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        let dir = Self(path);
        for (name, sql) in files {
            dir.write(name, sql);
        }
        dir
    }

    pub(crate) fn write(&self, name: &str, sql: &str) {
        std::fs::write(self.0.join(name), sql).unwrap();
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `pgsidecar migrate ARGS --dir DIR --database-url URL-of-db`.
fn migrate_cli(dir: &Dir, db: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
        .arg("migrate")
        .args(args)
        .args([
            "--dir",
            dir.0.to_str().unwrap(),
            "--database-url",
            &cluster().url(db),
        ])
        .output()
        .unwrap()
}

async fn migrator(db: &str, dir: &Dir) -> Migrator {
    Migrator::open(&cluster().url(db), &dir.0).await.unwrap()
}

async fn count(db: &str, sql: &str) -> i64 {
    direct(db).await.query_one(sql, &[]).await.unwrap().get(0)
}

/// Lets the writers commit `more` rows through the sidecars.
async fn let_writers_commit(db: &str, more: i64) {
    let start = ledger(db).await;
    wait_until("the writers commit through the sidecars", async || {
        ledger(db).await >= start + more
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_at_once_apply_each_migration_once() {
    let db = fresh_database().await;
    let dir = Dir::new(&[
        (
            "0001_notes.sql",
            "CREATE TABLE notes (id int);\nSELECT pg_sleep(0.5);\nINSERT INTO notes VALUES (1);",
        ),
        ("0002_more.sql", "INSERT INTO notes VALUES (2);"),
    ]);
    let (a, b) = (migrator(&db, &dir).await, migrator(&db, &dir).await);
    let options = ApplyOptions::default();
    let (ra, rb) = tokio::join!(a.apply(&options), b.apply(&options));
    let applied = ra.unwrap().applied.len() + rb.unwrap().applied.len();
    assert_eq!(applied, 2, "each migration ran exactly once");
    assert_eq!(count(&db, "SELECT count(*) FROM notes").await, 2);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pgsidecar.schema_migrations WHERE status = 'applied'"
        )
        .await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_migration_is_refused_until_repaired() {
    let db = fresh_database().await;
    let dir = Dir::new(&[("0001_notes.sql", "CREATE TABLE notes (id int);")]);
    migrator(&db, &dir)
        .await
        .apply(&ApplyOptions::default())
        .await
        .unwrap();
    dir.write("0001_notes.sql", "CREATE TABLE notes (id bigint);");
    let err = migrator(&db, &dir)
        .await
        .apply(&ApplyOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, MigrateError::ChecksumMismatch { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("0001_notes"), "{err}");
    assert!(err.to_string().contains("migrate repair"), "{err}");
    let repaired = migrator(&db, &dir).await.repair().await.unwrap();
    assert_eq!(repaired, ["0001_notes"]);
    let report = migrator(&db, &dir)
        .await
        .apply(&ApplyOptions::default())
        .await
        .unwrap();
    assert!(report.applied.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_transactional_migration_resumes_at_the_failed_statement() {
    let db = fresh_database().await;
    let dir = Dir::new(&[(
        "0001_online.sql",
        "-- pgsidecar:no-transaction\n\
         CREATE TABLE docs (id int, title text);\n\
         CREATE INDEX CONCURRENTLY docs_title ON docs (title);\n\
         INSERT INTO audit VALUES ('docs indexed');\n\
         CREATE TABLE after_audit (id int);",
    )]);
    let err = migrator(&db, &dir)
        .await
        .apply(&ApplyOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("statement 3"), "{err}");
    let history = migrator(&db, &dir).await.history().await.unwrap();
    assert_eq!(history[0].status, "failed");
    assert_eq!(history[0].failed_statement, Some(2));
    assert_eq!(history[0].completed_statements, 2);
    // The operator fixes the cause; the next apply starts at the failed statement (the table
    // and index are not created twice).
    direct(&db)
        .await
        .batch_execute("CREATE TABLE audit (event text)")
        .await
        .unwrap();
    let plan = migrator(&db, &dir).await.plan(None).await.unwrap();
    assert_eq!(plan[0].resume_from, 2);
    migrator(&db, &dir)
        .await
        .apply(&ApplyOptions::default())
        .await
        .unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM audit").await, 1);
    assert_eq!(count(&db, "SELECT count(*) FROM after_audit").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_concurrent_index_leaves_no_invalid_index() {
    let db = fresh_database().await;
    direct(&db)
        .await
        .batch_execute("CREATE TABLE dup (v int); INSERT INTO dup VALUES (1), (1);")
        .await
        .unwrap();
    let dir = Dir::new(&[(
        "0001_unique.sql",
        "-- pgsidecar:no-transaction\nCREATE UNIQUE INDEX CONCURRENTLY dup_v ON dup (v);",
    )]);
    let err = migrator(&db, &dir)
        .await
        .apply(&ApplyOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("23505"), "{err}");
    assert_eq!(
        count(&db, "SELECT count(*) FROM pg_class WHERE relname = 'dup_v'").await,
        0
    );
    direct(&db)
        .await
        .batch_execute("DELETE FROM dup WHERE ctid = (SELECT max(ctid) FROM dup)")
        .await
        .unwrap();
    migrator(&db, &dir)
        .await
        .apply(&ApplyOptions::default())
        .await
        .unwrap();
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pg_index WHERE indexrelid = 'dup_v'::regclass AND indisvalid"
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_timeout_is_retried_until_the_holder_lets_go() {
    let db = fresh_database().await;
    let holder = direct(&db).await;
    holder
        .batch_execute("CREATE TABLE busy (id int)")
        .await
        .unwrap();
    holder
        .batch_execute("BEGIN; LOCK TABLE busy IN ACCESS SHARE MODE")
        .await
        .unwrap();
    let dir = Dir::new(&[("0001_column.sql", "ALTER TABLE busy ADD COLUMN note text;")]);
    let options = ApplyOptions {
        lock_timeout: Duration::from_millis(100),
        lock_retries: 10,
        ..ApplyOptions::default()
    };
    let m = migrator(&db, &dir).await;
    let apply = tokio::spawn(async move { m.apply(&options).await });
    // A retry is a new attempt at the lock: a waiting ALTER whose statement started later than
    // the first one seen.
    let watcher = direct(&db).await;
    let attempt = async || -> Option<f64> {
        watcher
            .query_opt(
                "SELECT extract(epoch FROM query_start)::float8 FROM pg_stat_activity \
                 WHERE query LIKE 'ALTER TABLE busy%' AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .map(|row| row.get(0))
    };
    let mut first = None;
    wait_until(
        "the migration waits for the lock a second time",
        async || match (first, attempt().await) {
            (None, now) => {
                first = now;
                false
            }
            (Some(first), Some(now)) => now > first,
            (Some(_), None) => false,
        },
    )
    .await;
    holder.batch_execute("COMMIT").await.unwrap();
    let report = apply.await.unwrap().unwrap();
    assert!(report.applied[0].lock_retries >= 1, "{report:?}");
    assert_eq!(
        count(&db, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'busy' AND column_name = 'note'").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_uses_the_recorded_down_sql() {
    let db = fresh_database().await;
    let dir = Dir::new(&[
        ("0001_notes.sql", "CREATE TABLE notes (id int);"),
        (
            "0001_notes.down.sql",
            "-- pgsidecar:blocking reason=\"test table\"\nDROP TABLE notes;",
        ),
        ("0002_more.sql", "ALTER TABLE notes ADD COLUMN body text;"),
        (
            "0002_more.down.sql",
            "-- pgsidecar:blocking reason=\"test table\"\nALTER TABLE notes DROP COLUMN body;",
        ),
    ]);
    let window = || ApplyOptions {
        maintenance_window: Some(pgsidecar::migrate::MaintenanceWindow::parse("now").unwrap()),
        ..ApplyOptions::default()
    };
    migrator(&db, &dir)
        .await
        .apply(&ApplyOptions::default())
        .await
        .unwrap();
    // The files may change or vanish: the history keeps what to run.
    std::fs::remove_file(dir.0.join("0002_more.down.sql")).unwrap();
    let undone = migrator(&db, &dir)
        .await
        .rollback(None, &window())
        .await
        .unwrap();
    assert_eq!(undone, ["0002_more"]);
    assert_eq!(
        count(&db, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'notes' AND column_name = 'body'").await,
        0
    );
    let undone = migrator(&db, &dir)
        .await
        .rollback(Some(0), &window())
        .await
        .unwrap();
    assert_eq!(undone, ["0001_notes"]);
    assert_eq!(
        count(&db, "SELECT count(*) FROM pg_class WHERE relname = 'notes'").await,
        0
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM pgsidecar.schema_migrations").await,
        0
    );
}

const KNOWN_BAD: &str = "CREATE INDEX docs_title ON docs (title);
DROP INDEX docs_old;
REINDEX TABLE docs;
ALTER TABLE docs ADD COLUMN token uuid DEFAULT gen_random_uuid();
ALTER TABLE docs ALTER COLUMN title SET NOT NULL;
ALTER TABLE docs ADD CONSTRAINT title_len CHECK (length(title) < 500);
ALTER TABLE docs ADD CONSTRAINT docs_owner FOREIGN KEY (owner) REFERENCES owners (id);
ALTER TABLE docs ADD CONSTRAINT docs_slug UNIQUE (slug);
ALTER TABLE docs ALTER COLUMN id TYPE bigint;
VACUUM FULL docs;
CLUSTER docs USING docs_pkey;
ALTER TABLE docs RENAME COLUMN title TO heading;
ALTER TABLE docs DROP COLUMN legacy;
DROP TABLE old_docs;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lint_catches_each_known_bad_statement_and_apply_refuses() {
    let db = fresh_database().await;
    let dir = Dir::new(&[("0001_bad.sql", KNOWN_BAD)]);
    let migrations = source::load(&dir.0).unwrap();
    let findings = lint::lint(&migrations[0]);
    let statements: Vec<usize> = findings.iter().map(|f| f.statement).collect();
    assert_eq!(statements, (0..14).collect::<Vec<_>>(), "{findings:#?}");
    assert!(
        findings
            .iter()
            .all(|f| !f.lock.is_empty() && !f.advice.is_empty())
    );
    assert!(findings[0].advice.contains("CONCURRENTLY"));
    let err = migrator(&db, &dir)
        .await
        .apply(&ApplyOptions::default())
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("apply refused"), "{message}");
    assert!(
        message.contains("statement 1 `CREATE INDEX docs_title"),
        "{message}"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM pgsidecar.schema_migrations").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_step_under_live_traffic_pauses_the_fleet_and_no_client_errs() {
    let db = fresh_database().await;
    ledger(&db).await;
    let url = cluster().url(&db);
    let sidecars: Vec<ProxyProcess> = (1..=2)
        .map(|i| {
            ProxyProcess::spawn(&[
                "--pool-size",
                "4",
                "--fleet-url",
                &url,
                "--fleet-id",
                &format!("mig-{i}"),
                "--fleet-heartbeat",
                "200ms",
            ])
        })
        .collect();
    let mut clients = Vec::new();
    for sidecar in &sidecars {
        for _ in 0..10 {
            clients.push(sidecar.connect(&db).await);
        }
    }
    for _ in 0..100 {
        let live = count(&db, "SELECT count(*) FROM pgsidecar.sidecars WHERE last_heartbeat > now() - interval '2 seconds'").await;
        if live == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = writers(clients, &stop);
    let_writers_commit(&db, 20).await;
    let dir = Dir::new(&[(
        "0001_rewrite.sql",
        "-- pgsidecar:blocking reason=\"the ledger is small; the rewrite takes milliseconds\"\n\
         ALTER TABLE ledger ADD COLUMN token text DEFAULT md5(random()::text);",
    )]);
    let m = migrator(&db, &dir).await;
    let refused = m.apply(&ApplyOptions::default()).await.unwrap_err();
    assert!(
        refused.to_string().contains("maintenance window"),
        "{refused}"
    );
    // A window that is closed now refuses too; `now` opens it.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let later = (now % 86_400 / 60 + 120) % 1440;
    let closed = format!(
        "{:02}:{:02}-{:02}:{:02}",
        later / 60,
        later % 60,
        (later + 60) % 1440 / 60,
        (later + 60) % 60
    );
    let options = ApplyOptions {
        maintenance_window: Some(MaintenanceWindow::parse(&closed).unwrap()),
        ..ApplyOptions::default()
    };
    let refused = m.apply(&options).await.unwrap_err();
    assert!(refused.to_string().contains("is closed now"), "{refused}");
    let options = ApplyOptions {
        maintenance_window: Some(MaintenanceWindow::Now),
        ..ApplyOptions::default()
    };
    let report = m.apply(&options).await.unwrap();
    let applied = &report.applied[0];
    assert!(applied.paused_seconds > 0.0, "{applied:?}");
    assert_eq!(
        report.sidecars_told, 2,
        "both sidecars renew their prepared statements"
    );
    eprintln!(
        "blocking step behind a fleet pause: {:.3} s in all, fleet paused {:.3} s",
        applied.seconds, applied.paused_seconds
    );
    let_writers_commit(&db, 20).await;
    let committed = stop_writers(tasks, &stop).await;
    assert_eq!(ledger(&db).await, i64::try_from(committed).unwrap());
    assert_eq!(
        count(&db, "SELECT count(*) FROM ledger WHERE token IS NULL").await,
        0,
        "every row got the new column"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_creates_lints_and_applies() {
    let db = fresh_database().await;
    let dir = Dir::new(&[]);
    let cli = |args: &[&str]| migrate_cli(&dir, &db, args);
    let created = cli(&["new", "Add notes"]);
    assert!(created.status.success());
    assert!(dir.0.join("0001_add_notes.sql").exists());
    assert!(dir.0.join("0001_add_notes.down.sql").exists());
    dir.write(
        "0001_add_notes.sql",
        "CREATE INDEX pg_class_relname ON pg_class_copy (relname);",
    );
    let lint = cli(&["lint"]);
    assert_eq!(lint.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&lint.stdout).contains("CREATE INDEX without CONCURRENTLY"));
    let refused = cli(&["apply"]);
    assert_eq!(refused.status.code(), Some(1));
    dir.write("0001_add_notes.sql", "CREATE TABLE notes (id int);");
    let unprotected = cli(&["apply"]);
    assert_eq!(unprotected.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&unprotected.stderr)
            .contains("no backup of this database was verified"),
        "{}",
        String::from_utf8_lossy(&unprotected.stderr)
    );
    let applied = cli(&["apply", "--no-backup", "--reason", "scratch test database"]);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM pgsidecar.schema_migrations WHERE no_backup_reason = 'scratch test database'").await,
        1
    );
    let status = cli(&["status"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("0001_add_notes"));
    assert!(String::from_utf8_lossy(&status.stdout).contains("applied"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_backfill_resumes_where_it_stopped() {
    let db = fresh_database().await;
    direct(&db)
        .await
        .batch_execute(
            "CREATE TABLE docs (id int PRIMARY KEY, doubled int, touched int NOT NULL DEFAULT 0);
             INSERT INTO docs (id) SELECT generate_series(1, 10000);
             CREATE FUNCTION stop_at_5500() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN IF NEW.id = 5500 THEN RAISE EXCEPTION 'interrupted'; END IF; RETURN NEW; END $$;
             CREATE TRIGGER stop BEFORE UPDATE ON docs FOR EACH ROW EXECUTE FUNCTION stop_at_5500();",
        )
        .await
        .unwrap();
    let dir = Dir::new(&[(
        "0001_double.sql",
        "-- pgsidecar:backfill table=docs key=id batch=1000 pause=1ms\n\
         UPDATE docs SET doubled = id * 2, touched = touched + 1 WHERE id >= $1 AND id < $2;",
    )]);
    let err = migrator(&db, &dir)
        .await
        .apply(&ApplyOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("interrupted"), "{err}");
    let plan = migrator(&db, &dir).await.plan(None).await.unwrap();
    assert_eq!(plan[0].backfill_from, Some(5001), "five batches were done");
    assert_eq!(
        count(&db, "SELECT count(*) FROM docs WHERE touched = 1").await,
        5000
    );
    direct(&db)
        .await
        .batch_execute("DROP TRIGGER stop ON docs")
        .await
        .unwrap();
    let report = migrator(&db, &dir)
        .await
        .apply(&ApplyOptions::default())
        .await
        .unwrap();
    assert_eq!(report.applied[0].backfill_rows, 5000, "only the rest ran");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM docs WHERE touched = 1 AND doubled = id * 2"
        )
        .await,
        10000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_applies_to_a_copy_and_leaves_production_alone() {
    let db = fresh_database().await;
    direct(&db)
        .await
        .batch_execute(
            "CREATE TABLE notes (id int PRIMARY KEY, body text);
             INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 500) g;",
        )
        .await
        .unwrap();
    let dir = Dir::new(&[
        (
            "0001_column.sql",
            "ALTER TABLE notes ADD COLUMN author text;",
        ),
        (
            "0002_index.sql",
            "-- pgsidecar:no-transaction\nCREATE INDEX CONCURRENTLY notes_body ON notes (body);",
        ),
    ]);
    let report = pgsidecar::migrate::dry_run(
        &cluster().url(&db),
        &cluster().url("postgres"),
        &dir.0,
        &ApplyOptions::default(),
        CopyScope::Full,
    )
    .await
    .unwrap();
    assert_eq!(report.steps.len(), 2);
    assert!(
        report.steps[0]
            .locks
            .iter()
            .any(|l| l == "AccessExclusiveLock on notes"),
        "{:?}",
        report.steps[0].locks
    );
    assert!(report.invalid_indexes.is_empty());
    // Production is untouched and the copy is gone.
    assert_eq!(
        count(&db, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'notes' AND column_name = 'author'").await,
        0
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pg_class WHERE relname = 'notes_body'"
        )
        .await,
        0
    );
    let scratch = &report.scratch_database;
    assert_eq!(
        count(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{scratch}'")
        )
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_catches_an_invalid_index_and_a_slow_smoke_query() {
    let db = fresh_database().await;
    let setup = direct(&db).await;
    leave_invalid_index(&setup).await;
    let dir = Dir::new(&[]);
    std::fs::create_dir_all(dir.0.join("smoke")).unwrap();
    dir.write("smoke/fast.sql", "-- budget: 5s\nSELECT count(*) FROM dup;");
    dir.write(
        "smoke/slow.sql",
        "-- budget: 1ms\nSELECT count(*) FROM generate_series(1, 2000000);",
    );
    let outcome = pgsidecar::migrate::verify::verify(&setup, &dir.0, &[], None)
        .await
        .unwrap();
    assert_eq!(outcome.problems.len(), 2, "{:#?}", outcome.problems);
    assert!(
        outcome
            .problems
            .iter()
            .any(|p| p.contains("dup_v is INVALID") && p.contains("roll forward"))
    );
    assert!(
        outcome
            .problems
            .iter()
            .any(|p| p.contains("slow.sql") && p.contains("over its 1 ms budget"))
    );
    let fast = outcome.smoke.iter().find(|s| s.name == "fast.sql").unwrap();
    assert!(fast.took_ms < fast.budget_ms);
    assert!(fast.plan.contains("Execution Time"), "{}", fast.plan);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_refuses_without_a_verified_backup_and_runs_the_whole_policy_with_one() {
    let db = fresh_database().await;
    let dir = Dir::new(&[("0001_notes.sql", "CREATE TABLE notes (id int);")]);
    let dump = dir.0.join("backup.dump");
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
            .args(["migrate", "deploy"])
            .args(args)
            .args([
                "--dir",
                dir.0.to_str().unwrap(),
                "--database-url",
                &cluster().url(&db),
            ])
            .output()
            .unwrap()
    };
    let refused = cli(&[]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("no backup of this database was verified")
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM pg_class WHERE relname = 'notes'").await,
        0
    );
    let deployed = cli(&[
        "--backup",
        "--backup-output",
        dump.to_str().unwrap(),
        "--scratch-url",
        &cluster().url("postgres"),
        "--staging-url",
        &cluster().url("postgres"),
    ]);
    let stdout = String::from_utf8_lossy(&deployed.stdout);
    assert!(
        deployed.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&deployed.stderr)
    );
    for section in [
        "== plan",
        "== backup",
        "== dry run",
        "== apply",
        "== verify",
        "verification passed",
    ] {
        assert!(stdout.contains(section), "{section} missing:\n{stdout}");
    }
    assert_eq!(
        count(&db, "SELECT count(*) FROM pg_class WHERE relname = 'notes'").await,
        1
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pgsidecar.backups WHERE verified_at IS NOT NULL"
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_dry_run_rehearses_only_and_ignored_flags_are_refused() {
    let db = fresh_database().await;
    let dir = Dir::new(&[("0001_notes.sql", "CREATE TABLE notes (id int);")]);
    let cli = |args: &[&str]| migrate_cli(&dir, &db, args);
    let staging = cluster().url("postgres");
    let rehearsed = cli(&["deploy", "--dry-run", "--staging-url", &staging]);
    let stdout = String::from_utf8_lossy(&rehearsed.stdout);
    assert!(
        rehearsed.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&rehearsed.stderr)
    );
    assert!(stdout.contains("== dry run on"), "{stdout}");
    assert!(stdout.contains("production was not changed"), "{stdout}");
    assert!(!stdout.contains("== apply"), "{stdout}");
    assert_eq!(
        count(&db, "SELECT count(*) FROM pg_class WHERE relname = 'notes'").await,
        0
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM pgsidecar.schema_migrations").await,
        0
    );
    // Flags that the subcommand would ignore are refused (exit 2), and nothing is applied.
    for args in [
        vec![
            "apply",
            "--no-backup",
            "--reason",
            "test",
            "--staging-url",
            staging.as_str(),
        ],
        vec![
            "apply",
            "--dry-run",
            "--staging-url",
            staging.as_str(),
            "--no-backup",
            "--reason",
            "x",
        ],
        vec![
            "deploy",
            "--no-backup",
            "--reason",
            "test",
            "--sample-percent",
            "10",
        ],
    ] {
        let refused = cli(&args);
        assert_eq!(
            refused.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&refused.stderr)
        );
    }
    assert_eq!(
        count(&db, "SELECT count(*) FROM pg_class WHERE relname = 'notes'").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_runs_under_the_apply_policy() {
    let db = fresh_database().await;
    let undeclared =
        "ALTER TABLE notes ADD COLUMN body text; CREATE INDEX notes_body ON notes (body);";
    let declared = format!("-- pgsidecar:blocking reason=\"small table\"\n{undeclared}");
    let dir = Dir::new(&[
        ("0001_notes.sql", "CREATE TABLE notes (id int);"),
        ("0001_notes.down.sql", "DROP TABLE notes;"),
        ("0002_drop_body.sql", "COMMENT ON TABLE notes IS 'notes';"),
        ("0002_drop_body.down.sql", undeclared),
        ("0003_drop_body_again.sql", "SELECT 1;"),
        ("0003_drop_body_again.down.sql", &declared),
    ]);
    migrator(&db, &dir)
        .await
        .apply(&ApplyOptions::default())
        .await
        .unwrap();
    let applied = || count(&db, "SELECT count(*) FROM pgsidecar.schema_migrations");
    // The linter reads down SQL too: every down SQL is vetted before the first one runs.
    let err = migrator(&db, &dir)
        .await
        .rollback(Some(0), &ApplyOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("rollback refused"), "{err}");
    assert!(err.contains("0002_drop_body (down)"), "{err}");
    assert!(
        err.contains("0003_drop_body_again (down) is declared blocking"),
        "{err}"
    );
    assert_eq!(applied().await, 3, "nothing was rolled back");
    // A declared blocking down SQL runs in the maintenance window.
    let window = || ApplyOptions {
        maintenance_window: Some(pgsidecar::migrate::MaintenanceWindow::parse("now").unwrap()),
        ..ApplyOptions::default()
    };
    let undone = migrator(&db, &dir)
        .await
        .rollback(Some(2), &window())
        .await
        .unwrap();
    assert_eq!(undone, ["0003_drop_body_again"]);
    assert_eq!(applied().await, 2);
    // A down statement that cannot get its lock times out and is retried instead of queueing
    // behind a long transaction (and everyone behind it); the migration stays applied.
    let impatient = || ApplyOptions {
        lock_timeout: Duration::from_millis(100),
        lock_retries: 1,
        ..window()
    };
    let dir_one = Dir::new(&[
        ("0001_notes.sql", "CREATE TABLE notes (id int, body text);"),
        (
            "0001_notes.down.sql",
            "-- pgsidecar:blocking reason=\"test table\"\nDROP TABLE notes;",
        ),
    ]);
    let other = fresh_database().await;
    migrator(&other, &dir_one)
        .await
        .apply(&ApplyOptions::default())
        .await
        .unwrap();
    let holder = direct(&other).await;
    holder
        .batch_execute("BEGIN; LOCK TABLE notes IN ACCESS SHARE MODE")
        .await
        .unwrap();
    let err = migrator(&other, &dir_one)
        .await
        .rollback(None, &impatient())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("lock timeout"), "{err}");
    assert_eq!(
        count(&other, "SELECT count(*) FROM pgsidecar.schema_migrations").await,
        1
    );
    holder.batch_execute("ROLLBACK").await.unwrap();
    migrator(&other, &dir_one)
        .await
        .rollback(None, &impatient())
        .await
        .unwrap();
    assert_eq!(
        count(
            &other,
            "SELECT count(*) FROM pg_class WHERE relname = 'notes'"
        )
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_linter_reads_the_history_and_catches_serial_columns() {
    let db = fresh_database().await;
    direct(&db)
        .await
        .batch_execute(
            "CREATE TABLE accounts (id int, email text); INSERT INTO accounts VALUES (1, 'a@b')",
        )
        .await
        .unwrap();
    let dir = Dir::new(&[
        (
            "0001_email_check.sql",
            "ALTER TABLE accounts ADD CONSTRAINT email_present CHECK (email IS NOT NULL) NOT VALID;\n\
             ALTER TABLE accounts VALIDATE CONSTRAINT email_present;",
        ),
        (
            "0002_email_not_null.sql",
            "ALTER TABLE accounts ALTER COLUMN email SET NOT NULL;",
        ),
    ]);
    let lint = |dir: &Dir| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
            .args(["migrate", "lint", "--dir", dir.0.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let clean = lint(&dir);
    assert!(
        clean.status.success(),
        "{}",
        String::from_utf8_lossy(&clean.stdout)
    );
    // Applied for real: the SET NOT NULL step is not refused as blocking.
    migrator(&db, &dir)
        .await
        .apply(&ApplyOptions::default())
        .await
        .unwrap();
    dir.write(
        "0003_number.sql",
        "ALTER TABLE accounts ADD COLUMN number bigserial;",
    );
    let found = lint(&dir);
    let stdout = String::from_utf8_lossy(&found.stdout);
    assert_eq!(found.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("serial or identity"), "{stdout}");
    assert!(stdout.contains("3 migration(s), 1 finding(s)"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_index_build_waits_for_an_old_transaction_on_its_own_budget() {
    let db = fresh_database().await;
    let setup = direct(&db).await;
    setup
        .batch_execute("CREATE TABLE events (id int, kind text); INSERT INTO events SELECT g, 'k' FROM generate_series(1, 1000) g")
        .await
        .unwrap();
    let dir = Dir::new(&[(
        "0001_events_kind.sql",
        "-- pgsidecar:no-transaction\nCREATE INDEX CONCURRENTLY events_kind ON events (kind);",
    )]);
    // An open transaction with a snapshot: the build must wait for it to end.
    let holder = direct(&db).await;
    holder
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM events")
        .await
        .unwrap();
    let holder_pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let options = ApplyOptions {
        lock_timeout: Duration::from_millis(100),
        lock_retries: 0,
        concurrent_wait: Duration::from_secs(60),
        ..ApplyOptions::default()
    };
    let runner = migrator(&db, &dir).await;
    let apply = tokio::spawn(async move { runner.apply(&options).await });
    // End the old transaction once the build is seen waiting for it.
    let watcher = direct(&db).await;
    let mut waiting = false;
    for _ in 0..400 {
        waiting = watcher
            .query_one(
                "SELECT count(*) > 0 FROM pg_stat_progress_create_index p WHERE $1 = ANY(pg_blocking_pids(p.pid))",
                &[&holder_pid],
            )
            .await
            .unwrap()
            .get(0);
        if waiting {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(waiting, "the build never waited for the old transaction");
    // The runner's watcher looks after the wait began, and has its answer (the query is done):
    // then the old transaction may end, long after the 100 ms lock_timeout.
    let seen: String = watcher
        .query_one("SELECT clock_timestamp()::text", &[])
        .await
        .unwrap()
        .get(0);
    let mut observed = false;
    for _ in 0..400 {
        observed = watcher
            .query_one(
                "SELECT count(*) > 0 FROM pg_stat_activity
                  WHERE pid <> pg_backend_pid()
                    AND query LIKE '%LEFT JOIN LATERAL unnest(pg_blocking_pids%'
                    AND query_start > $1::text::timestamptz AND state = 'idle'",
                &[&seen],
            )
            .await
            .unwrap()
            .get(0);
        if observed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(observed, "the runner never watched the build");
    holder.batch_execute("COMMIT").await.unwrap();
    let report = apply
        .await
        .unwrap()
        .expect("the build outlasts lock_timeout");
    let step = &report.applied[0];
    assert_eq!(step.lock_retries, 0);
    assert!(
        !step.waited_for.is_empty()
            && step
                .waited_for
                .iter()
                .all(|s| s.starts_with(&format!("pid {holder_pid} "))),
        "only the old transaction is reported: {:?}",
        step.waited_for
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 'events_kind' AND i.indisvalid"
        )
        .await,
        1
    );
}
