//! A primary and a real streaming replica (`pg_basebackup -R`) of the test's own: the read alias
//! and declared read-only transactions land on the replica, a replica whose replay is paused
//! leaves the rotation and comes back, and a promotion under a write load is followed without a
//! restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pgsidecar::config::Overrides;
use tokio::sync::Mutex;

use crate::support::clusters::OwnedCluster;
use crate::support::{TestProxy, connect, sqlstate, start_proxy_with, wait_until};

/// A proxy in transaction mode in front of `primary` and `replica`, with the read alias
/// `app_ro` for database `postgres` and routing of declared read-only transactions.
async fn routed_proxy(primary: &OwnedCluster, replica: &OwnedCluster) -> TestProxy {
    let overrides = Overrides {
        listen: Some("127.0.0.1:0".into()),
        upstream: Some(format!(
            "postgres://postgres:postgres@{},{}",
            primary.address(),
            replica.address()
        )),
        auth: Some("trust".into()),
        pool_mode: Some("transaction".into()),
        pool_size: Some("4".into()),
        acquire_timeout: Some("30s".into()),
        admin_users: Some("postgres".into()),
        ..Overrides::default()
    };
    let file = "[routing]\n\
                read_aliases = { app_ro = \"postgres\" }\n\
                read_only_transactions = true\n\
                max_lag_bytes = \"64kB\"\n\
                max_lag = \"1h\"\n\
                check_interval = \"200ms\"\n";
    let proxy = start_proxy_with(&overrides, Some(file)).await;
    let topology = Arc::clone(proxy.ctx.pools.topology());
    wait_until(
        "the watcher finds the primary and the replica",
        async || topology.primary() == Some(0) && topology.usable_replicas() == [1],
    )
    .await;
    proxy
}

/// Sends `payload` on channel `events` through `notifier` until the listener has heard it: the
/// listening connection may still be reconnecting to a new primary, and what is sent before it
/// listens again is not seen.
async fn notify_until_heard(
    notifier: &tokio_postgres::Client,
    heard: &Mutex<Vec<crate::notify::Seen>>,
    payload: &str,
) {
    wait_until(
        "a notification on the new primary reaches the listener",
        async || {
            notifier
                .batch_execute(&format!("NOTIFY events, '{payload}'"))
                .await
                .unwrap();
            heard.lock().await.iter().any(|(_, p, _)| p == payload)
        },
    )
    .await;
}

/// `SHOW HOSTS` as (host, state) pairs.
async fn host_states(proxy: &TestProxy) -> Vec<(String, String)> {
    let admin = proxy.connect("pgsidecar").await.unwrap();
    let hosts = admin.simple_query("SHOW HOSTS").await.unwrap();
    hosts
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some((
                row.get("host").unwrap().to_owned(),
                row.get("state").unwrap().to_owned(),
            )),
            _ => None,
        })
        .collect()
}

async fn in_recovery(client: &impl tokio_postgres::GenericClient) -> bool {
    client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_the_replica_writes_to_the_primary_and_a_lagging_replica_leaves_the_rotation() {
    let primary = OwnedCluster::primary();
    let replica = OwnedCluster::replica_of(primary.cluster().port());
    let setup = connect(&primary.cluster().url("postgres")).await.unwrap();
    setup
        .batch_execute("CREATE TABLE notes (id serial PRIMARY KEY, body text)")
        .await
        .unwrap();
    let proxy = routed_proxy(&primary, &replica).await;

    // The read alias: every transaction on the replica, which refuses writes itself.
    let reader = proxy.connect("app_ro").await.unwrap();
    assert!(in_recovery(&reader).await, "app_ro reads on the replica");
    let refused = reader
        .execute("INSERT INTO notes (body) VALUES ('x')", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&refused), "25006");

    // The database itself: the primary, except transactions declared read-only.
    let mut app = proxy.connect("postgres").await.unwrap();
    assert!(!in_recovery(&app).await, "postgres runs on the primary");
    app.execute("INSERT INTO notes (body) VALUES ('first')", &[])
        .await
        .unwrap();
    let declared = app
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .unwrap();
    assert!(
        in_recovery(&declared).await,
        "START TRANSACTION READ ONLY goes to a replica"
    );
    declared.commit().await.unwrap();
    let by_default = connect(&format!(
        "{}?options=-c%20default_transaction_read_only%3Don",
        proxy.url("postgres")
    ))
    .await
    .unwrap();
    assert!(
        in_recovery(&by_default).await,
        "default_transaction_read_only goes to a replica"
    );

    let states = host_states(&proxy).await;
    assert_eq!(
        states,
        [
            (primary.address(), "primary".to_owned()),
            (replica.address(), "replica".to_owned())
        ]
    );

    replay_pause_takes_the_replica_out_of_the_rotation(&proxy, &setup, &replica, &reader).await;
}

