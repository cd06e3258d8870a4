//! The admin HTTP listener: health and the status of pools and clients.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use pgsidecar::admin::AdminServer;

use crate::support::{fresh_database, start_proxy};

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let code = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_status_report_pools_and_clients() {
    let db = fresh_database().await;
    let proxy = start_proxy("transaction", 3).await;
    let admin = AdminServer::bind("127.0.0.1:0".parse().unwrap(), proxy.ctx.clone())
        .await
        .unwrap();
    let addr = admin.local_addr().unwrap();
    let (_stop, stopped) = watch::channel(false);
    tokio::spawn(admin.run(stopped));
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
