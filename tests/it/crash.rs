//! The migration runner killed with SIGKILL at many moments (after random delays from a fixed
//! seed, and right after each recorded step), resumed each time, ends in exactly the state of an
//! uninterrupted run on another database: same catalog, same rows, same history, no INVALID
//! index, no advisory lock left behind. The migrations include non-idempotent statements and a
//! non-idempotent backfill, so a step run twice shows.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::migrate::Dir;
use crate::support::{cluster, direct, fresh_database};

const SCHEMA: &str =
    "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL DEFAULT 0,
                          touched int NOT NULL DEFAULT 0);
INSERT INTO accounts (id) SELECT generate_series(1, 30000);
CREATE TABLE ledger (id bigserial PRIMARY KEY, account bigint NOT NULL, amount bigint NOT NULL);";

const STEPS: &str = "-- pgsidecar:no-transaction
ALTER TABLE accounts ADD COLUMN note text;
UPDATE accounts SET balance = balance + 10;
INSERT INTO ledger (account, amount) SELECT id, 10 FROM accounts WHERE id % 3 = 0;
CREATE INDEX CONCURRENTLY accounts_touched ON accounts (touched);
VACUUM accounts;
UPDATE accounts SET note = 'v2' WHERE id % 2 = 0;";

const STEPS_DOWN: &str = "-- pgsidecar:no-transaction
-- pgsidecar:blocking reason=\"drops the column the step added\"
DROP INDEX CONCURRENTLY IF EXISTS accounts_touched;
UPDATE accounts SET balance = balance - 10;
DELETE FROM ledger WHERE amount = 10;
ALTER TABLE accounts DROP COLUMN note;";

const BACKFILL: &str = "-- pgsidecar:backfill table=accounts key=id batch=500 pause=0ms
UPDATE accounts SET touched = touched + 1, balance = balance + id WHERE id >= $1 AND id < $2;";

const BACKFILL_DOWN: &str =
    "UPDATE accounts SET touched = touched - 1, balance = balance - id WHERE touched > 0;";

const AUDIT: &str = "-- pgsidecar:blocking reason=\"a new table nobody reads yet\"
CREATE TABLE audit AS SELECT id, balance FROM accounts WHERE id % 7 = 0;
ALTER TABLE audit ADD PRIMARY KEY (id);
INSERT INTO ledger (account, amount) SELECT id, -1 FROM audit;";

const AUDIT_DOWN: &str = "-- pgsidecar:blocking reason=\"drops the new table\"
DELETE FROM ledger WHERE amount = -1;
DROP TABLE audit;";

fn migrations() -> Dir {
    Dir::new(&[
        ("0001_schema.sql", SCHEMA),
        ("0002_steps.sql", STEPS),
        ("0002_steps.down.sql", STEPS_DOWN),
        ("0003_backfill.sql", BACKFILL),
        ("0003_backfill.down.sql", BACKFILL_DOWN),
        ("0004_audit.sql", AUDIT),
        ("0004_audit.down.sql", AUDIT_DOWN),
    ])
}

