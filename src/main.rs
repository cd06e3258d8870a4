//! The `pgsidecar` command line: parse, load config, call the library, map errors to exit codes.

// Doc comments here are the `--help` text users read; backticks would show up verbatim.
#![allow(clippy::doc_markdown)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

mod cli;
use pgsidecar::config::{Config, ConfigSource, Overrides};
use pgsidecar::context::ProxyContext;
use pgsidecar::proxy::Proxy;
use tokio::sync::watch;

/// Exit status for a configuration the proxy refuses to start with.
const EXIT_CONFIG: u8 = cli::EXIT_USAGE;

#[derive(Parser)]
#[command(
    name = "pgsidecar",
    version,
    about = "PostgreSQL sidecar proxy: pooling, tracing, gating, migrations"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy in front of an upstream PostgreSQL.
    Proxy(Box<ProxyArgs>),
    /// Start a local PostgreSQL + pgvector cluster under ./.pgsidecar and the proxy in front of it.
    Dev(DevArgs),
    /// Pause, resume or inspect traffic: of the whole fleet (--database-url) or one sidecar (--admin).
    Gate(cli::gate::GateArgs),
    /// Versioned migrations of a live database: new, status, plan, lint, apply, rollback, repair.
    Migrate(cli::migrate::MigrateArgs),
    /// Database health checks with warn/critical thresholds and a Nagios-style exit code.
    Health(Box<cli::health::HealthArgs>),
    /// Backups proven restorable: create (dump + manifest) and verify (restore + compare).
    Backup(cli::backup::BackupArgs),
    /// Print a stored secret for the users file: a SCRAM-SHA-256 verifier (or, with --md5, an
    /// md5 secret), as a whole [users.NAME] entry when --user is given.
    Passwd {
        /// The password; read from standard input when omitted (keeps it out of `ps`).
        password: Option<String>,
        /// Print a complete `[users.NAME]` entry for this user.
        #[arg(long)]
        user: Option<String>,
        /// An md5 secret for old clients (needs --user: the user name salts it).
        #[arg(long, requires = "user")]
        md5: bool,
    },
}

