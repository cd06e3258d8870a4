//! What happens when things go wrong: cancels, vanished clients, dying servers, bad passwords.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use crate::support::{
    connect, direct, fresh_database, overrides, pg_program, sqlstate, start_proxy,
    start_proxy_with, wait_until,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_right_server_query() {
    let db = fresh_database().await;
    let proxy = start_proxy("transaction", 4).await;
    let sleeper = proxy.connect(&db).await.unwrap();
    let bystander = proxy.connect(&db).await.unwrap();
    let token = sleeper.cancel_token();
    let sleeping = tokio::spawn(async move {
        sleeper
            .query_one("SELECT pg_sleep(30)", &[])
            .await
            .map(|_| ())
    });
    let neighbour = tokio::spawn(async move {
        bystander
            .query_one("SELECT pg_sleep(1.5)", &[])
            .await
            .map(|_| ())
    });
    let observer = direct("postgres").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let running: i64 = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE '%pg_sleep(30)%' AND state = 'active'",
                &[&db],
            )
            .await
            .unwrap()
            .get(0);
        if running == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the query never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    token.cancel_query(NoTls).await.unwrap();
    let err = sleeping.await.unwrap().unwrap_err();
    assert_eq!(sqlstate(&err), "57014");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "cancel took {:?}",
        started.elapsed()
    );
    neighbour
        .await
        .unwrap()
        .expect("the other client's query is not cancelled");
}

async fn wait_until_unlocked(db: &str) {
    let observer = direct("postgres").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let row = observer
            .query_one(
                "SELECT (SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
                   WHERE d.datname = $1 AND l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock'), \
                 (SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND xact_start IS NOT NULL)",
                &[&db],
            )
            .await
            .unwrap();
        let (locks, open): (i64, i64) = (row.get(0), row.get(1));
        if locks == 0 && open == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{locks} locks and {open} open transactions remain"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `script` in psql through the proxy, waits until the server shows `state` for the
/// database, then kills psql without a goodbye.
async fn kill_psql_when(url: &str, db: &str, script: &str, state: &str) {
    let mut psql = tokio::process::Command::new(pg_program("psql"))
        .arg(url)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = psql.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, script.as_bytes())
        .await
        .unwrap();
    let observer = direct("postgres").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n: i64 = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state = $2",
                &[&db, &state],
            )
            .await
            .unwrap()
            .get(0);
        if n == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "psql never reached state {state}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    psql.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_client_leaves_no_lock_and_no_transaction() {
    let db = fresh_database().await;
    direct(&db)
        .await
        .batch_execute("CREATE TABLE t (x int)")
        .await
        .unwrap();
    let proxy = start_proxy("transaction", 2).await;
    let lock = "BEGIN;\nLOCK TABLE t IN ACCESS EXCLUSIVE MODE;\n";
    kill_psql_when(&proxy.url(&db), &db, lock, "idle in transaction").await;
    wait_until_unlocked(&db).await;
    kill_psql_when(
        &proxy.url(&db),
        &db,
        &format!("{lock}SELECT pg_sleep(30);\n"),
        "active",
    )
    .await;
    wait_until_unlocked(&db).await;
    let after = proxy.connect(&db).await.unwrap();
    after
        .batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE NOWAIT; COMMIT")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dying_server_fails_only_its_client() {
    let db = fresh_database().await;
    let proxy = start_proxy("transaction", 2).await;
    let victim = proxy.connect(&db).await.unwrap();
    let other = proxy.connect(&db).await.unwrap();
    victim.batch_execute("BEGIN").await.unwrap();
    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let killed: bool = direct("postgres")
        .await
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    let admin = direct("postgres").await;
    wait_until("the terminated backend is gone", async || {
        admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 0
    })
    .await;
    assert!(victim.query_one("SELECT 1", &[]).await.is_err());
    for _ in 0..5 {
        let n: i32 = other.query_one("SELECT 3", &[]).await.unwrap().get(0);
        assert_eq!(n, 3);
    }
    let fresh = proxy.connect(&db).await.unwrap();
    let new_pid: i32 = fresh
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(new_pid, pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_login_accepts_the_password_and_refuses_a_wrong_one() {
    let db = fresh_database().await;
    let mut settings = overrides("transaction", 2);
    settings.auth = None;
    let file = "auth = \"scram-sha-256\"\n[users.postgres]\npassword = \"postgres\"\n";
    let proxy = start_proxy_with(&settings, Some(file)).await;
    let ok = proxy.connect(&db).await.unwrap();
    assert_eq!(
        ok.query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    let wrong = format!("postgres://postgres:guess@127.0.0.1:{}/{db}", proxy.port);
    let err = connect(&wrong).await.unwrap_err();
    assert_eq!(sqlstate(&err), "28P01");
    let unknown = format!("postgres://mallory:postgres@127.0.0.1:{}/{db}", proxy.port);
    let err = connect(&unknown).await.unwrap_err();
    assert_eq!(sqlstate(&err), "28P01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_database_reports_the_server_error() {
    let proxy = start_proxy("transaction", 2).await;
    let err = proxy.connect("no_such_db").await.unwrap_err();
    assert_eq!(sqlstate(&err), "3D000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_logs_in_with_md5_and_cleartext_passwords() {
    let db = fresh_database().await;
    for (user, password) in [("md5_user", "md5pass"), ("plain_user", "plainpass")] {
        let mut settings = overrides("transaction", 2);
        settings.upstream = Some(format!(
            "postgres://{user}:{password}@127.0.0.1:{}",
            crate::support::cluster().port()
        ));
        let proxy = start_proxy_with(&settings, None).await;
        let client = proxy.connect(&db).await.unwrap();
        let who: String = client
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(who, user);
        let mut wrong = overrides("transaction", 2);
        wrong.upstream = Some(format!(
            "postgres://{user}:nope@127.0.0.1:{}",
            crate::support::cluster().port()
        ));
        let proxy = start_proxy_with(&wrong, None).await;
        let err = proxy.connect(&db).await.unwrap_err();
        assert_eq!(sqlstate(&err), "28P01", "{user}");
    }
}
