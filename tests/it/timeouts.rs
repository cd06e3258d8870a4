//! PgBouncer's timeouts with PostgreSQL's SQLSTATEs: a client idle in a transaction, a query that
//! runs too long, an idle client and a transaction open too long are ended, the affected client
//! is told why, and the server connection goes back to the pool clean (or is closed).

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::support::{TestProxy, direct, fresh_database, overrides, start_proxy_with};

/// A client whose connection task's end is reported: the FATAL a proxy sends arrives there.
async fn watched(proxy: &TestProxy, db: &str) -> (Client, tokio::task::JoinHandle<String>) {
    let (client, connection) = tokio_postgres::connect(&proxy.url(db), NoTls)
        .await
        .unwrap();
    let ended = tokio::spawn(async move {
        match connection.await {
            Ok(()) => "closed".to_owned(),
            Err(e) => e
                .as_db_error()
                .map_or_else(|| e.to_string(), |db| db.code().code().to_owned()),
        }
    });
    (client, ended)
}

fn timeouts_fired(proxy: &TestProxy, key: &str) -> u64 {
    let prefix = format!(r#"pgsidecar_client_timeouts_total{{reason="{key}"}} "#);
    proxy
        .ctx
        .telemetry
        .metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()).map(|v| v.parse().unwrap()))
        .unwrap_or(0)
}

