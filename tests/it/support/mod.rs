//! The test harness: one ephemeral PostgreSQL cluster per test run, a fresh database per test,
//! and in-process proxies configured per test.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use pgsidecar::config::{Config, ConfigSource, Overrides};
use pgsidecar::dev::{LocalCluster, free_port};
use pgsidecar::pgbin::pg_bindir;
use pgsidecar::proxy::Proxy;
use tokio::sync::watch;
use tokio_postgres::{Client, NoTls};

pub mod clusters;
pub mod otlp;
pub mod pki;

use pki::TestPki;

/// The cluster shared by all tests of this run.
pub struct TestCluster {
    cluster: LocalCluster,
    dir: PathBuf,
    pki: TestPki,
}

static CLUSTER: OnceLock<TestCluster> = OnceLock::new();
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

fn start_cluster() -> TestCluster {
    let dir = std::env::temp_dir().join(format!("pgsidecar-it-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = free_port().expect("a free port");
    let cluster = LocalCluster::new(&dir, port);
    cluster.init("scram-sha-256").expect("initdb");
    // Two users that make the proxy log in with md5 and with a cleartext password.
    let hba = cluster.data_dir().join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    let extra = "host all md5_user 127.0.0.1/32 md5\nhost all plain_user 127.0.0.1/32 password\n";
    std::fs::write(&hba, format!("{extra}{rules}")).expect("write pg_hba.conf");
    // The server speaks TLS with a certificate for localhost/127.0.0.1 from the test CA.
    let pki = TestPki::generate(&dir.join("pki"));
    let data = cluster.data_dir();
    std::fs::copy(&pki.localhost.0, data.join("server.crt")).expect("server.crt");
    std::fs::copy(&pki.localhost.1, data.join("server.key")).expect("server.key");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("key mode");
    }
    if Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
    {
        for file in ["server.crt", "server.key"] {
            let path = data.join(file).display().to_string();
            Command::new("chown")
                .args(["postgres:postgres", &path])
                .status()
                .expect("chown");
        }
    }
    cluster
        .start(&[
            ("max_connections", "400"),
            ("shared_buffers", "64MB"),
            ("ssl", "on"),
        ])
        .expect("PostgreSQL starts");
    // Stop the cluster and remove its files once this test process is gone.
    let pg_ctl = pg_bindir().join("pg_ctl");
    let watchdog = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
         if [ \"$(id -u)\" = 0 ]; then runuser -u postgres -- {ctl} -D {data} -m immediate stop; \
         else {ctl} -D {data} -m immediate stop; fi; rm -rf {dir}",
        pid = std::process::id(),
        ctl = pg_ctl.display(),
        data = dir.join("data").display(),
        dir = dir.display(),
    );
    // Deliberately never waited for: it must outlive this process to clean up after it.
    #[allow(clippy::zombie_processes)]
    Command::new("sh")
        .args(["-c", &watchdog])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("watchdog starts");
    let setup = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let (client, connection) = tokio_postgres::connect(&format!("postgres://postgres:postgres@127.0.0.1:{port}/postgres"), NoTls)
                .await
                .expect("connect for setup");
            tokio::spawn(connection);
            client
                .batch_execute(
                    "SET password_encryption = 'md5'; CREATE ROLE md5_user LOGIN PASSWORD 'md5pass'; \
                     RESET password_encryption; CREATE ROLE plain_user LOGIN PASSWORD 'plainpass';",
                )
                .await
                .expect("create test roles");
        });
    });
    setup.join().expect("cluster setup");
    TestCluster { cluster, dir, pki }
}

/// The shared cluster, started on first use.
pub fn cluster() -> &'static TestCluster {
    CLUSTER.get_or_init(start_cluster)
}

impl TestCluster {
    /// The server's TCP port.
    pub fn port(&self) -> u16 {
        self.cluster.port()
    }

    /// A superuser URL straight to the server.
    pub fn url(&self, database: &str) -> String {
        self.cluster.url(database)
    }

    /// The test certificates (the server's own chains to `pki().ca`).
    pub fn pki(&self) -> &TestPki {
        &self.pki
    }

    /// The cluster's directory (socket and log live there).
    #[allow(dead_code)]
    pub fn dir(&self) -> &PathBuf {
        &self.dir
    }
}

/// Connects with tokio-postgres and drives the connection in the background.
pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// A direct superuser connection to `database`, bypassing the proxy.
pub async fn direct(database: &str) -> Client {
    connect(&cluster().url(database))
        .await
        .expect("direct connection")
}

/// Creates an empty database for one test and returns its name.
pub async fn fresh_database() -> String {
    let name = format!("it_{}", NEXT_DB.fetch_add(1, Ordering::Relaxed));
    let admin = direct("postgres").await;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
    name
}

/// A proxy running inside the test process.
pub struct TestProxy {
    /// Where clients connect.
    pub port: u16,
    /// The ports of `[[listeners]]`, in order.
    pub extra_ports: Vec<u16>,
    /// The proxy's shared state, for the admin side.
    pub ctx: std::sync::Arc<pgsidecar::context::ProxyContext>,
    /// The configuration file it was started with, which a reload reads again.
    pub config_path: Option<std::path::PathBuf>,
    _shutdown: watch::Sender<bool>,
}

impl TestProxy {
    /// A URL through the proxy as the `postgres` user.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres:postgres@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// Connects through the proxy.
    pub async fn connect(&self, database: &str) -> Result<Client, tokio_postgres::Error> {
        connect(&self.url(database)).await
    }
}