/// `pgsidecar migrate ARGS` against `db`, started and not waited for.
fn runner(dir: &Dir, db: &str, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
        .arg("migrate")
        .args(args)
        .args([
            "--dir",
            dir.0.to_str().unwrap(),
            "--database-url",
            &cluster().url(db),
            "--no-backup",
            "--reason",
            "crash-injection test",
            "--maintenance-window",
            "now",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs `migrate ARGS` to the end and insists it succeeds.
fn run_to_completion(dir: &Dir, db: &str, args: &[&str]) {
    let out = runner(dir, db, args).wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fixed-seed xorshift, so that every run kills at the same offsets.
struct Delays(u64);

impl Delays {
    fn next_ms(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// A number that changes whenever the runner records progress.
async fn progress(client: &tokio_postgres::Client) -> String {
    client
        .query_one(
            "SELECT coalesce(string_agg(concat_ws(':', version, status, completed_statements,
                                                 backfill_position, rollback_completed), ','
                                        ORDER BY version), '')
               FROM pgsidecar.schema_migrations",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or_default()
}

/// Waits until no runner holds the migration lock on `db` (a killed runner's backend ends
/// within about a second).
async fn wait_for_runner_gone(db: &str) {
    let client = direct(db).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let held: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                  WHERE l.locktype = 'advisory' AND d.datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if held == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "a killed runner's lock stays held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts `migrate ARGS` `kills` times and kills it with SIGKILL each time: at even rounds after
/// a random delay, at odd rounds as soon as it has recorded a step. Returns how often
/// `migrate status` reported interrupted work in between.
async fn kill_repeatedly(dir: &Dir, db: &str, args: &[&str], kills: usize, seed: u64) -> usize {
    let mut delays = Delays(seed);
    let watcher = direct(db).await;
    let mut interrupted_reports = 0;
    for round in 0..kills {
        let before = progress(&watcher).await;
        let mut child = runner(dir, db, args);
        if round % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(20 + delays.next_ms(600))).await;
        } else {
            let deadline = Instant::now() + Duration::from_secs(20);
            while progress(&watcher).await == before
                && child.try_wait().unwrap().is_none()
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let finished = child.try_wait().unwrap();
        child.kill().unwrap_or_default();
        let status = child.wait_with_output().unwrap();
        if let Some(code) = finished {
            // The runner got to the end before the kill: nothing left to interrupt.
            assert!(
                code.success(),
                "an unkilled run failed: {}",
                String::from_utf8_lossy(&status.stderr)
            );
            break;
        }
        wait_for_runner_gone(db).await;
        let report = Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
            .args(["migrate", "status", "--dir", dir.0.to_str().unwrap()])
            .args(["--database-url", &cluster().url(db)])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&report.stdout);
        assert!(
            !text.contains("a migration runner is at work"),
            "no runner is alive: {text}"
        );
        if text.contains("INTERRUPTED") {
            interrupted_reports += 1;
        }
    }
    interrupted_reports
}

/// Everything an uninterrupted run decides: the catalog of `public`, each table's rows, the
/// history (without timings), INVALID indexes.
async fn end_state(db: &str) -> Vec<String> {
    let client = direct(db).await;
    let mut state = Vec::new();
    for sql in [
        "SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable || ' '
                || coalesce(column_default, '')
           FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1",
        "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1",
        "SELECT conrelid::regclass || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
          WHERE connamespace = 'public'::regnamespace ORDER BY 1",
        "SELECT concat_ws(' ', version, name, checksum, status, completed_statements,
                          failed_statement, error, backfill_position, rollback_completed)
           FROM pgsidecar.schema_migrations ORDER BY version",
        "SELECT 'INVALID ' || indexrelid::regclass FROM pg_index WHERE NOT indisvalid",
    ] {
        for row in client.query(sql, &[]).await.unwrap() {
            state.push(row.get(0));
        }
    }
    // Rows are compared without sequence-generated columns: a transaction the kill rolled back
    // still consumed its sequence values (PostgreSQL never hands them out again).
    let tables = client
        .query(
            "SELECT table_name::text, string_agg(quote_ident(column_name), ', ' ORDER BY ordinal_position)
               FROM information_schema.columns
              WHERE table_schema = 'public' AND coalesce(column_default, '') NOT LIKE 'nextval(%'
              GROUP BY table_name ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    for table in tables {
        let (name, columns): (String, String) = (table.get(0), table.get(1));
        let row = client
            .query_one(
                &format!(
                    "SELECT count(*)::text || ' ' || coalesce(md5(string_agg(r::text, '|' ORDER BY r::text)), '')
                       FROM (SELECT {columns} FROM {name}) r"
                ),
                &[],
            )
            .await
            .unwrap();
        state.push(format!("{name}: {}", row.get::<_, String>(0)));
    }
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_killed_at_any_moment_resumes_to_the_uninterrupted_end_state() {
    let dir = migrations();
    let reference = fresh_database().await;
    let crashed = fresh_database().await;

    run_to_completion(&dir, &reference, &["apply"]);
    let interrupted = kill_repeatedly(&dir, &crashed, &["apply"], 16, 0x5eed_cafe).await;
    run_to_completion(&dir, &crashed, &["apply"]);
    wait_for_runner_gone(&crashed).await;
    let applied = end_state(&reference).await;
    assert!(
        applied.iter().any(|l| l.starts_with("accounts: 30000 ")),
        "{applied:?}"
    );
    assert_eq!(
        end_state(&crashed).await,
        applied,
        "apply, killed and resumed"
    );
    assert!(
        interrupted > 0,
        "`migrate status` reported the interrupted work"
    );

    run_to_completion(&dir, &reference, &["rollback", "--to", "1"]);
    kill_repeatedly(&dir, &crashed, &["rollback", "--to", "1"], 8, 0x00de_c0de).await;
    run_to_completion(&dir, &crashed, &["rollback", "--to", "1"]);
    wait_for_runner_gone(&crashed).await;
    let rolled_back = end_state(&reference).await;
    assert_eq!(
        end_state(&crashed).await,
        rolled_back,
        "rollback, killed and resumed"
    );
    assert!(
        rolled_back.iter().any(|l| l == "ledger: 0 "),
        "{rolled_back:?}"
    );
}