#[derive(Args)]
struct ProxyArgs {
    /// TOML configuration file.
    #[arg(long, env = "PGSIDECAR_CONFIG")]
    config: Option<PathBuf>,
    /// Client listener address.
    #[arg(long, env = "PGSIDECAR_LISTEN")]
    listen: Option<String>,
    /// Admin HTTP listener address.
    #[arg(long, env = "PGSIDECAR_ADMIN_LISTEN")]
    admin_listen: Option<String>,
    /// Upstream PostgreSQL URL; DATABASE_URL when not given.
    #[arg(long, env = "PGSIDECAR_UPSTREAM")]
    upstream: Option<String>,
    /// Client authentication: scram-sha-256, md5, password (TLS only) or trust.
    #[arg(long, env = "PGSIDECAR_AUTH")]
    auth: Option<String>,
    /// Query that returns (name, stored secret) for user $1, for users not in the file.
    #[arg(long, env = "PGSIDECAR_AUTH_QUERY")]
    auth_query: Option<String>,
    /// Server-side user the auth query runs as.
    #[arg(long, env = "PGSIDECAR_AUTH_USER")]
    auth_user: Option<String>,
    /// How long a failed login waits before its error (e.g. 500ms).
    #[arg(long, env = "PGSIDECAR_AUTH_FAILURE_DELAY")]
    auth_failure_delay: Option<String>,
    /// PEM certificate chain clients see (reloaded on SIGHUP).
    #[arg(long, env = "PGSIDECAR_TLS_CERT")]
    tls_cert: Option<String>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "PGSIDECAR_TLS_KEY")]
    tls_key: Option<String>,
    /// Client TLS: disable, allow or require (default: allow with a certificate).
    #[arg(long, env = "PGSIDECAR_CLIENT_TLS")]
    client_tls: Option<String>,
    /// TLS toward the upstream: disable, prefer, require, verify-ca or verify-full.
    #[arg(long, env = "PGSIDECAR_SERVER_TLS_MODE")]
    server_tls_mode: Option<String>,
    /// PEM CA certificates for verify-ca / verify-full.
    #[arg(long, env = "PGSIDECAR_SERVER_CA")]
    server_ca: Option<String>,
    /// transaction or session.
    #[arg(long, env = "PGSIDECAR_POOL_MODE")]
    pool_mode: Option<String>,
    /// Server connections per (database, user).
    #[arg(long, env = "PGSIDECAR_POOL_SIZE")]
    pool_size: Option<String>,
    /// Idle server connections kept open per pool.
    #[arg(long, env = "PGSIDECAR_MIN_IDLE")]
    min_idle: Option<String>,
    /// How long a client waits for a server connection (e.g. 5s).
    #[arg(long, env = "PGSIDECAR_ACQUIRE_TIMEOUT")]
    acquire_timeout: Option<String>,
    /// Tell a client waiting this long for a server connection that its query is queued (0 = off).
    #[arg(long, env = "PGSIDECAR_QUERY_WAIT_NOTIFY")]
    query_wait_notify: Option<String>,
    /// Idle server connections are closed after this.
    #[arg(long, env = "PGSIDECAR_SERVER_IDLE_TIMEOUT")]
    server_idle_timeout: Option<String>,
    /// Server connections are replaced after this age.
    #[arg(long, env = "PGSIDECAR_SERVER_LIFETIME")]
    server_lifetime: Option<String>,
    /// Limit for opening one server connection.
    #[arg(long, env = "PGSIDECAR_SERVER_CONNECT_TIMEOUT")]
    server_connect_timeout: Option<String>,
    /// Statements each server connection keeps prepared for transaction-mode clients.
    #[arg(long, env = "PGSIDECAR_MAX_PREPARED_STATEMENTS")]
    max_prepared_statements: Option<String>,
    /// Close a client idle this long between transactions (0 = off).
    #[arg(long, env = "PGSIDECAR_CLIENT_IDLE_TIMEOUT")]
    client_idle_timeout: Option<String>,
    /// Close a client idle this long inside a transaction, rolling it back (0 = off; default 1h).
    #[arg(long, env = "PGSIDECAR_IDLE_TRANSACTION_TIMEOUT")]
    idle_transaction_timeout: Option<String>,
    /// Cancel a query the server works on longer than this and close its client (0 = off).
    #[arg(long, env = "PGSIDECAR_QUERY_TIMEOUT")]
    query_timeout: Option<String>,
    /// Close a client whose transaction stays open longer than this (0 = off).
    #[arg(long, env = "PGSIDECAR_TRANSACTION_TIMEOUT")]
    transaction_timeout: Option<String>,
    /// Most server connections to one database across its users' pools (0 = no cap).
    #[arg(long, env = "PGSIDECAR_MAX_DB_CONNECTIONS")]
    max_db_connections: Option<String>,
    /// Most server connections of one user across its databases' pools (0 = no cap).
    #[arg(long, env = "PGSIDECAR_MAX_USER_CONNECTIONS")]
    max_user_connections: Option<String>,
    /// Clients must log in within this.
    #[arg(long, env = "PGSIDECAR_CLIENT_LOGIN_TIMEOUT")]
    client_login_timeout: Option<String>,
    /// Maximum client connections.
    #[arg(long, env = "PGSIDECAR_MAX_CLIENT_CONN")]
    max_client_conn: Option<String>,
    /// Largest client message (e.g. 64MiB).
    #[arg(long, env = "PGSIDECAR_MAX_MESSAGE_SIZE")]
    max_message_size: Option<String>,
    /// Threads that run the proxy (1 = one thread, as PgBouncer; more for a saturated core).
    #[arg(long, env = "PGSIDECAR_THREADS")]
    threads: Option<String>,
    /// On SIGTERM, how long sessions get to finish their transaction (e.g. 30s).
    #[arg(long, env = "PGSIDECAR_DRAIN_TIMEOUT")]
    drain_timeout: Option<String>,
    /// The migration version whose schema the application expects (e.g. 0007, or the image
    /// tag's number): sessions get its schema first in search_path.
    #[arg(long, env = "PGSIDECAR_SCHEMA_VERSION")]
    schema_version: Option<String>,
    /// Join the fleet: a direct URL to the database for the control channel.
    #[arg(long, env = "PGSIDECAR_FLEET_URL")]
    fleet_url: Option<String>,
    /// This sidecar's id in pgsidecar.sidecars (default: host-pid).
    #[arg(long, env = "PGSIDECAR_FLEET_ID")]
    fleet_id: Option<String>,
    /// How often this sidecar heartbeats in the fleet registry (e.g. 2s).
    #[arg(long, env = "PGSIDECAR_FLEET_HEARTBEAT")]
    fleet_heartbeat: Option<String>,
    /// Besides superusers, members of this role may send fleet requests this sidecar obeys.
    #[arg(long, env = "PGSIDECAR_FLEET_CONTROL_ROLE")]
    fleet_control_role: Option<String>,
    /// File holding the bearer token the admin API's gate endpoints require
    /// (or the token itself in PGSIDECAR_ADMIN_TOKEN; never on the command line).
    #[arg(long, env = "PGSIDECAR_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<String>,
    /// The longest max_hold a pause request may ask for (e.g. 5m).
    #[arg(long, env = "PGSIDECAR_MAX_PAUSE_HOLD")]
    max_pause_hold: Option<String>,
    /// The longest pause or drain deadline a request may ask for (e.g. 2m).
    #[arg(long, env = "PGSIDECAR_MAX_PAUSE_DEADLINE")]
    max_pause_deadline: Option<String>,
    /// How often the sidecar runs the database health checks over the fleet URL (0 = never).
    #[arg(long, env = "PGSIDECAR_HEALTH_INTERVAL")]
    health_interval: Option<String>,
    /// Comma-separated users allowed into the admin console (database pgsidecar).
    #[arg(long, env = "PGSIDECAR_ADMIN_USERS")]
    admin_users: Option<String>,
    /// OTLP collector endpoint for query spans; OTEL_EXPORTER_OTLP_TRACES_ENDPOINT wins.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// grpc or http/protobuf; OTEL_EXPORTER_OTLP_TRACES_PROTOCOL wins.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL")]
    otlp_protocol: Option<String>,
    /// CA file for an https:// collector; OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE wins.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_CERTIFICATE")]
    otlp_certificate: Option<String>,
    /// Client certificate for mutual TLS with the collector; the TRACES_ variable wins.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")]
    otlp_client_certificate: Option<String>,
    /// Its private key; OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY wins.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_CLIENT_KEY")]
    otlp_client_key: Option<String>,
    /// service.name of the spans.
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    service_name: Option<String>,
    /// always_on, always_off, traceidratio, or parentbased_ forms of those.
    #[arg(long, env = "OTEL_TRACES_SAMPLER")]
    traces_sampler: Option<String>,
    /// The sampling ratio for traceidratio samplers, 0 to 1.
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG")]
    traces_sampler_arg: Option<String>,
    /// Queries at least this slow are always traced (e.g. 500ms).
    #[arg(long, env = "PGSIDECAR_SLOW_QUERY_THRESHOLD")]
    slow_query_threshold: Option<String>,
}

