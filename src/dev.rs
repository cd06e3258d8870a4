//! `pgsidecar dev`, the embedded default: a local PostgreSQL cluster with pgvector under
//! `./.pgsidecar/`, and the proxy in front of it. [`LocalCluster`] is also what the test harness
//! starts, so that the dev profile and the tests run PostgreSQL the same way.

use crate::pgbin::pg_bindir;
use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use thiserror::Error;
use tokio::sync::watch;

use crate::config::{AuthMethod, Config, Overrides};
use crate::proxy::Proxy;

/// Why the local cluster or the dev proxy could not run.
#[derive(Debug, Error)]
pub enum DevError {
    /// A PostgreSQL program is missing or failed.
    #[error("{program} failed: {detail}")]
    Program {
        /// The program.
        program: String,
        /// Its error output or the spawn error.
        detail: String,
    },
    /// File system trouble under the cluster directory.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The proxy could not start.
    #[error("proxy: {0}")]
    Proxy(String),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DevError + '_ {
    move |source| DevError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A free TCP port on the loopback interface.
///
/// # Errors
/// The socket's error.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// A PostgreSQL cluster in a directory of its own, run by this process on a loopback port.
/// PostgreSQL refuses to run as root, so as root the programs run as the `postgres` user.
#[derive(Debug, Clone)]
pub struct LocalCluster {
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl LocalCluster {
    /// A cluster rooted at `dir` (data under `dir/data`), to listen on `port`.
    #[must_use]
    pub fn new(dir: &Path, port: u16) -> Self {
        Self {
            dir: dir.to_path_buf(),
            port,
            as_postgres: running_as_root(),
        }
    }

    /// The TCP port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (`PGDATA`).
    #[must_use]
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The server log.
    #[must_use]
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    fn command(&self, program: &str) -> Command {
        let path = pg_bindir().join(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<String, DevError> {
        let output = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| DevError::Program {
                program: program.to_owned(),
                detail: e.to_string(),
            })?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(DevError::Program {
                program: program.to_owned(),
                detail: format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stderr).trim(),
                    String::from_utf8_lossy(&output.stdout).trim()
                ),
            })
        }
    }

    /// Creates the cluster unless it exists: trust for local sockets, `host_auth` for TCP, and
    /// the `postgres` superuser with password `postgres`.
    ///
    /// # Errors
    /// [`DevError`] if `initdb` fails.
    pub fn init(&self, host_auth: &str) -> Result<(), DevError> {
        if self.data_dir().join("PG_VERSION").exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(io_error(&self.dir))?;
        if self.as_postgres {
            let dir = self.dir.display().to_string();
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres", &dir])
                .status();
            if !status.is_ok_and(|s| s.success()) {
                return Err(DevError::Program {
                    program: "chown".into(),
                    detail: format!("cannot give {dir} to the postgres user"),
                });
            }
        }
        let pwfile = self.dir.join("pwfile");
        std::fs::write(&pwfile, "postgres\n").map_err(io_error(&pwfile))?;
        if self.as_postgres {
            let _ = Command::new("chown")
                .args(["postgres:postgres", &pwfile.display().to_string()])
                .status();
        }
        let data = self.data_dir().display().to_string();
        let pwfile_arg = format!("--pwfile={}", pwfile.display());
        let host = format!("--auth-host={host_auth}");
        self.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth-local=trust",
                &host,
                &pwfile_arg,
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        )?;
        let _ = std::fs::remove_file(&pwfile);
        Ok(())
    }

    /// Makes this cluster a streaming replica of the server on `primary_port` (on this host)
    /// with `pg_basebackup`, unless its data directory exists; `password` is the `postgres`
    /// user's, passed in the environment rather than on the command line.
    ///
    /// # Errors
    /// [`DevError`] if the directory cannot be made or `pg_basebackup` fails.
    pub fn replicate(&self, primary_port: u16, password: &str) -> Result<(), DevError> {
        if self.data_dir().join("PG_VERSION").exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(io_error(&self.dir))?;
        if self.as_postgres {
            let _ = Command::new("chown")
                .args(["-R", "postgres:postgres", &self.dir.display().to_string()])
                .status();
        }
        let data = self.data_dir().display().to_string();
        let port = primary_port.to_string();
        let output = self
            .command("pg_basebackup")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                &data,
                "-R",
                "-X",
                "stream",
                "--no-sync",
                "--checkpoint=fast",
            ])
            .env("PGPASSWORD", password)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| DevError::Program {
                program: "pg_basebackup".into(),
                detail: e.to_string(),
            })?;
        if output.status.success() {
            Ok(())
        } else {
            Err(DevError::Program {
                program: "pg_basebackup".into(),
                detail: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            })
        }
    }

    /// Stops the server at once (immediate shutdown: for throwaway clusters).
    ///
    /// # Errors
    /// [`DevError`] if `pg_ctl stop` fails.
    pub fn stop_now(&self) -> Result<(), DevError> {
        let data = self.data_dir().display().to_string();
        self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"])
            .map(|_| ())
    }

    /// Starts the server and waits until it accepts connections.
    ///
    /// # Errors
    /// [`DevError`] with the server log's tail if it does not come up.
    pub fn start(&self, settings: &[(&str, &str)]) -> Result<(), DevError> {
        let data = self.data_dir().display().to_string();
        if self.run("pg_ctl", &["-D", &data, "status"]).is_ok() {
            self.run("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"])?;
        }
        let mut options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.dir.display()
        );
        for (name, value) in settings {
            let _ = write!(options, " -c {name}={value}");
        }
        let log = self.log_file().display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-o", &options, "-w", "-t", "60", "start",
            ],
        )
        .map_err(|e| {
            let tail = std::fs::read_to_string(self.log_file()).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(10).collect();
            DevError::Program {
                program: "pg_ctl start".into(),
                detail: format!(
                    "{e}; log: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                ),
            }
        })?;
        Ok(())
    }

    /// Stops the server (fast shutdown: sessions are disconnected, nothing is lost).
    ///
    /// # Errors
    /// [`DevError`] if `pg_ctl stop` fails.
    pub fn stop(&self) -> Result<(), DevError> {
        let data = self.data_dir().display().to_string();
        self.run("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"])
            .map(|_| ())
    }

    /// Promotes a replica to a primary and waits until it takes writes.
    ///
    /// # Errors
    /// [`DevError`] if `pg_ctl promote` fails.
    pub fn promote(&self) -> Result<(), DevError> {
        let data = self.data_dir().display().to_string();
        self.run("pg_ctl", &["-D", &data, "-w", "-t", "60", "promote"])
            .map(|_| ())
    }

    /// A URL for the superuser over TCP.
    #[must_use]
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres:postgres@127.0.0.1:{}/{database}",
            self.port
        )
    }
}

