//! The fleet: three sidecar processes in front of one database, paused and resumed together
//! through the database (LISTEN/NOTIFY), under write load.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use pgsidecar::gate::fleet::{self, FleetError, FleetPause};

use crate::gate::{ledger, send_signal, stop_writers, writers};
use crate::support::{
    ProxyProcess, TestProxy, cluster, connect, direct, fresh_database, overrides, sqlstate,
    start_proxy_with, wait_until,
};

const STALE: Duration = Duration::from_millis(1500);

fn sidecar(db_url: &str, id: &str) -> ProxyProcess {
    ProxyProcess::spawn(&[
        "--pool-size",
        "4",
        "--fleet-url",
        db_url,
        "--fleet-id",
        id,
        "--fleet-heartbeat",
        "200ms",
    ])
}

fn pause(deadline_ms: u64, cancel_stragglers: bool) -> FleetPause {
    FleetPause {
        database: None,
        deadline: Duration::from_millis(deadline_ms),
        max_hold: Duration::from_secs(30),
        cancel_stragglers,
        stale_after: STALE,
    }
}

async fn wait_for_live(url: &str, count: usize) {
    wait_until(
        &format!("{count} live sidecars in the registry"),
        async || {
            fleet::sidecars(url, STALE)
                .await
                .is_ok_and(|rows| rows.iter().filter(|r| r.live).count() == count)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sidecars_pause_and_resume_together_under_load() {
    let db = fresh_database().await;
    ledger(&db).await;
    let url = cluster().url(&db);
    let sidecars: Vec<ProxyProcess> = (1..=3)
        .map(|i| sidecar(&url, &format!("sidecar-{i}")))
        .collect();
    wait_for_live(&url, 3).await;
    let mut clients = Vec::new();
    for sidecar in &sidecars {
        for _ in 0..10 {
            clients.push(sidecar.connect(&db).await);
        }
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
        let report = fleet::fleet_pause(&url, &pause(5000, false)).await.unwrap();
        latencies.push(started.elapsed());
        assert_eq!(report.acks.len(), 3);
        assert!(report.acks.values().all(|a| a.ok));
        tokio::time::sleep(Duration::from_millis(30)).await;
        let resumed = fleet::fleet_resume(&url, None, STALE).await.unwrap();
        assert_eq!(resumed.acks.len(), 3);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let committed = stop_writers(tasks, &stop).await;
    assert!(committed > 100, "{committed}");
    assert_eq!(ledger(&db).await, i64::try_from(committed).unwrap());
    latencies.sort();
    eprintln!(
        "fleet pause latency (3 sidecars, 30 writers, 20 pauses): median {:?}, max {:?}",
        latencies[10], latencies[19]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_transaction_fails_the_fleet_pause_and_a_dead_sidecar_is_excluded() {
    let db = fresh_database().await;
    ledger(&db).await;
    let url = cluster().url(&db);
    let mut sidecars: Vec<ProxyProcess> = (1..=3)
        .map(|i| sidecar(&url, &format!("stuck-{i}")))
        .collect();
    wait_for_live(&url, 3).await;
    let stuck = sidecars[0].connect(&db).await;
    stuck
        .batch_execute("BEGIN; INSERT INTO ledger (writer) VALUES (-1)")
        .await
        .unwrap();
    let other = sidecars[1].connect(&db).await;

    let err = fleet::fleet_pause(&url, &pause(500, false))
        .await
        .unwrap_err();
    let FleetError::PauseFailed { report, .. } = &err else {
        panic!("{err}")
    };
    let failed = &report.acks["stuck-1"];
    assert!(!failed.ok);
    assert_eq!(failed.stragglers.len(), 1);
    assert_eq!(
        failed.stragglers[0].query.as_deref(),
        Some("BEGIN; INSERT INTO ledger (writer) VALUES (-1)")
    );
    // Every sidecar was resumed: traffic flows at once.
    tokio::time::timeout(Duration::from_secs(3), other.simple_query("SELECT 1"))
        .await
        .expect("the fleet resumed")
        .unwrap();

    let report = fleet::fleet_pause(&url, &pause(500, true)).await.unwrap();
    assert!(report.acks.values().all(|a| a.ok));
    fleet::fleet_resume(&url, None, STALE).await.unwrap();
    assert!(stuck.simple_query("COMMIT").await.is_err());
    assert_eq!(ledger(&db).await, 0);

    let pid = i32::try_from(sidecars[2].child.id().unwrap()).unwrap();
    assert_eq!(send_signal(pid, "KILL"), 0);
    let _ = sidecars[2].child.wait().await;
    wait_for_live(&url, 2).await;
    let report = fleet::fleet_pause(&url, &pause(2000, false)).await.unwrap();
    assert_eq!(report.acks.len(), 2);
    assert_eq!(report.stale.len(), 1);
    assert_eq!(report.stale[0].id, "stuck-3");
    fleet::fleet_resume(&url, None, STALE).await.unwrap();

    // The command line does the same.
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
            .arg("gate")
            .args(args)
            .args(["--database-url", &url, "--stale-after", "1500ms"])
            .output()
            .unwrap()
    };
    let status = cli(&["status"]);
    assert!(status.status.success());
    let rows: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 3);
    let paused = cli(&["pause", "--deadline", "2s"]);
    assert!(
        paused.status.success(),
        "{}",
        String::from_utf8_lossy(&paused.stderr)
    );
    let resumed = cli(&["resume"]);
    assert!(resumed.status.success());
}

/// The `pgsidecar_control_requests_refused_total` sample of the fleet for `reason`.
fn refused(proxy: &TestProxy, reason: &str) -> u64 {
    let text = proxy.ctx.telemetry.metrics.encode();
    let prefix =
        format!(r#"pgsidecar_control_requests_refused_total{{origin="fleet",reason="{reason}"}} "#);
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map_or(0, |v| v.trim().parse().unwrap())
}

async fn wait_refused(proxy: &TestProxy, reason: &str, count: u64) {
    for _ in 0..200 {
        if refused(proxy, reason) >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "no {count} refusals for {reason}: {}",
        proxy.ctx.telemetry.metrics.encode()
    );
}

fn role_url(role: &str, db: &str) -> String {
    format!(
        "postgres://{role}:secret@127.0.0.1:{}/{db}",
        cluster().port()
    )
}

/// An app role, a control role and a migrator that is a member of it, with the least privileges
/// the security docs give them; the fleet tables are created by the superuser first.
async fn fleet_roles(db: &str, url: &str) -> (tokio_postgres::Client, String, String, String) {
    let (app, migrator, control) = (
        format!("{db}_app"),
        format!("{db}_migrator"),
        format!("{db}_control"),
    );
    let su = direct(db).await;
    su.batch_execute(&format!(
        "CREATE ROLE {app} LOGIN PASSWORD 'secret';
         CREATE ROLE {migrator} LOGIN PASSWORD 'secret';
         CREATE ROLE {control} NOLOGIN;
         GRANT {control} TO {migrator};"
    ))
    .await
    .unwrap();
    // The tables exist before anyone else acts, owned by the superuser.
    fleet::sidecars(url, STALE).await.unwrap();
    su.batch_execute(&format!(
        "GRANT USAGE ON SCHEMA pgsidecar TO {control}, {app};
         GRANT SELECT ON pgsidecar.sidecars TO {control};
         GRANT SELECT, INSERT, DELETE ON pgsidecar.control_requests TO {control};"
    ))
    .await
    .unwrap();

    (su, app, migrator, control)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_roles_the_operator_allowed_control_the_fleet() {
    let db = fresh_database().await;
    let url = cluster().url(&db);
    let (su, app, migrator, control) = fleet_roles(&db, &url).await;
    let mut o = overrides("transaction", 2);
    o.fleet_url = Some(url.clone());
    o.fleet_id = Some(format!("{db}-sidecar"));
    o.fleet_heartbeat = Some("200ms".into());
    o.fleet_control_role = Some(control.clone());
    let proxy = start_proxy_with(&o, None).await;
    wait_for_live(&url, 1).await;
    let through_proxy = proxy.connect(&db).await.unwrap();

    // A NOTIFY with a request in it, sent through the proxy itself: not a request id.
    through_proxy
        .batch_execute(
            r#"NOTIFY pgsidecar_control, '{"op":"pause","request":"x","database":null,"deadline_ms":1000,"max_hold_ms":86400000,"cancel_stragglers":true}'"#,
        )
        .await
        .unwrap();
    wait_refused(&proxy, "malformed", 1).await;
    // The app's own role: an id that does not exist, then a row it may not write.
    let app_client = connect(&role_url(&app, &db)).await.unwrap();
    app_client
        .batch_execute("SELECT pg_notify('pgsidecar_control', '987654321')")
        .await
        .unwrap();
    wait_refused(&proxy, "unknown_request", 1).await;
    let denied = app_client
        .batch_execute(r#"INSERT INTO pgsidecar.control_requests (request) VALUES ('{"op":"resume","request":"x","database":null}')"#)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&denied), "42501");
    // Even granted INSERT, it cannot write in another role's name, and its own rows are refused.
    su.batch_execute(&format!(
        "GRANT INSERT ON pgsidecar.control_requests TO {app}"
    ))
    .await
    .unwrap();
    let forged = app_client
        .batch_execute(r#"INSERT INTO pgsidecar.control_requests (request, requested_by) VALUES ('{"op":"resume","request":"x","database":null}', 'postgres')"#)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&forged), "23514");
    app_client
        .batch_execute(r#"INSERT INTO pgsidecar.control_requests (request) VALUES ('{"op":"pause","request":"x","database":null,"deadline_ms":1000,"max_hold_ms":60000,"cancel_stragglers":true}')"#)
        .await
        .unwrap();
    let own: i64 = su
        .query_one("SELECT max(id) FROM pgsidecar.control_requests", &[])
        .await
        .unwrap()
        .get(0);
    app_client
        .batch_execute(&format!("SELECT pg_notify('pgsidecar_control', '{own}')"))
        .await
        .unwrap();
    wait_refused(&proxy, "unauthorized_writer", 1).await;
    assert!(proxy.ctx.gate.status().paused.is_empty());
    through_proxy.simple_query("SELECT 1").await.unwrap();

    // A member of the control role pauses and resumes the fleet.
    let migrator_url = role_url(&migrator, &db);
    let report = fleet::fleet_pause(&migrator_url, &pause(2000, false))
        .await
        .unwrap();
    assert!(report.acks.values().all(|a| a.ok), "{report:?}");
    assert!(!proxy.ctx.gate.status().paused.is_empty());
    fleet::fleet_resume(&migrator_url, None, STALE)
        .await
        .unwrap();
    assert!(proxy.ctx.gate.status().paused.is_empty());
    // Replaying that pause's NOTIFY changes nothing.
    let last: i64 = su
        .query_one(
            "SELECT min(id) FROM pgsidecar.control_requests WHERE requested_by = $1",
            &[&migrator],
        )
        .await
        .unwrap()
        .get(0);
    app_client
        .batch_execute(&format!("SELECT pg_notify('pgsidecar_control', '{last}')"))
        .await
        .unwrap();
    wait_refused(&proxy, "replayed", 1).await;
    assert!(proxy.ctx.gate.status().paused.is_empty());
    // An authorised pause beyond the sidecar's max_pause_hold fails instead of holding a day.
    let mut long = pause(1000, true);
    long.max_hold = Duration::from_secs(86_400);
    let err = fleet::fleet_pause(&url, &long).await.unwrap_err();
    let FleetError::PauseFailed { report, .. } = &err else {
        panic!("{err}")
    };
    let ack = report.acks.values().next().unwrap();
    assert!(
        ack.error.as_deref().unwrap().contains("max_pause_hold"),
        "{ack:?}"
    );
    wait_refused(&proxy, "over_cap", 1).await;
    assert!(proxy.ctx.gate.status().paused.is_empty());
    through_proxy.simple_query("SELECT 1").await.unwrap();
}