/// Whether the OpenTelemetry environment turns trace export off.
fn otel_traces_disabled() -> bool {
    let is = |name: &str, value: &str| {
        std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case(value))
    };
    is("OTEL_SDK_DISABLED", "true") || is("OTEL_TRACES_EXPORTER", "none")
}

impl ProxyArgs {
    fn source(self) -> ConfigSource {
        let overrides = Overrides {
            listen: self.listen,
            admin_listen: self.admin_listen,
            upstream: self.upstream,
            auth: self.auth,
            auth_query: self.auth_query,
            auth_user: self.auth_user,
            auth_failure_delay: self.auth_failure_delay,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            client_tls: self.client_tls,
            server_tls_mode: self.server_tls_mode,
            server_ca: self.server_ca,
            pool_mode: self.pool_mode,
            pool_size: self.pool_size,
            min_idle: self.min_idle,
            acquire_timeout: self.acquire_timeout,
            query_wait_notify: self.query_wait_notify,
            server_idle_timeout: self.server_idle_timeout,
            server_lifetime: self.server_lifetime,
            server_connect_timeout: self.server_connect_timeout,
            max_prepared_statements: self.max_prepared_statements,
            client_idle_timeout: self.client_idle_timeout,
            idle_transaction_timeout: self.idle_transaction_timeout,
            query_timeout: self.query_timeout,
            transaction_timeout: self.transaction_timeout,
            max_db_connections: self.max_db_connections,
            max_user_connections: self.max_user_connections,
            client_login_timeout: self.client_login_timeout,
            max_client_conn: self.max_client_conn,
            max_message_size: self.max_message_size,
            threads: self.threads,
            drain_timeout: self.drain_timeout,
            schema_version: self.schema_version,
            fleet_url: self.fleet_url,
            fleet_id: self.fleet_id,
            fleet_heartbeat: self.fleet_heartbeat,
            health_interval: self.health_interval,
            fleet_control_role: self.fleet_control_role,
            admin_token_file: self.admin_token_file,
            admin_token: std::env::var("PGSIDECAR_ADMIN_TOKEN").ok(),
            max_pause_hold: self.max_pause_hold,
            max_pause_deadline: self.max_pause_deadline,
            admin_users: self.admin_users,
            otlp_endpoint: if otel_traces_disabled() {
                Some(String::new())
            } else {
                std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                    .ok()
                    .or(self.otlp_endpoint)
            },
            otlp_protocol: std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                .ok()
                .or(self.otlp_protocol),
            otlp_certificate: std::env::var("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE")
                .ok()
                .or(self.otlp_certificate),
            otlp_client_certificate: std::env::var("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE")
                .ok()
                .or(self.otlp_client_certificate),
            otlp_client_key: std::env::var("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY")
                .ok()
                .or(self.otlp_client_key),
            service_name: self.service_name,
            traces_sampler: self.traces_sampler,
            traces_sampler_arg: self.traces_sampler_arg,
            slow_query_threshold: self.slow_query_threshold,
            database_url: std::env::var("DATABASE_URL").ok(),
        };
        ConfigSource {
            path: self.config,
            overrides,
        }
    }
}