/// Replay paused while the primary writes: the replica falls behind and leaves the rotation;
/// reads go to the primary (the default fallback) until it has caught up again.
async fn replay_pause_takes_the_replica_out_of_the_rotation(
    proxy: &TestProxy,
    primary: &tokio_postgres::Client,
    replica: &OwnedCluster,
    reader: &tokio_postgres::Client,
) {
    let standby = connect(&replica.cluster().url("postgres")).await.unwrap();
    standby
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    primary
        .batch_execute(
            "INSERT INTO notes (body) SELECT repeat('x', 200) FROM generate_series(1, 2000)",
        )
        .await
        .unwrap();
    let behind = Instant::now();
    let topology = Arc::clone(proxy.ctx.pools.topology());
    wait_until(
        "the paused replica is taken out of the rotation",
        async || topology.usable_replicas().is_empty(),
    )
    .await;
    eprintln!(
        "replica lag detected {:?} after the write",
        behind.elapsed()
    );
    assert!(topology.hosts()[1].lag_bytes.unwrap() > 64 * 1024);
    let exposition = proxy.ctx.telemetry.metrics.encode();
    let lagging = format!(
        "pgsidecar_upstream_replica_lagging{{host=\"{}\"}} 1",
        replica.address()
    );
    assert!(exposition.contains(&lagging), "{exposition}");
    assert!(
        !in_recovery(reader).await,
        "with the replica out, app_ro reads on the primary"
    );
    standby
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    wait_until("the replica comes back once it has caught up", async || {
        topology.usable_replicas() == [1]
    })
    .await;
    assert!(in_recovery(reader).await, "app_ro is back on the replica");
    let rows: i64 = reader
        .query_one("SELECT count(*) FROM notes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 2001, "the replica has replayed every row");
}

/// Every row a writer saw committed is on `new_primary`.
async fn assert_every_row_is_on(new_primary: &OwnedCluster, committed: &[(i32, i32, Instant)]) {
    let new_primary = connect(&new_primary.cluster().url("postgres"))
        .await
        .unwrap();
    let stored: std::collections::HashSet<(i32, i32)> = new_primary
        .query("SELECT writer, n FROM writes", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let lost: Vec<_> = committed
        .iter()
        .filter(|(writer, n, _)| !stored.contains(&(*writer, *n)))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged rows missing on the new primary: {lost:?}"
    );
}

/// One writer of the failover test: inserts (writer, n) rows one transaction at a time through
/// the proxy, reconnecting after an error, and records what was committed and what failed.
async fn write_until(
    proxy_url: String,
    writer: i32,
    committed: Arc<Mutex<Vec<(i32, i32, Instant)>>>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicU64>,
) {
    let mut n = 0;
    let mut client = None;
    while stop.load(Ordering::Relaxed) == 0 {
        if client.is_none() {
            match connect(&proxy_url).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    failures.lock().await.push(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let c = client.as_ref().expect("connected above");
        n += 1;
        match c
            .execute(
                "INSERT INTO writes (writer, n) VALUES ($1, $2)",
                &[&writer, &n],
            )
            .await
        {
            Ok(_) => committed.lock().await.push((writer, n, Instant::now())),
            Err(e) => {
                // A driver that had a request pipelined behind the failed one (tokio-postgres
                // closes a statement without waiting) sees the connection closed instead.
                let failure = match e.as_db_error() {
                    Some(db) => format!("{}: {}", db.code().code(), db.message()),
                    None if e.is_closed() => "connection closed".to_owned(),
                    None => format!("{e:?}"),
                };
                failures.lock().await.push(failure);
                client = None;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_takes_the_writes_without_a_restart() {
    let primary = OwnedCluster::primary();
    let replica = OwnedCluster::replica_of(primary.cluster().port());
    connect(&primary.cluster().url("postgres"))
        .await
        .unwrap()
        .batch_execute("CREATE TABLE writes (writer int, n int, PRIMARY KEY (writer, n))")
        .await
        .unwrap();
    let proxy = routed_proxy(&primary, &replica).await;
    let (listening, heard) = crate::notify::listener(&proxy.url("postgres")).await;
    listening.batch_execute("LISTEN events").await.unwrap();

    let committed = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..10)
        .map(|writer| {
            tokio::spawn(write_until(
                proxy.url("postgres"),
                writer,
                Arc::clone(&committed),
                Arc::clone(&failures),
                Arc::clone(&stop),
            ))
        })
        .collect();
    wait_until("the writers have committed 200 rows", async || {
        committed.lock().await.len() >= 200
    })
    .await;

    let stopping = Instant::now();
    primary.cluster().stop().unwrap();
    // Nothing can commit from here until the promotion: the first commit after this instant
    // is the first write on the new primary.
    let stopped = Instant::now();
    let before = committed.lock().await.len();
    replica.cluster().promote().unwrap();
    let promoted = stopping.elapsed();
    wait_until("writes land again", async || {
        committed.lock().await.len() > before + 10
    })
    .await;
    let first_write = committed
        .lock()
        .await
        .iter()
        .map(|(_, _, at)| *at)
        .filter(|at| *at > stopped)
        .min()
        .expect("writes after the promotion");
    let resumed = first_write - stopping;
    let after_promotion = first_write.saturating_duration_since(stopping + promoted);
    let topology = Arc::clone(proxy.ctx.pools.topology());
    wait_until("the promoted replica is the primary", async || {
        topology.primary() == Some(1)
    })
    .await;
    wait_until("200 more rows", async || {
        committed.lock().await.len() > before + 200
    })
    .await;
    stop.store(1, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let failures = failures.lock().await.clone();
    eprintln!(
        "failover: primary stopped and replica promoted in {promoted:?}; first write through the sidecar {resumed:?} after the stop began ({after_promotion:?} after the promotion finished); failed transactions: {failures:?}"
    );
    assert!(
        failures.len() <= 10,
        "only transactions in flight at the stop may fail: {failures:?}"
    );
    for failure in &failures {
        // 57P01 is the server's own shutdown error, class 08 the sidecar's connection errors,
        // 25006 a write that reached a host that had just become read-only.
        assert!(
            ["57P01:", "08", "25006:", "connection closed"]
                .iter()
                .any(|kind| failure.starts_with(kind)),
            "a failed transaction gets a connection or read-only error: {failures:?}"
        );
    }
    assert_every_row_is_on(&replica, &committed.lock().await).await;
    let hosts = topology.hosts();
    assert_eq!(hosts[0].state.name(), "down");

    // The listening connection follows the primary too: a client that listened before the
    // failover hears notifications sent on the new primary (those sent while the listener
    // reconnects are not seen, as by any client that reconnects).
    let notifier = proxy.connect("postgres").await.unwrap();
    notify_until_heard(&notifier, &heard, "after failover").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_promoted_beside_a_live_primary_wins_and_the_old_primary_is_fenced() {
    let primary = OwnedCluster::primary();
    let replica = OwnedCluster::replica_of(primary.cluster().port());
    let proxy = routed_proxy(&primary, &replica).await;
    let (listening, heard) = crate::notify::listener(&proxy.url("postgres")).await;
    listening.batch_execute("LISTEN events").await.unwrap();

    // Split brain: both hosts now accept writes; the promoted one is on a newer timeline.
    replica.cluster().promote().unwrap();
    let topology = Arc::clone(proxy.ctx.pools.topology());
    wait_until("the promoted replica is the primary", async || {
        topology.primary() == Some(1)
    })
    .await;
    assert_eq!(topology.state(0).name(), "fenced");
    assert_eq!(
        host_states(&proxy).await[0],
        (primary.address(), "fenced".to_owned())
    );

    let app = proxy.connect("postgres").await.unwrap();
    let port: i32 = app
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        port,
        i32::from(replica.cluster().port()),
        "writes go to the newer timeline, never to the old primary"
    );
    let reader = proxy.connect("app_ro").await.unwrap();
    let port: i32 = reader
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        port,
        i32::from(replica.cluster().port()),
        "with no replica left, reads fall back to the primary, not to the fenced host"
    );

    // The listening connection moves to the new primary although the old one still answers.
    notify_until_heard(&app, &heard, "on the new timeline").await;
}
