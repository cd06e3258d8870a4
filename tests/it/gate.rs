//! The gate: pauses under load lose nothing, stuck transactions fail a pause (or are ended when
//! asked), a forgotten pause lifts itself, and SIGTERM drains at transaction boundaries.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pgsidecar::gate::{PauseError, PauseOptions, Scope};
use tokio_postgres::Client;

use crate::support::{
    ProxyProcess, TestProxy, connect, direct, fresh_database, http_get, overrides, sqlstate,
    start_proxy_with, wait_until,
};

/// The admin token the test proxies require for the gate endpoints.
const TOKEN: &str = "test-admin-token-0123456789";

async fn proxy(pool_size: usize) -> TestProxy {
    let mut o = overrides("transaction", pool_size);
    o.admin_users = Some("postgres".into());
    o.admin_token = Some(TOKEN.into());
    start_proxy_with(&o, None).await
}

fn options(db: &str, deadline_ms: u64, cancel_stragglers: bool) -> PauseOptions {
    PauseOptions {
        scope: Scope::Database(db.to_owned()),
        deadline: Duration::from_millis(deadline_ms),
        max_hold: Duration::from_secs(30),
        cancel_stragglers,
    }
}

/// Clients running short write transactions until `stop`; returns (committed, errors).
pub(crate) fn writers(
    clients: Vec<Client>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(u64, Vec<String>)>> {
    clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let stop = Arc::clone(stop);
            tokio::spawn(async move {
                let mut committed = 0;
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let sql = format!(
                        "BEGIN; INSERT INTO ledger (writer) VALUES ({i}); SELECT pg_sleep(0.002); COMMIT"
                    );
                    match client.batch_execute(&sql).await {
                        Ok(()) => committed += 1,
                        Err(e) => {
                            errors.push(
                                e.as_db_error()
                                    .map_or_else(|| e.to_string(), |d| d.message().to_owned()),
                            );
                            break;
                        }
                    }
                }
                (committed, errors)
            })
        })
        .collect()
}

/// Stops the writers and returns how many transactions they committed, asserting that none of
/// them saw an error.
pub(crate) async fn stop_writers(
    tasks: Vec<tokio::task::JoinHandle<(u64, Vec<String>)>>,
    stop: &AtomicBool,
) -> u64 {
    stop.store(true, Ordering::Relaxed);
    let mut committed = 0;
    for task in tasks {
        let (n, errors) = task.await.unwrap();
        assert!(errors.is_empty(), "a client saw an error: {errors:?}");
        committed += n;
    }
    committed
}