#[derive(Args)]
struct DevArgs {
    /// Where the cluster lives.
    #[arg(long, default_value = ".pgsidecar")]
    dir: PathBuf,
    /// Proxy listener address.
    #[arg(long, default_value = "127.0.0.1:6432")]
    listen: String,
}

/// Turns true on SIGINT or SIGTERM.
fn shutdown_on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = tx.send(true);
    });
    rx
}

/// Logs to stderr (filtered by PGSIDECAR_LOG) and, when tracing is on, the process's own spans
/// to the same OTLP pipeline as the queries'.
fn init_logging(tracer: Option<opentelemetry_sdk::trace::SdkTracer>) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGSIDECAR_LOG")
        .unwrap_or_else(|_| "info,tokio_postgres=warn".into());
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(tracer.map(|t| tracing_opentelemetry::layer().with_tracer(t)))
        .init();
}

/// Reloads the configuration on every SIGHUP; a file that does not validate is refused (and
/// logged) and the running configuration stays.
fn reload_on_sighup(ctx: Arc<ProxyContext>) {
    tokio::spawn(async move {
        let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::error!("cannot install a SIGHUP handler; reload is unavailable");
            return;
        };
        while hangup.recv().await.is_some() {
            let _ = ctx.reload_from_source();
        }
    });
}

async fn run_proxy(config: Config, source: ConfigSource) -> anyhow::Result<()> {
    let proxy = Proxy::bind(config.clone()).await?;
    let ctx = proxy.context();
    init_logging(
        ctx.telemetry
            .tracer
            .as_ref()
            .map(pgsidecar::telemetry::QueryTracer::tracer),
    );
    tracing::info!(listen = %proxy.local_addr()?, upstream = %config.upstream.addresses(), "pgsidecar proxy ready");
    let shutdown = shutdown_on_signal();
    ctx.keep_source(source);
    reload_on_sighup(Arc::clone(&ctx));
    if let Some(admin) = proxy.admin_addr()? {
        tracing::info!(%admin, "admin endpoints ready");
    }
    proxy.run(shutdown).await;
    // The exporter flushes with blocking calls.
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(tracer) = &ctx.telemetry.tracer {
            tracer.shutdown();
        }
    })
    .await;
    Ok(())
}

/// The runtime the proxy runs on: one thread (tokio's current-thread scheduler, no cross-thread
/// wake-ups) or `threads` work-stealing workers.
fn proxy_runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    builder.enable_all().build()
}

/// Runs the proxy on the runtime its configuration asks for.
fn proxy_main(args: ProxyArgs) -> ExitCode {
    let source = args.source();
    let config = match source.load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("pgsidecar: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match proxy_runtime(config.threads) {
        Ok(runtime) => exit_code(runtime.block_on(run_proxy(config, source))),
        Err(e) => {
            eprintln!("pgsidecar: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgsidecar: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a tool subcommand (migrations, backups, checks) to completion on tokio's default
/// runtime.
fn run_tool(tool: impl Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(tool),
        Err(e) => {
            eprintln!("pgsidecar: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Proxy(args) => proxy_main(*args),
        Command::Passwd {
            password,
            user,
            md5,
        } => exit_code(passwd(password, user.as_deref(), md5)),
        Command::Dev(args) => {
            init_logging(None);
            run_tool(async move {
                exit_code(
                    pgsidecar::dev::run(&args.dir, &args.listen, shutdown_on_signal)
                        .await
                        .map_err(anyhow::Error::from),
                )
            })
        }
        Command::Gate(args) => run_tool(cli::gate::run(args)),
        Command::Health(args) => run_tool(cli::health::run(*args)),
        Command::Backup(args) => {
            init_logging(None);
            run_tool(cli::backup::run(args))
        }
        Command::Migrate(args) => {
            init_logging(None);
            run_tool(cli::migrate::run(args))
        }
    }
}

fn passwd(password: Option<String>, user: Option<&str>, md5: bool) -> anyhow::Result<()> {
    let password = if let Some(p) = password {
        p
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    anyhow::ensure!(!password.is_empty(), "the password is empty");
    match (user, md5) {
        (Some(user), true) => println!(
            "[users.\"{user}\"]\nmd5_secret = \"{}\"",
            postgres_protocol::password::md5(password.as_bytes(), user)
        ),
        (Some(user), false) => println!(
            "[users.\"{user}\"]\nscram_verifier = \"{}\"",
            postgres_protocol::password::scram_sha_256(password.as_bytes())
        ),
        (None, _) => println!(
            "{}",
            postgres_protocol::password::scram_sha_256(password.as_bytes())
        ),
    }
    Ok(())
}