async fn enable_pgvector(cluster: &LocalCluster) {
    let connected = tokio_postgres::connect(&cluster.url("postgres"), tokio_postgres::NoTls).await;
    let Ok((client, connection)) = connected else {
        tracing::warn!("cannot connect to the local cluster to enable pgvector");
        return;
    };
    tokio::spawn(connection);
    if let Err(e) = client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS vector")
        .await
    {
        tracing::warn!(error = %e, "pgvector is not available; run scripts/setup.sh");
    }
}

/// Runs the dev profile until the signal that `shutdown` produces, then stops both.
///
/// # Errors
/// [`DevError`] if the cluster or the proxy cannot start.
pub async fn run(
    dir: &Path,
    listen: &str,
    shutdown: impl FnOnce() -> watch::Receiver<bool>,
) -> Result<(), DevError> {
    let dir = std::path::absolute(dir).map_err(io_error(dir))?;
    let port = free_port().map_err(io_error(&dir))?;
    let cluster = LocalCluster::new(&dir, port);
    cluster.init("trust")?;
    cluster.start(&[("max_connections", "200")])?;
    enable_pgvector(&cluster).await;
    let overrides = Overrides {
        listen: Some(listen.to_owned()),
        upstream: Some(format!("postgres://127.0.0.1:{port}")),
        auth: Some("trust".to_owned()),
        ..Overrides::default()
    };
    let result = async {
        let config = Config::load(None, &overrides).map_err(|e| DevError::Proxy(e.to_string()))?;
        debug_assert_eq!(config.auth, AuthMethod::Trust);
        let proxy = Proxy::bind(config)
            .await
            .map_err(|e| DevError::Proxy(format!("cannot listen on {listen}: {e}")))?;
        let addr = proxy
            .local_addr()
            .map_err(|e| DevError::Proxy(e.to_string()))?;
        println!(
            "pgsidecar dev: PostgreSQL on 127.0.0.1:{port} (data in {})",
            dir.display()
        );
        println!("DATABASE_URL=postgres://postgres@{addr}/postgres");
        println!("Press Ctrl-C to stop.");
        proxy.run(shutdown()).await;
        Ok(())
    }
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    cluster.stop()?;
    println!("pgsidecar dev: stopped");
    result
}
