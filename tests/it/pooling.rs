//! The bounded pool: concurrency limits, FIFO waiting, acquire timeout, session reset.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use futures::future::try_join_all;

use crate::support::{
    direct, fresh_database, overrides, sqlstate, start_proxy, start_proxy_with, wait_until,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_clients_share_five_server_connections() {
    let db = fresh_database().await;
    direct(&db)
        .await
        .batch_execute("CREATE TABLE hits (client int, n int, PRIMARY KEY (client, n))")
        .await
        .unwrap();
    let proxy = Arc::new(start_proxy("transaction", 5).await);
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicI64::new(0));
    let monitor = {
        let (db, done, peak) = (db.clone(), Arc::clone(&done), Arc::clone(&peak));
        tokio::spawn(async move {
            let observer = direct("postgres").await;
            while !done.load(Ordering::Relaxed) {
                let n: i64 = observer
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                        &[&db],
                    )
                    .await
                    .unwrap()
                    .get(0);
                peak.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let clients = (0..100).map(|id: i32| {
        let (proxy, db) = (Arc::clone(&proxy), db.clone());
        async move {
            let mut client = proxy.connect(&db).await?;
            for n in 0..5_i32 {
                let tx = client.transaction().await?;
                tx.execute("INSERT INTO hits VALUES ($1, $2)", &[&id, &n])
                    .await?;
                tx.query_one("SELECT pg_sleep(0.001)", &[]).await?;
                tx.commit().await?;
            }
            Ok::<_, tokio_postgres::Error>(())
        }
    });
    try_join_all(clients).await.unwrap();
    done.store(true, Ordering::Relaxed);
    monitor.await.unwrap();
    let peak = peak.load(Ordering::Relaxed);
    assert!(peak <= 5, "{peak} server connections were open at once");
    assert!(peak >= 1, "the monitor never saw the proxy's connections");
    let check = direct(&db).await;
    let row = check
        .query_one(
            "SELECT count(*), count(DISTINCT client), sum(n), min(client), max(client) FROM hits",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 500);
    assert_eq!(row.get::<_, i64>(1), 100);
    assert_eq!(row.get::<_, i64>(2), 100 * (1 + 2 + 3 + 4));
    assert_eq!((row.get::<_, i32>(3), row.get::<_, i32>(4)), (0, 99));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_timeout_is_53300() {
    let db = fresh_database().await;
    let mut settings = overrides("transaction", 1);
    settings.acquire_timeout = Some("300ms".into());
    let proxy = start_proxy_with(&settings, None).await;
    let holder = proxy.connect(&db).await.unwrap();
    let waiter = proxy.connect(&db).await.unwrap();
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let err = waiter.query_one("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "53300");
    let message = err.as_db_error().unwrap().message();
    assert!(
        message.contains("no server connection became free"),
        "{message}"
    );
    let exposition = proxy.ctx.telemetry.metrics.encode();
    let line = format!(
        r#"pgsidecar_pool_acquire_timeouts_total{{database="{db}",user="postgres",host="127.0.0.1:{}"}} 1"#,
        crate::support::cluster().port()
    );
    assert!(exposition.contains(&line), "{exposition}");
    holder.batch_execute("COMMIT").await.unwrap();
    let again = proxy.connect(&db).await.unwrap();
    assert_eq!(
        again
            .query_one("SELECT 5", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_resets_state_before_reuse() {
    let db = fresh_database().await;
    let proxy = start_proxy("session", 1).await;
    let first = proxy.connect(&db).await.unwrap();
    first
        .batch_execute(
            "SET work_mem = '7MB'; CREATE TEMP TABLE scratch (x int); PREPARE p AS SELECT 1",
        )
        .await
        .unwrap();
    let pid: i32 = first
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    drop(first);
    wait_until(
        "the server connection is reset and back in the pool",
        async || {
            proxy
                .ctx
                .pools
                .all()
                .iter()
                .any(|p| p.usage().available > 0)
        },
    )
    .await;
    let second = proxy.connect(&db).await.unwrap();
    let row = second
        .query_one(
            "SELECT pg_backend_pid(), current_setting('work_mem'), \
             (SELECT count(*) FROM pg_prepared_statements WHERE name = 'p'), to_regclass('scratch') IS NULL",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, i32>(0),
        pid,
        "the one server connection is reused"
    );
    assert_eq!(row.get::<_, String>(1), "4MB");
    assert_eq!(row.get::<_, i64>(2), 0);
    assert!(row.get::<_, bool>(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_client_conn_refuses_the_extra_client_with_53300() {
    let db = fresh_database().await;
    let mut settings = overrides("transaction", 2);
    settings.max_client_conn = Some("2".into());
    let proxy = start_proxy_with(&settings, None).await;
    let first = proxy.connect(&db).await.unwrap();
    let second = proxy.connect(&db).await.unwrap();
    let err = proxy.connect(&db).await.unwrap_err();
    assert_eq!(sqlstate(&err), "53300");
    let exposition = proxy.ctx.telemetry.metrics.encode();
    assert!(
        exposition.contains(r#"pgsidecar_clients_refused_total{reason="max_client_conn"} 1"#),
        "{exposition}"
    );
    drop(first);
    // The slot frees once the proxy has seen the first client go.
    let mut third = None;
    for _ in 0..100 {
        if let Ok(client) = proxy.connect(&db).await {
            third = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let third = third.expect("a slot frees after a client leaves");
    for client in [&second, &third] {
        assert_eq!(
            client
                .query_one("SELECT 1", &[])
                .await
                .unwrap()
                .get::<_, i32>(0),
            1
        );
    }
}
