//! The admin console: `psql -d pgsidecar` for admin users, PgBouncer's SHOW commands.

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::support::{TestProxy, connect, fresh_database, overrides, pg_program, start_proxy_with};

/// Rows of a console command as (column, value) maps, in order.
async fn show(admin: &Client, command: &str) -> Vec<Vec<(String, Option<String>)>> {
    admin
        .simple_query(command)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                row.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_owned(), row.get(i).map(str::to_owned)))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn field<'a>(row: &'a [(String, Option<String>)], name: &str) -> Option<&'a str> {
    row.iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no column {name} in {row:?}"))
        .1
        .as_deref()
}

async fn console_proxy() -> TestProxy {
    let mut o = overrides("transaction", 1);
    o.admin_users = Some("postgres".into());
    start_proxy_with(&o, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_commands_report_pools_clients_servers_and_stats() {
    let db = fresh_database().await;
    let proxy = console_proxy().await;
    let app = connect(&format!("{}?application_name=console-app", proxy.url(&db)))
        .await
        .unwrap();
    let server_pid: i32 = app
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    app.simple_query("SELECT 1").await.unwrap();
    let admin = proxy.connect("pgsidecar").await.unwrap();

    let pools = show(&admin, "SHOW POOLS").await;
    assert_eq!(pools.len(), 1, "{pools:?}");
    let pool = &pools[0];
    assert_eq!(field(pool, "database"), Some(db.as_str()));
    assert_eq!(field(pool, "user"), Some("postgres"));
    assert_eq!(field(pool, "cl_active"), Some("1"));
    assert_eq!(field(pool, "cl_waiting"), Some("0"));
    assert_eq!(field(pool, "pool_mode"), Some("transaction"));
    assert_eq!(field(pool, "role"), Some("primary"));
    assert!(field(pool, "host").is_some_and(|h| h.starts_with("127.0.0.1:")));

    let clients = show(&admin, "show clients;").await;
    assert_eq!(
        clients.len(),
        1,
        "the console itself is not a pooled client"
    );
    let client = &clients[0];
    assert_eq!(field(client, "type"), Some("C"));
    assert_eq!(field(client, "database"), Some(db.as_str()));
    assert_eq!(field(client, "state"), Some("idle"));
    assert_eq!(field(client, "addr"), Some("127.0.0.1"));
    assert_eq!(field(client, "application_name"), Some("console-app"));
    assert!(field(client, "connect_time").unwrap().ends_with(" UTC"));

    let servers = show(&admin, "SHOW SERVERS").await;
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_eq!(field(&servers[0], "state"), Some("idle"));
    assert_eq!(
        field(&servers[0], "remote_pid"),
        Some(server_pid.to_string().as_str())
    );

    let stats = show(&admin, "SHOW STATS").await;
    // Two queries; tokio-postgres's prepare is a round trip but not a query.
    assert_eq!(field(&stats[0], "total_query_count"), Some("2"));
    assert_eq!(field(&stats[0], "total_xact_count"), Some("2"));
    assert_eq!(field(&stats[0], "total_error_count"), Some("0"));
    let received: u64 = field(&stats[0], "total_received").unwrap().parse().unwrap();
    assert!(received > 0);

    let config = show(&admin, "SHOW CONFIG").await;
    let pool_size = config
        .iter()
        .find(|row| field(row, "key") == Some("pool_size"))
        .unwrap();
    assert_eq!(field(pool_size, "value"), Some("1"));
    assert_eq!(field(pool_size, "default"), Some("20"));

    let version = show(&admin, "SHOW VERSION").await;
    assert_eq!(
        field(&version[0], "version"),
        Some(concat!("pgsidecar ", env!("CARGO_PKG_VERSION")))
    );

    let error = admin.simple_query("DROP TABLE x").await.unwrap_err();
    assert_eq!(error.code().unwrap().code(), "42601");
    // Still usable after an error; extended protocol is refused, not fatal.
    assert_eq!(show(&admin, "SHOW HELP").await.len(), 12);
    let error = admin.query("SHOW POOLS", &[]).await.unwrap_err();
    assert_eq!(error.code().unwrap().code(), "0A000");
    assert_eq!(show(&admin, "SHOW VERSION").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_reads_the_console_and_non_admins_are_refused() {
    let db = fresh_database().await;
    let proxy = console_proxy().await;
    let app = proxy.connect(&db).await.unwrap();
    app.simple_query("SELECT 1").await.unwrap();
    let output = tokio::process::Command::new(pg_program("psql"))
        .arg(proxy.url("pgsidecar"))
        .args(["-X", "-A", "-F", "|", "-c", "SHOW POOLS"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some("database|user|cl_active|cl_waiting|sv_active|sv_idle|pool_mode|host|role")
    );
    assert_eq!(
        lines.next(),
        Some(
            format!(
                "{db}|postgres|1|0|0|1|transaction|127.0.0.1:{}|primary",
                crate::support::cluster().port()
            )
            .as_str()
        )
    );

    let url = proxy
        .url("pgsidecar")
        .replace("postgres:postgres@", "intruder@");
    let error = connect(&url).await.unwrap_err();
    assert_eq!(error.code().unwrap().code(), "28000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_clients_tells_encrypted_clients_apart() {
    let db = fresh_database().await;
    let mut settings = crate::tls::tls_overrides("allow");
    settings.admin_users = Some("postgres".into());
    let proxy = start_proxy_with(&settings, None).await;
    let mut config: tokio_postgres::Config = format!(
        "host=localhost port={} user=postgres password=postgres dbname={db} application_name=over-tls",
        proxy.port
    )
    .parse()
    .unwrap();
    config.ssl_mode(tokio_postgres::config::SslMode::Require);
    let _encrypted = crate::tls::connect_tls(
        &config,
        crate::tls::client_config(&crate::support::cluster().pki().ca, false),
    )
    .await
    .unwrap();
    let _plain = connect(&format!("{}?application_name=in-clear", proxy.url(&db)))
        .await
        .unwrap();
    let admin = connect(&proxy.url("pgsidecar")).await.unwrap();
    let clients = show(&admin, "SHOW CLIENTS").await;
    let tls_of = |app: &str| {
        let row = clients
            .iter()
            .find(|r| field(r, "application_name") == Some(app))
            .unwrap_or_else(|| panic!("no client {app} in {clients:?}"));
        field(row, "tls").map(str::to_owned)
    };
    let encrypted = tls_of("over-tls").expect("the TLS client shows its protocol");
    assert!(encrypted.starts_with("TLSv1_3/TLS13_"), "{encrypted}");
    assert_eq!(tls_of("in-clear"), None);
}
