//! Logins that do not wait for a server connection: a pool that has learned what its server
//! reports greets clients at once, exactly as the server would, and reports a server that stopped
//! taking the client at its first query.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::StreamExt;
use pgsidecar::config::{Config, Overrides};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::support::{
    TestProxy, cluster, connect, direct, fresh_database, overrides, sqlstate, start_proxy_with,
};

/// The ParameterStatus messages of one login with `params`, read off the wire; the password is
/// used if the server asks for SCRAM.
async fn reported_at_login(
    port: u16,
    params: &[(&str, &str)],
    password: &str,
) -> BTreeMap<String, String> {
    let mut socket = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut out = BytesMut::new();
    frontend::startup_message(params.iter().copied(), &mut out).unwrap();
    socket.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    let mut scram = None;
    let mut reported = BTreeMap::new();
    loop {
        let message = loop {
            if let Some(message) = backend::Message::parse(&mut buf).unwrap() {
                break message;
            }
            assert_ne!(socket.read_buf(&mut buf).await.unwrap(), 0, "server closed");
        };
        out.clear();
        match message {
            backend::Message::AuthenticationSasl(_) => {
                let client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response("SCRAM-SHA-256", client.message(), &mut out)
                    .unwrap();
                scram = Some(client);
            }
            backend::Message::AuthenticationSaslContinue(body) => {
                let client = scram.as_mut().unwrap();
                client.update(body.data()).unwrap();
                frontend::sasl_response(client.message(), &mut out).unwrap();
            }
            backend::Message::ParameterStatus(body) => {
                reported.insert(
                    body.name().unwrap().to_owned(),
                    body.value().unwrap().to_owned(),
                );
            }
            backend::Message::ErrorResponse(_) => panic!("login refused"),
            backend::Message::ReadyForQuery(_) => break,
            _ => {}
        }
        if !out.is_empty() {
            socket.write_all(&out).await.unwrap();
        }
    }
    frontend::terminate(&mut out);
    socket.write_all(&out).await.unwrap();
    reported
}

/// Connects through the proxy, collecting the NOTICE messages the client receives.
async fn connect_with_notices(url: &str) -> (Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notice(notice) = message {
                let _ = tx.send(notice.message().to_owned());
            }
        }
    });
    (client, rx)
}