pub(crate) async fn ledger(db: &str) -> i64 {
    let admin = direct(db).await;
    admin
        .batch_execute("CREATE TABLE IF NOT EXISTS ledger (id bigserial PRIMARY KEY, writer int)")
        .await
        .unwrap();
    admin
        .query_one("SELECT count(*) FROM ledger", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pauses_under_load_lose_no_transaction() {
    let db = fresh_database().await;
    ledger(&db).await;
    let proxy = proxy(5).await;
    let mut clients = Vec::new();
    for _ in 0..30 {
        clients.push(proxy.connect(&db).await.unwrap());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = writers(clients, &stop);
    wait_until("the writers are committing", async || {
        ledger(&db).await >= 30
    })
    .await;
    let mut latencies = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let report = proxy.ctx.pause(&options(&db, 5000, false)).await.unwrap();
        latencies.push(started.elapsed());
        assert!(!report.already_paused);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(proxy.ctx.gate.resume(&Scope::Database(db.clone())));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let committed = stop_writers(tasks, &stop).await;
    assert!(
        committed > 100,
        "too little traffic to prove anything: {committed}"
    );
    assert_eq!(ledger(&db).await, i64::try_from(committed).unwrap());
    latencies.sort();
    eprintln!(
        "pause latency over 20 pauses with 30 writers: median {:?}, max {:?}",
        latencies[10], latencies[19]
    );
}

async fn stuck_transaction(proxy: &TestProxy, db: &str) -> Client {
    let stuck = connect(&format!("{}?application_name=stuck-app", proxy.url(db)))
        .await
        .unwrap();
    stuck
        .batch_execute("BEGIN; INSERT INTO ledger (writer) VALUES (-1)")
        .await
        .unwrap();
    stuck
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_transaction_fails_the_pause_and_traffic_resumes() {
    let db = fresh_database().await;
    ledger(&db).await;
    let proxy = proxy(5).await;
    let stuck = stuck_transaction(&proxy, &db).await;
    let other = proxy.connect(&db).await.unwrap();
    let err = proxy
        .ctx
        .pause(&options(&db, 300, false))
        .await
        .unwrap_err();
    let PauseError::Deadline { stragglers, .. } = err else {
        panic!("{err}")
    };
    assert_eq!(stragglers.len(), 1);
    assert_eq!(stragglers[0].application_name, "stuck-app");
    assert!(stragglers[0].server_pid.is_some());
    assert!(proxy.ctx.gate.status().paused.is_empty());
    // Traffic flows again at once.
    tokio::time::timeout(Duration::from_secs(2), other.simple_query("SELECT 1"))
        .await
        .expect("not paused any more")
        .unwrap();
    // The stuck transaction itself was left alone.
    stuck.simple_query("COMMIT").await.unwrap();
    assert_eq!(ledger(&db).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stragglers_ends_the_stuck_transaction_and_the_pause_holds() {
    let db = fresh_database().await;
    ledger(&db).await;
    let proxy = proxy(5).await;
    let stuck = stuck_transaction(&proxy, &db).await;
    let report = proxy.ctx.pause(&options(&db, 300, true)).await.unwrap();
    assert_eq!(report.terminated, 1);
    let err = stuck.simple_query("COMMIT").await.unwrap_err();
    assert!(
        err.code().is_some_and(|c| c.code() == "57P01") || err.is_closed(),
        "{err:?}"
    );
    assert!(proxy.ctx.gate.resume(&Scope::Database(db.clone())));
    assert_eq!(
        ledger(&db).await,
        0,
        "the stuck transaction was rolled back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_lifts_itself_after_its_maximum_hold() {
    let db = fresh_database().await;
    let proxy = proxy(2).await;
    let client = proxy.connect(&db).await.unwrap();
    let mut options = options(&db, 1000, false);
    options.max_hold = Duration::from_millis(400);
    proxy.ctx.pause(&options).await.unwrap();
    let started = Instant::now();
    client.simple_query("SELECT 1").await.unwrap();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert!(proxy.ctx.gate.status().paused.is_empty());
}

async fn post(addr: std::net::SocketAddr, path: &str, body: &str) -> (u16, serde_json::Value) {
    post_as(addr, path, body, Some(TOKEN)).await
}

/// `POST` with `token` as the bearer token (none: no Authorization header).
async fn post_as(
    addr: std::net::SocketAddr,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let (code, reply) = pgsidecar::admin::client::request(addr, "POST", path, body, token)
        .await
        .unwrap();
    (
        code,
        serde_json::from_str(&reply).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_endpoints_need_the_admin_token_and_respect_the_caps() {
    let db = fresh_database().await;
    let proxy = proxy(2).await;
    let admin = proxy.admin().await;
    let client = proxy.connect(&db).await.unwrap();
    let body = r#"{"deadline": "1s", "max_hold": "86400s", "cancel_stragglers": true}"#;
    for (token, reason) in [
        (None, "missing_token"),
        (Some("wrong-token-0123456789"), "wrong_token"),
    ] {
        let (code, reply) = post_as(admin.addr, "/v1/gate/pause", body, token).await;
        assert_eq!(code, 401, "{reply}");
        let (code, _) = post_as(admin.addr, "/v1/gate/drain", "", token).await;
        assert_eq!(code, 401);
        let metrics = http_get(admin.addr, "/metrics").await.body;
        let line = format!(
            r#"pgsidecar_control_requests_refused_total{{origin="admin_http",reason="{reason}"}} 2"#
        );
        assert!(metrics.contains(&line), "{metrics}");
    }
    assert!(proxy.ctx.gate.status().paused.is_empty());
    assert_eq!(proxy.ctx.gate.status().sidecar, "open");
    client.simple_query("SELECT 1").await.unwrap();
    // With the token, a hold beyond max_pause_hold (default 5m) is refused, not shortened.
    let (code, reply) = post(admin.addr, "/v1/gate/pause", body).await;
    assert_eq!(code, 400, "{reply}");
    let error = reply["error"].as_str().unwrap();
    assert!(error.contains("max_pause_hold"), "{error}");
    let (code, reply) = post(admin.addr, "/v1/gate/pause", r#"{"deadline": "1h"}"#).await;
    assert_eq!(code, 400, "{reply}");
    assert!(proxy.ctx.gate.status().paused.is_empty());
    // Reads stay open.
    assert_eq!(http_get(admin.addr, "/healthz").await.status, 200);
    assert_eq!(http_get(admin.addr, "/v1/status").await.status, 200);

    // A sidecar without a token has its gate endpoints off.
    let untokened = start_proxy_with(&overrides("transaction", 2), None).await;
    let admin = untokened.admin().await;
    let (code, reply) = post_as(admin.addr, "/v1/gate/pause", "", Some(TOKEN)).await;
    assert_eq!(code, 403, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("admin_token_file"),
        "{reply}"
    );
    assert!(untokened.ctx.gate.status().paused.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_console_controls() {
    let db = fresh_database().await;
    ledger(&db).await;
    let proxy = proxy(2).await;
    let admin = proxy.admin().await;
    let body = format!(r#"{{"database": "{db}", "deadline": "2s", "max_hold": "20s"}}"#);
    let (code, reply) = post(admin.addr, "/v1/gate/pause", &body).await;
    assert_eq!(code, 200, "{reply}");
    let status: serde_json::Value =
        serde_json::from_str(&http_get(admin.addr, "/v1/status").await.body).unwrap();
    assert_eq!(status["gate"]["paused"][&db], "paused");
    // A pause held too long is alerted on from this gauge.
    let metrics = http_get(admin.addr, "/metrics").await.body;
    assert!(
        metrics.contains("\npgsidecar_gate_paused_scopes 1\n"),
        "{metrics}"
    );
    let (code, reply) = post(
        admin.addr,
        "/v1/gate/resume",
        &format!(r#"{{"database": "{db}"}}"#),
    )
    .await;
    assert_eq!(
        (code, &reply["resumed"]),
        (200, &serde_json::Value::Bool(true))
    );
    let (code, _) = post(admin.addr, "/v1/gate/pause", r#"{"deadline": "soon"}"#).await;
    assert_eq!(code, 400);

    let stuck = stuck_transaction(&proxy, &db).await;
    let (code, reply) = post(admin.addr, "/v1/gate/pause", r#"{"deadline": "200ms"}"#).await;
    assert_eq!(code, 409, "{reply}");
    assert_eq!(reply["stragglers"][0]["application_name"], "stuck-app");

    let console = proxy.connect("pgsidecar").await.unwrap();
    let err = console.simple_query("PAUSE").await.unwrap_err();
    assert_eq!(sqlstate(&err), "55000");
    let message = err.as_db_error().unwrap().message();
    assert!(message.contains("stuck-app"), "{message}");
    drop(stuck);
    // The stuck client is gone: the pause takes hold now.
    let mut paused = false;
    for _ in 0..50 {
        if console.simple_query(&format!("PAUSE {db}")).await.is_ok() {
            paused = true;
            break;
        }
    }
    assert!(paused);
    console.simple_query(&format!("RESUME {db}")).await.unwrap();
    let err = console.simple_query("RESUME").await.unwrap_err();
    assert_eq!(sqlstate(&err), "55000");

    assert_eq!(http_get(admin.addr, "/readyz").await.status, 200);
    let (code, reply) = post(admin.addr, "/v1/gate/drain", r#"{"deadline": "5s"}"#).await;
    assert_eq!(code, 202, "{reply}");
    let ready = http_get(admin.addr, "/readyz").await;
    assert_eq!((ready.status, ready.body.as_str()), (503, "draining\n"));
    let (code, _) = post(admin.addr, "/v1/gate/pause", "").await;
    assert_eq!(code, 503, "a draining sidecar cannot be paused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_at_transaction_boundaries() {
    let db = fresh_database().await;
    ledger(&db).await;
    let mut sidecar = ProxyProcess::spawn(&["--pool-size", "4", "--drain-timeout", "5s"]);
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(sidecar.connect(&db).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = writers(clients, &stop);
    wait_until("the writers are committing", async || {
        ledger(&db).await >= 10
    })
    .await;
    let pid = i32::try_from(sidecar.child.id().unwrap()).unwrap();
    let signalled = Instant::now();
    assert_eq!(send_signal(pid, "TERM"), 0);
    let status = tokio::time::timeout(Duration::from_secs(10), sidecar.child.wait())
        .await
        .expect("the sidecar exits within its drain deadline")
        .unwrap();
    let took = signalled.elapsed();
    assert!(status.success(), "{status:?}");
    stop.store(true, Ordering::Relaxed);
    let committed = AtomicU64::new(0);
    for task in tasks {
        let (n, errors) = task.await.unwrap();
        committed.fetch_add(n, Ordering::Relaxed);
        // Each client learns at a transaction boundary that the sidecar is going away.
        for e in &errors {
            assert!(
                e.contains("pgsidecar is draining") || e.contains("closed"),
                "{e}"
            );
        }
    }
    let committed = i64::try_from(committed.into_inner()).unwrap();
    assert!(committed > 0);
    assert_eq!(
        ledger(&db).await,
        committed,
        "a committed transaction was lost"
    );
    assert!(took < Duration::from_secs(6), "{took:?}");
}

/// Sends a signal with kill(1), which every test machine has.
pub(crate) fn send_signal(pid: i32, signal: &str) -> i32 {
    std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap()
        .code()
        .unwrap_or(-1)
}

async fn pool_status(admin_port: u16) -> Option<serde_json::Value> {
    let addr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    if tokio::net::TcpStream::connect(addr).await.is_err() {
        return None;
    }
    let status: serde_json::Value =
        serde_json::from_str(&http_get(addr, "/v1/status").await.body).ok()?;
    status["pools"].get(0).cloned()
}

/// Waits until the pool's status satisfies `done`.
async fn wait_for_pool(admin_port: u16, what: &str, done: impl Fn(&serde_json::Value) -> bool) {
    wait_until(what, async || {
        pool_status(admin_port).await.as_ref().is_some_and(&done)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_resizes_the_pool_under_load() {
    let db = fresh_database().await;
    ledger(&db).await;
    let config =
        std::env::temp_dir().join(format!("pgsidecar-it-reload-{}.toml", std::process::id()));
    std::fs::write(&config, "pool_size = 2\n").unwrap();
    let admin_port = pgsidecar::dev::free_port().unwrap();
    let sidecar = ProxyProcess::spawn(&[
        "--config",
        config.to_str().unwrap(),
        "--admin-listen",
        &format!("127.0.0.1:{admin_port}"),
    ]);
    let mut clients = Vec::new();
    for _ in 0..12 {
        clients.push(sidecar.connect(&db).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = writers(clients, &stop);
    let pid = i32::try_from(sidecar.child.id().unwrap()).unwrap();
    wait_for_pool(admin_port, "two busy connections", |p| {
        p["pool_size"] == 2 && p["server_connections"] == 2
    })
    .await;
    std::fs::write(&config, "pool_size = 6\n").unwrap();
    assert_eq!(send_signal(pid, "HUP"), 0);
    wait_for_pool(admin_port, "more than two connections", |p| {
        p["pool_size"] == 6 && p["server_connections"].as_u64() > Some(2)
    })
    .await;
    std::fs::write(&config, "pool_size = 3\n").unwrap();
    assert_eq!(send_signal(pid, "HUP"), 0);
    wait_for_pool(admin_port, "three connections at most", |p| {
        p["pool_size"] == 3 && p["server_connections"].as_u64() <= Some(3)
    })
    .await;
    // A file that does not validate is refused (and counted); the running size stays.
    std::fs::write(&config, "pool_size = 0\n").unwrap();
    assert_eq!(send_signal(pid, "HUP"), 0);
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    wait_until("the refused reload to be counted", async || {
        http_get(admin, "/metrics")
            .await
            .body
            .contains("pgsidecar_config_reloads_total{result=\"refused\"} 1\n")
    })
    .await;
    assert_eq!(pool_status(admin_port).await.unwrap()["pool_size"], 3);
    let committed = stop_writers(tasks, &stop).await;
    assert_eq!(ledger(&db).await, i64::try_from(committed).unwrap());
    let _ = std::fs::remove_file(&config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_by_console_and_admin_endpoint_reads_the_file_again() {
    let db = fresh_database().await;
    let mut o = overrides("transaction", 2);
    o.pool_size = None;
    o.admin_users = Some("postgres".into());
    o.admin_token = Some(TOKEN.into());
    let proxy = start_proxy_with(&o, Some("pool_size = 2\n")).await;
    let path = proxy.config_path.clone().unwrap();
    let admin = proxy.admin().await;
    let admin_port = admin.addr.port();
    let app = proxy.connect(&db).await.unwrap();
    app.simple_query("SELECT 1").await.unwrap();
    let pool_size = || async { pool_status(admin_port).await.unwrap()["pool_size"].clone() };
    assert_eq!(pool_size().await, 2);

    // The console's RELOAD, for admin users.
    let console = connect(&proxy.url("pgsidecar")).await.unwrap();
    std::fs::write(&path, "pool_size = 5\n").unwrap();
    console.simple_query("RELOAD").await.unwrap();
    assert_eq!(pool_size().await, 5);

    // The HTTP endpoint changes traffic, so it needs the admin token.
    std::fs::write(&path, "pool_size = 3\n").unwrap();
    let (code, _) = post_as(admin.addr, "/v1/reload", "", None).await;
    assert_eq!(code, 401);
    assert_eq!(pool_size().await, 5);
    let (code, reply) = post(admin.addr, "/v1/reload", "").await;
    assert_eq!(code, 200, "{reply}");
    assert_eq!(reply["reloaded"], true);
    // Keys fixed by flags or environment at start are named: the file cannot change them.
    let pinned = reply["pinned_by_flags_or_environment"].as_array().unwrap();
    assert!(pinned.contains(&"pool_mode".into()), "{reply}");
    assert!(pinned.contains(&"upstream".into()), "{reply}");
    assert!(!pinned.contains(&"pool_size".into()), "{reply}");
    assert_eq!(pool_size().await, 3);

    // A file that does not validate is refused by both, with the reason; the size stays.
    std::fs::write(&path, "pool_size = 0\n").unwrap();
    let error = console.simple_query("RELOAD").await.unwrap_err();
    let error = error.as_db_error().expect("a server error");
    assert_eq!(error.code().code(), "F0000");
    assert!(error.message().contains("pool_size"), "{}", error.message());
    let (code, reply) = post(admin.addr, "/v1/reload", "").await;
    assert_eq!(code, 422, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("pool_size"),
        "{reply}"
    );
    assert_eq!(pool_size().await, 3);
    let metrics = http_get(admin.addr, "/metrics").await.body;
    for line in [
        "pgsidecar_config_reloads_total{result=\"applied\"} 2\n",
        "pgsidecar_config_reloads_total{result=\"refused\"} 2\n",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    app.simple_query("SELECT 1").await.unwrap();
    let _ = std::fs::remove_file(&path);
}
