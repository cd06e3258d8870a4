//! The admin HTTP listener: health and the status of pools and clients.

use crate::support::{fresh_database, http_get, overrides, start_proxy, start_proxy_with};

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let response = http_get(addr, path).await;
    (response.status, response.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_status_report_pools_and_clients() {
    let db = fresh_database().await;
    let proxy = start_proxy("transaction", 3).await;
    let admin = proxy.admin().await;
    let addr = admin.addr;
    let client = proxy.connect(&db).await.unwrap();
    client.batch_execute("SELECT 1").await.unwrap();
    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".to_owned()));
    assert_eq!(get(addr, "/readyz").await.0, 200);
    // The connection goes back to the pool just after the client has its answer.
    let mut status = serde_json::Value::Null;
    for _ in 0..50 {
        let (code, body) = get(addr, "/v1/status").await;
        assert_eq!(code, 200);
        status = serde_json::from_str(&body).unwrap();
        if status["pools"][0]["idle"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(status["clients"], 1);
    let pool = &status["pools"][0];
    assert_eq!(pool["database"], db.as_str());
    assert_eq!(pool["user"], "postgres");
    assert_eq!(pool["mode"], "transaction");
    assert_eq!(pool["pool_size"], 3);
    assert_eq!(pool["server_connections"], 1);
    assert_eq!(pool["idle"], 1);
    assert_eq!(pool["totals"]["pinned_clients"], 0);
    assert_eq!(pool["totals"]["queries"], 1);
    assert_eq!(pool["totals"]["transactions"], 1);
    assert_eq!(get(addr, "/nope").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_checks_the_upstream_only_when_asked() {
    let mut o = overrides("transaction", 1);
    // Nothing listens on port 1.
    o.upstream = Some("postgres://postgres@127.0.0.1:1".into());
    let proxy = start_proxy_with(&o, None).await;
    let admin = proxy.admin().await;
    // A database outage must not take every pod of a Service out of rotation by default.
    assert_eq!(
        get(admin.addr, "/readyz").await,
        (200, "ready\n".to_owned())
    );
    let (code, body) = get(admin.addr, "/readyz?upstream").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("127.0.0.1:1 unreachable"), "{body}");
    assert_eq!(get(admin.addr, "/healthz").await.0, 200);
}

/// Every metric the shipped dashboard and alert rules use is one the proxy exports.
#[test]
fn dashboard_and_alerts_name_only_exported_metrics() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // Families without samples are not in the exposition, so the registrations are read.
    let registered = ["src/telemetry/metrics.rs", "src/telemetry/hosts.rs"]
        .map(|file| std::fs::read_to_string(root.join(file)).unwrap())
        .concat();
    for file in [
        "deploy/grafana/pgsidecar.json",
        "deploy/prometheus/alerts.yaml",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let mut rest = text.as_str();
        let mut seen = 0;
        while let Some(at) = rest.find("pgsidecar_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            let family = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name);
            let short = family.trim_start_matches("pgsidecar_");
            assert!(
                registered.contains(&format!("\"{short}\",")),
                "{file} uses {name}, which pgsidecar does not export"
            );
            seen += 1;
        }
        assert!(seen > 3, "{file} names no metric");
    }
}
