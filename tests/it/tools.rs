//! Real client programs through the proxy: psql scripts and pgbench.

use std::process::Output;

use crate::support::{cluster, fresh_database, pg_program, start_proxy};

const SCRIPT: &str = r"
CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL);
INSERT INTO notes (body) VALUES ('alpha'), ('beta');
BEGIN;
INSERT INTO notes (body) VALUES ('gamma');
SELECT count(*) AS inside FROM notes;
ROLLBACK;
SELECT string_agg(body, ',' ORDER BY id) AS bodies FROM notes;
COPY notes (body) FROM STDIN;
delta
epsilon
\.
SELECT count(*) AS after_copy FROM notes;
\set ON_ERROR_STOP 0
SELECT 1/0;
\set ON_ERROR_STOP 1
SELECT 'still here' AS status;
PREPARE q(int) AS SELECT body FROM notes WHERE id = $1;
EXECUTE q(2);
";

async fn psql(url: &str, script: &str) -> Output {
    let mut child = tokio::process::Command::new(pg_program("psql"))
        .arg(url)
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, script.as_bytes())
        .await
        .unwrap();
    drop(stdin);
    child.wait_with_output().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_script_through_both_modes() {
    for mode in ["session", "transaction"] {
        let db = fresh_database().await;
        let proxy = start_proxy(mode, 2).await;
        let out = psql(&proxy.url(&db), SCRIPT).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{mode}: psql failed: {stderr}");
        let lines: Vec<&str> = stdout.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(
            lines,
            ["3", "alpha,beta", "4", "still here", "beta"],
            "{mode}: unexpected output; stderr: {stderr}"
        );
        assert!(stderr.contains("division by zero"), "{mode}: {stderr}");
    }
}

fn failed_transactions(stdout: &str) -> Option<u64> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn processed_transactions(stdout: &str) -> Option<u64> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
}

/// A fresh database initialised by `pgbench -i` (scale 1), directly on the server.
async fn pgbench_database() -> String {
    let db = fresh_database().await;
    let init = tokio::process::Command::new(pg_program("pgbench"))
        .args(["-i", "-q", "-s", "1", &cluster().url(&db)])
        .output()
        .await
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    db
}

/// Runs pgbench through the proxy and checks it processed `expected` transactions, none failed.
async fn pgbench_without_failures(url: &str, args: &[&str], expected: u64) {
    let out = tokio::process::Command::new(pg_program("pgbench"))
        .args(["-n", "-j", "2"])
        .args(args)
        .arg(url)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let label = args.join(" ");
    assert!(
        out.status.success(),
        "{label}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(failed_transactions(&stdout), Some(0), "{label}: {stdout}");
    assert_eq!(
        processed_transactions(&stdout),
        Some(expected),
        "{label}: {stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_select_only_and_tpcb_through_both_modes() {
    let db = pgbench_database().await;
    for mode in ["session", "transaction"] {
        // Session mode holds a server connection per client, so its pool fits all eight.
        let proxy = start_proxy(mode, if mode == "session" { 8 } else { 4 }).await;
        for builtin in ["select-only", "tpcb-like"] {
            let args = ["-c", "8", "-t", "100", "-b", builtin, "-M", "extended"];
            pgbench_without_failures(&proxy.url(&db), &args, 800).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_extended_and_prepared_in_transaction_mode() {
    let db = pgbench_database().await;
    let proxy = start_proxy("transaction", 2).await;
    for protocol in ["extended", "prepared"] {
        for builtin in ["select-only", "tpcb-like"] {
            let args = ["-c", "20", "-t", "50", "-b", builtin, "-M", protocol];
            pgbench_without_failures(&proxy.url(&db), &args, 1000).await;
        }
    }
}