/// Waits until `count` sessions of `db` wait on an advisory lock.
async fn wait_for_lock_waiters(db: &str, count: i64) {
    let admin = direct("postgres").await;
    loop {
        let waiting: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event = 'advisory'",
                &[&db],
            )
            .await
            .unwrap()
            .get(0);
        if waiting >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs one query through the proxy at `url`, so that its pool logs in to the server once and
/// learns what it reports.
async fn learn(url: &str) {
    connect(url)
        .await
        .unwrap()
        .execute("SELECT 1", &[])
        .await
        .unwrap();
}

/// A pool whose every server connection runs a query blocked on advisory lock 7.
struct Saturated {
    /// The direct session holding the lock.
    locker: Client,
    holders: Vec<tokio::task::JoinHandle<()>>,
}

impl Saturated {
    /// Lets go of the lock and waits for the blocked queries to finish.
    async fn release(self) {
        self.locker
            .execute("SELECT pg_advisory_unlock(7)", &[])
            .await
            .unwrap();
        for holder in self.holders {
            holder.await.unwrap();
        }
    }
}

/// Fills every server connection of a pool with a query blocked on advisory lock 7.
async fn saturate(proxy: &TestProxy, db: &str, size: usize) -> Saturated {
    let locker = direct(db).await;
    locker
        .execute("SELECT pg_advisory_lock(7)", &[])
        .await
        .unwrap();
    let mut holders = Vec::new();
    for _ in 0..size {
        let client = proxy.connect(db).await.unwrap();
        holders.push(tokio::spawn(async move {
            client
                .execute("SELECT pg_advisory_xact_lock(7)", &[])
                .await
                .unwrap();
        }));
    }
    wait_for_lock_waiters(db, i64::try_from(size).unwrap()).await;
    Saturated { locker, holders }
}

/// `pgsidecar_pool_wait_notices_total` of the proxy's only pool.
fn wait_notices(proxy: &TestProxy) -> u64 {
    let exposition = proxy.ctx.telemetry.metrics.encode();
    exposition
        .lines()
        .find_map(|line| line.strip_prefix("pgsidecar_pool_wait_notices_total{"))
        .and_then(|rest| rest.rsplit(' ').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_under_a_saturated_pool_completes_and_its_first_query_waits_with_a_notice() {
    let db = fresh_database().await;
    let mut settings = overrides("transaction", 2);
    settings.acquire_timeout = Some("60s".into());
    settings.query_wait_notify = Some("100ms".into());
    let proxy = start_proxy_with(&settings, None).await;
    learn(&proxy.url(&db)).await;
    let saturated = saturate(&proxy, &db, 2).await;
    // The holders may have waited for their connections to open.
    let notified_before = wait_notices(&proxy);

    let started = Instant::now();
    let (client, mut notices) = tokio::time::timeout(
        Duration::from_secs(30),
        connect_with_notices(&proxy.url(&db)),
    )
    .await
    .expect("the login does not wait for the busy pool");
    eprintln!("login under a saturated pool took {:?}", started.elapsed());
    let query = tokio::spawn(async move {
        client
            .query_one("SELECT 7", &[])
            .await
            .map(|r| r.get::<_, i32>(0))
    });
    let notice = notices.recv().await.expect("a notice while queued");
    assert!(
        notice.contains("no server connection free") && notice.contains("queued"),
        "{notice}"
    );
    assert!(
        !query.is_finished(),
        "both server connections are still busy"
    );
    assert_eq!(
        wait_notices(&proxy) - notified_before,
        1,
        "counted once for the queued client"
    );

    saturated.release().await;
    assert_eq!(query.await.unwrap().unwrap(), 7);
    assert!(notices.try_recv().is_err(), "one notice per wait");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_log_in_at_once_to_a_busy_pool_of_five() {
    let db = fresh_database().await;
    let mut settings = overrides("transaction", 5);
    settings.acquire_timeout = Some("60s".into());
    let proxy = start_proxy_with(&settings, None).await;
    learn(&proxy.url(&db)).await;
    let saturated = saturate(&proxy, &db, 5).await;

    let started = Instant::now();
    let logins = (0..1000).map(|_| {
        let url = proxy.url(&db);
        tokio::spawn(async move { connect(&url).await })
    });
    let clients = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(logins))
        .await
        .expect("every login completes while the pool is busy");
    eprintln!(
        "1,000 logins to a busy pool of 5 took {:?}",
        started.elapsed()
    );
    let clients: Vec<Client> = clients
        .into_iter()
        .map(|c| c.unwrap().expect("login"))
        .collect();
    assert_eq!(clients.len(), 1000);
    assert_eq!(
        proxy.ctx.pools.all()[0].usage().size,
        5,
        "no extra server connection"
    );

    saturated.release().await;
    let value: i32 = clients[999]
        .query_one("SELECT 3", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(value, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_greeting_without_a_server_matches_a_direct_login() {
    let db = fresh_database().await;
    let mut settings = overrides("transaction", 1);
    settings.acquire_timeout = Some("60s".into());
    let proxy = start_proxy_with(&settings, None).await;
    let asked = [
        ("user", "postgres"),
        ("database", db.as_str()),
        ("application_name", "greeting-check"),
        ("DateStyle", "ISO"),
        ("TimeZone", "Europe/Paris"),
        ("IntervalStyle", "iso_8601"),
        ("client_encoding", "UTF8"),
        ("extra_float_digits", "3"),
    ];
    let plain = [("user", "postgres"), ("database", db.as_str())];
    let direct_asked = reported_at_login(cluster().port(), &asked, "postgres").await;
    let direct_plain = reported_at_login(cluster().port(), &plain, "postgres").await;
    assert_eq!(
        direct_asked["DateStyle"], "ISO, MDY",
        "the server spells it its own way"
    );

    // The first login of the pool asks the server; later ones are answered from what it said.
    assert_eq!(
        reported_at_login(proxy.port, &asked, "").await,
        direct_asked
    );
    let saturated = saturate(&proxy, &db, 1).await;
    assert_eq!(
        reported_at_login(proxy.port, &asked, "").await,
        direct_asked
    );
    assert_eq!(
        reported_at_login(proxy.port, &plain, "").await,
        direct_plain
    );
    let mut another_name = asked;
    another_name[2] = ("application_name", "a-name-never-seen");
    let reported = reported_at_login(proxy.port, &another_name, "").await;
    assert_eq!(reported["application_name"], "a-name-never-seen");
    saturated.release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_server_login_refreshes_what_clients_are_told() {
    let db = fresh_database().await;
    let proxy = start_proxy_with(&overrides("transaction", 1), None).await;
    let plain = [("user", "postgres"), ("database", db.as_str())];
    let client = proxy.connect(&db).await.unwrap();
    client.execute("SELECT 1", &[]).await.unwrap();
    let before = reported_at_login(proxy.port, &plain, "").await;
    assert_ne!(before["TimeZone"], "Asia/Tokyo");
    let admin = direct("postgres").await;
    admin
        .batch_execute(&format!("ALTER DATABASE {db} SET TimeZone = 'Asia/Tokyo'"))
        .await
        .unwrap();
    terminate_backends(&db).await;
    // The pool replaces its dead connection: that login shows the new default.
    let tz: String = proxy
        .connect(&db)
        .await
        .unwrap()
        .query_one("SELECT current_setting('TimeZone')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tz, "Asia/Tokyo");
    let after = reported_at_login(proxy.port, &plain, "").await;
    assert_eq!(after["TimeZone"], "Asia/Tokyo");
}

/// Ends every server session of `db` but the caller's, and waits until they are gone (a
/// terminated backend exits a moment after the signal).
async fn terminate_backends(db: &str) {
    let admin = direct("postgres").await;
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db],
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                &[&db],
            )
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "terminated backends of {db} stay"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_that_never_reached_its_server_reports_the_server_error_at_login() {
    let proxy = start_proxy_with(&overrides("transaction", 2), None).await;
    let err = proxy.connect("no_such_database_here").await.unwrap_err();
    assert_eq!(sqlstate(&err), "3D000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_database_is_reported_at_the_first_query_with_the_server_sqlstate() {
    let db = fresh_database().await;
    let proxy = start_proxy_with(&overrides("transaction", 2), None).await;
    learn(&proxy.url(&db)).await;
    direct("postgres")
        .await
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await
        .unwrap();
    let client = proxy
        .connect(&db)
        .await
        .expect("the pool greets from what it learned");
    let err = client.execute("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "3D000", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_lost_login_is_reported_at_the_first_query() {
    let db = fresh_database().await;
    let role = format!("greet_{db}");
    let admin = direct("postgres").await;
    admin
        .batch_execute(&format!("CREATE ROLE {role} LOGIN PASSWORD 'rolepass'"))
        .await
        .unwrap();
    let mut settings = overrides("transaction", 1);
    settings.upstream = Some(format!("postgres://127.0.0.1:{}", cluster().port()));
    let file = format!("[users.{role}]\nserver_password = \"rolepass\"\n");
    let proxy = start_proxy_with(&settings, Some(&file)).await;
    let url = format!("postgres://{role}@127.0.0.1:{}/{db}", proxy.port);
    learn(&url).await;
    admin
        .batch_execute(&format!("ALTER ROLE {role} NOLOGIN"))
        .await
        .unwrap();
    terminate_backends(&db).await;
    let client = connect(&url)
        .await
        .expect("greeted from what the pool learned");
    let err = client.execute("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "28000", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_went_away_is_reported_at_the_first_query() {
    let db = fresh_database().await;
    let settings = overrides("transaction", 1);
    let proxy = start_proxy_with(&settings, None).await;
    learn(&proxy.url(&db)).await;
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = unused.local_addr().unwrap().port();
    drop(unused);
    let moved = Overrides {
        upstream: Some(format!(
            "postgres://postgres:postgres@127.0.0.1:{dead_port}"
        )),
        ..settings
    };
    proxy.ctx.reload(Config::load(None, &moved).unwrap());
    terminate_backends(&db).await;
    let client = proxy
        .connect(&db)
        .await
        .expect("greeted from what the pool learned");
    let err = client.execute("SELECT 1", &[]).await.unwrap_err();
    let code = sqlstate(&err);
    assert!(code.starts_with("08"), "{code}: {err}");
}