async fn ends_with(ended: tokio::task::JoinHandle<String>, sqlstate: &str) {
    let code = tokio::time::timeout(Duration::from_secs(10), ended)
        .await
        .expect("the proxy ends the client")
        .unwrap();
    assert_eq!(code, sqlstate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_transaction_is_rolled_back_and_its_connection_returned() {
    let db = fresh_database().await;
    direct(&db)
        .await
        .batch_execute("CREATE TABLE t (id int)")
        .await
        .unwrap();
    // Per database, on a pool of one server connection.
    let file = format!("[databases.{db}]\nidle_transaction_timeout = \"300ms\"\n");
    let proxy = start_proxy_with(&overrides("transaction", 1), Some(&file)).await;
    let (leaker, ended) = watched(&proxy, &db).await;
    let pid: i32 = leaker
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    leaker
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    // Another client waits for the only connection; it gets it, rolled back, once the
    // leaked transaction's client is ended.
    let other = proxy.connect(&db).await.unwrap();
    let row = other
        .query_one("SELECT count(*), pg_backend_pid() FROM t", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 0, "the transaction was rolled back");
    assert_eq!(
        row.get::<_, i32>(1),
        pid,
        "the connection was returned, not closed"
    );
    ends_with(ended, "25P03").await;
    assert!(leaker.simple_query("SELECT 1").await.is_err());
    assert_eq!(timeouts_fired(&proxy, "idle_transaction_timeout"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_over_query_timeout_is_cancelled_on_the_server() {
    let db = fresh_database().await;
    let mut settings = overrides("transaction", 2);
    settings.query_timeout = Some("300ms".into());
    let proxy = start_proxy_with(&settings, None).await;
    let (client, ended) = watched(&proxy, &db).await;
    let started = std::time::Instant::now();
    let err = client
        .simple_query("SELECT pg_sleep(30)")
        .await
        .unwrap_err();
    assert_eq!(crate::support::sqlstate(&err), "57014");
    assert!(started.elapsed() < Duration::from_secs(10));
    ends_with(ended, "connection closed").await;
    // The backend stopped sleeping: nothing runs pg_sleep any more.
    let admin = direct(&db).await;
    let mut running = 1;
    for _ in 0..200 {
        running = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        if running == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(running, 0);
    assert_eq!(timeouts_fired(&proxy, "query_timeout"), 1);
    // Short queries are not affected.
    let quick = proxy.connect(&db).await.unwrap();
    quick.simple_query("SELECT pg_sleep(0.05)").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_and_long_transactions_are_ended() {
    let db = fresh_database().await;
    let mut settings = overrides("transaction", 2);
    settings.client_idle_timeout = Some("300ms".into());
    settings.transaction_timeout = Some("600ms".into());
    let proxy = start_proxy_with(&settings, None).await;
    let (_idle, ended) = watched(&proxy, &db).await;
    ends_with(ended, "57P05").await;
    assert_eq!(timeouts_fired(&proxy, "client_idle_timeout"), 1);
    // Busy in one transaction, never idle for long, but open longer than 600ms.
    let (busy, ended) = watched(&proxy, &db).await;
    busy.batch_execute("BEGIN").await.unwrap();
    let mut failure = None;
    for _ in 0..40 {
        if let Err(e) = busy.simple_query("SELECT pg_sleep(0.05)").await {
            failure = Some(e);
            break;
        }
    }
    let failure = failure.expect("the transaction outlived transaction_timeout");
    assert_eq!(crate::support::sqlstate(&failure), "25P04");
    ends_with(ended, "connection closed").await;
    assert_eq!(timeouts_fired(&proxy, "transaction_timeout"), 1);
}

/// A client of `db` as `user` (trust authentication; the server login is the upstream's).
async fn client_as(proxy: &TestProxy, user: &str, db: &str) -> Client {
    let url = format!("postgres://{user}@127.0.0.1:{}/{db}", proxy.port);
    crate::support::connect(&url).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_span_pools_and_idle_connections_make_room() {
    let db = fresh_database().await;
    let other_db = fresh_database().await;
    let mut settings = overrides("transaction", 5);
    settings.acquire_timeout = Some("500ms".into());
    settings.max_user_connections = Some("3".into());
    let file = format!("[databases.{db}]\nmax_db_connections = 2\n");
    let proxy = start_proxy_with(&settings, Some(&file)).await;
    // Two users' pools of one database share its cap of two.
    let a1 = client_as(&proxy, "alpha", &db).await;
    let a2 = client_as(&proxy, "alpha", &db).await;
    for a in [&a1, &a2] {
        a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    }
    // (A login takes a server connection today, so beta is refused at login.)
    let beta_url = format!("postgres://beta@127.0.0.1:{}/{db}", proxy.port);
    let err = crate::support::connect(&beta_url).await.unwrap_err();
    assert_eq!(crate::support::sqlstate(&err), "53300");
    let message = err.as_db_error().unwrap().message().to_owned();
    assert!(message.contains("max_db_connections"), "{message}");
    // alpha's transactions end: their connections idle in alpha's pool, holding the cap; the
    // next checkout of beta closes one of them to make room.
    for a in [&a1, &a2] {
        a.batch_execute("COMMIT").await.unwrap();
    }
    let b = client_as(&proxy, "beta", &db).await;
    b.simple_query("SELECT 1").await.unwrap();
    let backends: i64 = direct("postgres")
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'",
            &[&db],
        )
        .await
        .unwrap()
        .get(0);
    assert!(backends <= 2, "{backends} server connections to {db}");
    // One user across databases: three busy connections to another database use up gamma's
    // max_user_connections, so gamma gets none for this one.
    let busy: Vec<Client> =
        futures::future::join_all((0..3).map(|_| client_as(&proxy, "gamma", &other_db))).await;
    for c in &busy {
        c.batch_execute("BEGIN; SELECT 1").await.unwrap();
    }
    let gamma_url = format!("postgres://gamma@127.0.0.1:{}/{db}", proxy.port);
    let err = crate::support::connect(&gamma_url).await.unwrap_err();
    let message = err.as_db_error().unwrap().message().to_owned();
    assert!(message.contains("max_user_connections"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_own_timeout_wins_over_the_global_one() {
    let db = fresh_database().await;
    let file = "[users.lazy]\nidle_transaction_timeout = \"300ms\"\n";
    let proxy = start_proxy_with(&overrides("transaction", 2), Some(file)).await;
    let lazy_url = format!("postgres://lazy@127.0.0.1:{}/{db}", proxy.port);
    let (lazy, connection) = tokio_postgres::connect(&lazy_url, NoTls).await.unwrap();
    let ended = tokio::spawn(async move {
        connection
            .await
            .err()
            .and_then(|e| e.as_db_error().map(|db| db.code().code().to_owned()))
            .unwrap_or_default()
    });
    let patient = client_as(&proxy, "patient", &db).await;
    for client in [&lazy, &patient] {
        client.batch_execute("BEGIN; SELECT 1").await.unwrap();
    }
    ends_with(ended, "25P03").await;
    // The global default (1h) still holds for everyone else.
    patient.batch_execute("SELECT 2; COMMIT").await.unwrap();
    assert_eq!(timeouts_fired(&proxy, "idle_transaction_timeout"), 1);
}