/// Overrides for a trust-auth proxy in front of the shared cluster.
pub fn overrides(pool_mode: &str, pool_size: usize) -> Overrides {
    Overrides {
        listen: Some("127.0.0.1:0".into()),
        upstream: Some(format!(
            "postgres://postgres:postgres@127.0.0.1:{}",
            cluster().port()
        )),
        auth: Some("trust".into()),
        pool_mode: Some(pool_mode.into()),
        pool_size: Some(pool_size.to_string()),
        ..Overrides::default()
    }
}

/// Starts a proxy with `overrides` and, optionally, a config file's text.
pub async fn start_proxy_with(overrides: &Overrides, file: Option<&str>) -> TestProxy {
    let path = file.map(|text| {
        let path = std::env::temp_dir().join(format!(
            "pgsidecar-it-{}-{}.toml",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).expect("write test config");
        path
    });
    let config = Config::load(path.as_deref(), overrides).expect("valid test config");
    let proxy = Proxy::bind(config).await.expect("proxy binds");
    let port = proxy.local_addr().expect("local addr").port();
    let extra_ports = proxy
        .local_addrs()
        .expect("local addrs")
        .iter()
        .skip(1)
        .map(std::net::SocketAddr::port)
        .collect();
    let ctx = proxy.context();
    ctx.keep_source(ConfigSource {
        path: path.clone(),
        overrides: overrides.clone(),
    });
    let (tx, rx) = watch::channel(false);
    tokio::spawn(proxy.run(rx));
    TestProxy {
        port,
        extra_ports,
        ctx,
        config_path: path,
        _shutdown: tx,
    }
}

/// The admin HTTP listener of a test proxy; it stops when this is dropped.
pub struct TestAdmin {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    _stop: watch::Sender<bool>,
}

impl TestProxy {
    /// Serves the admin HTTP endpoints of this proxy on a free port.
    pub async fn admin(&self) -> TestAdmin {
        let admin = pgsidecar::admin::AdminServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            std::sync::Arc::clone(&self.ctx),
        )
        .await
        .expect("admin listener binds");
        let addr = admin.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(admin.run(stopped));
        TestAdmin { addr, _stop: stop }
    }
}

/// An HTTP response as the tests read it.
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Status line and headers.
    pub head: String,
    /// Body.
    pub body: String,
}

/// `GET path` over a fresh HTTP/1.1 connection.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> HttpResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    HttpResponse {
        status: head[9..12].parse().unwrap(),
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// Leaves an INVALID index `dup_v` behind in the connected database, the way a failed
/// `CREATE UNIQUE INDEX CONCURRENTLY` does in production.
pub async fn leave_invalid_index(client: &Client) {
    client
        .batch_execute("CREATE TABLE dup (v int); INSERT INTO dup VALUES (1), (1);")
        .await
        .unwrap();
    assert!(
        client
            .batch_execute("CREATE UNIQUE INDEX CONCURRENTLY dup_v ON dup (v)")
            .await
            .is_err()
    );
}

/// Starts a trust-auth proxy in the given mode and pool size.
pub async fn start_proxy(pool_mode: &str, pool_size: usize) -> TestProxy {
    start_proxy_with(&overrides(pool_mode, pool_size), None).await
}

/// The SQLSTATE of a tokio-postgres error, or a panic naming the error.
pub fn sqlstate(error: &tokio_postgres::Error) -> String {
    match error.code() {
        Some(code) => code.code().to_owned(),
        None => panic!("error without SQLSTATE: {error:?}"),
    }
}

/// Path of a PostgreSQL client program (psql, pgbench).
pub fn pg_program(name: &str) -> PathBuf {
    pg_bindir().join(name)
}

/// The `pgsidecar proxy` binary running in a process of its own, in front of the shared cluster
/// with trust authentication, for tests that watch the process itself (memory, panics).
pub struct ProxyProcess {
    /// The process; killed when dropped.
    pub child: tokio::process::Child,
    /// Where clients connect.
    pub port: u16,
}

impl ProxyProcess {
    /// Starts the binary with `extra` flags; its stderr is captured.
    pub fn spawn(extra: &[&str]) -> Self {
        Self::spawn_with_env(extra, &[])
    }

    /// Starts the binary with `extra` flags and `env` set; its stderr is captured.
    pub fn spawn_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let port = free_port().expect("a free port");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
            .args([
                "proxy",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--auth",
                "trust",
            ])
            .args([
                "--upstream",
                &format!(
                    "postgres://postgres:postgres@127.0.0.1:{}",
                    cluster().port()
                ),
            ])
            .args(extra)
            .env_remove("DATABASE_URL")
            .env_remove("PGSIDECAR_CONFIG")
            .env("PGSIDECAR_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the pgsidecar binary starts");
        Self { child, port }
    }

    /// A client of `database` through the process, once it accepts connections (generously: the
    /// whole suite runs in parallel on two cores).
    pub async fn connect(&self, database: &str) -> Client {
        let url = format!("postgres://postgres@127.0.0.1:{}/{database}", self.port);
        for _ in 0..600 {
            if let Ok(client) = connect(&url).await {
                return client;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the pgsidecar binary does not accept connections");
    }
}

/// Runs `tests/python/SCRIPT DSN [ARGS]` with the project's `.venv` Python and asserts that
/// it succeeded and printed `ok`.
pub async fn assert_python_ok(script: &str, dsn: &str, args: &[&str]) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    assert!(python.exists(), "run scripts/setup.sh to create .venv");
    let out = tokio::process::Command::new(python)
        .arg(root.join("tests/python").join(script))
        .arg(dsn)
        .args(args)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "{script}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `done` every 20 ms for up to 30 s.
pub async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
