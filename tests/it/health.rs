//! Health checks against situations created for real: a lock wait and its blocker, a long
//! transaction, an INVALID index, a saturated sidecar pool.

use std::time::Duration;

use pgsidecar::health::{self, Status, Thresholds};

use crate::support::{
    connect, direct, fresh_database, leave_invalid_index, overrides, start_proxy_with, wait_until,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_waits_long_transactions_and_invalid_indexes_are_reported() {
    let db = fresh_database().await;
    let setup = direct(&db).await;
    setup
        .batch_execute("CREATE TABLE queue (id int)")
        .await
        .unwrap();
    leave_invalid_index(&setup).await;
    let url = crate::support::cluster().url(&db);
    let blocker = connect(&format!("{url}?application_name=blocker-app"))
        .await
        .unwrap();
    blocker
        .batch_execute("BEGIN; LOCK TABLE queue IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let waiter = connect(&format!("{url}?application_name=waiter-app"))
        .await
        .unwrap();
    let waiting =
        tokio::spawn(async move { waiter.simple_query("SELECT count(*) FROM queue").await });
    // The checks below flag waits and transactions older than 1 s.
    wait_until(
        "the waiter waits on the lock for more than a second",
        async || {
            let row = setup
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'waiter-app' \
                 AND wait_event_type = 'Lock' AND now() - query_start > interval '1100 ms'",
                    &[],
                )
                .await
                .unwrap();
            row.get::<_, i64>(0) == 1
        },
    )
    .await;

    let thresholds = Thresholds {
        lock_wait: (Duration::from_secs(1), Duration::from_secs(60)),
        long_transaction: (Duration::from_secs(1), Duration::from_secs(3600)),
        ..Thresholds::default()
    };
    let checks = health::run_checks(&setup, &thresholds).await;
    let get = |name: &str| checks.iter().find(|c| c.name == name).unwrap().clone();

    let locks = get("lock_waits");
    assert_eq!(locks.status, Status::Warning, "{locks:?}");
    assert!(
        locks.details.iter().any(|d| d.contains("waiter-app")
            && d.contains("blocked by")
            && d.contains("blocker-app")),
        "{locks:?}"
    );
    let long = get("long_transactions");
    assert!(long.status >= Status::Warning, "{long:?}");
    assert!(
        long.details.iter().any(|d| d.contains("blocker-app")),
        "{long:?}"
    );
    let invalid = get("invalid_indexes");
    assert_eq!(invalid.status, Status::Critical);
    assert!(
        invalid.details.iter().any(|d| d.contains("dup_v")),
        "{invalid:?}"
    );
    assert_eq!(health::overall(&checks), Status::Critical);
    assert!(
        checks.iter().all(|c| c.status != Status::Unknown),
        "{checks:#?}"
    );

    blocker.batch_execute("COMMIT").await.unwrap();
    waiting.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_sidecar_pool_is_critical() {
    let db = fresh_database().await;
    let proxy = start_proxy_with(&overrides("transaction", 1), None).await;
    let admin = proxy.admin().await;
    let holder = proxy.connect(&db).await.unwrap();
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    // Its login already needs the only server connection: it waits.
    let url = proxy.url(&db);
    let queued = tokio::spawn(async move {
        let client = connect(&url).await.unwrap();
        client.simple_query("SELECT 1").await.map(|_| ())
    });
    wait_until(
        "the second client queues for the only connection",
        async || proxy.ctx.pools.all().iter().any(|p| p.usage().waiting > 0),
    )
    .await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
        .args(["health", "--json", "--admin", &admin.addr.to_string()])
        .args(["--database-url", &crate::support::cluster().url(&db)])
        .output()
        .await
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let pools = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "sidecar_pools")
        .unwrap();
    assert_eq!(pools["status"], "CRITICAL", "{pools}");
    holder.batch_execute("COMMIT").await.unwrap();
    queued.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_exports_the_checks_as_metrics() {
    let db = fresh_database().await;
    let setup = direct(&db).await;
    leave_invalid_index(&setup).await;
    let mut o = overrides("transaction", 1);
    o.fleet_url = Some(crate::support::cluster().url(&db));
    o.fleet_heartbeat = Some("200ms".into());
    o.health_interval = Some("200ms".into());
    let proxy = start_proxy_with(&o, None).await;
    let admin = proxy.admin().await;
    let mut text = String::new();
    for _ in 0..100 {
        text = crate::support::http_get(admin.addr, "/metrics").await.body;
        if text.contains("pgsidecar_database_health_status{check=\"invalid_indexes\"} 2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        text.contains("pgsidecar_database_health_status{check=\"invalid_indexes\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("pgsidecar_database_health_status{check=\"connections\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("pgsidecar_database_health_value{check=\"connections\"}"),
        "{text}"
    );
}
