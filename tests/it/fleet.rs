//! The fleet: three sidecar processes in front of one database, paused and resumed together
//! through the database (LISTEN/NOTIFY), under write load.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use pgsidecar::gate::fleet::{self, FleetError, FleetPause};

use crate::gate::{ledger, send_signal, stop_writers, writers};
use crate::support::{ProxyProcess, cluster, fresh_database};

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
    for _ in 0..300 {
        if let Ok(rows) = fleet::sidecars(url, STALE).await
            && rows.iter().filter(|r| r.live).count() == count
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{count} sidecars never registered: {:?}",
        fleet::sidecars(url, STALE).await
    );
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
    tokio::time::sleep(Duration::from_millis(200)).await;
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
    tokio::time::sleep(STALE + Duration::from_millis(300)).await;
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
